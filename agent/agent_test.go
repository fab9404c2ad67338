package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/cdp"
	"github.com/phoneboot/phoneboot/userspace/control"
	"github.com/phoneboot/phoneboot/userspace/lldp"
	"github.com/phoneboot/phoneboot/userspace/offload"
	"github.com/phoneboot/phoneboot/userspace/poe"
	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/proxy"
	"github.com/phoneboot/phoneboot/userspace/rawsock"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// The tests run in a network namespace of their own: the registration
// proxy connects to its CallManagers from whichever thread its goroutines
// run on, so its test's loopback addresses must be the process's own.
//
// With proxy.workers above 1 the agent starts this binary again as a proxy
// worker (proxyWorkerCommand), as phoneboot's main would run it.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "proxy-worker" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		err := proxy.RunWorker(ctx)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "proxy worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(privtest.RunInNetNS(m))
}

func testLogger(t *testing.T) *slog.Logger { return privtest.Logger(t) }

// notifyListener collects sd_notify datagrams sent to NOTIFY_SOCKET.
type notifyListener struct {
	mu   sync.Mutex
	msgs []string
	got  chan string
}

func listenNotify(t *testing.T) *notifyListener {
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	n := &notifyListener{got: make(chan string, 100)}
	go func() {
		buf := make([]byte, 1024)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			select {
			case n.got <- string(buf[:k]):
			default:
			}
		}
	}()
	return n
}

func (n *notifyListener) wait(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-n.got:
			n.mu.Lock()
			n.msgs = append(n.msgs, m)
			n.mu.Unlock()
			if m == want {
				return
			}
		case <-deadline:
			t.Fatalf("no sd_notify %q; got %q", want, n.msgs)
		}
	}
}

// agentNet is an appliance namespace with one port, and a phone namespace
// on the other end of it, up on both sides.
type agentNet struct {
	app, phone *vnet.NS
}

func newAgentNet(t *testing.T) *agentNet {
	t.Helper()
	app, phone := privtest.VethPair(t, "swp1", "eth0")
	if err := phone.SetUp("eth0"); err != nil {
		t.Fatal(err)
	}
	return &agentNet{app: app, phone: phone}
}

// run starts an agent with cfg in the appliance namespace; stop ends it
// and checks that it ran and closed cleanly.
func (n *agentNet) run(t *testing.T, cfg Config) (a *Agent, stop func()) {
	t.Helper()
	return startAgent(t, cfg, n.app.Do)
}

// startAgent builds the agent inside do (which places its sockets: a
// namespace's Do, or here) and runs it; stop ends it and checks that it
// ran and closed cleanly.
func startAgent(t *testing.T, cfg Config, do func(func() error) error) (a *Agent, stop func()) {
	t.Helper()
	if err := do(func() (err error) { a, err = New(cfg, testLogger(t)); return err }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	return a, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := a.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
}

// runDir is a root-only directory under /run for the control socket (the
// config refuses /tmp, where t.TempDir lives).
func runDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/run", "phoneboot-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// sendDHCPDiscoverFrame sends a broadcast frame to UDP port 67 out of ifname.
func sendDHCPFrame(ifname string) error { return sendDHCPPayload(ifname, make([]byte, 240)) }

// sendDHCPPayload sends payload as a client's broadcast to UDP port 67.
func sendDHCPPayload(ifname string, payload []byte) error {
	return sendFrame(ifname, dhcpClientFrame(payload))
}

// sendTaggedDHCP sends an empty DHCP payload tagged with vlan.
func sendTaggedDHCP(ifname string, vlan uint16) error {
	f := dhcpClientFrame(make([]byte, 240))
	tagged := append(append(append([]byte(nil), f[:12]...), 0x81, 0x00, byte(vlan>>8), byte(vlan)), f[12:]...)
	return sendFrame(ifname, tagged)
}

func sendFrame(ifname string, frame []byte) error {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6, Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}})
}

