package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/cmsim"
	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/sccp"
)

func TestMain(m *testing.M) {
	// 2,000 phones through the proxy hold 8,000 descriptors in this one
	// process (phone, both proxy sockets, CallManager side), twice that
	// while a failover replaces them: raise the limit as a daemon's unit
	// would.
	if os.Geteuid() == 0 {
		lim := unix.Rlimit{Cur: 1 << 16, Max: 1 << 16}
		unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	os.Exit(privtest.RunInNetNS(m))
}

var netSeq atomic.Uint32

// testNet gives each test its own loopback addresses: the proxy on
// 127.N.0.1, CallManagers on 127.N.1.x.
func testNet() (proxyIP string, cm func(i int) string) {
	n := netSeq.Add(1) + 10
	return fmt.Sprintf("127.%d.0.1", n), func(i int) string { return fmt.Sprintf("127.%d.1.%d", n, i+1) }
}

type rig struct {
	t     *testing.T
	p     *Proxy
	cms   []*cmsim.Server
	addr  string // the proxy's SCCP listener
	ctx   context.Context
	phWG  sync.WaitGroup
	stop  context.CancelFunc
	phCtx context.Context
}

// newRig starts n CallManager simulators and a proxy in front of them,
// all torn down when the test ends. tweak adjusts the proxy config.
func newRig(t *testing.T, n int, ka time.Duration, tweak func(*Config)) *rig {
	t.Helper()
	privtest.RequireNetNS(t)
	pip, cmIP := testNet()
	r := &rig{t: t}
	ctx, cancel := context.WithCancel(context.Background())
	r.ctx = ctx
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	cfg := Config{
		Listeners: []Listener{{Protocol: SCCP, Addr: pip + ":0", UpstreamPort: sccp.Port}},
		Health:    HealthConfig{Interval: 600 * time.Millisecond, Timeout: 500 * time.Millisecond, Rise: 2, Fall: 2},
		Failback:  FailbackConfig{Disabled: true},
	}
	for i := range n {
		s, err := cmsim.New(cmsim.Config{Name: fmt.Sprintf("cm%d", i+1), Addr: cmIP(i) + ":2000", KeepAlive: ka}, quiet())
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); s.Run(ctx) }()
		r.cms = append(r.cms, s)
		cfg.CallManagers = append(cfg.CallManagers, CallManager{Name: fmt.Sprintf("cm%d", i+1), Host: cmIP(i)})
	}
	if tweak != nil {
		tweak(&cfg)
	}
	// Info, not Debug: thousands of phones make a debug line each.
	p, err := New(cfg, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	r.p = p
	r.addr = p.Addrs()[0].String()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := p.Run(ctx); err != nil {
			t.Errorf("proxy Run: %v", err)
		}
	}()
	r.phCtx, r.stop = context.WithCancel(ctx)
	t.Cleanup(func() { r.stop(); r.phWG.Wait() })
	return r
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// quiet is a logger for the simulators, whose mode changes the test
// drives itself.
func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func device(i int) string { return fmt.Sprintf("SEP001B54%06X", i) }

func register(i int) sccp.Register {
	return sccp.Register{DeviceName: device(i), Instance: 1, StationIP: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}),
		DeviceType: 115, MaxStreams: 5, ProtocolVersion: 11, LoadInfo: "SCCP41.8-5-3S", BodyLen: sccp.RegisterLoadBody}
}

// phones starts n simulated phones registering through the proxy.
func (r *rig) phones(n int, onEvent func(cmsim.PhoneEvent)) []*cmsim.Phone {
	r.t.Helper()
	out := make([]*cmsim.Phone, n)
	for i := range n {
		ph, err := cmsim.NewPhone(cmsim.PhoneConfig{Register: register(i), Servers: []string{r.addr},
			RetryDelay: 20 * time.Millisecond, RegisterTimeout: 5 * time.Second, OnEvent: onEvent})
		if err != nil {
			r.t.Fatal(err)
		}
		out[i] = ph
		r.phWG.Add(1)
		go func() { defer r.phWG.Done(); ph.Run(r.phCtx) }()
	}
	return out
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// dialPhone is a hand-driven phone connection through the proxy.
func dialPhone(t *testing.T, addr string) (*net.TCPConn, *sccp.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn), sccp.NewReader(c)
}

