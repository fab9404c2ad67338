package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/phoneboot/phoneboot/userspace/control"
	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// The interop tests put real DHCP clients (busybox udhcpc, ISC dhclient,
// Kea's perfdhcp) and a real dissector (tshark) in front of the built
// daemon: `phoneboot serve` in an "appliance" namespace on port swp1, the
// client on the veth's other end, eth0, in a "client" namespace. Each runs
// with the XDP fast path ("xdp") and without it ("userspace").

// The one pool every interop test serves.
const (
	ioPoolName   = "lab"
	ioSubnet     = "10.99.0.0/16"
	ioRangeStart = "10.99.0.10"
	ioRangeEnd   = "10.99.255.200"
	ioServer     = "10.99.0.1"
	ioDNS        = "10.99.0.53"
	ioDomain     = "lab.example"
	ioLeaseSecs  = 3600
	// perfdhcp needs an address on eth0 to bind to: outside the range.
	ioPerfAddr = "10.99.255.254/16"
)

// ioVariants runs fn as the subtests "xdp" and "userspace".
func ioVariants(t *testing.T, fn func(t *testing.T, xdp bool)) {
	for _, v := range []struct {
		name string
		xdp  bool
	}{{"xdp", true}, {"userspace", false}} {
		t.Run(v.name, func(t *testing.T) { fn(t, v.xdp) })
	}
}

// ioNeedTools stops the test unless root and the client tools are there.
func ioNeedTools(t *testing.T, tools ...string) {
	t.Helper()
	privtest.Require(t)
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("interop test needs %s: %v", tool, err)
			}
			t.Skipf("interop test needs %s (Debian: udhcpc, isc-dhcp-client, kea-admin, tshark): %v", tool, err)
		}
	}
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ioLab is one appliance namespace running phoneboot and one client
// namespace, joined by swp1 <-> eth0.
type ioLab struct {
	xdp         bool
	app, client *vnet.NS
	run         string // /run/phoneboot-test-*: config, socket, lease db
	socket      string
	config      string
	leaseDB     string
	daemon      *ioDaemon // the running daemon, if any
}

type ioLabOptions struct {
	xdp          bool
	detachOnStop bool
	// extra is appended to the config (more top-level sections).
	extra string
	// addresses puts ioServer/16 on swp1 and this client address on eth0,
	// for services reached over IP (TFTP, HTTP).
	clientAddr string
}

// newIOLab builds the namespaces, writes the config and starts the daemon.
// Everything is undone when the test ends, also when it fails.
func newIOLab(t *testing.T, o ioLabOptions) *ioLab {
	t.Helper()
	privtest.Require(t)
	l := &ioLab{xdp: o.xdp}
	var bpffs string
	if o.xdp {
		bpffs = privtest.TempBPFFS(t) // unmounted last: it takes the pins with it
	}
	l.app, l.client = privtest.VethPair(t, "swp1", "eth0")
	if err := l.client.SetUp("eth0"); err != nil {
		t.Fatal(err)
	}
	if o.xdp {
		// A veth delivers what its peer sends with native XDP_TX only to an
		// end that has an XDP program of its own.
		ioAttachPass(t, l.client, "eth0")
	}
	run, err := os.MkdirTemp("/run", "phoneboot-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	l.run = run
	l.socket = filepath.Join(run, "control.sock")
	l.config = filepath.Join(run, "phoneboot.yaml")
	l.leaseDB = filepath.Join(run, "leases.db")

	fastpath := "fastpath: {enabled: false}"
	if o.xdp {
		fastpath = fmt.Sprintf("fastpath: {enabled: true, xdp_mode: native, pin_dir: %s/phoneboot, detach_on_stop: %t}", bpffs, o.detachOnStop)
	}
	cfg := fmt.Sprintf(`
control: {socket: %s}
metrics: {listen: ""}
%s
ports: [{name: swp1}]
dhcp:
  enabled: true
  lease_db: %s
  pools:
    - name: %s
      vlan: 0
      subnet: %s
      range_start: %s
      range_end: %s
      server_ip: %s
      routers: [%s]
      tftp_servers: [%s]
      dns: [%s]
      domain: %s
      lease_time: 1h
`, l.socket, fastpath, l.leaseDB, ioPoolName, ioSubnet, ioRangeStart, ioRangeEnd, ioServer, ioServer, ioServer, ioDNS, ioDomain)
	cfg += o.extra
	if o.clientAddr != "" {
		ioAddAddr(t, l.app, "swp1", ioServer+"/16")
		ioAddAddr(t, l.client, "eth0", o.clientAddr+"/16")
	}
	if err := os.WriteFile(l.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	l.start(t)
	return l
}

func ioAddAddr(t *testing.T, ns *vnet.NS, link, cidr string) {
	t.Helper()
	l, err := ns.Netlink().LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Netlink().AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
}

// ioAttachPass attaches an XDP program that passes every frame to ifname
// in ns, for as long as the test runs.
func ioAttachPass(t *testing.T, ns *vnet.NS, ifname string) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "io_pass",
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
	})
	if err != nil {
		t.Fatalf("load XDP pass program: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	var l link.Link
	err = ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifi.Index})
		return err
	})
	if err != nil {
		t.Fatalf("attach XDP pass program to %s in %s: %v", ifname, ns.Name, err)
	}
	t.Cleanup(func() { l.Close() })
}

