package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/cmsim"
	"github.com/phoneboot/phoneboot/userspace/control"
	"github.com/phoneboot/phoneboot/userspace/sccp"
)

// cnfMember is a CallManager of a generated SEP<MAC>.cnf.xml.
type cnfMember struct {
	Host     string `xml:"callManager>processNodeName"`
	SCCPPort int    `xml:"callManager>ports>ethernetPhonePort"`
	SIPPort  int    `xml:"callManager>ports>sipPort"`
}

// cnfMembers reads the CallManager group out of a phone's file, as the
// phone does.
func cnfMembers(t *testing.T, data []byte) []cnfMember {
	t.Helper()
	var d struct {
		Members []cnfMember `xml:"devicePool>callManagerGroup>members>member"`
	}
	if err := xml.Unmarshal(data, &d); err != nil {
		t.Fatalf("the phone's file is not XML: %v\n%s", err, data)
	}
	return d.Members
}

// TestServeProxy runs `phoneboot serve` with the registration proxy and
// provisioning on: each phone's file names the proxy at the appliance's
// address in the phone's subnet; a simulated SCCP phone that registers
// where its file says reaches a CallManager through the proxy, and
// `phoneboot registrations` lists it. With proxy.enabled off and nothing
// else changed, the files name the CallManagers themselves.
func TestServeProxy(t *testing.T) {
	ioNeedTools(t, "curl")
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	config := func(proxyOn bool) string {
		return fmt.Sprintf(`
provision:
  enabled: true
  root: %s
  callmanager_groups: [{name: main, members: [{host: 10.99.0.10, priority: 0}, {host: 10.99.0.11, priority: 1}]}]
  phones:
    - {mac: 00:1e:7a:12:34:56, model: CP-7841, protocol: SCCP}
    - {mac: 00:1e:7a:12:34:57, model: CP-8851, protocol: SIP, lines: [{number: "1001"}]}
tftp: {listen: ["%s:69"]}
http: {listen: "%s:6970"}
proxy:
  enabled: %t
  listeners:
    - {protocol: sccp, listen: "0.0.0.0:2000", upstream_port: 12000}
    - {protocol: sip, listen: "0.0.0.0:5060", upstream_port: 15060}
  callmanagers: [{name: cm1, host: 127.0.0.1}, {name: cm2, host: 127.0.0.2}]
  health: {interval: 500ms, timeout: 400ms, fall: 2}
`, root, ioServer, ioServer, proxyOn)
	}
	l := newIOLab(t, ioLabOptions{clientAddr: "10.99.0.2", extra: config(true)})

	// The CallManagers, beside the daemon in the appliance's namespace.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	var cms []*cmsim.Server
	for i, addr := range []string{"127.0.0.1:12000", "127.0.0.2:12000"} {
		var s *cmsim.Server
		err := l.app.Do(func() (err error) {
			s, err = cmsim.New(cmsim.Config{Name: fmt.Sprintf("cm%d", i+1), Addr: addr, KeepAlive: 2 * time.Second}, slog.New(slog.DiscardHandler))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); s.Run(ctx) }()
		cms = append(cms, s)
	}

	fetch := func(name string) []byte {
		t.Helper()
		out, err := ioRun(t, l.client, 20*time.Second, "curl", "-sS", "-f", "http://"+ioServer+":6970/"+name)
		if err != nil {
			t.Fatalf("curl %s: %v\n%s\n%s", name, err, out, l.daemon.logs.String())
		}
		return []byte(out)
	}
	sccpFile, sipFile := fetch("SEP001E7A123456.cnf.xml"), fetch("SEP001E7A123457.cnf.xml")
	if got, want := cnfMembers(t, sccpFile), []cnfMember{{Host: ioServer, SCCPPort: 2000}}; !equalMembers(got, want) {
		t.Fatalf("SCCP phone's group with the proxy on: %+v, want only the proxy %+v", got, want)
	}
	if got, want := cnfMembers(t, sipFile), []cnfMember{{Host: ioServer, SIPPort: 5060}}; !equalMembers(got, want) {
		t.Errorf("SIP phone's group with the proxy on: %+v, want only the proxy %+v", got, want)
	}

	// A phone registers where its file says, from its own namespace.
	m := cnfMembers(t, sccpFile)[0]
	registered := make(chan struct{}, 16)
	phone, err := cmsim.NewPhone(cmsim.PhoneConfig{
		Register: sccp.Register{DeviceName: "SEP001E7A123456", Instance: 1, StationIP: netip.MustParseAddr("10.99.0.2"),
			DeviceType: 622, MaxStreams: 5, ProtocolVersion: 20, LoadInfo: "sip78xx.14-2-1-0001-14", BodyLen: sccp.RegisterLoadBody},
		Servers: []string{net.JoinHostPort(m.Host, fmt.Sprint(m.SCCPPort))},
		Dial: func(ctx context.Context, addr string) (c net.Conn, err error) {
			err = l.client.Do(func() (err error) { var d net.Dialer; c, err = d.DialContext(ctx, "tcp", addr); return err })
			return c, err
		},
		RetryDelay: 100 * time.Millisecond,
		OnEvent: func(ev cmsim.PhoneEvent) {
			if ev.Kind == cmsim.EventRegistered {
				select {
				case registered <- struct{}{}:
				default:
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	phoneCtx, phoneStop := context.WithCancel(ctx)
	phoneDone := make(chan struct{})
	go func() { defer close(phoneDone); phone.Run(phoneCtx) }()
	defer func() { phoneStop(); <-phoneDone }()
	select {
	case <-registered:
	case <-time.After(30 * time.Second):
		t.Fatalf("the phone did not register through the proxy: %+v; log:\n%s", phone.State(), l.daemon.logs.String())
	}
	if cms[0].Registered() != 1 {
		t.Fatalf("cm1 has %d registered, want the phone", cms[0].Registered())
	}

	// `phoneboot registrations`: a table, and the JSON with --json.
	var rows []control.Registration
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := phoneboot(t, "registrations", "--socket", l.socket, "--json")
		if r.code != 0 {
			t.Fatalf("phoneboot registrations --json exit %d: %s", r.code, r.stderr)
		}
		if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
			t.Fatalf("phoneboot registrations --json: %v\n%s", err, r.stdout)
		}
		if len(rows) == 1 && rows[0].State == "registered" || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(rows) != 1 || rows[0].Device != "SEP001E7A123456" || rows[0].CallManager != "cm1" || rows[0].Protocol != "sccp" ||
		rows[0].State != "registered" || !strings.HasPrefix(rows[0].Phone, "10.99.0.2:") {
		t.Fatalf("registrations: %+v", rows)
	}
	r := phoneboot(t, "registrations", "--socket", l.socket)
	if r.code != 0 {
		t.Fatalf("phoneboot registrations exit %d: %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "DEVICE PHONE CALLMANAGER PROTO STATE SINCE AOR CONTACT" {
		t.Fatalf("phoneboot registrations:\n%s", r.stdout)
	}
	f := strings.Fields(lines[1])
	since := rows[0].Since.Local().Format(time.DateTime)
	if want := []string{"SEP001E7A123456", rows[0].Phone, "cm1", "sccp", "registered"}; len(f) != 9 ||
		strings.Join(f[:5], " ") != strings.Join(want, " ") || f[5]+" "+f[6] != since || f[7] != "-" || f[8] != "-" {
		t.Errorf("row %q, want %v and %s", lines[1], want, since)
	}

	// SIGTERM: a clean stop with the phone's session open.
	l.stop(t)

	// The same config with the proxy off: the files name the CallManagers.
	if err := os.WriteFile(l.config, []byte(strings.Replace(readFile(t, l.config), "enabled: true\n  listeners:", "enabled: false\n  listeners:", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	l.start(t)
	direct := []cnfMember{{Host: "10.99.0.10", SCCPPort: 2000}, {Host: "10.99.0.11", SCCPPort: 2000}}
	if got := cnfMembers(t, fetch("SEP001E7A123456.cnf.xml")); !equalMembers(got, direct) {
		t.Errorf("SCCP phone's group with the proxy off: %+v, want %+v", got, direct)
	}
	r = phoneboot(t, "registrations", "--socket", l.socket)
	if r.code == 0 || !strings.Contains(r.stderr, "the registration proxy is not enabled") {
		t.Errorf("registrations with the proxy off: exit %d, %q", r.code, r.stderr)
	}
}

func equalMembers(a, b []cnfMember) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestPrintRegistrations(t *testing.T) {
	since := time.Date(2026, 12, 1, 9, 30, 5, 0, time.Local)
	var buf bytes.Buffer
	err := printRegistrations(&buf, []control.Registration{
		{Device: "SEP001E7A000001", Phone: "10.64.0.20:51000", CallManager: "pub", Protocol: "sccp", State: "registered", Since: since},
		{Phone: "10.64.0.21:40000", CallManager: "sub1", Protocol: "sccp-tls", State: "connected", Since: since},
		{Phone: "[2001:db8::5]:40001", Protocol: "sip", State: "reading", Since: since},
		{Device: "SEP001B54ABCDEF", Phone: "10.64.0.23:51515", CallManager: "pub", Protocol: "sip", State: "registered", Since: since,
			AOR: "sip:4001@10.1.1.1", Contact: "sip:4001@10.64.0.23:51515;transport=tcp"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `DEVICE           PHONE                CALLMANAGER  PROTO     STATE       SINCE                AOR                CONTACT
SEP001E7A000001  10.64.0.20:51000     pub          sccp      registered  2026-12-01 09:30:05  -                  -
-                10.64.0.21:40000     sub1         sccp-tls  connected   2026-12-01 09:30:05  -                  -
-                [2001:db8::5]:40001  -            sip       reading     2026-12-01 09:30:05  -                  -
SEP001B54ABCDEF  10.64.0.23:51515     pub          sip       registered  2026-12-01 09:30:05  sip:4001@10.1.1.1  sip:4001@10.64.0.23:51515;transport=tcp
`
	if buf.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", buf.String(), want)
	}
	buf.Reset()
	if err := printRegistrations(&buf, nil); err != nil || buf.String() != "DEVICE  PHONE  CALLMANAGER  PROTO  STATE  SINCE  AOR  CONTACT\n" {
		t.Errorf("empty table: %q %v", buf.String(), err)
	}
}

func TestPrintLeasesAndNeighbors(t *testing.T) {
	at := time.Date(2026, 12, 1, 9, 30, 5, 0, time.Local)
	var buf bytes.Buffer
	if err := printLeases(&buf, []control.Lease{
		{IP: "10.64.0.20", MAC: "00:1e:7a:00:00:01", Pool: "voice", VLAN: 100, State: "bound", Expires: at, Port: "swp1", Hostname: "SEP001E7A000001"},
		{IP: "10.64.0.21", MAC: "00:1e:7a:00:00:02", Pool: "voice", VLAN: 100, State: "offered", Expires: at, Hostname: `"\x00odd"`},
	}); err != nil {
		t.Fatal(err)
	}
	want := `IP          MAC                POOL   VLAN  STATE    EXPIRES              PORT  HOSTNAME
10.64.0.20  00:1e:7a:00:00:01  voice  100   bound    2026-12-01 09:30:05  swp1  SEP001E7A000001
10.64.0.21  00:1e:7a:00:00:02  voice  100   offered  2026-12-01 09:30:05        "\x00odd"
`
	if buf.String() != want {
		t.Errorf("leases:\n%s\nwant:\n%s", buf.String(), want)
	}
	buf.Reset()
	if err := printNeighbors(&buf, []control.Neighbor{
		{Port: "swp1", Protocol: "cdp", DeviceID: "SEP001E7A000001", Platform: "Cisco IP Phone 8845", MAC: "00:1e:7a:00:00:01",
			Addresses: []string{"10.64.0.20", "10.64.0.21"}, PortID: "Port 1", PowerRequestedMW: 12950, Expires: at},
		{Port: "swp2", Protocol: "lldp", DeviceID: "SEP001E7A000002", MAC: "00:1e:7a:00:00:02", Expires: at},
	}); err != nil {
		t.Fatal(err)
	}
	want = `PORT  PROTO  DEVICE ID        PLATFORM             MAC                ADDRESSES              THEIR PORT  POWER W  EXPIRES
swp1  cdp    SEP001E7A000001  Cisco IP Phone 8845  00:1e:7a:00:00:01  10.64.0.20,10.64.0.21  Port 1      12.95    09:30:05
swp2  lldp   SEP001E7A000002                       00:1e:7a:00:00:02                                     -        09:30:05
`
	if buf.String() != want {
		t.Errorf("neighbours:\n%s\nwant:\n%s", buf.String(), want)
	}
}
