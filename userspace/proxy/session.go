package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/sccp"
)

// session is one phone connection and, once chosen, its CallManager's.
type session struct {
	p     *Proxy
	id    uint64
	proto Protocol
	port  int // upstream port
	phone *net.TCPConn

	mu        sync.Mutex // guards the fields below
	up        *net.TCPConn
	cm        *upstream
	device    string
	devType   uint32
	load      string
	aor       string // SIP
	contact   string // SIP
	state     State
	since     time.Time
	keepalive time.Duration
	done      bool
	reason    closeReason
}

func (p *Proxy) newSession(l *listener, c *net.TCPConn) *session {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.nextID++
	s := &session{p: p, id: p.nextID, proto: l.cfg.Protocol, port: l.port, phone: c, state: StateReading, since: time.Now()}
	p.sessions[s.id] = s
	p.table.move(tableKey{}, tableKey{StateReading, nil})
	p.st.accepted[protoIndex(s.proto)].Add(1)
	p.st.active.Add(1)
	return s
}

func (s *session) row() Registration {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := Registration{ID: s.id, Device: s.device, Protocol: s.proto, Phone: s.phone.RemoteAddr().String(),
		State: s.state, Since: s.since, DeviceType: s.devType, Load: s.load, KeepAlive: s.keepalive,
		AOR: s.aor, Contact: s.contact}
	if s.cm != nil {
		r.CallManager = s.cm.cfg.Name
	}
	return r
}

func (s *session) setState(st State) {
	s.mu.Lock()
	s.moveLocked(st, s.cm)
	s.mu.Unlock()
}

// moveLocked puts the session in state st toward cm, and its row's count
// with it; s.mu is held.
func (s *session) moveLocked(st State, cm *upstream) {
	if !s.done {
		s.p.table.move(tableKey{s.state, s.cm}, tableKey{st, cm})
	}
	s.state, s.since, s.cm = st, time.Now(), cm
}

// close ends the session once: both sockets closed, the row removed, the
// reason counted. A CallManager failure the proxy detected resets the
// phone's side, so the phone learns at once even with data still queued
// toward it; a CallManager that closed its side (after a RegisterReject,
// say) gets a plain close, which delivers what it sent last.
func (s *session) close(r closeReason) {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return
	}
	s.done, s.reason = true, r
	up, cm := s.up, s.cm
	s.p.table.move(tableKey{s.state, s.cm}, tableKey{})
	s.mu.Unlock()
	// The books first: whoever sees the connection closed finds it out
	// of the table and counted.
	p := s.p
	p.mu.Lock()
	delete(p.sessions, s.id)
	p.mu.Unlock()
	p.st.active.Add(-1)
	p.st.closed[r].Add(1)
	if up != nil {
		cm.sessions.Add(-1)
	}
	switch r {
	case reasonUpstreamDown, reasonUpstreamSilent:
		s.phone.SetLinger(0)
	}
	s.phone.Close()
	if up != nil {
		up.Close()
	}
}

func (s *session) closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

// firstBufSize holds any first message: an SCCP header and MaxBody, or a
// SIP head.
const firstBufSize = sccp.HeaderLen + sccp.MaxBody + maxSIPHeader

// handle runs one session from accept to close.
func (p *Proxy) handle(ctx context.Context, s *session) {
	buf := make([]byte, 0, 512)
	watch := false
	var err error
	switch s.proto {
	case SCCP:
		buf, watch, err = s.readSCCP(buf)
	case SIP:
		buf, watch, err = s.readSIP(buf)
	}
	if err != nil {
		p.log.Debug("first message", "phone", s.phone.RemoteAddr(), "protocol", s.proto, "error", err)
		s.close(reasonBadFirst)
		return
	}
	s.phone.SetReadDeadline(time.Time{})
	if !p.connect(ctx, s) {
		return
	}
	s.mu.Lock()
	up := s.up
	s.mu.Unlock()
	if len(buf) > 0 {
		if _, err := up.Write(buf); err != nil {
			s.close(reasonUpstreamClosed)
			return
		}
	}
	if watch {
		s.setState(StateRegistering)
	} else {
		s.setState(StateConnected)
	}
	// Phone to CallManager: spliced from here on.
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		s.close(copyReason(relay(up, s.phone), false))
	}()
	if watch {
		var err error
		if s.proto == SCCP {
			err = s.watchSCCP(up)
		} else {
			err = s.watchSIP(up)
		}
		if err != nil {
			r := reasonUpstreamClosed
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				r = reasonRegisterTimeout
			} else if errors.Is(err, errPhoneWrite) {
				r = reasonPhoneClosed
			}
			s.close(r)
			return
		}
		up.SetReadDeadline(time.Time{})
	}
	// CallManager to phone: spliced.
	s.close(copyReason(relay(s.phone, up), true))
}

