package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/phoneboot/phoneboot/agent"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// The servers under test. Each run of a server starts it afresh with an
// empty lease file on the bench's tmpfs, so every rate step begins from
// the same state.

type serverKind struct {
	name string
	xdp  bool // phoneboot with the fast path: XDP_PASS on the client's eth0
	// start launches the server in ns with its files under dir.
	start func(ctx context.Context, b *bench, ns *vnet.NS, dir string) (*proc, error)
}

var serverKinds = []serverKind{
	{name: "phoneboot-xdp", xdp: true, start: func(ctx context.Context, b *bench, ns *vnet.NS, dir string) (*proc, error) {
		return b.startPhoneboot(ctx, ns, dir, true, benchPool())
	}},
	{name: "phoneboot-userspace", start: func(ctx context.Context, b *bench, ns *vnet.NS, dir string) (*proc, error) {
		return b.startPhoneboot(ctx, ns, dir, false, benchPool())
	}},
	{name: "kea", start: func(ctx context.Context, b *bench, ns *vnet.NS, dir string) (*proc, error) {
		return b.startKea(ns, dir)
	}},
	{name: "dnsmasq", start: func(ctx context.Context, b *bench, ns *vnet.NS, dir string) (*proc, error) {
		return b.startDnsmasq(ns, dir)
	}},
}

// proc is a server process the bench started.
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	log    string
	notify *net.UnixConn // phoneboot's NOTIFY_SOCKET, open while it runs
}

func (b *bench) startProc(ns *vnet.NS, name, logPath string, env []string, argv ...string) (*proc, error) {
	out, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer out.Close() // the child has its own descriptor
	cmd := b.pinned(serverCPU, argv...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = out, out
	// If the bench dies, its servers go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := ns.Do(cmd.Start); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, exited: make(chan struct{}), log: logPath}
	go func() { cmd.Wait(); close(p.exited) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// The CPUs --pin gives the servers and perfdhcp.
const serverCPU, generatorCPU = "0", "1"

// pinned is exec.Command(argv...), on cpu with --pin: taskset execs the
// program in its own process, so the pid is the program's and every
// thread it starts inherits the CPU.
func (b *bench) pinned(cpu string, argv ...string) *exec.Cmd {
	if b.pin {
		argv = append([]string{"taskset", "-c", cpu}, argv...)
	}
	return exec.Command(argv[0], argv[1:]...)
}

func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, then SIGKILL after 5 s.
func (p *proc) stop() {
	if p.alive() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-p.exited
		}
	}
	if p.notify != nil {
		p.notify.Close()
	}
}

// tail returns the end of the process's log, for error messages.
func (p *proc) tail() string {
	data, _ := os.ReadFile(p.log)
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	return string(data)
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces).
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// benchPool is the pool every server serves: 10.200.0.0/16, 1 h leases,
// router and option 150 = the server.
func benchPool() agent.DHCPPoolConfig {
	srv := netip.MustParseAddr(serverIP)
	return agent.DHCPPoolConfig{
		Name:        "bench",
		Subnet:      netip.MustParsePrefix("10.200.0.0/16"),
		RangeStart:  netip.MustParseAddr(rangeStart),
		RangeEnd:    netip.MustParseAddr(rangeEnd),
		ServerIP:    srv,
		Routers:     []netip.Addr{srv},
		TFTPServers: []netip.Addr{srv},
		LeaseTime:   agent.Duration(time.Hour),
	}
}

// startPhoneboot runs `phoneboot serve` in ns as systemd would and waits
// for its READY=1.
func (b *bench) startPhoneboot(ctx context.Context, ns *vnet.NS, dir string, xdp bool, pool agent.DHCPPoolConfig) (*proc, error) {
	cfg := agent.DefaultConfig()
	cfg.Log.Level = "warn"
	cfg.Control.Socket = filepath.Join(dir, "control.sock")
	cfg.Metrics.Listen = ""
	cfg.FastPath.Enabled = xdp
	cfg.FastPath.XDPMode = "native"
	cfg.FastPath.PinDir = filepath.Join(b.run.bpffs, filepath.Base(dir))
	cfg.FastPath.DetachOnStop = true
	poe := false
	cfg.Ports = []agent.PortConfig{{Name: "swp1", PoE: &poe}}
	cfg.DHCP.Enabled = true
	cfg.DHCP.LeaseDB = filepath.Join(dir, "leases.db")
	cfg.DHCP.Pools = []agent.DHCPPoolConfig{pool}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "phoneboot.yaml")
	if err := os.WriteFile(cfgPath, data, 0o600); err != nil {
		return nil, err
	}
	notifyPath := filepath.Join(dir, "notify.sock")
	os.Remove(notifyPath)
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	p, err := b.startProc(ns, "phoneboot", filepath.Join(dir, "phoneboot.log"),
		[]string{"NOTIFY_SOCKET=" + notifyPath}, b.phoneboot, "serve", "--config", cfgPath)
	if err != nil {
		notify.Close()
		return nil, err
	}
	// Kept open (and read) while the daemon runs: it also reports
	// STOPPING=1 there.
	p.notify = notify
	ready := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		sent := false
		for {
			n, err := notify.Read(buf)
			if err != nil {
				if !sent {
					ready <- err
				}
				return
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				if line == "READY=1" && !sent {
					ready <- nil
					sent = true
				}
			}
		}
	}()
	select {
	case err = <-ready:
	case <-p.exited:
		err = errors.New("exited before READY=1")
	case <-time.After(2 * time.Minute):
		err = errors.New("no READY=1 within 2m")
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("phoneboot serve: %w; log:\n%s", err, p.tail())
	}
	return p, nil
}

