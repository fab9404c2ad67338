package proxy

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/sccp"
)

// upstream is one CallManager.
type upstream struct {
	idx    int
	cfg    CallManager
	bucket *bucket

	// main is the health check every session follows but SIP ones when
	// sip is set (Health.SIPProbe).
	main     *check
	sip      *check
	sessions atomic.Int64
}

// check is one health check of a CallManager: a probe kind on a port,
// and the state the probes give it.
type check struct {
	name    string // for logs: "main" or "sip"
	kind    ProbeKind
	port    int
	healthy atomic.Bool

	transitions atomic.Uint64
	failovers   atomic.Uint64 // times the probes took it down
	probesOK    atomic.Uint64
	probesFail  atomic.Uint64
	vetoes      atomic.Uint64
	okSince     atomic.Int64 // unix ns: see troubleFree

	// Only the check's health goroutine touches these.
	okRun, failRun int
}

func newCheck(name string, kind ProbeKind, port int) *check {
	c := &check{name: name, kind: kind, port: port}
	c.healthy.Store(true) // until the first probe round in Run says otherwise
	c.trouble()
	return c
}

// checks are the CallManager's health checks.
func (u *upstream) checks() []*check {
	if u.sip != nil {
		return []*check{u.main, u.sip}
	}
	return []*check{u.main}
}

// check is the health check a session of the protocol follows: SIP
// sessions the SIP one when there is one, every other the main one (SIP
// over TLS too: the OPTIONS probe on the plain port says nothing of the
// TLS one).
func (u *upstream) check(proto Protocol) *check {
	if proto == SIP && u.sip != nil {
		return u.sip
	}
	return u.main
}

// probe checks a CallManager once: connect, and for ProbeSCCP send
// KeepAlive and wait for any well-formed answer.
func (p *Proxy) probe(ctx context.Context, u *upstream, hc *check) error {
	h := p.cfg.Health
	ctx, cancel := context.WithTimeout(ctx, h.Timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", u.addr(hc.port))
	if err != nil {
		return err
	}
	defer c.Close()
	if hc.kind == ProbeTCP {
		return nil
	}
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	switch hc.kind {
	case ProbeSIPOptions:
		return probeSIPOptions(c, u.cfg.Host, hc.port)
	case ProbeSCCP:
		if _, err := c.Write(sccp.AppendEmpty(nil, sccp.VersionBasic, sccp.KeepAliveID)); err != nil {
			return err
		}
		_, err = sccp.NewReader(c).ReadFrame()
		return err
	}
	reg := sccp.Register{DeviceName: h.ProbeDevice, Instance: 1, StationIP: netip.IPv4Unspecified(),
		DeviceType: probeDeviceType, MaxStreams: 1, BodyLen: sccp.RegisterMinBody}
	if _, err := c.Write(reg.AppendFrame(nil, sccp.VersionBasic)); err != nil {
		return err
	}
	r := sccp.NewReader(c)
	for {
		f, err := r.ReadFrame()
		if err != nil {
			return err
		}
		switch f.ID {
		case sccp.RegisterRejectID:
			return nil
		case sccp.RegisterAckID:
			// Leave as a phone would, so no station lingers.
			c.Write(sccp.AppendEmpty(nil, sccp.VersionBasic, sccp.UnregisterID))
			return nil
		}
	}
}

// probeDeviceType is the device type the register probe claims, a
// 7941's: any will do, the probe's device name is what CUCM looks up.
const probeDeviceType = 115

// firstProbe sets every check's state from one probe each, without
// hysteresis, so that Run starts with the truth.
func (p *Proxy) firstProbe(ctx context.Context) {
	var wg sync.WaitGroup
	for _, u := range p.cms {
		for _, hc := range u.checks() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := p.probe(ctx, u, hc)
				p.count(hc, err)
				hc.healthy.Store(err == nil)
				if err != nil {
					hc.failRun = p.cfg.Health.Fall
					p.log.Warn("CallManager down at start", "cm", u.cfg.Name, "check", hc.name, "error", err)
				} else {
					hc.okRun = p.cfg.Health.Rise
				}
			}()
		}
	}
	wg.Wait()
}

func (p *Proxy) count(hc *check, err error) {
	if err != nil {
		hc.probesFail.Add(1)
		p.st.healthFailures.Add(1)
	} else {
		hc.probesOK.Add(1)
	}
}