var errPhoneWrite = errors.New("write to phone")

// copyReason names the side that ended a relay direction: relay returns
// nil at the source's EOF and the error of whichever side failed.
func copyReason(err error, fromUpstream bool) closeReason {
	if err == nil {
		if fromUpstream {
			return reasonUpstreamClosed
		}
		return reasonPhoneClosed
	}
	if errors.Is(err, syscall.ETIMEDOUT) {
		return reasonUpstreamSilent // TCP_USER_TIMEOUT: the CallManager stopped acknowledging
	}
	// EPIPE is a write into a closed destination; anything else (a
	// reset, most often) is blamed on the source.
	if errors.Is(err, syscall.EPIPE) {
		fromUpstream = !fromUpstream
	}
	if fromUpstream {
		return reasonUpstreamClosed
	}
	return reasonPhoneClosed
}

// readSCCP reads the phone's first SCCP message whole, within
// HeaderTimeout, and records a RegisterMessage. Bytes past the first
// message are kept and forwarded with it.
func (s *session) readSCCP(buf []byte) ([]byte, bool, error) {
	s.phone.SetReadDeadline(time.Now().Add(s.p.cfg.HeaderTimeout))
	for {
		f, n, err := sccp.NextFrame(buf)
		if err != nil {
			return nil, false, err
		}
		if n > 0 {
			if f.ID != sccp.RegisterID {
				return buf, false, nil // a KeepAlive first (a standby connection): relay it
			}
			m, err := sccp.DecodeRegister(f.Body)
			if err != nil {
				return nil, false, err
			}
			s.mu.Lock()
			s.device, s.devType, s.load = printable(m.DeviceName), m.DeviceType, printable(m.LoadInfo)
			s.mu.Unlock()
			return buf, true, nil
		}
		if buf, err = readMore(s.phone, buf); err != nil {
			return nil, false, err
		}
	}
}

// readSIP reads the phone's first SIP head within HeaderTimeout and
// records a REGISTER: its device (a Cisco phone's Contact parameter, or
// else the AOR), AOR (To) and Contact. Other requests are relayed without
// a watch.
func (s *session) readSIP(buf []byte) ([]byte, bool, error) {
	s.phone.SetReadDeadline(time.Now().Add(s.p.cfg.HeaderTimeout))
	for {
		head, _, n, err := sipHead(buf)
		if err != nil {
			return nil, false, err
		}
		if n > 0 {
			m, err := parseSIPHead(head)
			if err != nil {
				return nil, false, err
			}
			if m.method != "REGISTER" {
				return buf, false, nil
			}
			dev := m.device
			if dev == "" {
				dev = m.to
			}
			s.mu.Lock()
			s.device, s.aor, s.contact = printable(dev), printable(m.to), printable(m.contact)
			s.mu.Unlock()
			return buf, true, nil
		}
		if buf, err = readMore(s.phone, buf); err != nil {
			return nil, false, err
		}
	}
}

// readMore appends what the connection has to buf, up to firstBufSize.
func readMore(c net.Conn, buf []byte) ([]byte, error) {
	if len(buf) >= firstBufSize {
		return nil, errors.New("first message too long")
	}
	if cap(buf)-len(buf) < 512 {
		nb := make([]byte, len(buf), min(2*cap(buf)+512, firstBufSize))
		copy(nb, buf)
		buf = nb
	}
	n, err := c.Read(buf[len(buf):cap(buf)])
	buf = buf[:len(buf)+n]
	if err != nil {
		if errors.Is(err, io.EOF) && n > 0 {
			return buf, nil
		}
		return nil, err
	}
	return buf, nil
}

// watchSCCP forwards the CallManager's messages to the phone until
// RegisterAck or RegisterReject, within RegisterTimeout. What arrives is
// looked at before it is forwarded, so a phone that has its RegisterAck
// finds itself registered in the table and the counters.
func (s *session) watchSCCP(up *net.TCPConn) error {
	up.SetReadDeadline(time.Now().Add(s.p.cfg.RegisterTimeout))
	buf := make([]byte, 0, 512)
	for {
		before := len(buf)
		var err error
		if buf, err = readMore(up, buf); err != nil {
			return err
		}
		done, rest := s.scanSCCP(buf)
		if err := s.toPhone(buf[before:]); err != nil {
			return err
		}
		if done {
			return nil
		}
		// Keep only the partial message already forwarded, for parsing.
		buf = append(buf[:0], rest...)
	}
}

