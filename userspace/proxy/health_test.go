package proxy

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/sccp"
)

// scriptedCM is a CallManager whose answer to each health probe the test
// chooses. A connection that opens with KeepAlive is a probe, handed to
// the test on probes; one that opens with Register is a phone, answered
// with RegisterAck (keepalive 30 s) and a KeepAliveAck for each KeepAlive.
type scriptedCM struct {
	ln     *net.TCPListener
	probes chan *probeConn
	wg     sync.WaitGroup
}

// probeConn is one probe connection, waiting for the test's verdict.
type probeConn struct {
	c  *net.TCPConn
	at time.Time
}

// pass answers the probe's KeepAlive.
func (pc *probeConn) pass() {
	pc.c.Write(sccp.AppendEmpty(nil, sccp.VersionBasic, sccp.KeepAliveAckID))
	pc.c.Close()
}

// fail closes the probe's connection without an answer.
func (pc *probeConn) fail() { pc.c.Close() }

// hang leaves the probe unanswered until the proxy gives up on it (its
// timeout): a slow CallManager.
func (pc *probeConn) hang() {
	go func() {
		io.Copy(io.Discard, pc.c)
		pc.c.Close()
	}()
}

func newScriptedCM(t *testing.T, ip string) *scriptedCM {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptedCM{ln: ln, probes: make(chan *probeConn, 16)}
	var conns sync.Map
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			conns.Store(c, true)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(*net.TCPConn).Close(); return true })
		s.wg.Wait()
	})
	return s
}

func (s *scriptedCM) port() int { return s.ln.Addr().(*net.TCPAddr).Port }

func (s *scriptedCM) serve(c *net.TCPConn) {
	r := sccp.NewReader(c)
	f, err := r.ReadFrame()
	if err != nil {
		c.Close()
		return
	}
	if f.ID == sccp.KeepAliveID {
		s.probes <- &probeConn{c: c, at: time.Now()}
		return
	}
	defer c.Close()
	if f.ID != sccp.RegisterID {
		return
	}
	ack := sccp.RegisterAck{KeepAliveInterval: 30, DateTemplate: "M/D/YA", SecondaryKeepAliveInterval: 30}
	if _, err := c.Write(ack.AppendFrame(nil, sccp.VersionBasic)); err != nil {
		return
	}
	for {
		f, err := r.ReadFrame()
		if err != nil {
			return
		}
		if f.ID == sccp.KeepAliveID {
			if _, err := c.Write(sccp.AppendEmpty(nil, sccp.VersionBasic, sccp.KeepAliveAckID)); err != nil {
				return
			}
		}
	}
}

// next is the next probe; its arrival means the proxy has finished
// with the one before (the health loop probes one at a time), so its
// state reflects every earlier verdict.
func (s *scriptedCM) next(t *testing.T) *probeConn {
	t.Helper()
	select {
	case pc := <-s.probes:
		return pc
	case <-time.After(20 * time.Second):
		t.Fatal("no health probe within 20 s")
		return nil
	}
}

// healthRig runs a proxy with one scripted CallManager, probed (SCCP
// KeepAlive) every interval with the given rise and fall.
func healthRig(t *testing.T, interval time.Duration, rise, fall int) (*Proxy, *scriptedCM, string) {
	t.Helper()
	privtest.RequireNetNS(t)
	pip, cmIP := testNet()
	cm := newScriptedCM(t, cmIP(0))
	p := runProxy(t, Config{
		Listeners:    []Listener{{Protocol: SCCP, Addr: pip + ":0", UpstreamPort: cm.port()}},
		CallManagers: []CallManager{{Name: "cm1", Host: cmIP(0)}},
		Health:       HealthConfig{Probe: ProbeSCCP, Port: cm.port(), Interval: interval, Timeout: interval * 8 / 10, Rise: rise, Fall: fall},
		Failback:     FailbackConfig{Disabled: true},
	})
	return p, cm, p.Addrs()[0].String()
}

