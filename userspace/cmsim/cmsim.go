// Package cmsim simulates what phones and the registration proxy see of a
// CallManager (CUCM): an SCCP server that answers Register with
// RegisterAck (or RegisterReject for a device it does not know), KeepAlive
// with KeepAliveAck and Unregister with UnregisterAck, and drops a station
// that stops sending KeepAlive. For failover tests it can be stopped (its
// connections reset, as a CUCM service stop does), hung (TCP up, nothing
// answered: a process lock-up) or black-holed (nothing a peer sends
// acknowledged, no reset: a lost network path), and brought back.
//
// The package also has the phone's side (Phone), for tests, benchmarks and
// the lab.
package cmsim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/sccp"
)

// Config of one simulated CallManager.
type Config struct {
	Name string // for logs and Stations
	Addr string // listen address, "10.0.0.2:2000"
	// KeepAlive is the interval RegisterAck gives the phone, in whole
	// seconds on the wire (at least 1 s); 0 means 30 s, CUCM's default.
	KeepAlive time.Duration
	// SecondaryKeepAlive is the interval for a standby connection; 0
	// means twice KeepAlive.
	SecondaryKeepAlive time.Duration
	// Known says whether a device may register; nil lets every device
	// in. An unknown device gets RegisterReject "Device Unknown".
	Known func(device string) bool
	// DropAfter drops a connection that sends nothing for this long, as
	// CUCM unregisters a phone whose keepalives stop; 0 means three
	// keepalive intervals.
	DropAfter time.Duration
	// RegisterDelay is how long the CallManager takes to answer a
	// Register (CUCM looks the device up in its database first); 0
	// answers at once. Only that connection waits.
	RegisterDelay time.Duration
	// OnRegister, if set, is called for every station registered
	// (from its connection's goroutine: keep it short).
	OnRegister func(device string, remote net.Addr)
}

// Mode is what the server does with what it receives.
type Mode int

const (
	Serving    Mode = iota
	Hung            // connections stay up, nothing is read or answered, nothing is accepted
	BlackHoled      // no segment on a connection is acknowledged (past the handshake); nothing is sent
	Stopped         // the listener is closed and every connection reset
)

func (m Mode) String() string {
	return [...]string{"serving", "hung", "black-holed", "stopped"}[m]
}

// Station is one registered device.
type Station struct {
	Device string
	Remote string
	Since  time.Time
}

// Stats counts what the server did.
type Stats struct {
	Accepted      uint64
	Registered    uint64
	Rejected      uint64
	KeepAlives    uint64
	Unregistered  uint64
	Dropped       uint64 // silent past DropAfter
	Replaced      uint64 // a device registered again on a new connection
	Malformed     uint64
	ResetOnStop   uint64
	ConnectionsUp int64
}

// Server is one simulated CallManager.
type Server struct {
	cfg       Config
	log       *slog.Logger
	keepalive uint32 // seconds
	secondary uint32

	mu       sync.Mutex
	ln       *net.TCPListener // nil while stopped
	mode     Mode
	changed  chan struct{} // closed (and replaced) at every mode change and at Close
	conns    map[*conn]struct{}
	stations map[string]*conn
	closed   bool
	wake     chan struct{} // wakes Run's accept loop for a new listener

	accepted, registered, rejected, keepalives, unregistered atomic.Uint64
	dropped, replaced, malformed, resetOnStop                atomic.Uint64
	up                                                       atomic.Int64
}

type conn struct {
	c      *net.TCPConn
	device string // once registered
	since  time.Time
}

// New listens on cfg.Addr in the calling thread's network namespace.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 30 * time.Second
	}
	if cfg.KeepAlive < time.Second {
		return nil, fmt.Errorf("cmsim %s: keepalive %s below the protocol's 1 s", cfg.Name, cfg.KeepAlive)
	}
	if cfg.SecondaryKeepAlive == 0 {
		cfg.SecondaryKeepAlive = 2 * cfg.KeepAlive
	}
	if cfg.DropAfter == 0 {
		cfg.DropAfter = 3 * cfg.KeepAlive
	}
	s := &Server{cfg: cfg, log: log.With("cm", cfg.Name),
		keepalive: uint32(cfg.KeepAlive / time.Second), secondary: uint32(cfg.SecondaryKeepAlive / time.Second),
		conns: map[*conn]struct{}{}, stations: map[string]*conn{}, changed: make(chan struct{}), wake: make(chan struct{}, 1)}
	if err := s.listen(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) listen() error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("cmsim %s: %w", s.cfg.Name, err)
	}
	s.ln = ln.(*net.TCPListener)
	return nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.cfg.Addr }

