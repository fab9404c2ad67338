package lab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/agent"
	"github.com/phoneboot/phoneboot/userspace/bootfiles"
	"github.com/phoneboot/phoneboot/userspace/lease"
	"github.com/phoneboot/phoneboot/userspace/provision"
	"github.com/phoneboot/phoneboot/userspace/tftp"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// The baseline: the same storm against the stack a user would otherwise
// deploy. Kea (kea-dhcp4, memfile leases persisted to a CSV file) answers
// DHCP and tftpd-hpa (in.tftpd, a process per transfer) serves the files,
// both inside the appliance namespace on the bridge's address; the phones'
// configuration files name the CallManagers themselves, which the phones
// reach through the appliance, routed (their default route is the router
// of DHCP option 3). What stays phoneboot is the switch's role alone: the
// agent runs with power management and CDP/LLDP, and nothing else (no
// fast path, DHCP, provisioning or proxy), so the power, boot and cdp
// phases are the same as phoneboot's. Without phoneboot's XDP and TC
// programs the appliance tags nothing: the baseline runs untagged, and
// CDP gives the phones no voice VLAN.
//
// The files tftpd-hpa serves are rendered before the storm by
// userspace/provision from the lab's own provisioning config, with the
// proxy off: the bytes phoneboot would generate, naming the CallManagers.
// Kea's config is derived from the lab's DHCP pools: the same range, lease
// time and options. Kea and tftpd-hpa start with the appliance, when the
// storm's clock does, as the agent (and with it phoneboot's own servers)
// does in every run; the files are on disk before, as phoneboot's firmware
// loads are.

// baselineStack is the baseline's servers while they run.
type baselineStack struct {
	server          netip.Addr // the bridge's address, where they serve
	keaArgv, keaEnv []string
	tftpdArgv       []string
	thread          *vnet.Thread // started them; lives until they have exited
	kea, tftpd      *exec.Cmd
	keaExited       chan struct{}
	tftpdExited     chan struct{}
	leaseFile       string
	keaLog          string
	keaControl      string // Kea's control socket
	tftpdLog        string
}

// mode names the run in the report: xdp, userspace (--no-xdp) or baseline.
func (o *Options) mode() string {
	switch {
	case o.Baseline:
		return "baseline"
	case o.NoXDP:
		return "userspace"
	}
	return "xdp"
}

// daemonConfig is the config the agent runs with: phoneboot's whole
// config, or for the baseline only the switch's part of it.
func (l *lab) daemonConfig() agent.Config {
	cfg := l.agentConfig()
	if l.o.Baseline {
		cfg.FastPath.Enabled = false
		cfg.DHCP.Enabled = false
		cfg.Provision.Enabled = false
		cfg.Proxy.Enabled = false
	}
	if l.o.NoProxy {
		cfg.Proxy.Enabled = false
	}
	return cfg
}

// bringUpPhone gives the phone its interface and address after DHCP. In
// the baseline and with --no-proxy the phone also takes its default route, through the router
// of option 3 (the appliance's address in the subnet, in Kea's config as
// in phoneboot's): its CallManagers are beyond the appliance, not on the
// phone's subnet as the proxy is.
func (l *lab) bringUpPhone(ph *Phone) error {
	if err := ph.bringUpNIC(l.app); err != nil {
		return err
	}
	if !l.o.Baseline && !l.o.NoProxy {
		return nil
	}
	if err := ph.Port.rt.do(defaultRouteRequest(ph.nicIndex, l.app.server(ph.Subnet))); err != nil {
		return fmt.Errorf("default route of %s (%s): %w", ph.nicName(), ph.MAC, err)
	}
	return nil
}

// defaultRouteRequest adds a default route through gw out of the link with
// this index. Every phone on a port has one, each through its own
// interface: appended, since they share the destination, and a phone's
// sockets (bound to its interface) take the route through it.
func defaultRouteRequest(index int, gw netip.Addr) []byte {
	m := nl.NewRtMsg()
	m.Family = unix.AF_INET
	return newRequest(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_APPEND, m,
		nl.NewRtAttr(unix.RTA_GATEWAY, gw.AsSlice()),
		nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(uint32(index))))
}