// startKea runs kea-dhcp4 in the foreground: memfile with persist on,
// raw socket on swp1, no control socket, option 150 defined.
func (b *bench) startKea(ns *vnet.NS, dir string) (*proc, error) {
	conf := fmt.Sprintf(`{"Dhcp4": {
  "interfaces-config": {"interfaces": ["swp1"], "dhcp-socket-type": "raw"},
  "lease-database": {"type": "memfile", "persist": true, "name": %q},
  "option-def": [{"name": "tftp-servers", "code": 150, "type": "ipv4-address", "array": true, "space": "dhcp4"}],
  "valid-lifetime": 3600,
  "subnet4": [{"id": 1, "subnet": "10.200.0.0/16", "pools": [{"pool": "%s - %s"}],
    "option-data": [{"name": "routers", "data": %q}, {"name": "tftp-servers", "data": %q}]}],
  "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "stdout"}], "severity": "WARN"}]
}}`, filepath.Join(dir, "kea-leases4.csv"), rangeStart, rangeEnd, serverIP, serverIP)
	path := filepath.Join(dir, "kea-dhcp4.json")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	return b.startProc(ns, "kea-dhcp4", filepath.Join(dir, "kea.log"),
		[]string{"KEA_PIDFILE_DIR=" + dir, "KEA_LOCKFILE_DIR=" + dir}, b.kea, "-c", path)
}

// startDnsmasq runs dnsmasq as a DHCP server only (no DNS, no ping check).
func (b *bench) startDnsmasq(ns *vnet.NS, dir string) (*proc, error) {
	return b.startProc(ns, "dnsmasq", filepath.Join(dir, "dnsmasq.log"), nil, b.dnsmasq,
		"--no-daemon", "--conf-file=/dev/null", "--no-hosts", "--no-resolv",
		"--no-ping", "--port=0",
		"--dhcp-range="+rangeStart+","+rangeEnd+",255.255.0.0,1h",
		"--interface=swp1", "--bind-interfaces",
		"--dhcp-leasefile="+filepath.Join(dir, "dnsmasq.leases"),
		"--dhcp-option=3,"+serverIP,
		"--dhcp-option=150,"+serverIP,
		"--dhcp-authoritative",
		// dnsmasq caps leases at 1000 by default; the runs use up to clientCap.
		"--dhcp-lease-max="+strconv.Itoa(clientCap+5000),
		// Per-lease syslog lines would cost it time Kea and phoneboot (at
		// WARN) do not spend.
		"--quiet-dhcp", "--log-facility=-",
		"--pid-file="+filepath.Join(dir, "dnsmasq.pid"), "--user=root", "--group=root")
}

// xdpCounters asks a running phoneboot for its XDP counters (by name).
func (b *bench) xdpCounters(dir string) (map[string]uint64, error) {
	out, err := exec.Command(b.phoneboot, "status", "--json", "--socket", filepath.Join(dir, "control.sock")).Output()
	if err != nil {
		return nil, fmt.Errorf("phoneboot status: %w", err)
	}
	var st struct {
		Counters []struct {
			Name    string `json:"name"`
			Packets uint64 `json:"packets"`
		} `json:"counters"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("phoneboot status --json: %w", err)
	}
	m := map[string]uint64{}
	for _, c := range st.Counters {
		m[c.Name] = c.Packets
	}
	return m, nil
}
