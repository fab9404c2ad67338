package cmsim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/phoneboot/phoneboot/userspace/sccp"
)

// PhoneConfig is one simulated SCCP phone.
type PhoneConfig struct {
	Register sccp.Register // what it registers with; DeviceName is required
	Version  uint32        // header version of what it sends
	// Servers is the CallManager list from the phone's configuration
	// file, highest priority first.
	Servers []string
	// Dial opens a connection; nil uses net.Dialer in the calling
	// thread's network namespace.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// DialTimeout bounds a connection attempt; 0 means 5 s.
	DialTimeout time.Duration
	// RegisterTimeout bounds the wait for RegisterAck; 0 means 10 s.
	RegisterTimeout time.Duration
	// MissedKeepAlives is how many keepalives in a row may go unanswered
	// before the phone gives up on its CallManager; 0 means 3, as Cisco
	// phones do (which is why a hung CallManager costs them 90 s).
	MissedKeepAlives int
	// RetryDelay is the pause after a failed attempt before the next
	// server is tried; 0 means 1 s.
	RetryDelay time.Duration
	// OnEvent, if set, is called on every change (from the phone's
	// goroutine: keep it short).
	OnEvent func(PhoneEvent)
}

// EventKind is what happened to a phone.
type EventKind int

const (
	EventRegistered EventKind = iota
	EventRejected
	EventLost   // a registered connection ended
	EventFailed // an attempt to register failed
)

func (k EventKind) String() string {
	return [...]string{"registered", "rejected", "lost", "failed"}[k]
}

// PhoneEvent is one change of a phone's state.
type PhoneEvent struct {
	Device    string
	Kind      EventKind
	Server    string
	At        time.Time
	KeepAlive time.Duration // from RegisterAck, for EventRegistered
	// Dialed is when the registration's connection was opened, for
	// EventRegistered: a registration on a connection opened after a
	// server went away is not one that server ended.
	Dialed time.Time
	Err    error // why, for EventLost and EventFailed
}

// PhoneState is a phone's state now.
type PhoneState struct {
	Registered    bool
	Server        string
	Since         time.Time // of the last change
	Registrations int       // RegisterAcks received so far
	LastError     string
}

// Phone registers with the first CallManager of its list that accepts it,
// keeps alive, and on losing the connection starts again from the top of
// the list.
type Phone struct {
	cfg PhoneConfig
	mu  sync.Mutex
	st  PhoneState
}

// NewPhone checks the configuration.
func NewPhone(cfg PhoneConfig) (*Phone, error) {
	if cfg.Register.DeviceName == "" {
		return nil, errors.New("cmsim: phone without a device name")
	}
	if len(cfg.Servers) == 0 {
		return nil, fmt.Errorf("cmsim: phone %s without a CallManager", cfg.Register.DeviceName)
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.RegisterTimeout == 0 {
		cfg.RegisterTimeout = 10 * time.Second
	}
	if cfg.MissedKeepAlives == 0 {
		cfg.MissedKeepAlives = 3
	}
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = time.Second
	}
	if cfg.Dial == nil {
		cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	return &Phone{cfg: cfg}, nil
}

// State is the phone's state now.
func (p *Phone) State() PhoneState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

func (p *Phone) event(ev PhoneEvent) {
	ev.Device, ev.At = p.cfg.Register.DeviceName, time.Now()
	p.mu.Lock()
	p.st.Registered = ev.Kind == EventRegistered
	p.st.Server, p.st.Since = ev.Server, ev.At
	if ev.Kind == EventRegistered {
		p.st.Registrations++
	}
	if ev.Err != nil {
		p.st.LastError = ev.Err.Error()
	}
	p.mu.Unlock()
	if p.cfg.OnEvent != nil {
		p.cfg.OnEvent(ev)
	}
}

// Run registers and stays registered until ctx ends.
func (p *Phone) Run(ctx context.Context) error {
	i := 0
	for ctx.Err() == nil {
		server := p.cfg.Servers[i]
		registered, err := p.session(ctx, server)
		if ctx.Err() != nil {
			return nil
		}
		if registered {
			p.event(PhoneEvent{Kind: EventLost, Server: server, Err: err})
			i = 0 // start again from the top of the list, at once
			continue
		}
		if errors.Is(err, errRejected) {
			p.event(PhoneEvent{Kind: EventRejected, Server: server, Err: err})
		} else {
			p.event(PhoneEvent{Kind: EventFailed, Server: server, Err: err})
		}
		i = (i + 1) % len(p.cfg.Servers)
		select {
		case <-ctx.Done():
		case <-time.After(p.cfg.RetryDelay):
		}
	}
	return nil
}

var errRejected = errors.New("RegisterReject")

// session is one connection: register, then keep alive until it ends.
// registered says whether RegisterAck came.
func (p *Phone) session(ctx context.Context, server string) (registered bool, err error) {
	dialed := time.Now()
	dctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	c, err := p.cfg.Dial(dctx, server)
	cancel()
	if err != nil {
		return false, err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	v := p.cfg.Version
	if _, err := c.Write(p.cfg.Register.AppendFrame(make([]byte, 0, 192), v)); err != nil {
		return false, err
	}
	r := sccp.NewReader(c)
	c.SetReadDeadline(time.Now().Add(p.cfg.RegisterTimeout))
	var keepalive time.Duration
	for keepalive == 0 {
		f, err := r.ReadFrame()
		if err != nil {
			return false, fmt.Errorf("waiting for RegisterAck: %w", err)
		}
		switch f.ID {
		case sccp.RegisterAckID:
			ack, err := sccp.DecodeRegisterAck(f.Body)
			if err != nil {
				return false, err
			}
			keepalive = time.Duration(max(ack.KeepAliveInterval, 1)) * time.Second
		case sccp.RegisterRejectID:
			rej, _ := sccp.DecodeRegisterReject(f.Body)
			return false, fmt.Errorf("%w: %s", errRejected, rej.Text)
		}
	}
	p.event(PhoneEvent{Kind: EventRegistered, Server: server, KeepAlive: keepalive, Dialed: dialed})

	// One goroutine per phone: the read deadline is the next keepalive.
	ka := sccp.AppendEmpty(nil, v, sccp.KeepAliveID)
	next := time.Now().Add(keepalive)
	unanswered := 0
	for {
		c.SetReadDeadline(next)
		f, err := r.ReadFrame()
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				return true, err
			}
			if unanswered >= p.cfg.MissedKeepAlives {
				return true, fmt.Errorf("%d keepalives unanswered", unanswered)
			}
			if _, err := c.Write(ka); err != nil {
				return true, err
			}
			unanswered++
			next = next.Add(keepalive)
			continue
		}
		if f.ID == sccp.KeepAliveAckID {
			unanswered = 0
		}
	}
}
