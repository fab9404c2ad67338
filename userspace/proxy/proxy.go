// Package proxy is the registration proxy between phones and their
// CallManagers: it listens where phones register (SCCP on 2000, SIP on
// 5060, and their TLS ports 2443 and 5061 passed through untouched),
// sends every new connection to the highest-priority healthy CallManager
// of an ordered group of up to three, and relays the rest of the
// connection in the kernel (splice), never copying it through Go buffers.
//
// What it adds over a plain TCP relay:
//   - it reads the phone's first message (SCCP RegisterMessage or SIP
//     REGISTER) and the CallManager's answer, and keeps a registration
//     table (device, phone, CallManager, state, since);
//   - active health checks with hysteresis, and a CallManager that fails
//     (reset, black-holed, or hung: TCP up, keepalives unanswered) has its
//     phones' connections closed at once, so they re-register within one
//     keepalive interval instead of after three (90 s with CUCM's default);
//   - a token bucket per CallManager for new connections: a boot storm
//     or a failover waits at the proxy instead of overloading the
//     CallManager; the wait queue is bounded;
//   - failback to a returning higher-priority CallManager, paced with
//     jitter.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// State is where a session is in its registration.
type State string

const (
	StateReading     State = "reading"     // waiting for the phone's first message
	StateQueued      State = "queued"      // waiting for admission toward its CallManager
	StateRegistering State = "registering" // first message sent, answer awaited
	StateRegistered  State = "registered"  // RegisterAck or 2xx to REGISTER seen
	StateRejected    State = "rejected"    // RegisterReject or a final refusal seen
	StateConnected   State = "connected"   // relayed without a registration to watch (TLS, or no Register first)
)

// Registration is one row of the registration table.
type Registration struct {
	ID          uint64        `json:"id"`
	Device      string        `json:"device"` // SCCP device name, or SIP device (from Contact) or else AOR; "" when unknown (TLS)
	Protocol    Protocol      `json:"protocol"`
	Phone       string        `json:"phone"`        // the phone's address and port
	CallManager string        `json:"call_manager"` // name; "" before one is chosen
	State       State         `json:"state"`
	Since       time.Time     `json:"since"`                 // of the last state change
	DeviceType  uint32        `json:"device_type,omitempty"` // SCCP
	Load        string        `json:"load,omitempty"`        // SCCP loadInfo
	KeepAlive   time.Duration `json:"keepalive,omitempty"`   // from RegisterAck
	AOR         string        `json:"aor,omitempty"`         // SIP: the REGISTER's To URI, the address of record
	Contact     string        `json:"contact,omitempty"`     // SIP: the REGISTER's Contact URI, where the phone is reached
}

// Proxy is the registration proxy.
type Proxy struct {
	cfg Config
	log *slog.Logger
	lns []*listener
	cms []*upstream

	mu       sync.Mutex
	sessions map[uint64]*session
	nextID   uint64
	closed   bool
	table    tableCounts // the sessions by state and CallManager

	dialer       *net.Dialer
	failbackKick chan struct{}
	wg           sync.WaitGroup
	st           counters
}

type listener struct {
	cfg  Listener
	ln   *net.TCPListener
	port int // upstream port
}

// New validates the configuration and opens the listeners in the calling
// thread's network namespace.
func New(cfg Config, log *slog.Logger) (_ *Proxy, err error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	lns, err := listen(cfg, false)
	if err != nil {
		return nil, err
	}
	return newProxy(cfg, log, lns), nil
}

// newProxy is the proxy serving on lns, listeners of cfg.Listeners in
// order; cfg has its defaults and is valid.
func newProxy(cfg Config, log *slog.Logger, lns []*net.TCPListener) *Proxy {
	p := &Proxy{cfg: cfg, log: log, sessions: map[uint64]*session{}, failbackKick: make(chan struct{}, 1), dialer: newDialer(&cfg)}
	for i, c := range cfg.CallManagers {
		u := &upstream{idx: i, cfg: c, bucket: newBucket(cfg.Admission.Rate, cfg.Admission.Burst, cfg.Admission.QueueLimit)}
		u.main = newCheck("main", cfg.Health.Probe, cfg.Health.Port)
		if cfg.Health.SIPProbe != "" {
			u.sip = newCheck("sip", cfg.Health.SIPProbe, cfg.Health.SIPPort)
		}
		p.cms = append(p.cms, u)
	}
	for i, lc := range cfg.Listeners {
		l := &listener{cfg: lc, ln: lns[i], port: lc.UpstreamPort}
		if l.port == 0 {
			l.port = lns[i].Addr().(*net.TCPAddr).Port
		}
		p.lns = append(p.lns, l)
	}
	return p
}