// routeToCallManagers lets the phones reach the CallManagers themselves
// (the baseline, and --no-proxy): the appliance routes between the bridge
// and the uplink, the CallManagers route the phones' subnets back through
// it, and each phone takes its default route from option 3
// (bringUpPhone).
func (l *lab) routeToCallManagers() error {
	if err := l.appNS.Do(func() error { return writeNetSysctls(map[string]string{"ipv4/ip_forward": "1"}) }); err != nil {
		return fmt.Errorf("forward between the phones and the CallManagers: %w", err)
	}
	gw := applianceUplink.AsSlice()
	for _, p := range l.agentConfig().DHCP.Pools {
		dst := &net.IPNet{IP: p.Subnet.Masked().Addr().AsSlice(), Mask: net.CIDRMask(p.Subnet.Bits(), 32)}
		if err := l.cmNS.Netlink().RouteAdd(&netlink.Route{Dst: dst, Gw: gw}); err != nil {
			return fmt.Errorf("the CallManagers' route to %s: %w", p.Subnet, err)
		}
	}
	return nil
}

// prepareBaseline does what comes before the storm: it finds tftpd-hpa,
// renders the files and writes Kea's config (routeToCallManagers has
// routed the appliance between the phones and the CallManagers). The
// servers start with the storm (startAppliance).
func (l *lab) prepareBaseline(ctx context.Context) error {
	inTFTPD, err := findInTFTPD(ctx, l.o.InTFTPD, l.o.Log)
	if err != nil {
		return err
	}
	keaBin, err := lookSbin("kea-dhcp4")
	if err != nil {
		return fmt.Errorf("the baseline needs Kea (Debian kea-dhcp4-server): %w", err)
	}
	full := l.agentConfig()
	pools := full.DHCP.Pools
	if len(pools) != 1 {
		return fmt.Errorf("the baseline runs untagged, with one pool; the lab's config has %d", len(pools))
	}
	n, err := renderBaselineFiles(ctx, full, l.tftpRoot, l.o.Log)
	if err != nil {
		return err
	}
	l.o.Log.Info("baseline files rendered", "configs", n, "dir", l.tftpRoot)

	if err := l.keepBridgeRunning(); err != nil {
		return err
	}
	b := &baselineStack{
		server:     pools[0].ServerIP,
		leaseFile:  filepath.Join(l.runDir, "kea-leases4.csv"),
		keaLog:     filepath.Join(l.runDir, "kea-dhcp4.log"),
		keaControl: filepath.Join(l.runDir, "kea4-ctrl.sock"),
		tftpdLog:   filepath.Join(l.runDir, "in.tftpd.log"),
	}
	l.baseline = b
	keaConf, err := keaConfig(pools, bridgeName, b.leaseFile, b.keaLog, b.keaControl)
	if err != nil {
		return err
	}
	keaConfPath := filepath.Join(l.runDir, "kea-dhcp4.json")
	if err := os.WriteFile(keaConfPath, keaConf, 0o600); err != nil {
		return fmt.Errorf("baseline: Kea's config: %w", err)
	}
	b.keaArgv = []string{keaBin, "-c", keaConfPath}
	// Kea keeps its PID and lock files where these say, in the run
	// directory rather than the host's /run/kea.
	b.keaEnv = append(os.Environ(), "KEA_PIDFILE_DIR="+l.runDir, "KEA_LOCKFILE_DIR="+l.runDir)
	// As Debian runs it (in.tftpd --listen --secure), in the foreground so
	// that the lab owns the process, as root (the lab's host need not have
	// Debian's tftp user), on the bridge's address alone, with the largest
	// block size it allows (the lab's models ask for at most 1468).
	b.tftpdArgv = []string{inTFTPD, "--listen", "--foreground", "--secure", "--user", "root",
		"--address", netip.AddrPortFrom(b.server, tftpPort).String(), "--blocksize", "65464", l.tftpRoot}
	return nil
}