// Run accepts connections until ctx ends or Close; while stopped it waits
// for Start.
func (s *Server) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		s.mu.Lock()
		ln, closed := s.ln, s.closed
		s.mu.Unlock()
		if closed {
			return nil
		}
		if ln == nil {
			select {
			case <-s.wake:
			case <-ctx.Done():
				return nil
			}
			continue
		}
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				continue // stopped or closed: the loop's head tells which
			}
			// EMFILE and the like: back off instead of spinning (a lab of
			// 10,000 phones spent minutes of CPU here).
			s.log.Warn("accept", "error", err)
			select {
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
			}
			continue
		}
		s.accepted.Add(1)
		cn := &conn{c: c}
		s.mu.Lock()
		if s.closed || s.mode == Stopped {
			s.mu.Unlock()
			c.SetLinger(0)
			c.Close()
			continue
		}
		s.conns[cn] = struct{}{}
		if s.mode == BlackHoled {
			if err := blackHole(c, true); err != nil {
				s.log.Warn("black hole filter", "on", true, "error", err)
			}
		}
		s.mu.Unlock()
		s.up.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serve(cn)
		}()
	}
}

// Close stops the server and closes every connection.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.ln != nil {
		s.ln.Close()
	}
	for c := range s.conns {
		c.c.Close()
	}
	close(s.changed) // let hung connections see the close
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// Mode is the current mode.
func (s *Server) Mode() Mode {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mode
}

// SetMode changes what the server does. Serving from Stopped listens
// again on the same address; Stopped closes the listener and resets
// every connection; Hung and BlackHoled keep connections but answer
// nothing, and BlackHoled also drops every segment that arrives on a
// connection, so the peer's TCP sees no acknowledgement and no reset.
func (s *Server) SetMode(m Mode) error {
	_, err := s.setMode(m)
	return err
}

// Reset is a registered device whose connection Stop reset, and when.
type Reset struct {
	Device string
	At     time.Time
}

// Stop is SetMode(Stopped) that also says which devices were registered
// when the server stopped: a phone can read its RegisterAck after the
// stop's reset, so only the server knows which registrations it ended.
func (s *Server) Stop() ([]Reset, error) { return s.setMode(Stopped) }

func (s *Server) setMode(m Mode) (resets []Reset, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("cmsim: closed")
	}
	old := s.mode
	if old == m {
		return nil, nil
	}
	if old == BlackHoled {
		s.setBlackHole(false)
	}
	switch m {
	case Serving:
		if old == Stopped {
			if err := s.listen(); err != nil {
				return nil, err
			}
			select {
			case s.wake <- struct{}{}:
			default:
			}
		}
	case Stopped:
		if s.ln != nil {
			s.ln.Close()
			s.ln = nil
		}
		for c := range s.conns {
			// The time before the reset: a phone that sees it can
			// connect again within microseconds, and its new
			// connection must be later than the reset's time.
			at := time.Now()
			c.c.SetLinger(0) // RST, as a stopped CUCM service sends
			c.c.Close()
			s.resetOnStop.Add(1)
			if c.device != "" && s.stations[c.device] == c {
				resets = append(resets, Reset{Device: c.device, At: at})
			}
		}
	case Hung, BlackHoled:
		if m == BlackHoled {
			s.setBlackHole(true)
		}
	}
	s.mode = m
	close(s.changed)
	s.changed = make(chan struct{})
	s.log.Info("mode", "from", old.String(), "to", m.String())
	return resets, nil
}

// setBlackHole attaches (or detaches) a socket filter that drops every
// segment on every connection: TCP discards a segment its socket filter
// refuses before acknowledging it. The kernel refuses socket filters on
// listeners (EOPNOTSUPP), so a new connection still completes its
// handshake, and gets the filter when accepted: nothing after the
// handshake is acknowledged. Called with s.mu held.
func (s *Server) setBlackHole(on bool) {
	for c := range s.conns {
		if err := blackHole(c.c, on); err != nil {
			s.log.Warn("black hole filter", "on", on, "error", err)
		}
	}
}

var dropAll = func() []unix.SockFilter {
	raw, err := bpf.Assemble([]bpf.Instruction{bpf.RetConstant{Val: 0}})
	if err != nil {
		panic(err) // a constant program
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out
}()

func blackHole(sc syscall.Conn, on bool) error {
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	cerr := rc.Control(func(fd uintptr) {
		if on {
			prog := unix.SockFprog{Len: uint16(len(dropAll)), Filter: &dropAll[0]}
			err = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog)
		} else {
			err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DETACH_FILTER, 0)
		}
	})
	return errors.Join(cerr, err)
}