func expect(t *testing.T, c net.Conn, r *sccp.Reader, id sccp.MessageID) sccp.Frame {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	f, err := r.ReadFrame()
	if err != nil {
		t.Fatalf("waiting for %v: %v", id, err)
	}
	if f.ID != id {
		t.Fatalf("got %v, want %v", f.ID, id)
	}
	return f
}

func TestRegisterThroughProxy(t *testing.T) {
	r := newRig(t, 2, 5*time.Second, nil)
	c, rd := dialPhone(t, r.addr)
	reg := register(1)
	c.Write(reg.AppendFrame(nil, sccp.Version22))
	ack, err := sccp.DecodeRegisterAck(expect(t, c, rd, sccp.RegisterAckID).Body)
	if err != nil || ack.KeepAliveInterval != 5 {
		t.Fatalf("RegisterAck %+v %v", ack, err)
	}
	expect(t, c, rd, sccp.CapabilitiesReqID)
	c.Write(sccp.AppendEmpty(nil, sccp.Version22, sccp.KeepAliveID))
	expect(t, c, rd, sccp.KeepAliveAckID)

	if st := r.cms[0].Stations(); len(st) != 1 || st[0].Device != reg.DeviceName {
		t.Fatalf("primary's stations %+v", st)
	}
	if n := r.cms[1].Registered(); n != 0 {
		t.Errorf("secondary has %d stations", n)
	}
	regs := r.p.Registrations()
	if len(regs) != 1 {
		t.Fatalf("table %+v", regs)
	}
	got := regs[0]
	if got.Device != reg.DeviceName || got.CallManager != "cm1" || got.State != StateRegistered || got.Protocol != SCCP ||
		got.Phone != c.LocalAddr().String() || got.DeviceType != 115 || got.Load != "SCCP41.8-5-3S" || got.KeepAlive != 5*time.Second {
		t.Errorf("row %+v", got)
	}
	c.Close()
	waitFor(t, 2*time.Second, "session gone", func() bool { return len(r.p.Registrations()) == 0 })
	waitFor(t, 2*time.Second, "station gone", func() bool { return r.cms[0].Registered() == 0 })
	st := r.p.Stats()
	if st.Accepted[SCCP] != 1 || st.Registered != 1 || st.Active != 0 || st.Closed["phone_closed"] != 1 {
		t.Errorf("stats %+v", st)
	}
	if !st.CallManagers[0].Healthy || !st.CallManagers[1].Healthy || st.CallManagers[0].Sessions != 0 {
		t.Errorf("call managers %+v", st.CallManagers)
	}
}