// startAppliance starts the appliance's services when the storm starts:
// the agent, and in the baseline Kea and tftpd-hpa beside it (all of them
// come up with the appliance, so the storm's clock counts their start as
// it counts the agent's). It returns when all of them serve.
func (l *lab) startAppliance(ctx context.Context) error {
	b := l.baseline
	if b == nil {
		return l.startAgent(ctx)
	}
	var err error
	if b.thread, err = l.appNS.StartThread(); err != nil {
		return err
	}
	if b.kea, b.keaExited, err = b.start(b.keaEnv, b.keaLog+".out", b.keaArgv...); err != nil {
		return fmt.Errorf("start Kea: %w", err)
	}
	if b.tftpd, b.tftpdExited, err = b.start(nil, b.tftpdLog, b.tftpdArgv...); err != nil {
		return fmt.Errorf("start tftpd-hpa: %w", err)
	}
	if err := l.startAgent(ctx); err != nil {
		return err
	}
	deadline, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := b.waitKea(deadline); err != nil {
		return err
	}
	if err := b.waitTFTPD(deadline); err != nil {
		return err
	}
	l.o.Log.Info("baseline ready", "kea", b.kea.Process.Pid, "in.tftpd", b.tftpd.Process.Pid, "in.tftpd_binary", b.tftpdArgv[0])
	return nil
}

// keepBridgeRunning gives the bridge a member that is always up, as a
// switch's SVI stays up while any port of its VLAN is (its uplink, say):
// the bridge otherwise has no carrier until the agent powers a port, and
// Kea opens no socket on an interface that is not running (it retries
// only from its main loop, after a second or more, by which time the
// first phones may have asked). The member is an isolated port, so the
// phones' frames are not flooded to it.
func (l *lab) keepBridgeRunning() error {
	h := l.appNS.Netlink()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "svi0"}, PeerName: "svi1"}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("baseline: the bridge's standing member: %w", err)
	}
	for _, name := range []string{"svi1", "svi0"} {
		link, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
		if name == "svi0" {
			if err := h.LinkSetMasterByIndex(link, l.app.index); err != nil {
				return fmt.Errorf("baseline: svi0 joins the bridge: %w", err)
			}
			if err := h.LinkSetIsolated(link, true); err != nil {
				return fmt.Errorf("baseline: isolate svi0: %w", err)
			}
		}
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
	}
	return nil
}