// runProxy makes a proxy of cfg and runs it until the test ends.
func runProxy(t *testing.T, cfg Config) *Proxy {
	t.Helper()
	p, err := New(cfg, privtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

// TestHealthHysteresis drives the health loop probe by probe: with fall
// 3, a slow probe and a failed one do not take a healthy CallManager
// down, a pass starts the count again, and only the third failure in a
// row does; with rise 2 a single pass, or a pass broken by a failure,
// does not bring it back.
func TestHealthHysteresis(t *testing.T) {
	p, cm, _ := healthRig(t, 300*time.Millisecond, 2, 3)
	cmState := func() CallManagerStats { return p.Stats().CallManagers[0] }
	type step struct {
		verdict     string // pass, fail (closed unanswered) or hang (slow: unanswered past the timeout)
		healthyThen bool   // after this probe
	}
	steps := []step{
		{"pass", true}, // the first probe, at Run's start
		{"pass", true},
		{"hang", true}, // 1 failure of 3
		{"fail", true}, // 2 of 3
		{"pass", true}, // the count starts again
		{"fail", true},
		{"fail", true}, // 2 in a row: without the reset this were the fourth
		{"fail", false},
		{"pass", false}, // 1 pass of 2
		{"fail", false},
		{"pass", false}, // the pass count started again
		{"pass", true},
		{"fail", true},
	}
	var wantOK, wantFail uint64
	for i, s := range steps {
		pc := cm.next(t)
		if i > 0 {
			if got := cmState().Healthy; got != steps[i-1].healthyThen {
				t.Fatalf("after probe %d: healthy %v, want %v (%+v)", i-1, got, steps[i-1].healthyThen, cmState())
			}
		}
		switch s.verdict {
		case "pass":
			pc.pass()
			wantOK++
		case "fail":
			pc.fail()
			wantFail++
		case "hang":
			pc.hang()
			wantFail++
		}
	}
	// The next probe has arrived once the last verdict is in: read the
	// stats before answering it, or its pass may be counted too.
	last := cm.next(t)
	st := cmState()
	last.pass()
	if !st.Healthy || st.Transitions != 2 || st.Failovers != 1 || st.Vetoes != 0 || st.ProbesOK != wantOK || st.ProbesFail != wantFail {
		t.Errorf("stats %+v, want healthy, 2 transitions, 1 failover, %d passes, %d failures", st, wantOK, wantFail)
	}
}

// phoneTalking registers a phone through the proxy and, until stop is
// closed, sends KeepAlive every 50 ms (the scripted CallManager answers
// each), so the CallManager side of its session keeps receiving data.
func phoneTalking(t *testing.T, p *Proxy, addr string) (c *net.TCPConn, stop chan struct{}) {
	t.Helper()
	c, rd := dialPhone(t, addr)
	reg := register(7)
	c.Write(reg.AppendFrame(nil, sccp.VersionBasic))
	expect(t, c, rd, sccp.RegisterAckID)
	waitFor(t, 5*time.Second, "the phone registered in the table", func() bool {
		rs := p.Registrations()
		return len(rs) == 1 && rs[0].State == StateRegistered
	})
	stop = make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if _, err := c.Write(sccp.AppendEmpty(nil, sccp.VersionBasic, sccp.KeepAliveID)); err != nil {
					return
				}
			}
		}
	}()
	go func() {
		defer wg.Done()
		io.Copy(io.Discard, c) // the acks, until the session ends
	}()
	t.Cleanup(func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		c.Close()
		wg.Wait()
	})
	return c, stop
}

// TestHealthVeto: probes that fail while the CallManager still answers
// its phones are vetoed (counted in Vetoes) and the CallManager stays up
// with its sessions; once its phones stop hearing from it for the
// window (fall × interval), the next failure takes it down and closes
// them.
func TestHealthVeto(t *testing.T) {
	const interval = 300 * time.Millisecond
	p, cm, addr := healthRig(t, interval, 2, 2)
	cm.next(t).pass() // the first probe, at Run's start
	_, stop := phoneTalking(t, p, addr)
	for range 4 {
		cm.next(t).fail()
	}
	pc := cm.next(t) // the fourth verdict is in
	st := p.Stats()
	if c := st.CallManagers[0]; !c.Healthy || c.Vetoes != 3 || c.Failovers != 0 || c.Sessions != 1 || st.Closed["upstream_down"] != 0 {
		t.Fatalf("four failed probes while the phone hears from its CallManager: %+v, closed %v; want healthy, 3 vetoes (failures 2 to 4), its session kept",
			c, st.Closed)
	}
	pc.fail()
	close(stop)
	quiet := time.Now()
	// The phone is quiet, so is its CallManager: failures go on until the
	// window has passed and the CallManager is taken down.
	for p.Stats().CallManagers[0].Healthy {
		cm.next(t).fail()
		if time.Since(quiet) > 20*time.Second {
			t.Fatal("still healthy 20 s after its phones stopped hearing from it")
		}
	}
	// Not at the first failure after the phone went quiet: the last
	// KeepAliveAck came a little before or after quiet, so half the
	// window is what can be asserted without a race.
	if took := time.Since(quiet); took < interval {
		t.Errorf("taken down %v after the last data, well within the window %v", took, 2*interval)
	}
	waitFor(t, 5*time.Second, "the session closed", func() bool { return p.Stats().Active == 0 })
	st = p.Stats()
	if c := st.CallManagers[0]; c.Failovers != 1 || c.Vetoes < 3 || st.Closed["upstream_down"] != 1 {
		t.Errorf("after the veto window: %+v, closed %v", c, st.Closed)
	}
}

// TestHealthNoVetoWhenRefused: a refused connection is no slowness, so a
// CallManager whose port refuses is taken down after fall probes even
// while its phones' sessions still hear from it.
func TestHealthNoVetoWhenRefused(t *testing.T) {
	p, cm, addr := healthRig(t, 300*time.Millisecond, 2, 2)
	cm.next(t).pass()
	phone, _ := phoneTalking(t, p, addr)
	cm.ln.Close() // nothing listens; the phone's connection stays
	waitFor(t, 20*time.Second, "the CallManager taken down", func() bool { return !p.Stats().CallManagers[0].Healthy })
	st := p.Stats()
	if c := st.CallManagers[0]; c.Vetoes != 0 || c.Failovers != 1 || c.ProbesFail < 2 {
		t.Errorf("refused probes: %+v, want no veto, 1 failover", c)
	}
	// Its phone learns at once: the proxy resets its side.
	phone.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [64]byte
	for {
		_, err := phone.Read(b[:])
		if err == nil {
			continue
		}
		if isTimeout(err) {
			t.Fatal("the phone's session was not closed")
		}
		break
	}
	if st := p.Stats(); st.Closed["upstream_down"] != 1 {
		t.Errorf("closed %v", st.Closed)
	}
}
