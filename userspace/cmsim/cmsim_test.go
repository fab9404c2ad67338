package cmsim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/internal/wiretest"
	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/sccp"
)

func TestMain(m *testing.M) { os.Exit(privtest.RunInNetNS(m)) }

// start runs a simulator on addr until the test ends.
func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	privtest.RequireNetNS(t)
	if cfg.Name == "" {
		cfg.Name = cfg.Addr
	}
	s, err := New(cfg, privtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s
}

func register(name string) sccp.Register {
	return sccp.Register{DeviceName: name, Instance: 1, StationIP: netip.MustParseAddr("10.0.0.10"),
		DeviceType: 115, MaxStreams: 5, ProtocolVersion: 11, LoadInfo: "SCCP41.8-5-3S", BodyLen: sccp.RegisterLoadBody}
}

// station is a hand-driven phone connection.
type station struct {
	t *testing.T
	c *net.TCPConn
	r *sccp.Reader
}

func dial(t *testing.T, addr string) *station {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &station{t: t, c: c.(*net.TCPConn), r: sccp.NewReader(c)}
}

func (s *station) send(b []byte) {
	s.t.Helper()
	if _, err := s.c.Write(b); err != nil {
		s.t.Fatal(err)
	}
}

func (s *station) read(timeout time.Duration) (sccp.Frame, error) {
	s.c.SetReadDeadline(time.Now().Add(timeout))
	return s.r.ReadFrame()
}