// ioDaemon is one run of `phoneboot serve`.
type ioDaemon struct {
	cmd    *exec.Cmd
	logs   *syncBuffer
	exited chan struct{}
	err    error // cmd.Wait's, once exited is closed
}

// start runs the daemon in the appliance namespace as systemd would and
// waits for READY=1.
func (l *ioLab) start(t *testing.T) {
	t.Helper()
	notifyPath := filepath.Join(l.run, "notify.sock")
	os.Remove(notifyPath)
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}

	d := &ioDaemon{logs: &syncBuffer{}, exited: make(chan struct{})}
	d.cmd = exec.Command(binary, "serve", "--config", l.config)
	d.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := l.app.Do(d.cmd.Start); err != nil {
		notify.Close()
		t.Fatal(err)
	}
	// The socket stays open while the daemon runs: it says STOPPING=1.
	go func() { d.err = d.cmd.Wait(); notify.Close(); close(d.exited) }()
	l.daemon = d
	t.Cleanup(func() {
		select {
		case <-d.exited:
			return
		default:
		}
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			d.cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			t.Logf("phoneboot log:\n%s", d.logs.String())
		}
	})

	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 256)
		notify.SetReadDeadline(time.Now().Add(15 * time.Second))
		k, err := notify.Read(buf)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(buf[:k])
	}()
	select {
	case m := <-got:
		if m != "READY=1" {
			t.Fatalf("phoneboot serve: first notification %q, want READY=1; log:\n%s", m, d.logs.String())
		}
	case <-d.exited:
		t.Fatalf("phoneboot serve exited before it was ready (%v); log:\n%s", d.err, d.logs.String())
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (l *ioLab) stop(t *testing.T) {
	t.Helper()
	d := l.daemon
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		if d.err != nil {
			t.Fatalf("phoneboot serve exited with %v after SIGTERM; log:\n%s", d.err, d.logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("phoneboot serve did not stop within 10s of SIGTERM; log:\n%s", d.logs.String())
	}
}

// status asks the running daemon through the CLI.
func (l *ioLab) status(t *testing.T) control.Status {
	t.Helper()
	r := phoneboot(t, "status", "--socket", l.socket, "--json")
	if r.code != 0 {
		t.Fatalf("phoneboot status exit %d: %s", r.code, r.stderr)
	}
	var st control.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("phoneboot status --json: %v\n%s", err, r.stdout)
	}
	return st
}

// leases lists the running daemon's leases through the CLI.
func (l *ioLab) leases(t *testing.T) []control.Lease {
	t.Helper()
	r := phoneboot(t, "leases", "--socket", l.socket, "--json")
	if r.code != 0 {
		t.Fatalf("phoneboot leases exit %d: %s", r.code, r.stderr)
	}
	var ls []control.Lease
	if err := json.Unmarshal([]byte(r.stdout), &ls); err != nil {
		t.Fatalf("phoneboot leases --json: %v\n%s", err, r.stdout)
	}
	return ls
}

// ioCounter returns an XDP counter's packets and whether status has it.
func ioCounter(st control.Status, name string) (uint64, bool) {
	for _, c := range st.Counters {
		if c.Name == name {
			return c.Packets, true
		}
	}
	return 0, false
}

// ioProc is a client tool running in a namespace, in a process group of
// its own that is killed when the test ends (with whatever it forked).
type ioProc struct {
	cmd    *exec.Cmd
	out    *syncBuffer // stdout and stderr
	exited chan struct{}
	err    error
}

func ioStart(t *testing.T, ns *vnet.NS, name string, args ...string) *ioProc {
	t.Helper()
	p := &ioProc{out: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(name, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := ns.Do(p.cmd.Start); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	})
	return p
}

// wait waits up to timeout for the process to exit by itself.
func (p *ioProc) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-time.After(timeout):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
		t.Fatalf("%s did not finish within %s; output:\n%s", p.cmd.Path, timeout, p.out.String())
		return nil
	}
}