// start runs a server from the stack's thread (in the appliance
// namespace): killed if the lab dies (Pdeathsig follows the starting
// thread, which lives until the server has exited), in a process group of
// its own (tftpd-hpa's transfer processes are in it too, and the
// terminal's Ctrl-C is the lab's to act on).
func (b *baselineStack) start(env []string, logPath string, argv ...string) (*exec.Cmd, chan struct{}, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, nil, err
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := b.thread.Do(cmd.Start); err != nil {
		return nil, nil, err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	return cmd, exited, nil
}

// waitKea waits for Kea to log that it serves.
func (b *baselineStack) waitKea(ctx context.Context) error {
	for {
		if data, _ := os.ReadFile(b.keaLog); bytes.Contains(data, []byte("DHCP4_STARTED")) {
			return nil
		}
		select {
		case <-b.keaExited:
			return fmt.Errorf("kea-dhcp4 exited at start (%s); its log:\n%s", b.kea.ProcessState, tail(b.keaLog, b.keaLog+".out"))
		case <-ctx.Done():
			return fmt.Errorf("kea-dhcp4 not started: %w; its log:\n%s", context.Cause(ctx), tail(b.keaLog, b.keaLog+".out"))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitTFTPD asks tftpd-hpa for a file it does not have until it says so.
func (b *baselineStack) waitTFTPD(ctx context.Context) error {
	listen := func(network string, laddr *net.UDPAddr) (c *net.UDPConn, err error) {
		err = b.thread.Do(func() error { c, err = net.ListenUDP(network, laddr); return err })
		return c, err
	}
	for {
		_, err := tftp.Fetch(ctx, netip.AddrPortFrom(b.server, tftpPort), "phoneboot-lab-probe",
			tftp.FetchOptions{Timeout: 200 * time.Millisecond, Retries: 1, Listen: listen}, io.Discard)
		var re *tftp.RemoteError
		if errors.As(err, &re) && re.Code == tftp.ErrFileNotFound {
			return nil
		}
		select {
		case <-b.tftpdExited:
			return fmt.Errorf("tftpd-hpa exited at start (%s); its output:\n%s", b.tftpd.ProcessState, tail(b.tftpdLog))
		case <-ctx.Done():
			return fmt.Errorf("tftpd-hpa does not answer (%v): %w", err, context.Cause(ctx))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stopBaseline stops Kea (SIGTERM, as systemd would) and tftpd-hpa with
// its transfer processes (its process group), and waits for them. A
// server that had exited by itself is an error.
func (l *lab) stopBaseline() error {
	b := l.baseline
	if b == nil {
		return nil
	}
	l.baseline = nil
	var errs []error
	if b.kea != nil {
		select {
		case <-b.keaExited:
			errs = append(errs, fmt.Errorf("kea-dhcp4 had exited (%s); its log:\n%s", b.kea.ProcessState, tail(b.keaLog, b.keaLog+".out")))
		default:
			l.logServerCPU("kea-dhcp4", b.kea.Process.Pid)
			b.kea.Process.Signal(syscall.SIGTERM)
			select {
			case <-b.keaExited:
			case <-time.After(10 * time.Second):
				b.kea.Process.Kill()
				<-b.keaExited
				errs = append(errs, errors.New("kea-dhcp4 did not stop within 10s of SIGTERM; killed"))
			}
		}
	}
	// tftpd-hpa's CPU time is not logged: it does not wait for its
	// transfer processes, so their time is not counted in its.
	if b.tftpd != nil {
		select {
		case <-b.tftpdExited:
			// Its process group may have no leader to be sure of now: its
			// transfers end by their own timeouts.
			errs = append(errs, fmt.Errorf("tftpd-hpa had exited (%s); its output:\n%s", b.tftpd.ProcessState, tail(b.tftpdLog)))
		default:
			// The listener and the transfers it forked: its process group.
			syscall.Kill(-b.tftpd.Process.Pid, syscall.SIGKILL)
			<-b.tftpdExited
		}
	}
	if b.thread != nil {
		b.thread.Stop()
	}
	return errors.Join(errs...)
}

// logServerCPU logs the CPU time a baseline server used, with that of the
// processes it forked and waited for, as the agent's is logged.
func (l *lab) logServerCPU(name string, pid int) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return
	}
	// Fields after the command (in parentheses): utime, stime, cutime and
	// cstime are the 12th to 15th, in clock ticks (100 a second on Linux).
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	if len(f) < 15 {
		return
	}
	var ticks [4]int64
	for i := range ticks {
		ticks[i], _ = strconv.ParseInt(f[11+i], 10, 64)
	}
	tick := func(n int64) time.Duration { return time.Duration(n) * 10 * time.Millisecond }
	l.o.Log.Info("cpu", "server", name, "user", tick(ticks[0]+ticks[2]), "sys", tick(ticks[1]+ticks[3]))
}

// tail is the end of the first of these files that has something.
func tail(paths ...string) string {
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil || len(data) == 0 {
			continue
		}
		const keep = 4096
		if len(data) > keep {
			data = data[len(data)-keep:]
		}
		return string(data)
	}
	return "(nothing)"
}

// renderBaselineFiles writes into dir every configuration file phoneboot
// would generate for cfg's inventory (SEP<MAC>.cnf.xml, and
// XMLDefault.cnf.xml with auto-registration), with the proxy off so that
// they name the CallManagers. It returns how many it wrote.
func renderBaselineFiles(ctx context.Context, cfg agent.Config, dir string, log *slog.Logger) (int, error) {
	cfg.Proxy.Enabled = false
	pc := cfg.ProvisionConfig()
	svc, err := provision.New(ctx, pc, nil, log)
	if err != nil {
		return 0, fmt.Errorf("baseline: render the phones' files: %w", err)
	}
	defer svc.Close()
	var names []string
	if pc.AutoRegistration {
		names = append(names, "XMLDefault.cnf.xml")
	}
	for _, p := range pc.Phones {
		names = append(names, p.MAC.DeviceName()+".cnf.xml")
	}
	for _, name := range names {
		f, err := svc.Open(ctx, bootfiles.Request{Name: name, Protocol: "tftp"})
		if err != nil {
			return 0, fmt.Errorf("baseline: render %s: %w", name, err)
		}
		// World-readable: tftpd-hpa serves nothing else.
		err = os.WriteFile(filepath.Join(dir, name), f.Bytes(), 0o644)
		f.Close()
		if err != nil {
			return 0, fmt.Errorf("baseline: %w", err)
		}
	}
	return len(names), nil
}

// keaConfig is Kea's config for the lab's pools: a subnet per pool with
// its range, lease time and options, on the bridge's address in it, over
// a raw socket (clients without an address yet), leases in a memfile
// persisted to leaseFile. The rest is Debian's packaged config's
// (/etc/kea/kea-dhcp4.conf): lease file cleanup every hour, INFO logging
// (a line per lease), to logFile, and a control socket (the lab reads
// Kea's statistics there for its load samples).
func keaConfig(pools []agent.DHCPPoolConfig, bridge, leaseFile, logFile, controlSocket string) ([]byte, error) {
	type option struct {
		Name string `json:"name"`
		Data string `json:"data"`
	}
	type subnet struct {
		ID            int              `json:"id"`
		Subnet        string           `json:"subnet"`
		Pools         []map[string]any `json:"pools"`
		ValidLifetime int64            `json:"valid-lifetime"`
		RenewTimer    int64            `json:"renew-timer,omitempty"`
		RebindTimer   int64            `json:"rebind-timer,omitempty"`
		OptionData    []option         `json:"option-data"`
	}
	addrs := func(as []netip.Addr) string {
		s := make([]string, len(as))
		for i, a := range as {
			s[i] = a.String()
		}
		return strings.Join(s, ", ")
	}
	var ifaces []string
	var subnets []subnet
	for i, p := range pools {
		if len(p.Classes) > 0 || len(p.VendorInfo) > 0 || len(p.Reservations) > 0 {
			return nil, fmt.Errorf("baseline: pool %s has classes, vendor info or reservations, which the Kea config does not carry over", p.Name)
		}
		ifaces = append(ifaces, bridge+"/"+p.ServerIP.String())
		sn := subnet{
			ID: i + 1, Subnet: p.Subnet.Masked().String(),
			Pools:         []map[string]any{{"pool": p.RangeStart.String() + " - " + p.RangeEnd.String()}},
			ValidLifetime: int64(time.Duration(p.LeaseTime).Seconds()),
			RenewTimer:    int64(time.Duration(p.T1).Seconds()),
			RebindTimer:   int64(time.Duration(p.T2).Seconds()),
		}
		add := func(name, data string) {
			if data != "" {
				sn.OptionData = append(sn.OptionData, option{name, data})
			}
		}
		add("routers", addrs(p.Routers))
		add("domain-name-servers", addrs(p.DNS))
		add("domain-name", p.Domain)
		add("ntp-servers", addrs(p.NTP))
		add("tftp-server-name", p.TFTPServerName)
		add("tftp-server-address", addrs(p.TFTPServers))
		subnets = append(subnets, sn)
	}
	conf := map[string]any{"Dhcp4": map[string]any{
		"interfaces-config": map[string]any{"interfaces": ifaces, "dhcp-socket-type": "raw"},
		"lease-database":    map[string]any{"type": "memfile", "persist": true, "name": leaseFile, "lfc-interval": 3600},
		"control-socket":    map[string]any{"socket-type": "unix", "socket-name": controlSocket},
		// Kea 2.2 has no definition of option 150 (later versions call it
		// tftp-server-address): Cisco's TFTP server list.
		"option-def": []map[string]any{{"name": "tftp-server-address", "code": optTFTPServers, "type": "ipv4-address", "array": true, "space": "dhcp4"}},
		"subnet4":    subnets,
		"loggers": []map[string]any{
			{"name": "kea-dhcp4", "output_options": []map[string]any{{"output": logFile}}, "severity": "INFO"},
			// Not a line for each of the lab's statistics requests.
			{"name": "kea-dhcp4.commands", "output_options": []map[string]any{{"output": logFile}}, "severity": "WARN"},
		},
	}}
	return json.MarshalIndent(conf, "", "  ")
}

// keaLeaseStore reads Kea's memfile lease file as the lease store the
// lab's integrity check compares with the phones: the file has a line for
// every change of a lease, the latest last; a lease Kea deleted has a
// valid lifetime of 0, and only state 0 is an assigned lease (1 is
// declined, 2 reclaimed after expiry).
func keaLeaseStore(path string) ([]lease.Lease, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	latest := map[netip.Addr]lease.Lease{}
	var order []netip.Addr
	sc := bufio.NewScanner(f)
	col := map[string]int{}
	for sc.Scan() {
		cols := strings.Split(sc.Text(), ",")
		if len(col) == 0 { // the header: address,hwaddr,client_id,valid_lifetime,expire,...
			for i, c := range cols {
				col[c] = i
			}
			for _, c := range []string{"address", "hwaddr", "valid_lifetime", "expire", "state"} {
				if _, ok := col[c]; !ok {
					return nil, fmt.Errorf("%s: no %s column in %q", path, c, sc.Text())
				}
			}
			continue
		}
		field := func(name string) string {
			if i := col[name]; i < len(cols) {
				return cols[i]
			}
			return ""
		}
		ip, err := netip.ParseAddr(field("address"))
		if err != nil {
			return nil, fmt.Errorf("%s: %q: %w", path, sc.Text(), err)
		}
		l := lease.Lease{IP: ip, State: lease.StateBound}
		if l.MAC, err = net.ParseMAC(field("hwaddr")); err != nil {
			return nil, fmt.Errorf("%s: %q: %w", path, sc.Text(), err)
		}
		expire, err1 := strconv.ParseInt(field("expire"), 10, 64)
		lifetime, err2 := strconv.ParseInt(field("valid_lifetime"), 10, 64)
		state, err3 := strconv.Atoi(field("state"))
		if err := errors.Join(err1, err2, err3); err != nil {
			return nil, fmt.Errorf("%s: %q: %w", path, sc.Text(), err)
		}
		l.Expires = time.Unix(expire, 0)
		if lifetime == 0 || state != 0 {
			l.State = lease.StateExpired
		}
		if _, seen := latest[ip]; !seen {
			order = append(order, ip)
		}
		latest[ip] = l
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	out := make([]lease.Lease, 0, len(order))
	for _, ip := range order {
		out = append(out, latest[ip])
	}
	return out, nil
}

// lookSbin finds a server binary in PATH or /usr/sbin (root's PATH may
// lack it under sudo or in CI).
func lookSbin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	p := filepath.Join("/usr/sbin", name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s is not installed", name)
	}
	return p, nil
}

// tftpdCache is where the lab unpacks tftpd-hpa when it is not installed;
// kept between runs, so that only the first downloads it.
const tftpdCache = "/var/cache/phoneboot-lab"

// findInTFTPD finds tftpd-hpa's in.tftpd: bin if given, else the installed
// one, else the one unpacked from Debian's package into tftpdCache
// (apt-get download and dpkg -x, as bench/tftp does: tftpd-hpa and atftpd
// conflict as installed packages, and an installed one runs as the
// machine's service on every interface).
func findInTFTPD(ctx context.Context, bin string, log *slog.Logger) (string, error) {
	if bin != "" {
		if !isTFTPDHPA(bin) {
			return "", fmt.Errorf("%s is not tftpd-hpa's in.tftpd (in.tftpd -V does not say tftp-hpa)", bin)
		}
		return bin, nil
	}
	if p, err := lookSbin("in.tftpd"); err == nil && isTFTPDHPA(p) {
		return p, nil
	}
	unpacked := filepath.Join(tftpdCache, "tftpd-hpa", "usr/sbin/in.tftpd")
	if isTFTPDHPA(unpacked) {
		return unpacked, nil
	}
	if err := os.MkdirAll(tftpdCache, 0o755); err != nil {
		return "", fmt.Errorf("tftpd-hpa: %w", err)
	}
	tmp, err := os.MkdirTemp(tftpdCache, "download-")
	if err != nil {
		return "", fmt.Errorf("tftpd-hpa: %w", err)
	}
	defer os.RemoveAll(tmp)
	// apt downloads as its own user, which must be able to write here.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	log.Info("unpacking tftpd-hpa from its Debian package", "dir", filepath.Join(tftpdCache, "tftpd-hpa"))
	cmd := exec.CommandContext(ctx, "apt-get", "download", "tftpd-hpa")
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("the baseline needs tftpd-hpa: apt-get download tftpd-hpa: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "tftpd-hpa_*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download tftpd-hpa: %d packages", len(debs))
	}
	root := filepath.Join(tmp, "root")
	if out, err := exec.CommandContext(ctx, "dpkg", "-x", debs[0], root).CombinedOutput(); err != nil {
		return "", fmt.Errorf("dpkg -x %s: %v\n%s", debs[0], err, out)
	}
	// Another lab may have unpacked it meanwhile: either copy will do.
	if err := os.Rename(root, filepath.Join(tftpdCache, "tftpd-hpa")); err != nil && !isTFTPDHPA(unpacked) {
		return "", fmt.Errorf("tftpd-hpa: %w", err)
	}
	if !isTFTPDHPA(unpacked) {
		return "", fmt.Errorf("%s from %s does not run as tftpd-hpa (missing libwrap0?)", unpacked, filepath.Base(debs[0]))
	}
	return unpacked, nil
}

// isTFTPDHPA reports whether bin runs and is tftpd-hpa's in.tftpd.
func isTFTPDHPA(bin string) bool {
	out, err := exec.Command(bin, "-V").CombinedOutput()
	return err == nil && bytes.HasPrefix(out, []byte("tftp-hpa "))
}

// baselineSummary is what the baseline's servers did, for the table.
type baselineSummary struct {
	Leased int // phones with a lease in Kea's lease file
	// Direct is the phones registered with a CallManager from their own
	// address (not through a proxy), at the end of the storm.
	Direct int
	Err    error // reading the lease file
}

func (l *lab) baselineSummary() *baselineSummary {
	if l.baseline == nil {
		return nil
	}
	s := &baselineSummary{}
	leases, err := keaLeaseStore(l.baseline.leaseFile)
	if err != nil {
		s.Err = err
	}
	hw := map[string]bool{}
	for _, le := range leases {
		if le.State == lease.StateBound {
			hw[le.MAC.String()] = true
		}
	}
	for _, ph := range l.phones {
		if hw[ph.MAC.String()] {
			s.Leased++
		}
	}
	for _, cm := range l.cms {
		for _, st := range cm.Stations() {
			if host, _, _ := net.SplitHostPort(st.Remote); host != applianceUplink.String() {
				s.Direct++
			}
		}
	}
	return s
}

func (s *baselineSummary) write(w io.Writer) {
	if s == nil {
		return
	}
	if s.Err != nil {
		fmt.Fprintf(w, "baseline: Kea's lease file: %v\n", s.Err)
	}
	fmt.Fprintf(w, "baseline (Kea, tftpd-hpa, untagged): %d phones leased in Kea's lease file, %d registered straight with the CallManagers\n", s.Leased, s.Direct)
}

// baselineCounters adds the baseline's counters to the lab's load
// samples: Kea's DHCP answers (OFFERs, ACKs and NAKs, from its
// statistics) and the registrations the phones had acknowledged (there is
// no proxy to count them). Nil outside the baseline.
func (l *lab) baselineCounters() func(ctx context.Context, c *loadCounters) {
	b := l.baseline
	if b == nil {
		return nil
	}
	return func(ctx context.Context, c *loadCounters) {
		c.registered = float64(l.registrations.registered.Load())
		if n, err := keaAnswers(ctx, b.keaControl); err == nil {
			c.dhcpKea, c.keaAt = n, time.Now()
		}
	}
}

// keaAnswers asks Kea over its control socket for the DHCP answers it
// has sent.
func keaAnswers(ctx context.Context, socket string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "unix", socket)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	if _, err := conn.Write([]byte(`{"command": "statistic-get-all"}`)); err != nil {
		return 0, err
	}
	// Kea answers and closes the connection.
	data, err := io.ReadAll(conn)
	if err != nil {
		return 0, err
	}
	return parseKeaAnswers(data)
}

// parseKeaAnswers sums the latest pkt4-offer-sent, pkt4-ack-sent and
// pkt4-nak-sent of a statistic-get-all response. Each statistic is a list
// of [value, timestamp] samples, the latest first.
func parseKeaAnswers(data []byte) (float64, error) {
	var resp struct {
		Result    int                            `json:"result"`
		Text      string                         `json:"text"`
		Arguments map[string][][]json.RawMessage `json:"arguments"`
	}
	if err := json.Unmarshal(data, &resp); err != nil {
		return 0, fmt.Errorf("kea statistics: %w", err)
	}
	if resp.Result != 0 {
		return 0, fmt.Errorf("kea statistics: result %d: %s", resp.Result, resp.Text)
	}
	total := 0.0
	for _, name := range []string{"pkt4-offer-sent", "pkt4-ack-sent", "pkt4-nak-sent"} {
		samples := resp.Arguments[name]
		if len(samples) == 0 || len(samples[0]) == 0 {
			continue
		}
		var v float64
		if err := json.Unmarshal(samples[0][0], &v); err != nil {
			return 0, fmt.Errorf("kea statistics: %s: %w", name, err)
		}
		total += v
	}
	return total, nil
}