// dhcpClientFrame is payload as a client's broadcast to UDP port 67. The
// IPv4 header checksum is filled in: the server checks it.
func dhcpClientFrame(payload []byte) []byte {
	frame := make([]byte, 14+20+8+len(payload))
	copy(frame[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(frame[6:12], []byte{0x00, 0x1e, 0x7a, 0x00, 0x00, 0x01})
	binary.BigEndian.PutUint16(frame[12:], 0x0800)
	ip := frame[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(frame)-14))
	ip[8], ip[9] = 64, 17
	copy(ip[16:20], []byte{255, 255, 255, 255})
	udp := ip[20:]
	binary.BigEndian.PutUint16(udp[0:], 68)
	binary.BigEndian.PutUint16(udp[2:], 67)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	return frame
}

func counter(st control.Status, name string) uint64 {
	for _, c := range st.Counters {
		if c.Name == name {
			return c.Packets
		}
	}
	return 0
}

func TestAgentServes(t *testing.T) {
	n := newAgentNet(t)
	bpffs := privtest.TempBPFFS(t)
	notes := listenNotify(t)
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", "")

	socket := filepath.Join(runDir(t), "control.sock")
	cfgText := `
control: {socket: ` + socket + `}
metrics: {listen: "127.0.0.1:19617"}
fastpath: {xdp_mode: auto, pin_dir: ` + bpffs + `/phoneboot}
ports: [{name: swp1}]
`
	cfg, err := ParseConfig("test.yaml", []byte(cfgText))
	if err != nil {
		t.Fatal(err)
	}

	var a *Agent
	if err := n.app.Do(func() (err error) { a, err = New(cfg, testLogger(t)); return err }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	notes.wait(t, "READY=1")
	notes.wait(t, "WATCHDOG=1")

	// The socket is private to root.
	st, err := os.Stat(socket)
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm != 0o600 {
		t.Errorf("control socket mode %o, want 600", perm)
	}

	client := control.NewClient(socket)
	status, err := client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if status.Version != Version || status.PID != os.Getpid() {
		t.Errorf("status version/pid = %q/%d", status.Version, status.PID)
	}
	if len(status.Ports) != 1 || status.Ports[0].Name != "swp1" || status.Ports[0].XDPMode != "native" || status.Ports[0].Ifindex == 0 {
		t.Errorf("ports = %+v, want swp1 attached natively (veth supports it)", status.Ports)
	}
	wantServices := []string{"fastpath", "discovery", "control", "metrics"}
	if len(status.Services) != len(wantServices) {
		t.Fatalf("services = %+v", status.Services)
	}
	for i, s := range status.Services {
		if s.Name != wantServices[i] || s.State != "running" {
			t.Errorf("service %d = %+v, want %s running", i, s, wantServices[i])
		}
	}

	before := counter(status, "dhcp")
	if err := n.phone.Do(func() error { return sendDHCPFrame("eth0") }); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for counter(status, "dhcp") != before+1 {
		if time.Now().After(deadline) {
			t.Fatalf("dhcp counter %d, want %d", counter(status, "dhcp"), before+1)
		}
		time.Sleep(20 * time.Millisecond)
		if status, err = client.Status(context.Background()); err != nil {
			t.Fatal(err)
		}
	}

	body := scrapeMetrics(t, n.app, "127.0.0.1:19617")
	for _, want := range []string{
		`phoneboot_xdp_attached{mode="native",port="swp1"} 1`,
		`phoneboot_xdp_packets_total{counter="dhcp"} 1`,
		`phoneboot_service_up{service="control"} 1`,
		`phoneboot_build_info{version="` + Version + `"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	notes.wait(t, "STOPPING=1")
	if err := a.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Errorf("control socket left behind: %v", err)
	}
}

// TestAgentAppliesVLANs starts the agent with a voice VLAN on its port, then
// again without: the first run's policy drops a foreign tag, and the second
// run removes the policy the pinned maps kept.
func TestAgentAppliesVLANs(t *testing.T) {
	n := newAgentNet(t)
	bpffs := privtest.TempBPFFS(t)
	socket := filepath.Join(runDir(t), "control.sock")
	run := func(ports string, send func() error, wantDrops uint64) {
		t.Helper()
		cfg, err := ParseConfig("test.yaml", []byte(`
control: {socket: `+socket+`}
metrics: {listen: ""}
fastpath: {xdp_mode: native, pin_dir: `+bpffs+`/phoneboot}
ports: [`+ports+`]
`))
		if err != nil {
			t.Fatal(err)
		}
		_, stop := n.run(t, cfg)
		defer stop()
		client := control.NewClient(socket)
		read := func() uint64 {
			st, err := client.Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			return counter(st, "vlan_hop_drop")
		}
		before := read()
		if err := n.phone.Do(send); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for read()-before != wantDrops && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond)
		if got := read() - before; got != wantDrops {
			t.Errorf("ports [%s]: vlan_hop_drop moved by %d, want %d", ports, got, wantDrops)
		}
	}
	twice := func() error {
		return errors.Join(sendTaggedDHCP("eth0", 300), sendTaggedDHCP("eth0", 100))
	}
	var rx, tx bool
	offloadOf := func() {
		t.Helper()
		if err := n.app.Do(func() (err error) { rx, tx, err = offload.VLAN("swp1"); return err }); err != nil {
			t.Fatal(err)
		}
	}
	if offloadOf(); !rx || !tx {
		t.Fatalf("veth VLAN offload rx=%v tx=%v before the test, want on (the kernel default)", rx, tx)
	}
	run("{name: swp1, voice_vlan: 100}", twice, 1)
	if offloadOf(); rx || tx {
		t.Errorf("VLAN offload rx=%v tx=%v on a port with VLANs, want off", rx, tx)
	}
	run("{name: swp1}", twice, 0)
}

func TestAgentRefusesSocketInUse(t *testing.T) {
	privtest.Require(t)
	socket := filepath.Join(runDir(t), "control.sock")
	cfg := DefaultConfig()
	cfg.Control.Socket = socket
	cfg.Metrics.Listen = ""
	first, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	go first.Run(t.Context())
	_, err = New(cfg, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second agent on the same socket: %v, want an in-use error", err)
	}
}

func TestAgentFailsCleanlyOnMissingPort(t *testing.T) {
	n := newAgentNet(t)
	bpffs := privtest.TempBPFFS(t)
	cfg := DefaultConfig()
	cfg.Control.Socket = filepath.Join(runDir(t), "control.sock")
	cfg.Metrics.Listen = ""
	cfg.FastPath.PinDir = bpffs + "/phoneboot"
	cfg.Ports = []PortConfig{{Name: "swp1"}, {Name: "swp9"}}
	err := n.app.Do(func() error { _, err := New(cfg, testLogger(t)); return err })
	if err == nil || !strings.Contains(err.Error(), "swp9") {
		t.Fatalf("New with a missing port: %v, want an error naming swp9", err)
	}
	// Nothing stays attached to the port that did exist.
	l, lerr := n.app.Netlink().LinkByName("swp1")
	if lerr != nil {
		t.Fatal(lerr)
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		t.Errorf("xdp still attached to swp1 after a failed start")
	}
	if _, err := os.Stat(cfg.Control.Socket); !os.IsNotExist(err) {
		t.Errorf("control socket created although start failed")
	}
}

func TestAgentDHCPLeasesAndMetrics(t *testing.T) {
	n := newAgentNet(t)
	socket := filepath.Join(runDir(t), "control.sock")
	cfg, err := ParseConfig("test.yaml", []byte(`
control: {socket: `+socket+`}
metrics: {listen: "127.0.0.1:19619"}
fastpath: {enabled: false}
ports: [{name: swp1}]
dhcp:
  enabled: true
  lease_db: ""
  pools:
    - {name: phones, subnet: 10.5.0.0/24, range_start: 10.5.0.10, range_end: 10.5.0.20, server_ip: 10.5.0.1, tftp_servers: [10.5.0.1]}
`))
	if err != nil {
		t.Fatal(err)
	}
	_, stop := n.run(t, cfg)
	defer stop()

	hw := net.HardwareAddr{0x00, 0x1e, 0x7a, 0x00, 0x00, 0x01}
	disc, err := dhcpv4.NewDiscovery(hw, dhcpv4.WithOption(dhcpv4.OptHostName("SEP\xff")))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.phone.Do(func() error { return sendDHCPPayload("eth0", disc.ToBytes()) }); err != nil {
		t.Fatal(err)
	}
	client := control.NewClient(socket)
	var ls []control.Lease
	deadline := time.Now().Add(5 * time.Second)
	for len(ls) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		if ls, err = client.Leases(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if len(ls) != 1 || ls[0].MAC != hw.String() || ls[0].State != "offered" || ls[0].IP != "10.5.0.10" || ls[0].Port != "swp1" {
		t.Fatalf("leases = %+v, want one offered lease for %s on swp1", ls, hw)
	}
	if ls[0].Hostname != `"SEP\xff"` {
		t.Errorf("hostname %q: bytes that are not plain text must come out escaped", ls[0].Hostname)
	}
	body := scrapeMetrics(t, n.app, "127.0.0.1:19619")
	for _, want := range []string{
		`phoneboot_dhcp_received_total{type="discover"} 1`,
		`phoneboot_dhcp_sent_total{type="offer"} 1`,
		`phoneboot_dhcp_pool_addresses{pool="phones",state="assigned"} 1`,
		`phoneboot_dhcp_pool_addresses{pool="phones",state="total"} 11`,
		`phoneboot_service_up{service="dhcp"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// scrapeMetrics fetches /metrics from a listener inside ns (nil: here).
// It dials there itself: the HTTP transport dials on goroutines of its
// own, outside Do.
func scrapeMetrics(t *testing.T, ns *vnet.NS, addr string) string {
	t.Helper()
	var conn net.Conn
	dial := func() (err error) { conn, err = net.Dial("tcp", addr); return err }
	var err error
	if ns == nil {
		err = dial()
	} else {
		err = ns.Do(dial)
	}
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) { return conn, nil },
	}}
	resp, err := hc.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestAgentDiscovery: a phone on the port asks for its voice VLAN over CDP
// and gets it, shows up in the neighbours, and from then on is known to the
// data path as a phone (its untagged frames go into the voice VLAN).
func TestAgentDiscovery(t *testing.T) {
	n := newAgentNet(t)
	bpffs := privtest.TempBPFFS(t)
	socket := filepath.Join(runDir(t), "control.sock")
	cfg, err := ParseConfig("test.yaml", []byte(`
control: {socket: `+socket+`}
metrics: {listen: ""}
fastpath: {xdp_mode: native, pin_dir: `+bpffs+`/phoneboot}
ports: [{name: swp1, voice_vlan: 100, auto_voice: true}]
discovery: {device_id: testswitch}
`))
	if err != nil {
		t.Fatal(err)
	}
	// Listening before the agent starts: its first LLDP advertisement
	// goes out at start, the next a minute later.
	var lldpConn *rawsock.Conn
	if err := n.phone.Do(func() (err error) {
		lldpConn, err = rawsock.Listen("eth0", rawsock.Options{Filter: lldp.Filter()})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer lldpConn.Close()
	a, stop := n.run(t, cfg)
	defer stop()

	var conn *rawsock.Conn
	if err := n.phone.Do(func() (err error) {
		conn, err = rawsock.Listen("eth0", rawsock.Options{Filter: cdp.Filter()})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	mac := net.HardwareAddr{0x00, 0x1e, 0x7a, 0x00, 0x00, 0x01} // sendDHCPFrame's source
	frame, err := cdp.PhoneAdvertisement(cdp.PhoneConfig{MAC: mac, DeviceID: "SEP001E7A000001", PortID: "Port 1", Platform: "Cisco IP Phone 8845"}).AppendFrame(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.phone.Do(func() error { return sendFrame("eth0", frame) }); err != nil {
		t.Fatal(err)
	}
	// The start advertisement may come first; the reply follows at once.
	buf := make([]byte, 2048)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var reply *cdp.Message
	for reply == nil {
		f, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no CDP from the switch: %v", err)
		}
		m, err := cdp.Decode(f.Data)
		if err != nil {
			t.Fatal(err)
		}
		if m.DeviceID != "testswitch" || m.VoIPVLANReply == nil || m.VoIPVLANReply.VLAN != 100 {
			t.Fatalf("CDP from the switch: device %q voice %+v, want testswitch and VLAN 100", m.DeviceID, m.VoIPVLANReply)
		}
		if a.discovery.Stats().ImmediateReplies > 0 {
			reply = m
		}
	}

	// LLDP-MED announces the voice VLAN CDP does, from the same setting.
	lldpConn.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := lldpConn.Read(buf)
	if err != nil {
		t.Fatalf("no LLDP from the switch: %v", err)
	}
	lm, err := lldp.Decode(f.Data)
	if err != nil {
		t.Fatal(err)
	}
	if pol, ok := lm.Policy(lldp.AppVoice); !ok || pol.Unknown || !pol.Tagged || pol.VLAN != reply.VoIPVLANReply.VLAN || pol.Priority != 5 {
		t.Errorf("LLDP-MED voice policy %+v (present %v), want tagged VLAN %d priority 5 as in CDP", pol, ok, reply.VoIPVLANReply.VLAN)
	}

	client := control.NewClient(socket)
	ns, err := client.Neighbors(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ns) != 1 || ns[0].DeviceID != "SEP001E7A000001" || ns[0].Port != "swp1" || ns[0].Protocol != "cdp" || !ns[0].VoiceVLANQuery {
		t.Errorf("neighbours: %+v", ns)
	}

	// Untagged DHCP from the phone now goes into the voice VLAN.
	st, err := client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	before := counter(st, "vlan_auto_voice")
	if err := n.phone.Do(func() error { return sendDHCPFrame("eth0") }); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for counter(st, "vlan_auto_voice") == before {
		if time.Now().After(deadline) {
			t.Fatal("the phone's untagged frame was not put in the voice VLAN")
		}
		time.Sleep(20 * time.Millisecond)
		if st, err = client.Status(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAgentPower: the lab PSE powers the port through the power manager;
// a phone's CDP power request is granted within the budget and refused
// past it; the control API and the metrics show it; an operator's change
// is kept in the state file.
func TestAgentPower(t *testing.T) {
	n := newAgentNet(t)
	dir := runDir(t)
	socket := filepath.Join(dir, "control.sock")
	state := filepath.Join(dir, "poe-state.json")
	cfg, err := ParseConfig("test.yaml", []byte(`
control: {socket: `+socket+`}
metrics: {listen: "127.0.0.1:19620"}
fastpath: {enabled: false}
discovery: {lldp: false}
ports: [{name: swp1, lab: {netns: `+n.phone.Name+`, link: eth0, class: 2}}]
power:
  backend: lab
  budget_mw: 20000
  detect_delay: 10ms
  poll_interval: 100ms
  state_file: `+state+`
`))
	if err != nil {
		t.Fatal(err)
	}
	_, stop := n.run(t, cfg)
	defer stop()
	client := control.NewClient(socket)
	ctx := context.Background()
	var st control.PoEStatus
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if st, err = client.PoE(ctx); err != nil {
			t.Fatal(err)
		}
		if len(st.Ports) == 1 && st.Ports[0].State == "delivering" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("swp1 never delivering: %+v", st)
		}
	}
	if p := st.Ports[0]; p.Class != 2 || p.PowerMW != 6490 || p.AllocatedMW != 7000 || st.BudgetMW != 20000 {
		t.Errorf("PoE status %+v", st)
	}

	var conn *rawsock.Conn
	if err := n.phone.Do(func() (err error) {
		conn, err = rawsock.Listen("eth0", rawsock.Options{Filter: cdp.Filter()})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	mac := net.HardwareAddr{0x00, 0x1e, 0x7a, 0x00, 0x00, 0x02}
	ask := func(id uint16, mw uint32) *cdp.PowerAvailable {
		t.Helper()
		frame, err := cdp.PhoneAdvertisement(cdp.PhoneConfig{MAC: mac, DeviceID: "SEP001E7A000002", PortID: "Port 1",
			PowerRequested: &cdp.PowerRequest{RequestID: id, ManagementID: 1, MilliWatts: []uint32{mw}}}).AppendFrame(nil)
		if err != nil {
			t.Fatal(err)
		}
		// Sent again every half second, as a phone does, should a frame
		// be lost on a machine busy with other tests' storms (the veth
		// backlog is per CPU); a repeat is answered, not decided again.
		buf := make([]byte, 2048)
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if err := n.phone.Do(func() error { return sendFrame("eth0", frame) }); err != nil {
				t.Fatal(err)
			}
			conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			for {
				f, err := conn.Read(buf)
				if err != nil {
					break
				}
				if m, err := cdp.Decode(f.Data); err == nil && m.PowerAvailable != nil && m.PowerAvailable.RequestID == id {
					return m.PowerAvailable
				}
			}
		}
		t.Fatalf("no answer to power request %d", id)
		return nil
	}
	if pa := ask(1, 12950); pa.MilliWatts != 12950 {
		t.Errorf("12.95 W within a 20 W budget: Power Available %d mW", pa.MilliWatts)
	}
	if pa := ask(2, 25500); pa.MilliWatts != 12950 {
		t.Errorf("25.5 W past the budget: Power Available %d mW, want the 12950 granted before", pa.MilliWatts)
	}
	body := scrapeMetrics(t, n.app, "127.0.0.1:19620")
	for _, want := range []string{
		"phoneboot_poe_budget_watts 20\n",
		"phoneboot_poe_allocated_watts 12.95\n",
		"phoneboot_poe_budget_remaining_watts 7.05\n",
		"phoneboot_poe_drawn_watts 6.49\n",
		`phoneboot_poe_port_state{port="swp1",state="delivering"} 1`,
		`phoneboot_poe_port_state{port="swp1",state="fault"} 0`,
		`phoneboot_poe_port_held{port="swp1"} 0`,
		`phoneboot_poe_power_requests_total{result="granted"} 1`,
		`phoneboot_poe_power_requests_total{result="refused"} 1`,
		`phoneboot_service_load{signal="dhcp_backlog"} 0`,
		`phoneboot_poe_port_delivering{port="swp1"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	p, err := client.PoEAction(ctx, "swp1", control.PoEDisable, "")
	if err != nil {
		t.Fatal(err)
	}
	if p.State != "disabled" || p.Enabled || p.AllocatedMW != 0 {
		t.Errorf("after disable: %+v", p)
	}
	if data, err := os.ReadFile(state); err != nil || !strings.Contains(string(data), `"swp1"`) {
		t.Errorf("state file after disable: %s, %v", data, err)
	}
	if _, err := client.PoEAction(ctx, "swp9", control.PoEEnable, ""); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("enable of an unmanaged port: %v, want 404", err)
	}
	if _, err := client.PoEAction(ctx, "swp1", control.PoEPriority, "urgent"); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("a bad priority: %v, want 400", err)
	}
}

// TestAgentFastPoE: with power.fast_poe the port is powered from New on,
// before Run; without it, not until Run.
func TestAgentFastPoE(t *testing.T) {
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("fast_poe=%v", fast), func(t *testing.T) {
			n := newAgentNet(t)
			cfg, err := ParseConfig("test.yaml", []byte(fmt.Sprintf(`
control: {socket: %s}
metrics: {listen: ""}
fastpath: {enabled: false}
discovery: {lldp: false, cdp: false}
ports: [{name: swp1, lab: {netns: %s, link: eth0, class: 2}}]
power: {backend: lab, detect_delay: 10ms, poll_interval: 100ms, state_file: "", fast_poe: %v}
`, filepath.Join(runDir(t), "control.sock"), n.phone.Name, fast)))
			if err != nil {
				t.Fatal(err)
			}
			var a *Agent
			if err := n.app.Do(func() (err error) { a, err = New(cfg, testLogger(t)); return err }); err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			delivering := func() bool { return a.power.Status().Ports[0].State == poe.StateDelivering }
			// Unpowered, the lab PSE would detect the phone within its 10 ms
			// detect_delay of an enable; half a second shows there was none.
			wait := 500 * time.Millisecond
			if fast {
				wait = 5 * time.Second
			}
			deadline := time.Now().Add(wait)
			for !delivering() && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if delivering() != fast {
				t.Fatalf("before Run: delivering %v, want %v", delivering(), fast)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			for deadline := time.Now().Add(5 * time.Second); !delivering(); time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("not delivering after Run")
				}
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
}