// health runs one check of a CallManager every Interval; Rise passes in
// a row bring it up, Fall failures in a row take it down.
func (p *Proxy) health(ctx context.Context, u *upstream, hc *check) {
	// Spread the CallManagers' probes over the interval.
	off := time.Duration(u.idx) * p.cfg.Health.Interval / time.Duration(len(p.cms))
	select {
	case <-time.After(off):
	case <-ctx.Done():
		return
	}
	t := time.NewTicker(p.cfg.Health.Interval)
	defer t.Stop()
	for {
		err := p.probe(ctx, u, hc)
		if ctx.Err() != nil {
			return
		}
		p.count(hc, err)
		if err == nil {
			hc.okRun, hc.failRun = hc.okRun+1, 0
			if !hc.healthy.Load() && hc.okRun >= p.cfg.Health.Rise {
				p.setHealthy(u, hc, true, nil)
			}
		} else {
			hc.okRun, hc.failRun = 0, hc.failRun+1
			if hc.healthy.Load() && hc.failRun >= p.cfg.Health.Fall {
				if !errors.Is(err, syscall.ECONNREFUSED) && p.heardFrom(u, hc, time.Duration(p.cfg.Health.Fall)*p.cfg.Health.Interval) {
					// Its phones still hear from it: the probes are
					// what is slow (a loaded proxy), and taking it
					// down would drop every phone for nothing. A
					// refused connection is no slowness: nothing
					// listens any more.
					hc.vetoes.Add(1)
					p.log.Warn("CallManager fails its probes but answers its phones; kept up", "cm", u.cfg.Name, "check", hc.name, "error", err)
				} else {
					p.setHealthy(u, hc, false, err)
				}
			}
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// heardFrom says whether any session following the check received data
// from the CallManager within the window (from TCP_INFO; the relay never
// sees the bytes).
func (p *Proxy) heardFrom(u *upstream, hc *check, window time.Duration) bool {
	var ups []*net.TCPConn
	p.mu.Lock()
	for _, s := range p.sessions {
		s.mu.Lock()
		if s.cm == u && u.check(s.proto) == hc && s.up != nil && s.state == StateRegistered {
			ups = append(ups, s.up)
		}
		s.mu.Unlock()
	}
	p.mu.Unlock()
	for _, c := range ups {
		if quiet, err := lastDataRecv(c); err == nil && quiet < window {
			return true
		}
	}
	return false
}

// setHealthy changes a check's state. Down closes every session on the
// CallManager that follows the check at once, so its phones re-register
// (on the next CallManager) now instead of after their missed keepalives;
// up wakes the failback.
func (p *Proxy) setHealthy(u *upstream, hc *check, up bool, why error) {
	hc.transitions.Add(1)
	if up {
		hc.trouble()
		hc.healthy.Store(true)
		p.log.Info("CallManager up", "cm", u.cfg.Name, "check", hc.name)
		select {
		case p.failbackKick <- struct{}{}:
		default:
		}
		return
	}
	hc.failovers.Add(1)
	p.mu.Lock()
	hc.healthy.Store(false)
	var victims []*session
	for _, s := range p.sessions {
		s.mu.Lock()
		if s.cm == u && u.check(s.proto) == hc && s.up != nil {
			victims = append(victims, s)
		}
		s.mu.Unlock()
	}
	p.mu.Unlock()
	p.log.Warn("CallManager down, closing its sessions", "cm", u.cfg.Name, "check", hc.name, "sessions", len(victims), "error", why)
	for _, s := range victims {
		s.close(reasonUpstreamDown)
	}
}

// failback moves sessions from lower-priority CallManagers to the
// highest-priority one healthy for them (by the check their protocol
// follows) once that check has been trouble-free (healthy, no failed
// dial) for Failback.Delay, at Failback.Rate with each gap jittered by
// ±50 %. It looks every health interval and when a check comes up:
// sessions also land lower when a dial fails before the health checks
// notice anything.
func (p *Proxy) failback(ctx context.Context) {
	if p.cfg.Failback.Disabled {
		return
	}
	t := time.NewTicker(p.cfg.Health.Interval)
	defer t.Stop()
	for {
		select {
		case <-p.failbackKick:
		case <-t.C:
		case <-ctx.Done():
			return
		}
		// Where each protocol's sessions belong now, if that is ready.
		var best [numProtocols]*upstream
		ready := false
		for i, proto := range protocols {
			u := p.pick(0, proto)
			if u != nil && u.check(proto).healthy.Load() && time.Since(u.check(proto).troubleFree()) >= p.cfg.Failback.Delay {
				best[i], ready = u, true
			}
		}
		if !ready {
			continue
		}
		type move struct {
			s  *session
			to *upstream
		}
		var movers []move
		p.mu.Lock()
		for _, s := range p.sessions {
			s.mu.Lock()
			to := best[protoIndex(s.proto)]
			if to != nil && s.cm != nil && s.cm.idx > to.idx && s.up != nil && (s.state == StateRegistered || s.state == StateConnected) {
				movers = append(movers, move{s, to})
			}
			s.mu.Unlock()
		}
		p.mu.Unlock()
		if len(movers) == 0 {
			continue
		}
		p.log.Info("failback", "sessions", len(movers), "rate", p.cfg.Failback.Rate)
		rand.Shuffle(len(movers), func(i, j int) { movers[i], movers[j] = movers[j], movers[i] })
		for _, m := range movers {
			// Skip those whose target failed meanwhile: they stay.
			if !m.to.check(m.s.proto).healthy.Load() {
				continue
			}
			s := m.s
			s.close(reasonFailback)
			select {
			case <-time.After(p.failbackGap()):
			case <-ctx.Done():
				return
			}
		}
	}
}

// failbackGap is the wait before the next failback move: 1/Rate
// jittered by ±50 %, so that phones moved back together do not register
// again in lockstep.
func (p *Proxy) failbackGap() time.Duration {
	gap := float64(time.Second) / p.cfg.Failback.Rate
	return time.Duration(gap * (0.5 + rand.Float64()))
}

// troubleFree is when the check last came up or a session following it
// last failed a dial.
func (hc *check) troubleFree() time.Time { return time.Unix(0, hc.okSince.Load()) }

// trouble notes a failure the health checks may not have seen yet.
func (hc *check) trouble() { hc.okSince.Store(time.Now().UnixNano()) }

// sweep checks every watched session each SweepInterval, from the
// kernel's TCP_INFO of both sockets (the relay itself never sees the
// bytes): a CallManager that has said nothing for a keepalive interval
// plus AnswerGrace while the phone kept talking is hung toward this
// phone; a phone silent past the idle limit is gone.
func (p *Proxy) sweep(ctx context.Context) {
	t := time.NewTicker(p.cfg.SweepInterval)
	defer t.Stop()
	var batch []*session
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		batch = batch[:0]
		p.mu.Lock()
		for _, s := range p.sessions {
			batch = append(batch, s)
		}
		p.mu.Unlock()
		for _, s := range batch {
			if r, bad := p.check(s); bad {
				p.log.Debug("session closed by sweep", "device", s.row().Device, "reason", r.String())
				s.close(r)
			}
		}
	}
}

func (p *Proxy) check(s *session) (closeReason, bool) {
	s.mu.Lock()
	up, ka, state := s.up, s.keepalive, s.state
	s.mu.Unlock()
	if up == nil || (state != StateRegistered && state != StateConnected) {
		return 0, false
	}
	idle := p.cfg.IdleTimeout
	if idle == 0 && ka > 0 {
		idle = 3*ka + p.cfg.AnswerGrace
	}
	if ka == 0 && idle == 0 {
		return 0, false
	}
	phoneQuiet, err := lastDataRecv(s.phone)
	if err != nil {
		return 0, false
	}
	if idle > 0 && phoneQuiet > idle {
		return reasonIdle, true
	}
	if ka == 0 {
		return 0, false
	}
	upQuiet, err := lastDataRecv(up)
	if err != nil {
		return 0, false
	}
	// The phone spoke after the CallManager last did, and the
	// CallManager has been silent past a keepalive interval: a
	// KeepAlive went unanswered.
	if phoneQuiet < upQuiet && upQuiet > ka+p.cfg.AnswerGrace {
		return reasonUpstreamSilent, true
	}
	return 0, false
}

// lastDataRecv is how long ago the socket last received data.
func lastDataRecv(c *net.TCPConn) (time.Duration, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return 0, err
	}
	if ierr != nil {
		return 0, ierr
	}
	if info == nil {
		return 0, errors.New("no TCP_INFO")
	}
	return time.Duration(info.Last_data_recv) * time.Millisecond, nil
}