func TestRejectWatched(t *testing.T) {
	privtest.RequireNetNS(t)
	pip, cmIP := testNet()
	cm, err := cmsim.New(cmsim.Config{Name: "cm1", Addr: cmIP(0) + ":2000", Known: func(string) bool { return false }}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go cm.Run(ctx)
	p, err := New(Config{Listeners: []Listener{{Protocol: SCCP, Addr: pip + ":0", UpstreamPort: 2000}},
		CallManagers: []CallManager{{Name: "cm1", Host: cmIP(0)}}}, privtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	c, rd := dialPhone(t, p.Addrs()[0].String())
	reg := register(2)
	c.Write(reg.AppendFrame(nil, 0))
	expect(t, c, rd, sccp.RegisterRejectID)
	waitFor(t, 2*time.Second, "closed after the reject", func() bool { return p.Stats().Active == 0 })
	if st := p.Stats(); st.Rejected != 1 || st.Closed["upstream_closed"] != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestFirstMessageBounds: a huge length, a slow sender and junk are cut
// off; a KeepAlive first (a standby connection) is relayed unwatched.
func TestFirstMessageBounds(t *testing.T) {
	r := newRig(t, 1, 5*time.Second, func(c *Config) { c.HeaderTimeout = 300 * time.Millisecond })
	closedSoon := func(name string, send []byte) {
		t.Helper()
		c, _ := dialPhone(t, r.addr)
		c.Write(send)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		var b [16]byte
		if n, err := c.Read(b[:]); err == nil || isTimeout(err) {
			t.Errorf("%s: read %d bytes, %v; want the connection closed", name, n, err)
		}
	}
	closedSoon("huge length", []byte{0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 1, 0, 0, 0})
	closedSoon("slow sender", []byte{0x80, 0, 0})
	short := sccp.AppendFrame(nil, 0, sccp.RegisterID, make([]byte, 20))
	closedSoon("Register too short", short)
	if st := r.cms[0].Stats(); st.Malformed != 0 || st.Registered != 0 {
		t.Errorf("bad first messages reached the CallManager: %+v", st)
	}
	if st := r.p.Stats(); st.Closed["bad_first_message"] != 3 {
		t.Errorf("stats %+v", st.Closed)
	}

	c, rd := dialPhone(t, r.addr)
	c.Write(sccp.AppendEmpty(nil, 0, sccp.KeepAliveID))
	expect(t, c, rd, sccp.KeepAliveAckID)
	if regs := r.p.Registrations(); len(regs) != 1 || regs[0].State != StateConnected || regs[0].Device != "" {
		t.Errorf("table %+v", regs)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestSilentUpstreamClosed: a CallManager that stops answering one
// phone's keepalives, while connection-level probes still pass, is caught
// by the sweep: the phone's session is closed a keepalive interval plus
// the grace after the CallManager last spoke, not three intervals later.
func TestSilentUpstreamClosed(t *testing.T) {
	const ka = 2 * time.Second
	r := newRig(t, 1, ka, func(c *Config) {
		c.Health.Probe = ProbeTCP // the kernel accepts while the simulator hangs
		c.AnswerGrace = 500 * time.Millisecond
		c.SweepInterval = 100 * time.Millisecond
	})
	lost := make(chan cmsim.PhoneEvent, 4)
	r.phones(1, func(e cmsim.PhoneEvent) {
		if e.Kind == cmsim.EventLost {
			lost <- e
		}
	})
	waitFor(t, 10*time.Second, "registered", func() bool { return r.cms[0].Registered() == 1 })
	time.Sleep(100 * time.Millisecond)
	r.cms[0].SetMode(cmsim.Hung)
	hung := time.Now()
	select {
	case <-lost:
	case <-time.After(4 * ka):
		t.Fatal("the phone never lost its session")
	}
	took := time.Since(hung)
	t.Logf("session closed %v after the CallManager hung (keepalive %v)", took.Round(time.Millisecond), ka)
	if took > 2*ka {
		t.Errorf("closed after %v, want within a keepalive interval plus the grace", took)
	}
	if st := r.p.Stats(); st.Closed["upstream_silent"] != 1 || st.CallManagers[0].Healthy != true {
		t.Errorf("stats %+v %+v", st.Closed, st.CallManagers)
	}
}

// TestIdlePhoneClosed: a phone that goes quiet past the idle limit loses
// its session.
func TestIdlePhoneClosed(t *testing.T) {
	r := newRig(t, 1, 30*time.Second, func(c *Config) {
		c.IdleTimeout = 300 * time.Millisecond
		c.SweepInterval = 50 * time.Millisecond
	})
	c, rd := dialPhone(t, r.addr)
	reg := register(3)
	start := time.Now() // the phone's last word
	c.Write(reg.AppendFrame(nil, 0))
	expect(t, c, rd, sccp.RegisterAckID)
	expect(t, c, rd, sccp.CapabilitiesReqID)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := rd.ReadFrame(); err == nil || isTimeout(err) {
		t.Fatalf("quiet phone: %v, want its session closed", err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("closed after %v, before the idle limit", took)
	}
	if st := r.p.Stats(); st.Closed["idle"] != 1 {
		t.Errorf("stats %+v", st.Closed)
	}
}

// TestAdmissionPaces: a storm toward a CallManager passes its token
// bucket in order and on pace, every phone waiting rather than failing;
// past the queue limit, phones are closed and counted.
func TestAdmissionPaces(t *testing.T) {
	const rate, n = 50.0, 20
	var mu sync.Mutex
	var at []time.Time
	r := newRig(t, 1, 30*time.Second, func(c *Config) { c.Admission = AdmissionConfig{Rate: rate, Burst: 1} })
	start := time.Now()
	r.phones(n, func(e cmsim.PhoneEvent) {
		if e.Kind == cmsim.EventRegistered {
			mu.Lock()
			at = append(at, e.At)
			mu.Unlock()
		}
	})
	waitFor(t, 10*time.Second, "every phone registered", func() bool { return r.cms[0].Registered() == n })
	mu.Lock()
	last := at[0]
	for _, a := range at {
		if a.After(last) {
			last = a
		}
	}
	mu.Unlock()
	want := time.Duration(float64(n-1) / rate * float64(time.Second))
	if took := last.Sub(start); took < want*9/10 {
		t.Errorf("%d phones registered within %v, want paced over about %v", n, took, want)
	}
	st := r.p.Stats()
	if st.Queued < n/2 || st.Closed["queue_full"] != 0 || st.Registered != n {
		t.Errorf("stats: queued %d, queue_full %d, registered %d", st.Queued, st.Closed["queue_full"], st.Registered)
	}

	full := newRig(t, 1, 30*time.Second, func(c *Config) { c.Admission = AdmissionConfig{Rate: 1, Burst: 1, QueueLimit: 2} })
	for i := range 5 {
		c, _ := dialPhone(t, full.addr)
		reg := register(100 + i)
		c.Write(reg.AppendFrame(nil, 0))
	}
	waitFor(t, 5*time.Second, "two phones over the queue limit closed", func() bool { return full.p.Stats().Closed["queue_full"] == 2 })
}

// TestProbes: each probe kind passes against a serving CallManager (one
// that registers the probe's device and one that rejects it) and the
// SCCP ones fail against a hung one, which TCP alone cannot tell.
func TestProbes(t *testing.T) {
	privtest.RequireNetNS(t)
	_, cmIP := testNet()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var cms []*cmsim.Server
	for i, known := range []func(string) bool{nil, func(string) bool { return false }} {
		s, err := cmsim.New(cmsim.Config{Name: fmt.Sprint(i), Addr: cmIP(i) + ":2000", Known: known}, quiet())
		if err != nil {
			t.Fatal(err)
		}
		go s.Run(ctx)
		cms = append(cms, s)
	}
	for _, kind := range []ProbeKind{ProbeSCCP, ProbeSCCPRegister, ProbeTCP} {
		for i, s := range cms {
			cfg := Config{Listeners: []Listener{{Protocol: SCCP, Addr: "127.0.0.1:0"}},
				CallManagers: []CallManager{{Name: "cm", Host: cmIP(i)}},
				Health:       HealthConfig{Probe: kind, Timeout: 300 * time.Millisecond}}
			cfg.setDefaults()
			p := &Proxy{cfg: cfg}
			u := &upstream{cfg: cfg.CallManagers[0]}
			hc := newCheck("main", kind, cfg.Health.Port)
			if err := p.probe(ctx, u, hc); err != nil {
				t.Errorf("%s probe of simulator %d: %v", kind, i, err)
			}
			s.SetMode(cmsim.Hung)
			err := p.probe(ctx, u, hc)
			if (err == nil) != (kind == ProbeTCP) {
				t.Errorf("%s probe of hung simulator %d: %v", kind, i, err)
			}
			s.SetMode(cmsim.Serving)
		}
	}
	// The register probe leaves no station behind.
	waitFor(t, 2*time.Second, "probe stations gone", func() bool { return cms[0].Registered() == 0 })
	if st := cms[0].Stats(); st.Registered == 0 || st.Unregistered == 0 {
		t.Errorf("register probe: %+v", st)
	}
	if st := cms[1].Stats(); st.Rejected == 0 {
		t.Errorf("register probe against a rejecting CallManager: %+v", st)
	}
}