func (s *station) expect(id sccp.MessageID) sccp.Frame {
	s.t.Helper()
	f, err := s.read(2 * time.Second)
	if err != nil {
		s.t.Fatalf("waiting for %v: %v", id, err)
	}
	if f.ID != id {
		s.t.Fatalf("got %v, want %v", f.ID, id)
	}
	return f
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestRegisterKeepAliveUnregister(t *testing.T) {
	s := start(t, Config{Addr: "127.0.0.2:2000", KeepAlive: 7 * time.Second,
		Known: func(d string) bool { return d != "SEP00000000BAD0" }})
	st := dial(t, s.Addr())
	// A KeepAlive before Register is answered too.
	st.send(sccp.AppendEmpty(nil, sccp.Version22, sccp.KeepAliveID))
	st.expect(sccp.KeepAliveAckID)
	reg := register("SEP001B54000001")
	st.send(reg.AppendFrame(nil, sccp.Version22))
	f := st.expect(sccp.RegisterAckID)
	if f.Version != sccp.Version22 {
		t.Errorf("RegisterAck in version %d", f.Version)
	}
	ack, err := sccp.DecodeRegisterAck(f.Body)
	if err != nil || ack.KeepAliveInterval != 7 || ack.SecondaryKeepAliveInterval != 14 || ack.MaxProtocolVersion != 11 {
		t.Errorf("RegisterAck %+v, %v", ack, err)
	}
	st.expect(sccp.CapabilitiesReqID)
	if got := s.Stations(); len(got) != 1 || got[0].Device != reg.DeviceName || got[0].Remote != st.c.LocalAddr().String() {
		t.Errorf("stations %+v", got)
	}
	st.send(sccp.AppendEmpty(nil, sccp.Version22, sccp.KeepAliveID))
	st.expect(sccp.KeepAliveAckID)
	st.send(sccp.AppendEmpty(nil, sccp.Version22, sccp.UnregisterID))
	st.expect(sccp.UnregisterAckID)
	if _, err := st.read(2 * time.Second); err == nil {
		t.Error("connection still open after UnregisterAck")
	}
	waitFor(t, "station gone", func() bool { return s.Registered() == 0 })

	bad := dial(t, s.Addr())
	r := register("SEP00000000BAD0")
	bad.send(r.AppendFrame(nil, 0))
	rej, err := sccp.DecodeRegisterReject(bad.expect(sccp.RegisterRejectID).Body)
	if err != nil || rej.Text != "Device Unknown" {
		t.Errorf("reject %+v %v", rej, err)
	}
	if st := s.Stats(); st.Registered != 1 || st.Rejected != 1 || st.KeepAlives != 2 || st.Unregistered != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestMalformedAndSilentDropped(t *testing.T) {
	s := start(t, Config{Addr: "127.0.0.2:2001", KeepAlive: time.Second, DropAfter: 300 * time.Millisecond})
	st := dial(t, s.Addr())
	st.send([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 0, 0, 0})
	if _, err := st.read(2 * time.Second); err == nil || isTimeout(err) {
		t.Errorf("huge length: %v, want the connection closed", err)
	}
	quiet := dial(t, s.Addr())
	r := register("SEP001B54000002")
	quiet.send(r.AppendFrame(nil, 0))
	quiet.expect(sccp.RegisterAckID)
	quiet.expect(sccp.CapabilitiesReqID)
	if _, err := quiet.read(2 * time.Second); err == nil || isTimeout(err) {
		t.Errorf("silent station: %v, want the connection closed", err)
	}
	if st := s.Stats(); st.Malformed != 1 || st.Dropped != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestReplaced: a device that registers again on a new connection loses
// the old one.
func TestReplaced(t *testing.T) {
	s := start(t, Config{Addr: "127.0.0.2:2002"})
	r := register("SEP001B54000003")
	old := dial(t, s.Addr())
	old.send(r.AppendFrame(nil, 0))
	old.expect(sccp.RegisterAckID)
	old.expect(sccp.CapabilitiesReqID)
	fresh := dial(t, s.Addr())
	fresh.send(r.AppendFrame(nil, 0))
	fresh.expect(sccp.RegisterAckID)
	if _, err := old.read(2 * time.Second); err == nil || isTimeout(err) {
		t.Errorf("old connection: %v, want it closed", err)
	}
	if got := s.Stations(); len(got) != 1 || got[0].Remote != fresh.c.LocalAddr().String() {
		t.Errorf("stations %+v", got)
	}
}

func TestModes(t *testing.T) {
	s := start(t, Config{Addr: "127.0.0.2:2003", KeepAlive: 5 * time.Second})
	ka := sccp.AppendEmpty(nil, 0, sccp.KeepAliveID)
	st := dial(t, s.Addr())
	r := register("SEP001B54000004")
	st.send(r.AppendFrame(nil, 0))
	st.expect(sccp.RegisterAckID)
	st.expect(sccp.CapabilitiesReqID)

	t.Run("hung", func(t *testing.T) {
		if err := s.SetMode(Hung); err != nil {
			t.Fatal(err)
		}
		st.send(ka)
		if _, err := st.read(300 * time.Millisecond); !isTimeout(err) {
			t.Fatalf("hung: %v, want no answer", err)
		}
		// TCP still works: a new connection is made (by the kernel).
		c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
		if err != nil {
			t.Fatalf("connect while hung: %v", err)
		}
		c.Close()
		if err := s.SetMode(Serving); err != nil {
			t.Fatal(err)
		}
		// The keepalive sent while hung is never answered; a new one is.
		st.send(ka)
		st.expect(sccp.KeepAliveAckID)
	})

	t.Run("black-holed", func(t *testing.T) {
		if err := s.SetMode(BlackHoled); err != nil {
			t.Fatal(err)
		}
		st.send(ka)
		time.Sleep(300 * time.Millisecond)
		if info, err := tcpInfo(st.c); err != nil || info.Unacked == 0 {
			t.Errorf("black-holed: %d segments unacknowledged (%v), want the keepalive unacknowledged", info.Unacked, err)
		}
		// A new connection completes the handshake (the kernel takes no
		// filter on a listener) and then nothing it sends is acknowledged.
		up := s.Stats().ConnectionsUp
		late := dial(t, s.Addr())
		// Until the simulator accepts it, the kernel acknowledges for
		// the connection in the accept queue.
		waitFor(t, "the new connection accepted", func() bool { return s.Stats().ConnectionsUp > up })
		late.send(ka)
		time.Sleep(300 * time.Millisecond)
		if info, err := tcpInfo(late.c); err != nil || info.Unacked == 0 {
			t.Errorf("new connection while black-holed: %d segments unacknowledged (%v)", info.Unacked, err)
		}
		if err := s.SetMode(Serving); err != nil {
			t.Fatal(err)
		}
		// The retransmitted keepalive gets through now and is answered.
		st.expect(sccp.KeepAliveAckID)
	})

	t.Run("stopped", func(t *testing.T) {
		// An unregistered connection is reset too, but is not a device
		// the stop ended.
		accepted := s.Stats().Accepted
		idle := dial(t, s.Addr())
		waitFor(t, "the idle connection accepted", func() bool { return s.Stats().Accepted > accepted })
		before := time.Now()
		resets, err := s.Stop()
		if err != nil {
			t.Fatal(err)
		}
		if len(resets) != 1 || resets[0].Device != "SEP001B54000004" || resets[0].At.Before(before) || resets[0].At.After(time.Now()) {
			t.Errorf("stop reset %+v, want the registered device, at the stop", resets)
		}
		if _, err := idle.read(2 * time.Second); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("stopped, unregistered connection: %v, want a reset", err)
		}
		if _, err := st.read(2 * time.Second); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("stopped: %v, want a reset", err)
		}
		if _, err := net.DialTimeout("tcp", s.Addr(), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("connect while stopped: %v, want refused", err)
		}
		if err := s.SetMode(Serving); err != nil {
			t.Fatal(err)
		}
		again := dial(t, s.Addr())
		again.send(r.AppendFrame(nil, 0))
		again.expect(sccp.RegisterAckID)
	})
}

func tcpInfo(c *net.TCPConn) (*unix.TCPInfo, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var info *unix.TCPInfo
	var ierr error
	err = rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if err == nil {
		err = ierr
	}
	if info == nil {
		info = &unix.TCPInfo{}
	}
	return info, err
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPhoneFailover: a phone registers with the first CallManager of its
// list, and when that one is stopped it registers with the second.
func TestPhoneFailover(t *testing.T) {
	a := start(t, Config{Addr: "127.0.0.3:2000", KeepAlive: time.Second})
	b := start(t, Config{Addr: "127.0.0.4:2000", KeepAlive: time.Second})
	events := make(chan PhoneEvent, 16)
	p, err := NewPhone(PhoneConfig{Register: register("SEP001B54000005"), Servers: []string{a.Addr(), b.Addr()},
		RetryDelay: 50 * time.Millisecond, OnEvent: func(e PhoneEvent) { events <- e }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); p.Run(ctx) }()
	defer wg.Wait()
	defer cancel()
	next := func() PhoneEvent {
		t.Helper()
		select {
		case e := <-events:
			return e
		case <-time.After(5 * time.Second):
			t.Fatal("no phone event")
			return PhoneEvent{}
		}
	}
	first := next()
	if first.Kind != EventRegistered || first.Server != a.Addr() || first.KeepAlive != time.Second || first.Dialed.IsZero() || first.Dialed.After(first.At) {
		t.Fatalf("first event %+v", first)
	}
	resets, err := a.Stop()
	if err != nil || len(resets) != 1 || resets[0].Device != "SEP001B54000005" {
		t.Fatalf("stop: %+v, %v", resets, err)
	}
	if e := next(); e.Kind != EventLost || !errors.Is(e.Err, syscall.ECONNRESET) {
		t.Fatalf("after stop: %+v", e)
	}
	if e := next(); e.Kind != EventFailed || e.Server != a.Addr() {
		t.Fatalf("retry of the stopped one: %+v", e)
	}
	// The registration that replaces the one the stop ended is on a
	// connection opened after the reset.
	if e := next(); e.Kind != EventRegistered || e.Server != b.Addr() || e.Dialed.Before(resets[0].At) {
		t.Fatalf("failover: %+v (the stop reset at %v)", e, resets[0].At)
	}
	if st := p.State(); !st.Registered || st.Server != b.Addr() || st.Registrations != 2 {
		t.Errorf("state %+v", st)
	}
	// Keepalives flow: b counts them.
	waitFor(t, "keepalives", func() bool { return b.Stats().KeepAlives >= 1 })
}

// TestPhoneGivesUpOnHungServer: only after MissedKeepAlives unanswered
// keepalives does a phone leave a hung CallManager (what the proxy is
// there to shorten).
func TestPhoneGivesUpOnHungServer(t *testing.T) {
	a := start(t, Config{Addr: "127.0.0.3:2001", KeepAlive: time.Second})
	events := make(chan PhoneEvent, 16)
	p, err := NewPhone(PhoneConfig{Register: register("SEP001B54000006"), Servers: []string{a.Addr()},
		MissedKeepAlives: 2, OnEvent: func(e PhoneEvent) { events <- e }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	e := <-events
	if e.Kind != EventRegistered {
		t.Fatalf("%+v", e)
	}
	a.SetMode(Hung)
	hungAt := time.Now()
	select {
	case e = <-events:
	case <-time.After(6 * time.Second):
		t.Fatal("phone never gave up")
	}
	took := time.Since(hungAt)
	if e.Kind != EventLost || took < 2*time.Second {
		t.Errorf("%v after %v, want lost after about 3 s (two missed keepalives, then the third deadline)", e, took)
	}
}

// TestTshark: what the phone sends and the simulator answers, as they
// put it on the wire, is skinny to Wireshark without a warning.
func TestTshark(t *testing.T) {
	s := start(t, Config{Addr: "127.0.0.2:2004", KeepAlive: time.Second,
		Known: func(d string) bool { return d == "SEP001B54000007" }})
	rec := &recorder{}
	cfg := PhoneConfig{Register: register("SEP001B54000007"), Version: sccp.Version22, Servers: []string{s.Addr()},
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			return &recordingConn{Conn: c, rec: rec}, nil
		}}
	p, err := NewPhone(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	waitFor(t, "a keepalive answered", func() bool { return s.Stats().KeepAlives >= 1 && len(rec.chunks()) >= 4 })
	cancel()
	<-done
	unknown := dial(t, s.Addr())
	r := register("SEP001B54000008")
	unknown.send(r.AppendFrame(nil, 0))
	unknown.expect(sccp.RegisterRejectID)

	conv := wiretest.NewTCPConversation(t, "10.0.0.10", 51000, "10.0.0.1", sccp.Port)
	for _, c := range rec.chunks() {
		conv.Send(c.fromPhone, c.b)
	}
	rej := wiretest.NewTCPConversation(t, "10.0.0.11", 51001, "10.0.0.1", sccp.Port)
	rej.Send(true, r.AppendFrame(nil, 0))
	rej.Send(false, (&sccp.RegisterReject{Text: "Device Unknown"}).AppendFrame(nil, 0))
	frames := append(conv.Frames(), rej.Frames()...)
	got := wiretest.Tshark(t, frames, "skinny.messageId")
	var ids []string
	for i, f := range got {
		if p := f.Problems(); len(p) > 0 {
			t.Errorf("frame %d: %q", i, p)
		}
		ids = append(ids, f["skinny.messageId"]...)
	}
	// Register, RegisterAck, CapabilitiesReq, KeepAlive, KeepAliveAck ...
	// then the rejected station's Register and RegisterReject.
	want := []string{"1", "129", "155", "0", "256"}
	if len(ids) < len(want)+2 || fmt.Sprint(ids[:5]) != fmt.Sprint(want) || fmt.Sprint(ids[len(ids)-2:]) != "[1 157]" {
		t.Errorf("tshark saw message IDs %v", ids)
	}
}

type chunk struct {
	fromPhone bool
	b         []byte
}

type recorder struct {
	mu sync.Mutex
	cs []chunk
}

func (r *recorder) add(fromPhone bool, b []byte) {
	r.mu.Lock()
	r.cs = append(r.cs, chunk{fromPhone, append([]byte(nil), b...)})
	r.mu.Unlock()
}

func (r *recorder) chunks() []chunk {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]chunk(nil), r.cs...)
}

// recordingConn records each write of the phone and each read of what the
// simulator sent.
type recordingConn struct {
	net.Conn
	rec *recorder
}

func (c *recordingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.rec.add(true, b[:n])
	return n, err
}

func (c *recordingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.rec.add(false, b[:n])
	}
	return n, err
}