// ioRun runs a client tool in ns to completion.
func ioRun(t *testing.T, ns *vnet.NS, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	p := ioStart(t, ns, name, args...)
	err := p.wait(t, timeout)
	return p.out.String(), err
}

// ioEnvScript writes a DHCP client hook that saves its environment to
// dir/<event>.env, one file per event (udhcpc's "bound", dhclient's "BOUND").
func ioEnvScript(t *testing.T, dir string) string {
	t.Helper()
	script := filepath.Join(dir, "hook.sh")
	// udhcpc passes the event as $1, dhclient as $reason.
	body := "#!/bin/sh\nev=${1:-$reason}\nenv > '" + dir + "'/\"$ev\".env.tmp && mv '" + dir + "'/\"$ev\".env.tmp '" + dir + "'/\"$ev\".env\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(script, 0o755); err != nil { // past the umask
		t.Fatal(err)
	}
	return script
}

// ioReadEnv parses a file of NAME=value lines.
func ioReadEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	return env
}

// ioLease is what a DHCP client learnt, in the tool's own notation.
type ioLease struct {
	ip, mask, router, dns, domain, lease, serverID, tftp string
}

// check holds the lease to the pool's configuration; tftp is option 150
// as the tool renders it.
func (got ioLease) check(t *testing.T, tool, wantTFTP string) netip.Addr {
	t.Helper()
	ip, err := netip.ParseAddr(got.ip)
	if err != nil || !netip.MustParsePrefix(ioSubnet).Contains(ip) ||
		ip.Less(netip.MustParseAddr(ioRangeStart)) || netip.MustParseAddr(ioRangeEnd).Less(ip) {
		t.Errorf("%s: address %q, want one of %s-%s", tool, got.ip, ioRangeStart, ioRangeEnd)
	}
	for _, c := range []struct{ what, got, want string }{
		{"subnet mask", got.mask, "255.255.0.0"},
		{"router (option 3)", got.router, ioServer},
		{"dns (option 6)", got.dns, ioDNS},
		{"domain (option 15)", got.domain, ioDomain},
		{"lease time (option 51)", got.lease, strconv.Itoa(ioLeaseSecs)},
		{"server id (option 54)", got.serverID, ioServer},
		{"tftp servers (option 150)", got.tftp, wantTFTP},
	} {
		if c.got != c.want {
			t.Errorf("%s: %s %q, want %q", tool, c.what, c.got, c.want)
		}
	}
	return ip
}