// scanSCCP looks through the whole messages in b for the answer to the
// registration and records it; done is true once it is found (or the
// stream is not SCCP the proxy can follow: then the phone judges it).
func (s *session) scanSCCP(b []byte) (done bool, rest []byte) {
	for {
		f, n, err := sccp.NextFrame(b)
		if err != nil {
			return true, nil
		}
		if n == 0 {
			return false, b
		}
		switch f.ID {
		case sccp.RegisterAckID:
			ack, err := sccp.DecodeRegisterAck(f.Body)
			if err == nil {
				s.mu.Lock()
				s.keepalive = time.Duration(ack.KeepAliveInterval) * time.Second
				s.mu.Unlock()
			}
			s.setState(StateRegistered)
			s.p.st.registered.Add(1)
			return true, nil
		case sccp.RegisterRejectID:
			s.setState(StateRejected)
			s.p.st.rejected.Add(1)
			return true, nil
		}
		b = b[n:]
	}
}

// watchSIP forwards the CallManager's messages until the final answer to
// REGISTER, within RegisterTimeout, looking at them before forwarding as
// watchSCCP does.
func (s *session) watchSIP(up *net.TCPConn) error {
	up.SetReadDeadline(time.Now().Add(s.p.cfg.RegisterTimeout))
	var w sipWatch
	buf := make([]byte, 0, 1024)
	for {
		before := len(buf)
		var err error
		if buf, err = readMore(up, buf); err != nil {
			return err
		}
		n, status, ferr := w.feed(buf)
		switch {
		case ferr != nil: // malformed: relay it all the same
		case status >= 200 && status < 300:
			s.setState(StateRegistered)
			s.p.st.registered.Add(1)
		case status >= 300:
			s.setState(StateRejected)
			s.p.st.rejected.Add(1)
		}
		if err := s.toPhone(buf[before:]); err != nil {
			return err
		}
		if ferr != nil || status >= 200 {
			return nil
		}
		buf = append(buf[:0], buf[n:]...)
	}
}

// toPhone forwards bytes from the CallManager as they came.
func (s *session) toPhone(b []byte) error {
	if _, err := s.phone.Write(b); err != nil {
		return errors.Join(errPhoneWrite, err)
	}
	return nil
}

// connect chooses a CallManager, waits for admission and dials it; on a
// failure it tries the next healthy one. false means the session was
// closed.
func (p *Proxy) connect(ctx context.Context, s *session) bool {
	var tried uint8
	for {
		u := p.pick(tried, s.proto)
		if u == nil {
			s.close(reasonNoUpstream)
			return false
		}
		tried |= 1 << u.idx
		s.mu.Lock()
		s.moveLocked(StateQueued, u)
		s.mu.Unlock()
		queued, err := u.bucket.wait(ctx)
		if queued {
			p.st.queued.Add(1)
		}
		if err != nil {
			if errors.Is(err, errQueueFull) {
				s.close(reasonQueueFull)
			} else {
				s.close(reasonShutdown)
			}
			return false
		}
		hc := u.check(s.proto)
		if !hc.healthy.Load() && p.anyHealthy(s.proto) {
			tried &^= 1 << u.idx // went down while we waited: choose again
			continue
		}
		c, err := p.dial(ctx, u.addr(s.port))
		if err != nil {
			p.st.dialFailures.Add(1)
			hc.trouble()
			p.log.Debug("dial CallManager", "cm", u.cfg.Name, "error", err)
			continue
		}
		// Attach under the proxy lock, the same lock a health transition
		// takes to close a CallManager's sessions: a session is either
		// attached to a healthy CallManager or closed with the rest.
		p.mu.Lock()
		s.mu.Lock()
		ok := !s.done && (hc.healthy.Load() || !p.anyHealthy(s.proto))
		if ok {
			s.up = c
			u.sessions.Add(1)
		}
		s.mu.Unlock()
		p.mu.Unlock()
		if !ok {
			c.Close()
			if s.closed() {
				return false
			}
			continue
		}
		return true
	}
}

// dial connects to a CallManager with TCP_USER_TIMEOUT set, so that data
// it stops acknowledging (a black-holed path) aborts the connection. No
// TCP keepalive: the health checks, the sweep and the user timeout watch
// the CallManager side.
func (p *Proxy) dial(ctx context.Context, addr string) (*net.TCPConn, error) {
	c, err := p.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func newDialer(cfg *Config) *net.Dialer {
	ut := int(cfg.UserTimeout / time.Millisecond)
	return &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: -1, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, ut)
		})
		return errors.Join(err, serr)
	}}
}

// printable keeps what a peer sent fit for logs and the table: printable
// ASCII, others as '?'.
func printable(s string) string {
	b := []byte(clip(s))
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	return string(b)
}