// Stations lists the registered devices, sorted by name.
func (s *Server) Stations() []Station {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Station, 0, len(s.stations))
	for d, c := range s.stations {
		out = append(out, Station{Device: d, Remote: c.c.RemoteAddr().String(), Since: c.since})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Device < out[j].Device })
	return out
}

// Registered is how many devices are registered now.
func (s *Server) Registered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.stations)
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{
		Accepted: s.accepted.Load(), Registered: s.registered.Load(), Rejected: s.rejected.Load(),
		KeepAlives: s.keepalives.Load(), Unregistered: s.unregistered.Load(), Dropped: s.dropped.Load(),
		Replaced: s.replaced.Load(), Malformed: s.malformed.Load(), ResetOnStop: s.resetOnStop.Load(),
		ConnectionsUp: s.up.Load(),
	}
}

// waitServing blocks while the server is hung or black-holed; false means
// the connection must go (stopped or closed).
func (s *Server) waitServing() bool {
	for {
		s.mu.Lock()
		mode, changed, closed := s.mode, s.changed, s.closed
		s.mu.Unlock()
		if closed || mode == Stopped {
			return false
		}
		if mode == Serving {
			return true
		}
		<-changed
	}
}

func (s *Server) serve(cn *conn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, cn)
		if cn.device != "" && s.stations[cn.device] == cn {
			delete(s.stations, cn.device)
		}
		s.mu.Unlock()
		cn.c.Close()
		s.up.Add(-1)
	}()
	r := sccp.NewReader(cn.c)
	out := make([]byte, 0, 128)
	for {
		if !s.waitServing() {
			return
		}
		cn.c.SetReadDeadline(time.Now().Add(s.cfg.DropAfter))
		f, err := r.ReadFrame()
		if err != nil {
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				if !s.waitServing() {
					return
				}
				if s.Mode() != Serving {
					continue // hung while waiting: not the phone's silence
				}
				s.dropped.Add(1)
				s.log.Debug("station silent, dropped", "device", cn.device)
			case errors.Is(err, sccp.ErrMalformed):
				s.malformed.Add(1)
				s.log.Debug("malformed message", "remote", cn.c.RemoteAddr(), "error", err)
			}
			return
		}
		if !s.waitServing() {
			return // what arrived while hung is never answered
		}
		out = out[:0]
		switch f.ID {
		case sccp.KeepAliveID:
			s.keepalives.Add(1)
			out = sccp.AppendEmpty(out, f.Version, sccp.KeepAliveAckID)
		case sccp.RegisterID:
			if d := s.cfg.RegisterDelay; d > 0 {
				time.Sleep(d)
			}
			var keep bool
			out, keep = s.register(cn, f, out)
			if !keep {
				cn.c.Write(out)
				return
			}
		case sccp.UnregisterID:
			s.unregistered.Add(1)
			out = (&sccp.UnregisterAck{}).AppendFrame(out, f.Version)
			cn.c.Write(out)
			return
		}
		if len(out) > 0 {
			if _, err := cn.c.Write(out); err != nil {
				return
			}
		}
	}
}

// register answers a RegisterMessage; keep false closes the connection
// after the answer.
func (s *Server) register(cn *conn, f sccp.Frame, out []byte) ([]byte, bool) {
	m, err := sccp.DecodeRegister(f.Body)
	if err != nil {
		s.malformed.Add(1)
		return out, false
	}
	if s.cfg.Known != nil && !s.cfg.Known(m.DeviceName) {
		s.rejected.Add(1)
		return (&sccp.RegisterReject{Text: "Device Unknown"}).AppendFrame(out, f.Version), false
	}
	s.mu.Lock()
	if old := s.stations[m.DeviceName]; old != nil && old != cn {
		// The device came back on a new connection: the old one is a
		// leftover, as CUCM treats it.
		old.c.SetLinger(0)
		old.c.Close()
		s.replaced.Add(1)
	}
	if cn.device != "" && cn.device != m.DeviceName && s.stations[cn.device] == cn {
		delete(s.stations, cn.device)
	}
	cn.device, cn.since = m.DeviceName, time.Now()
	s.stations[m.DeviceName] = cn
	s.mu.Unlock()
	s.registered.Add(1)
	if s.cfg.OnRegister != nil {
		s.cfg.OnRegister(m.DeviceName, cn.c.RemoteAddr())
	}
	ack := sccp.RegisterAck{KeepAliveInterval: s.keepalive, DateTemplate: "M/D/YA",
		SecondaryKeepAliveInterval: s.secondary, MaxProtocolVersion: min(m.ProtocolVersion, 22)}
	out = ack.AppendFrame(out, f.Version)
	// CUCM asks for the phone's media capabilities right after.
	return sccp.AppendEmpty(out, f.Version, sccp.CapabilitiesReqID), true
}