// udhcpc runs one busybox udhcpc exchange on eth0 (DISCOVER, REQUEST;
// with requestIP set, option 50 in both) and returns what it was given.
func (l *ioLab) udhcpc(t *testing.T, requestIP string) ioLease {
	t.Helper()
	dir := t.TempDir()
	args := []string{"-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "1", "-O", "150", "-s", ioEnvScript(t, dir)}
	if requestIP != "" {
		args = append(args, "-r", requestIP)
	}
	out, err := ioRun(t, l.client, 20*time.Second, "udhcpc", args...)
	if err != nil {
		t.Fatalf("udhcpc got no lease (%v); output:\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "bound.env")); err != nil {
		t.Fatalf("udhcpc exited without running its script for \"bound\"; output:\n%s", out)
	}
	env := ioReadEnv(t, filepath.Join(dir, "bound.env"))
	t.Logf("udhcpc: %s/%s router %s dns %s domain %s lease %s server %s opt150 %s",
		env["ip"], env["mask"], env["router"], env["dns"], env["domain"], env["lease"], env["serverid"], env["opt150"])
	return ioLease{
		ip: env["ip"], mask: env["subnet"], router: env["router"], dns: env["dns"],
		domain: env["domain"], lease: env["lease"], serverID: env["serverid"],
		tftp: env["opt150"],
	}
}

// udhcpc exposes options it has no name for as optNNN, in hex.
const ioUdhcpcOpt150 = "0a630001" // 10.99.0.1

func ioCheckFastCounters(t *testing.T, l *ioLab, atLeast uint64) {
	t.Helper()
	st := l.status(t)
	for _, name := range []string{"dhcp_fast_offer", "dhcp_fast_ack"} {
		n, ok := ioCounter(st, name)
		if ok {
			t.Logf("XDP counter %s = %d", name, n)
		}
		switch {
		case l.xdp && !ok:
			t.Errorf("status lacks XDP counter %s: %+v", name, st.Counters)
		case l.xdp && n < atLeast:
			t.Errorf("XDP counter %s = %d, want at least %d: the fast path did not answer", name, n, atLeast)
		case !l.xdp && n != 0:
			t.Errorf("XDP counter %s = %d with the fast path off", name, n)
		}
	}
}

// TestInteropUdhcpc: busybox udhcpc gets a lease with every option the
// pool configures, option 150 included.
func TestInteropUdhcpc(t *testing.T) {
	ioNeedTools(t, "udhcpc")
	ioVariants(t, func(t *testing.T, xdp bool) {
		l := newIOLab(t, ioLabOptions{xdp: xdp, detachOnStop: true})
		l.udhcpc(t, "").check(t, "udhcpc", ioUdhcpcOpt150)
		// A new client's DISCOVER and REQUEST are the fast path's to answer.
		ioCheckFastCounters(t, l, 1)
	})
}

// TestInteropDhclient: ISC dhclient gets a lease with every option the
// pool configures, option 150 declared and requested through its config.
func TestInteropDhclient(t *testing.T) {
	ioNeedTools(t, "dhclient")
	ioVariants(t, func(t *testing.T, xdp bool) {
		l := newIOLab(t, ioLabOptions{xdp: xdp, detachOnStop: true})
		dir := t.TempDir()
		conf := filepath.Join(dir, "dhclient.conf")
		err := os.WriteFile(conf, []byte(`
option tftp-servers code 150 = array of ip-address;
request subnet-mask, routers, domain-name-servers, domain-name, tftp-servers;
timeout 15;
retry 1;
initial-interval 1;
`), 0o644)
		if err != nil {
			t.Fatal(err)
		}
		script := ioEnvScript(t, dir)
		// -d keeps it in the foreground (it would daemonize once bound),
		// -1 makes it give up after one try; it is killed once bound.
		p := ioStart(t, l.client, "dhclient", "-4", "-d", "-1", "-v", "-cf", conf, "-sf", script,
			"-lf", filepath.Join(dir, "dhclient.leases"), "-pf", filepath.Join(dir, "dhclient.pid"), "eth0")
		bound := filepath.Join(dir, "BOUND.env")
		deadline := time.Now().Add(20 * time.Second)
		for {
			if _, err := os.Stat(bound); err == nil {
				break
			}
			select {
			case <-p.exited:
				t.Fatalf("dhclient exited without a lease (%v); output:\n%s", p.err, p.out.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("dhclient got no lease in 20s; output:\n%s", p.out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		env := ioReadEnv(t, bound)
		ioLease{
			ip: env["new_ip_address"], mask: env["new_subnet_mask"], router: env["new_routers"],
			dns: env["new_domain_name_servers"], domain: env["new_domain_name"],
			lease: env["new_dhcp_lease_time"], serverID: env["new_dhcp_server_identifier"],
			tftp: env["new_tftp_servers"],
		}.check(t, "dhclient", ioServer)
		if !strings.Contains(p.out.String(), "DHCPACK of "+env["new_ip_address"]+" from "+ioServer) {
			t.Errorf("dhclient output lacks the ACK from %s:\n%s", ioServer, p.out.String())
		}
		ioCheckFastCounters(t, l, 1)
	})
}

// TestInteropTshark: Wireshark's dissector finds nothing wrong in the
// OFFER and ACK udhcpc receives: checksums, lengths, option 150.
func TestInteropTshark(t *testing.T) {
	ioNeedTools(t, "udhcpc", "tshark", "dumpcap")
	ioVariants(t, func(t *testing.T, xdp bool) {
		l := newIOLab(t, ioLabOptions{xdp: xdp, detachOnStop: true})
		pcap := filepath.Join(t.TempDir(), "dhcp.pcapng")
		// Captured by dumpcap, the capture engine tshark itself runs: it
		// starts in a fraction of the time tshark takes to load its
		// dissectors, which on a busy machine is many seconds.
		capture := ioStart(t, l.client, "dumpcap", "-i", "eth0", "-f", "udp port 67 or udp port 68", "-c", "4", "-w", pcap)
		// dumpcap names the file once it has opened the capture socket
		// and the file.
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(capture.out.String(), "File: "+pcap) {
			select {
			case <-capture.exited:
				t.Fatalf("dumpcap exited (%v):\n%s", capture.err, capture.out.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("dumpcap did not start capturing in 10s:\n%s", capture.out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		ip := l.udhcpc(t, "").check(t, "udhcpc", ioUdhcpcOpt150)
		// dumpcap stops by itself after DISCOVER, OFFER, REQUEST and ACK
		// (-c 4). It is not stopped early: libpcap hands the frames over
		// in blocks, and the frames of a block not yet handed over when
		// dumpcap stops are lost.
		select {
		case <-capture.exited:
		case <-time.After(5 * time.Second):
			capture.cmd.Process.Signal(syscall.SIGINT)
			capture.wait(t, 10*time.Second)
		}
		if !strings.Contains(capture.out.String(), "Packets captured: ") {
			t.Fatalf("dumpcap did not finish its capture:\n%s", capture.out.String())
		}

		r := run(t, exec.Command("tshark", "-n", "-r", pcap, "-V",
			"-o", "udp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE"))
		if r.code != 0 {
			t.Fatalf("tshark -r exit %d: %s", r.code, r.stderr)
		}
		frames := ioSplitFrames(r.stdout)
		var offer, ack string
		for _, f := range frames {
			switch {
			case strings.Contains(f, "DHCP: Offer (2)"):
				offer = f
			case strings.Contains(f, "DHCP: ACK (5)"):
				ack = f
			}
		}
		if offer == "" || ack == "" {
			t.Fatalf("capture lacks an OFFER or an ACK (%d frames; dumpcap said: %s):\n%s", len(frames), capture.out.String(), r.stdout)
		}
		for _, c := range []struct{ name, frame string }{{"OFFER", offer}, {"ACK", ack}} {
			for _, want := range []string{
				"Src: " + ioServer + ",",
				"Your (client) IP address: " + ip.String(),
				"Option: (150) TFTP Server Address",
				"TFTP Server Address: " + ioServer,
				"Option: (54) DHCP Server Identifier (" + ioServer + ")",
				"Option: (6) Domain Name Server",
				"Domain Name: " + ioDomain,
				"[Header checksum status: Good]",
				"[Checksum Status: Good]", // UDP
			} {
				if !strings.Contains(c.frame, want) {
					t.Errorf("%s lacks %q:\n%s", c.name, want, c.frame)
				}
			}
		}
		bad := regexp.MustCompile(`(?i)malformed|bad checksum|incorrect|status: bad|\[Expert Info \(Error`)
		for _, line := range strings.Split(r.stdout, "\n") {
			if bad.MatchString(line) {
				t.Errorf("tshark reports a problem: %s", strings.TrimSpace(line))
			}
		}
		if t.Failed() {
			t.Logf("tshark -V:\n%s", r.stdout)
		}
		// In the xdp variant the frames judged are the XDP program's.
		ioCheckFastCounters(t, l, 1)
	})
}

// ioSplitFrames cuts `tshark -V` output into its frames.
func ioSplitFrames(out string) []string {
	var frames []string
	var cur strings.Builder
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "Frame ") && cur.Len() > 0 {
			frames = append(frames, cur.String())
			cur.Reset()
		}
		cur.WriteString(sc.Text())
		cur.WriteByte('\n')
	}
	if cur.Len() > 0 {
		frames = append(frames, cur.String())
	}
	return frames
}

// perfdhcp's final report: a block per exchange, e.g.
//
//	***Statistics for: DISCOVER-OFFER***
//	sent packets: 1000
//	received packets: 1000
//	drops: 0
var ioPerfStat = regexp.MustCompile(`(?m)^(sent packets|received packets|drops): (\d+)$`)

func ioPerfStats(out string) map[string]map[string]int {
	stats := map[string]map[string]int{}
	for _, block := range strings.Split(out, "***Statistics for: ")[1:] {
		name, body, _ := strings.Cut(block, "***")
		m := map[string]int{}
		for _, s := range ioPerfStat.FindAllStringSubmatch(body, -1) {
			m[s[1]], _ = strconv.Atoi(s[2])
		}
		stats[name] = m
	}
	return stats
}

// perfdhcp's clients count up from this MAC.
const ioPerfMACBase = "02:99:00:00:00:00"

// TestInteropPerfdhcp: Kea's perfdhcp runs 1000 DORA exchanges from 1000
// distinct clients at 200/s without a drop.
//
// perfdhcp (v4) is a relay: it binds port 67 of eth0's address and puts
// that address in giaddr, so the server answers it at giaddr:67. The XDP
// fast path passes relayed requests to the Go server by design (it
// answers only a client's own broadcast), so here the fast path only
// counts the frames and both variants are served from userspace.
func TestInteropPerfdhcp(t *testing.T) {
	ioNeedTools(t, "perfdhcp")
	ioVariants(t, func(t *testing.T, xdp bool) {
		l := newIOLab(t, ioLabOptions{xdp: xdp, detachOnStop: true})
		if out, err := ioRun(t, l.client, 5*time.Second, "ip", "addr", "add", ioPerfAddr, "dev", "eth0"); err != nil {
			t.Fatalf("ip addr add: %v\n%s", err, out)
		}
		const clients = 1000
		// "all": broadcast, as a relay that knows no server address would.
		// Unicast to 10.99.0.1 gets nowhere: nothing answers ARP for it.
		// No -D: perfdhcp counts requests still in flight as drops for it,
		// so a busy machine's latency would stop the run early. The drops
		// asserted are the final report's, after -W lets late answers in.
		out, err := ioRun(t, l.client, 30*time.Second, "perfdhcp", "-4", "-l", "eth0",
			"-r", "200", "-R", strconv.Itoa(clients), "-n", strconv.Itoa(clients), "-p", "15",
			"-b", "mac="+ioPerfMACBase, "-W", "1000000", "all")
		if err != nil {
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
				t.Fatalf("perfdhcp: %v\n%s", err, out)
			}
			// 3: some exchanges failed; the figures below say which.
		}
		stats := ioPerfStats(out)
		do, ra := stats["DISCOVER-OFFER"], stats["REQUEST-ACK"]
		if do == nil || ra == nil {
			t.Fatalf("no DISCOVER-OFFER and REQUEST-ACK statistics in perfdhcp's output:\n%s", out)
		}
		t.Logf("perfdhcp: DISCOVER-OFFER %v, REQUEST-ACK %v", do, ra)
		// Catching up after a stall, perfdhcp may send a few DISCOVERs past
		// -n; its client numbers then start over (the same MACs again).
		if do["sent packets"] < clients || do["received packets"] != do["sent packets"] || do["drops"] != 0 {
			t.Errorf("DISCOVER-OFFER %v, want at least %d sent, every one answered, no drops", do, clients)
		}
		// REQUESTs go out for the OFFERs received before the end.
		if ra["sent packets"] < clients*99/100 || ra["received packets"] != ra["sent packets"] || ra["drops"] != 0 {
			t.Errorf("REQUEST-ACK %v, want at least %d sent, every one answered, no drops", ra, clients*99/100)
		}
		if t.Failed() {
			t.Logf("perfdhcp output:\n%s", out)
		}

		// Every ACK is a lease the daemon lists, one per client, each its
		// own address.
		bound := map[string]string{}
		for _, ls := range l.leases(t) {
			if strings.HasPrefix(ls.MAC, ioPerfMACBase[:8]) && ls.State == "bound" {
				if other, dup := bound[ls.IP]; dup {
					t.Errorf("%s is leased to %s and %s", ls.IP, other, ls.MAC)
				}
				bound[ls.IP] = ls.MAC
			}
		}
		acked := min(ra["received packets"], clients)
		repeats := max(do["sent packets"]-clients, 0) // ACKs to a client twice
		if len(bound) > acked || len(bound) < acked-repeats {
			t.Errorf("phoneboot leases lists %d bound perfdhcp clients, want one per client ACKed (%d, %d of them maybe twice)",
				len(bound), acked, repeats)
		}

		st := l.status(t)
		if !l.xdp {
			if len(st.Counters) != 0 {
				t.Errorf("XDP counters with the fast path off: %+v", st.Counters)
			}
			return
		}
		seen, _ := ioCounter(st, "dhcp")
		if seen < uint64(do["sent packets"]+ra["sent packets"]) {
			t.Errorf("XDP counter dhcp = %d, want at least the %d requests perfdhcp sent", seen, do["sent packets"]+ra["sent packets"])
		}
		for _, name := range []string{"dhcp_fast_offer", "dhcp_fast_ack"} {
			if n, ok := ioCounter(st, name); !ok || n != 0 {
				t.Errorf("XDP counter %s = %d (present %t), want 0: relayed requests are the Go server's", name, n, ok)
			}
		}
	})
}

// TestInteropRestartKeepsAnswering: with detach_on_stop off, the pinned
// XDP program keeps answering a bound phone while no daemon runs, and the
// next daemon takes the pins over and persists what the kernel did.
func TestInteropRestartKeepsAnswering(t *testing.T) {
	ioNeedTools(t, "udhcpc")
	l := newIOLab(t, ioLabOptions{xdp: true, detachOnStop: false})
	ip := l.udhcpc(t, "").check(t, "udhcpc", ioUdhcpcOpt150)
	mac := ioClientMAC(t, l).String()
	// The kernel answered; its events reach the store a moment later
	// (read from the ring buffer and committed in groups).
	var before control.Lease
	var ok bool
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		before, ok = ioLeaseOf(l.leases(t), mac)
		if ok && before.State == "bound" || time.Now().After(deadline) {
			break
		}
	}
	if !ok || before.IP != ip.String() || before.State != "bound" {
		t.Fatalf("phoneboot leases has %+v (found %t) for %s 2 s after the ACK, want %s bound", before, ok, mac, ip)
	}

	l.stop(t)
	lnk, err := l.app.Netlink().LinkByName("swp1")
	if err != nil {
		t.Fatal(err)
	}
	if x := lnk.Attrs().Xdp; x == nil || !x.Attached {
		t.Fatal("XDP detached from swp1 by a stop with detach_on_stop false")
	}

	// The daemon is down: the kernel alone answers the same phone.
	downAt := time.Now()
	again := l.udhcpc(t, ip.String())
	if got := again.check(t, "udhcpc with no daemon running", ioUdhcpcOpt150); got != ip {
		t.Fatalf("with no daemon running the phone got %s, want its address %s", got, ip)
	}

	l.start(t)
	st := l.status(t)
	if len(st.Ports) != 1 || st.Ports[0].XDPMode != "native" {
		t.Errorf("after the restart, ports %+v, want swp1 native", st.Ports)
	}
	for _, s := range st.Services {
		if s.State == "failed" || s.State == "stopped" {
			t.Errorf("after the restart, service %s is %s %s", s.Name, s.State, s.Error)
		}
	}
	// The counters are pinned too: both exchanges are in them.
	ioCheckFastCounters(t, l, 2)
	// What the kernel handed out while no daemon ran is in the store now:
	// the phone's lease, renewed by the ACK the kernel sent then.
	after, ok := ioLeaseOf(l.leases(t), mac)
	switch {
	case !ok:
		t.Errorf("after the restart phoneboot leases lacks %s", mac)
	case after.IP != ip.String() || after.State != "bound" || after.Port != "swp1":
		t.Errorf("after the restart the lease of %s is %+v, want %s bound on swp1", mac, after, ip)
	case !after.Expires.After(before.Expires):
		t.Errorf("after the restart the lease of %s still ends %s, as before the stop: the ACK the kernel sent while no daemon ran was not recorded",
			mac, after.Expires)
	case after.Expires.Before(downAt.Add(ioLeaseSecs*time.Second - time.Second)):
		t.Errorf("after the restart the lease of %s ends %s, want about %s (an hour after the ACK sent while no daemon ran)",
			mac, after.Expires, downAt.Add(ioLeaseSecs*time.Second))
	}
	// And the phone gets its address once more.
	if got := l.udhcpc(t, "").check(t, "udhcpc after the restart", ioUdhcpcOpt150); got != ip {
		t.Errorf("after the restart the phone got %s, want its address %s", got, ip)
	}
	l.stop(t)
}

// ioLeaseOf finds a MAC's lease in a listing.
func ioLeaseOf(ls []control.Lease, mac string) (control.Lease, bool) {
	for _, l := range ls {
		if l.MAC == mac {
			return l, true
		}
	}
	return control.Lease{}, false
}

func ioClientMAC(t *testing.T, l *ioLab) net.HardwareAddr {
	t.Helper()
	lnk, err := l.client.Netlink().LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	return lnk.Attrs().HardwareAddr
}