// listen opens cfg's listeners in the calling thread's network namespace;
// with reusePort, with SO_REUSEPORT so that more sockets may bind the
// same addresses (see NewWorkers).
func listen(cfg Config, reusePort bool) (_ []*net.TCPListener, err error) {
	var lns []*net.TCPListener
	defer func() {
		if err != nil {
			for _, ln := range lns {
				ln.Close()
			}
		}
	}()
	for _, lc := range cfg.Listeners {
		ln, err := listenOne(cfg, lc.Addr, reusePort)
		if err != nil {
			return nil, fmt.Errorf("proxy: %s listener: %w", lc.Protocol, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func listenOne(cfg Config, addr string, reusePort bool) (*net.TCPListener, error) {
	// Phones speak first (Register, REGISTER, ClientHello): with
	// TCP_DEFER_ACCEPT the kernel hands over a connection once its
	// first bytes are in, which saves a wakeup per phone. TCP
	// keepalive (for SIP and TLS phones that vanish) is set on the
	// listener, whose connections inherit it, instead of with four
	// system calls on each.
	opts := []struct{ level, opt, v int }{
		{unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, int(cfg.HeaderTimeout / time.Second)},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 60},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 15},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 4},
	}
	if reusePort {
		opts = append(opts, struct{ level, opt, v int }{unix.SOL_SOCKET, unix.SO_REUSEPORT, 1})
	}
	lcfg := net.ListenConfig{KeepAlive: -1, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			for _, o := range opts {
				if serr = unix.SetsockoptInt(int(fd), o.level, o.opt, o.v); serr != nil {
					return
				}
			}
		})
		return errors.Join(err, serr)
	}}
	ln, err := lcfg.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

// Addrs are the listeners' addresses, in the order of Config.Listeners
// (the port is filled in when the configuration asked for port 0).
func (p *Proxy) Addrs() []net.Addr {
	out := make([]net.Addr, len(p.lns))
	for i, l := range p.lns {
		out[i] = l.ln.Addr()
	}
	return out
}

// Run probes the CallManagers once, then accepts phones, checks health,
// sweeps sessions and fails back until ctx ends; it closes every session
// before returning.
func (p *Proxy) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p.firstProbe(ctx)
	errc := make(chan error, len(p.lns))
	var loops sync.WaitGroup
	for _, l := range p.lns {
		loops.Add(1)
		go func() {
			defer loops.Done()
			if err := p.accept(ctx, l); err != nil {
				errc <- err
				cancel()
			}
		}()
	}
	for _, u := range p.cms {
		for _, hc := range u.checks() {
			loops.Add(1)
			go func() { defer loops.Done(); p.health(ctx, u, hc) }()
		}
	}
	loops.Add(2)
	go func() { defer loops.Done(); p.sweep(ctx) }()
	go func() { defer loops.Done(); p.failback(ctx) }()
	<-ctx.Done()
	p.Close()
	loops.Wait()
	p.wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// Close stops the listeners and closes every session.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	ss := make([]*session, 0, len(p.sessions))
	for _, s := range p.sessions {
		ss = append(ss, s)
	}
	p.mu.Unlock()
	var errs []error
	for _, l := range p.lns {
		if err := l.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for _, s := range ss {
		s.close(reasonShutdown)
	}
	return errors.Join(errs...)
}

func (p *Proxy) accept(ctx context.Context, l *listener) error {
	for {
		c, err := l.ln.AcceptTCP()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and the like: back off instead of spinning.
			p.log.Warn("accept", "listener", l.cfg.Addr, "error", err)
			p.st.acceptErrors.Add(1)
			select {
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		s := p.newSession(l, c)
		if s == nil {
			c.Close()
			return nil
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handle(ctx, s)
		}()
	}
}

// Registrations is the registration table, sorted by device then phone.
func (p *Proxy) Registrations() []Registration {
	p.mu.Lock()
	out := make([]Registration, 0, len(p.sessions))
	for _, s := range p.sessions {
		out = append(out, s.row())
	}
	p.mu.Unlock()
	sortRegistrations(out)
	return out
}

func sortRegistrations(rs []Registration) {
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].Device != rs[j].Device {
			return rs[i].Device < rs[j].Device
		}
		return rs[i].Phone < rs[j].Phone
	})
}

// upstreamAddr is the CallManager's address for a listener's protocol.
func (u *upstream) addr(port int) string {
	return net.JoinHostPort(u.cfg.Host, strconv.Itoa(port))
}

// pick returns the highest-priority CallManager not in skip that is
// healthy for the protocol (by the check its sessions follow); when none
// is, the highest-priority one not in skip all the same (the dial tells),
// or nil when all were tried.
func (p *Proxy) pick(skip uint8, proto Protocol) *upstream {
	for _, u := range p.cms {
		if skip&(1<<u.idx) == 0 && u.check(proto).healthy.Load() {
			return u
		}
	}
	for _, u := range p.cms {
		if skip&(1<<u.idx) == 0 && !p.anyHealthy(proto) {
			return u
		}
	}
	return nil
}

// anyHealthy says whether any CallManager is healthy for the protocol.
func (p *Proxy) anyHealthy(proto Protocol) bool {
	for _, u := range p.cms {
		if u.check(proto).healthy.Load() {
			return true
		}
	}
	return false
}
