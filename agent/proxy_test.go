package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/cmsim"
	"github.com/phoneboot/phoneboot/userspace/control"
	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/proxy"
	"github.com/phoneboot/phoneboot/userspace/sccp"
)

// metricValue is the value of one series in a scrape, or -1 when absent.
func metricValue(body, series string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return -1
	}
	return v
}

// waitUntil polls cond until it holds or the deadline passes; the
// deadline is generous, for a loaded machine.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAgentProxy runs the daemon with its proxy section in front of two
// simulated CallManagers: a simulated SCCP phone registers through it,
// shows in the control API and the metrics, and moves to the secondary
// when the primary stops; stopping the daemon closes the listener.
func TestAgentProxy(t *testing.T) {
	privtest.RequireNetNS(t)
	notes := listenNotify(t)
	const (
		proxyIP = "127.77.0.1"
		metrics = proxyIP + ":9617"
	)
	var cms []*cmsim.Server
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i := range 2 {
		s, err := cmsim.New(cmsim.Config{Name: fmt.Sprintf("cm%d", i+1), Addr: fmt.Sprintf("127.77.1.%d:2000", i+1),
			KeepAlive: 2 * time.Second}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); s.Run(ctx) }()
		cms = append(cms, s)
	}

	socket := filepath.Join(runDir(t), "control.sock")
	cfg, err := ParseConfig("test.yaml", []byte(`
control: {socket: `+socket+`}
metrics: {listen: "`+metrics+`"}
fastpath: {enabled: false}
proxy:
  enabled: true
  listeners:
    - {protocol: sccp, listen: "`+proxyIP+`:2000"}
    - {protocol: sip, listen: "`+proxyIP+`:5060"}
  callmanagers:
    - {name: cm1, host: 127.77.1.1}
    - {name: cm2, host: 127.77.1.2}
  health: {interval: 500ms, timeout: 400ms, rise: 2, fall: 2}
  failback: {enabled: false}
`))
	if err != nil {
		t.Fatal(err)
	}
	_, stop := startAgent(t, cfg, func(f func() error) error { return f() })
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()
	notes.wait(t, "READY=1")
	client := control.NewClient(socket)
	st, err := client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range st.Services {
		names = append(names, s.Name+":"+s.State)
	}
	if got := strings.Join(names, " "); got != "proxy:running control:running metrics:running" {
		t.Errorf("services %s", got)
	}

	// Never blocks the phone: once the daemon stops, it fails every
	// retry.
	events := make(chan cmsim.PhoneEvent, 256)
	const device = "SEP001E7A000042"
	phone, err := cmsim.NewPhone(cmsim.PhoneConfig{
		Register: sccp.Register{DeviceName: device, Instance: 1, StationIP: netip.MustParseAddr("10.64.0.42"),
			DeviceType: 115, MaxStreams: 5, ProtocolVersion: 11, LoadInfo: "SCCP41.9-4-2SR3-1S", BodyLen: sccp.RegisterLoadBody},
		Servers:    []string{proxyIP + ":2000"},
		RetryDelay: 100 * time.Millisecond,
		OnEvent: func(ev cmsim.PhoneEvent) {
			select {
			case events <- ev:
			default:
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
	next := func(want cmsim.EventKind) cmsim.PhoneEvent {
		t.Helper()
		for {
			select {
			case ev := <-events:
				if ev.Kind == want {
					return ev
				}
				t.Logf("phone: %s %v", ev.Kind, ev.Err)
			case <-time.After(30 * time.Second):
				t.Fatalf("phone: no %s event", want)
			}
		}
	}
	next(cmsim.EventRegistered)
	if cms[0].Registered() != 1 || cms[1].Registered() != 0 {
		t.Fatalf("registered on cm1 %d, cm2 %d; want the primary", cms[0].Registered(), cms[1].Registered())
	}

	// The table, through the control API.
	row := func() control.Registration {
		t.Helper()
		rs, err := client.Registrations(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != 1 {
			t.Fatalf("registrations %+v, want one", rs)
		}
		return rs[0]
	}
	waitUntil(t, "the table shows the phone registered", func() bool { return row().State == "registered" })
	r := row()
	if r.Device != device || r.CallManager != "cm1" || r.Protocol != "sccp" || r.DeviceType != 115 ||
		r.Load != "SCCP41.9-4-2SR3-1S" || r.KeepAliveSeconds != 2 {
		t.Errorf("row %+v", r)
	}
	if _, err := netip.ParseAddrPort(r.Phone); err != nil {
		t.Errorf("phone address %q: %v", r.Phone, err)
	}
	if age := time.Since(r.Since); age < 0 || age > time.Minute {
		t.Errorf("since %v", r.Since)
	}

	body := scrapeMetrics(t, nil, metrics)
	for series, want := range map[string]float64{
		`phoneboot_proxy_registrations{callmanager="cm1",state="registered"}`: 1,
		`phoneboot_proxy_registrations{callmanager="cm2",state="registered"}`: 0,
		`phoneboot_proxy_sessions_open`:                                       1,
		`phoneboot_proxy_callmanager_sessions{callmanager="cm1"}`:             1,
		`phoneboot_proxy_callmanager_up{callmanager="cm1"}`:                   1,
		`phoneboot_proxy_callmanager_up{callmanager="cm2"}`:                   1,
		`phoneboot_proxy_accepted_total{protocol="sccp"}`:                     1,
		`phoneboot_proxy_register_answers_total{answer="ack"}`:                1,
		`phoneboot_proxy_failovers_total{callmanager="cm1"}`:                  0,
		`phoneboot_proxy_admission_queue_depth{callmanager="cm1"}`:            0,
		`phoneboot_service_load{signal="proxy_queued"}`:                       0,
		`phoneboot_proxy_admission_rejected_total`:                            0,
		`phoneboot_service_up{service="proxy"}`:                               1,
	} {
		if got := metricValue(body, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}

	// The primary stops: the proxy closes the phone's connection at once,
	// and the phone, registering again at the same address, lands on the
	// secondary.
	if err := cms[0].SetMode(cmsim.Stopped); err != nil {
		t.Fatal(err)
	}
	next(cmsim.EventLost)
	next(cmsim.EventRegistered)
	if cms[1].Registered() != 1 {
		t.Fatalf("cm2 has %d registered, want the phone", cms[1].Registered())
	}
	waitUntil(t, "the table shows the phone on cm2", func() bool { r := row(); return r.CallManager == "cm2" && r.State == "registered" })
	waitUntil(t, "the metrics show cm1 down", func() bool {
		return metricValue(scrapeMetrics(t, nil, metrics), `phoneboot_proxy_callmanager_up{callmanager="cm1"}`) == 0
	})
	body = scrapeMetrics(t, nil, metrics)
	for series, want := range map[string]float64{
		`phoneboot_proxy_registrations{callmanager="cm1",state="registered"}`: 0,
		`phoneboot_proxy_registrations{callmanager="cm2",state="registered"}`: 1,
		`phoneboot_proxy_failovers_total{callmanager="cm1"}`:                  1,
		`phoneboot_proxy_failovers_total{callmanager="cm2"}`:                  0,
		`phoneboot_proxy_callmanager_up{callmanager="cm2"}`:                   1,
		`phoneboot_proxy_accepted_total{protocol="sccp"}`:                     2,
		`phoneboot_proxy_register_answers_total{answer="ack"}`:                2,
	} {
		if got := metricValue(body, series); got != want {
			t.Errorf("after the failover: %s = %v, want %v", series, got, want)
		}
	}
	// Closed when cm1 reset it, or by the health checks if they were
	// first: once either way.
	if n := metricValue(body, `phoneboot_proxy_sessions_closed_total{reason="upstream_closed"}`) +
		metricValue(body, `phoneboot_proxy_sessions_closed_total{reason="upstream_down"}`); n != 1 {
		t.Errorf("sessions closed by cm1's failure: %v, want 1:\n%s", n, grep(body, "sessions_closed"))
	}
	if metricValue(body, `phoneboot_proxy_health_probes_total{callmanager="cm1",result="failed"}`) < 2 {
		t.Errorf("cm1 went down with fewer than fall (2) failed probes:\n%s", grep(body, "phoneboot_proxy_health"))
	}

	// A SIP phone's REGISTER, toward a registrar on cm2 (cm1 is down)
	// that never answers: the table shows it registering, with its
	// device, AOR and Contact.
	sipCM, err := net.Listen("tcp", "127.77.1.2:5060")
	if err != nil {
		t.Fatal(err)
	}
	defer sipCM.Close()
	go func() {
		for {
			c, err := sipCM.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	sipPhone, err := net.DialTimeout("tcp", proxyIP+":5060", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer sipPhone.Close()
	sipPhone.Write([]byte("REGISTER sip:127.77.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 10.64.0.43:51515;branch=z9hG4bK1\r\n" +
		"From: <sip:4001@127.77.0.1>;tag=a1\r\nTo: <sip:4001@127.77.0.1>\r\nCall-ID: 1@10.64.0.43\r\nCSeq: 101 REGISTER\r\n" +
		"Contact: <sip:4001@10.64.0.43:51515;transport=tcp>;+u.sip!devicename.ccm.cisco.com=\"SEP001E7A000043\"\r\n" +
		"Content-Length: 0\r\n\r\n"))
	var sipRow control.Registration
	waitUntil(t, "the table shows the SIP phone registering", func() bool {
		rs, err := client.Registrations(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.Protocol == "sip" && r.State == "registering" {
				sipRow = r
				return true
			}
		}
		return false
	})
	if sipRow.Device != "SEP001E7A000043" || sipRow.CallManager != "cm2" || sipRow.AOR != "sip:4001@127.77.0.1" ||
		sipRow.Contact != "sip:4001@10.64.0.43:51515;transport=tcp" {
		t.Errorf("SIP row %+v", sipRow)
	}

	// Stopping the daemon closes the phone's session and the listener.
	stop()
	stopped = true
	next(cmsim.EventLost)
	if c, err := net.DialTimeout("tcp", proxyIP+":2000", 5*time.Second); err == nil {
		c.Close()
		t.Error("the proxy still listens after the daemon stopped")
	}
}

// grep keeps the lines of s that contain sub, for error messages.
func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestAgentRegistrationsWithoutProxy(t *testing.T) {
	a := &Agent{}
	if _, err := a.Registrations(context.Background()); err == nil || !strings.Contains(err.Error(), "not enabled") {
		t.Errorf("Registrations with the proxy off: %v", err)
	}
}

// TestAgentProxyWorkers runs the proxy in two worker processes: many
// simulated SCCP phones register through it, every one is listed by the
// control API and counted in the metrics, both workers hold some; a
// worker killed makes Run fail, and Close leaves no worker behind.
func TestAgentProxyWorkers(t *testing.T) {
	privtest.RequireNetNS(t)
	const (
		proxyIP = "127.78.0.1"
		metrics = proxyIP + ":9617"
		phones  = 200
	)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	cm, err := cmsim.New(cmsim.Config{Name: "cm1", Addr: "127.78.1.1:2000"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); cm.Run(ctx) }()

	socket := filepath.Join(runDir(t), "control.sock")
	cfg, err := ParseConfig("test.yaml", []byte(`
control: {socket: `+socket+`}
metrics: {listen: "`+metrics+`"}
fastpath: {enabled: false}
proxy:
  enabled: true
  workers: 2
  listeners:
    - {protocol: sccp, listen: "`+proxyIP+`:2000"}
  callmanagers:
    - {name: cm1, host: 127.78.1.1}
  health: {interval: 500ms, timeout: 400ms}
`))
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			a.Close()
		}
	}()
	workers, ok := a.proxy.(*proxy.Workers)
	if !ok {
		t.Fatalf("proxy is a %T, want worker processes", a.proxy)
	}
	pids := workers.PIDs()
	if len(pids) != 2 {
		t.Fatalf("worker pids %v, want 2", pids)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(runCtx) }()

	phCtx, stopPhones := context.WithCancel(ctx)
	var phWG sync.WaitGroup
	defer func() { stopPhones(); phWG.Wait() }()
	devices := map[string]bool{}
	for i := range phones {
		dev := fmt.Sprintf("SEP001E7B%06X", i)
		devices[dev] = true
		ph, err := cmsim.NewPhone(cmsim.PhoneConfig{
			Register: sccp.Register{DeviceName: dev, Instance: 1, StationIP: netip.AddrFrom4([4]byte{10, 64, byte(i >> 8), byte(i)}),
				DeviceType: 115, MaxStreams: 5, ProtocolVersion: 11, LoadInfo: "SCCP41.9-4-2SR3-1S", BodyLen: sccp.RegisterLoadBody},
			Servers: []string{proxyIP + ":2000"}, RetryDelay: 100 * time.Millisecond, RegisterTimeout: 10 * time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		phWG.Add(1)
		go func() { defer phWG.Done(); ph.Run(phCtx) }()
	}
	waitUntil(t, "every phone registered on cm1", func() bool { return cm.Registered() == phones })

	client := control.NewClient(socket)
	var rows []control.Registration
	waitUntil(t, "the control API lists every phone registered", func() bool {
		rows, err = client.Registrations(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, r := range rows {
			if r.State == "registered" && r.CallManager == "cm1" {
				n++
			}
		}
		return n == phones
	})
	if len(rows) != phones {
		t.Errorf("%d rows, want %d", len(rows), phones)
	}
	for _, r := range rows {
		if !devices[r.Device] {
			t.Errorf("row %+v: not one of the phones, or listed twice", r)
		}
		delete(devices, r.Device)
	}

	body := scrapeMetrics(t, nil, metrics)
	for series, want := range map[string]float64{
		`phoneboot_proxy_registrations{callmanager="cm1",state="registered"}`: phones,
		`phoneboot_proxy_registrations{callmanager="none",state="reading"}`:   0,
		`phoneboot_proxy_sessions_open`:                                       phones,
		`phoneboot_proxy_callmanager_sessions{callmanager="cm1"}`:             phones,
		`phoneboot_proxy_callmanager_up{callmanager="cm1"}`:                   1,
		`phoneboot_proxy_accepted_total{protocol="sccp"}`:                     phones,
		`phoneboot_proxy_register_answers_total{answer="ack"}`:                phones,
		`phoneboot_proxy_admission_queue_depth{callmanager="cm1"}`:            0,
		`phoneboot_service_load{signal="proxy_queued"}`:                       0,
		`phoneboot_service_up{service="proxy"}`:                               1,
	} {
		if got := metricValue(body, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	// The kernel spreads the phones over both workers' sockets.
	per := workers.WorkerStats()
	if len(per) != 2 {
		t.Fatalf("stats of %d workers, want 2", len(per))
	}
	for i, st := range per {
		t.Logf("worker %d: %d sessions", i, st.Active)
		if st.Active == 0 {
			t.Errorf("worker %d holds no phone", i)
		}
	}

	// A worker killed: the proxy's Run, and so the agent's, fails.
	if err := unix.Kill(pids[0], unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-runErr:
		if err == nil || !strings.Contains(err.Error(), "proxy: worker 0") {
			t.Errorf("Run after a worker was killed: %v, want the proxy's worker 0 named", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Run went on after a worker was killed")
	}
	closed = true
	if err := a.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, 0); err != unix.ESRCH {
			t.Errorf("worker %d still there after Close (kill 0: %v)", pid, err)
		}
	}
	if c, err := net.DialTimeout("tcp", proxyIP+":2000", 5*time.Second); err == nil {
		c.Close()
		t.Error("the proxy still listens after Close")
	}
}

// TestAgentProxySIPCheckMetrics: with health.sip_probe the SIP check of
// each CallManager is exported: up where its SIP port answers, down where
// nothing listens, with its probes counted.
func TestAgentProxySIPCheckMetrics(t *testing.T) {
	privtest.RequireNetNS(t)
	const (
		proxyIP = "127.78.0.1"
		metrics = proxyIP + ":9617"
	)
	// cm1 takes TCP on its SIP port; cm2 has nothing there.
	sip, err := net.Listen("tcp", "127.78.1.1:5060")
	if err != nil {
		t.Fatal(err)
	}
	defer sip.Close()
	go func() {
		for {
			c, err := sip.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	socket := filepath.Join(runDir(t), "control.sock")
	cfg, err := ParseConfig("test.yaml", []byte(`
control: {socket: `+socket+`}
metrics: {listen: "`+metrics+`"}
fastpath: {enabled: false}
proxy:
  enabled: true
  listeners:
    - {protocol: sccp, listen: "`+proxyIP+`:2000"}
    - {protocol: sip, listen: "`+proxyIP+`:5060"}
  callmanagers:
    - {name: cm1, host: 127.78.1.1}
    - {name: cm2, host: 127.78.1.2}
  health: {interval: 100ms, timeout: 80ms, rise: 1, fall: 1, sip_probe: tcp}
  failback: {enabled: false}
`))
	if err != nil {
		t.Fatal(err)
	}
	_, stop := startAgent(t, cfg, func(f func() error) error { return f() })
	defer stop()
	var body string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		body = scrapeMetrics(t, nil, metrics)
		if metricValue(body, `phoneboot_proxy_sip_check_probes_total{callmanager="cm2",result="failed"}`) >= 2 &&
			metricValue(body, `phoneboot_proxy_sip_check_probes_total{callmanager="cm1",result="ok"}`) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SIP check probes not counted:\n%s", body)
		}
	}
	if metricValue(body, `phoneboot_proxy_sip_check_up{callmanager="cm1"}`) != 1 ||
		metricValue(body, `phoneboot_proxy_sip_check_up{callmanager="cm2"}`) != 0 {
		t.Errorf("SIP check up: cm1 %v, cm2 %v; want 1 and 0",
			metricValue(body, `phoneboot_proxy_sip_check_up{callmanager="cm1"}`), metricValue(body, `phoneboot_proxy_sip_check_up{callmanager="cm2"}`))
	}
}
