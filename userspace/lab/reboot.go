package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// A port's power, and the phones' reboots when it goes. The phone side of
// a port coming up is the phone getting power (the PSE's doing); going
// down is the phone losing it. A phone runs, from power on, under its
// port's power session, a context that ends when the power goes: whatever
// phase it is in is cut short, its registration ends, and it boots again
// from the start once the power is back, as a real phone does. The ports
// a --fault cycles are watched until the lab ends; the others only until
// they are first powered (their links change with every phone's
// interface, thousands of messages at 10,000 phones, and nothing takes
// their power away).

// portPower is a port's power as the phones behind it see it.
type portPower struct {
	// flaps is set when a fault cycles the port: it is watched to the end.
	flaps   bool
	firstOn chan struct{} // closed when first powered

	mu      sync.Mutex
	on      bool
	session context.Context // while on: ends when the power goes
	end     context.CancelCauseFunc
	changed chan struct{} // closed and replaced at every change
	log     []powerChange
}

type powerChange struct {
	at        time.Time
	on, first bool
}

func newPortPower() *portPower {
	return &portPower{firstOn: make(chan struct{}), changed: make(chan struct{})}
}

// set records the phone side's link going up (power) or down.
func (p *portPower) set(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.on == on {
		return
	}
	p.on = on
	first := false
	if on {
		p.session, p.end = context.WithCancelCause(context.Background())
		select {
		case <-p.firstOn:
		default:
			first = true
			close(p.firstOn)
		}
	} else {
		p.end(errPowerLost)
	}
	p.log = append(p.log, powerChange{at: time.Now(), on: on, first: first})
	close(p.changed)
	p.changed = make(chan struct{})
}

// wait returns once the port is powered, with the power session.
func (p *portPower) wait(ctx context.Context) (context.Context, error) {
	for {
		p.mu.Lock()
		on, session, changed := p.on, p.session, p.changed
		p.mu.Unlock()
		if on {
			return session, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// changes are the power's changes so far.
func (p *portPower) changes() []powerChange {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]powerChange(nil), p.log...)
}

// offAfter is when the power first went off at or after t, and when it
// came back after that (zero if it has not).
func (p *portPower) offAfter(t time.Time) (off, on time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, c := range p.log {
		if !c.on && !c.at.Before(t) {
			if i+1 < len(p.log) {
				return c.at, p.log[i+1].at
			}
			return c.at, time.Time{}
		}
	}
	return time.Time{}, time.Time{}
}

// whilePowered is ctx, also ended (with errPowerLost) when session ends;
// a nil session never ends.
func whilePowered(ctx, session context.Context) (context.Context, context.CancelFunc) {
	if session == nil {
		return context.WithCancel(ctx)
	}
	c, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(session, func() { cancel(errPowerLost) })
	return c, func() { stop(); cancel(context.Canceled) }
}

// watchPort follows the phone side of port p's link: up is power, down
// is its loss. Once the port is first powered the watch stops, unless
// the port flaps; a watch whose socket fails (a burst of messages
// overflowed it) starts again with the link's state.
func (l *lab) watchPort(ctx context.Context, p *Port) error {
	done := make(chan struct{})
	until := p.power.firstOn
	if p.power.flaps {
		until = nil // never: to the lab's end
	}
	go func() {
		select {
		case <-ctx.Done():
		case <-until:
		}
		close(done)
	}()
	subscribe := func() (chan netlink.LinkUpdate, error) {
		updates := make(chan netlink.LinkUpdate, 16)
		h := p.NS.Handle()
		err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
			Namespace:    &h,
			ListExisting: true,
			// The phones' interfaces change with the link: hundreds of
			// messages at once on a port with many phones.
			ReceiveBufferSize:      4 << 20,
			ReceiveBufferForceSize: true,
			ErrorCallback: func(err error) {
				select {
				case <-done: // the socket errors out when the watch is stopped
				default:
					l.o.Log.Warn("link watch", "port", p.Name, "error", err)
				}
			},
		})
		return updates, err
	}
	updates, err := subscribe()
	if err != nil {
		return fmt.Errorf("watch links of port %s: %w", p.Name, err)
	}
	go func() {
		for {
			for u := range updates {
				// The PSE's power-up is the phone side going administratively
				// up. Operstate would lag it: the kernel's linkwatch batches
				// carrier events for up to a second.
				if a := u.Attrs(); a.Name == p.Link {
					p.power.set(a.Flags&net.FlagUp != 0)
				}
			}
			for {
				select {
				case <-done:
					return
				default:
				}
				if updates, err = subscribe(); err == nil {
					break
				}
				l.o.Log.Warn("link watch", "port", p.Name, "error", err)
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	return nil
}

// runPhone takes one phone through the phases. A phase's latency counts
// from the end of the previous one; the first phase's from the storm's
// start. A phone whose port loses power reboots: it goes through the
// phases again from power. Each phase is recorded once per phone, by the
// pass that first finishes it, so a phone that reboots mid-storm adds no
// second set of latencies. runPhone returns once the phone is registered
// (or has failed); a phone on a port that may flap goes on in a goroutine
// of its own, rebooting at each power loss, until ctx ends.
func runPhone(ctx context.Context, ph *Phone, phases []Phase, rec *recorder, start time.Time) {
	r := &phoneRun{ph: ph, phases: phases, rec: rec, stormStart: start}
	if r.untilRegistered(ctx) && ph.Port.power.flaps {
		go r.stayRegistered(ctx)
	}
}

// phoneRun is one phone's life in the lab.
type phoneRun struct {
	ph         *Phone
	phases     []Phase
	rec        *recorder
	stormStart time.Time
	recorded   int // phases recorded
	completed  bool
}

// untilRegistered runs passes through the phases until one ends with the
// phone registered (true) or failed (false): a pass the power cut short
// is followed by another.
func (r *phoneRun) untilRegistered(ctx context.Context) bool {
	for {
		phase, err := r.pass(ctx)
		switch {
		case err == nil:
			if !r.completed {
				r.completed = true
				r.rec.complete()
			}
			return true
		case errors.Is(err, errPowerLost) && ctx.Err() == nil:
			if err := r.afterPowerLoss(); err != nil {
				r.fail("power", err)
				return false
			}
		default:
			r.fail(phase, err)
			return false
		}
	}
}

// stayRegistered reboots the registered phone each time its port loses
// power, until ctx ends or it fails.
func (r *phoneRun) stayRegistered(ctx context.Context) {
	for {
		select {
		case <-r.ph.session.Done():
		case <-ctx.Done():
			return
		}
		if err := r.afterPowerLoss(); err != nil {
			r.fail("power", err)
			return
		}
		if !r.untilRegistered(ctx) {
			return
		}
	}
}

// pass runs the phases once, from waiting for power; it returns the phase
// that failed and why (errPowerLost if the power went).
func (r *phoneRun) pass(ctx context.Context) (string, error) {
	start := time.Now()
	if r.recorded == 0 {
		start = r.stormStart
	}
	run := ctx
	for i, p := range r.phases {
		if err := p.Run(run, r.ph); err != nil {
			if run != ctx && r.lostPower(run) {
				return p.Name(), errPowerLost
			}
			return p.Name(), err
		}
		if i == 0 {
			// Powered: from here on the phone runs until its port loses power.
			r.ph.powered.Store(true)
			var stop context.CancelFunc
			run, stop = whilePowered(ctx, r.ph.session)
			defer stop()
		}
		now := time.Now()
		if i == r.recorded {
			latency := now.Sub(start)
			if wt, ok := p.(wireTimed); ok {
				latency = wt.WireTime(r.ph)
			}
			r.rec.done(p.Name(), latency, now.Sub(r.stormStart))
			r.recorded++
		}
		start = now
	}
	return "", nil
}

// lostPower reports whether a phase that failed under run failed for
// want of power. The kernel takes the link down before the lab's watch
// hears of it, so a phase may fail first on the link (a send on a link
// that is down: ENETDOWN): on a port that flaps, a failure waits up to
// powerLossGrace for the power's loss to be heard before it counts as
// one.
func (r *phoneRun) lostPower(run context.Context) bool {
	if !r.ph.Port.power.flaps {
		return errors.Is(context.Cause(run), errPowerLost)
	}
	t := time.NewTimer(powerLossGrace)
	defer t.Stop()
	select {
	case <-r.ph.session.Done():
		return true
	case <-t.C:
		return false
	}
}

// powerLossGrace bounds the wait for the power watch after a failure on a
// port that flaps: the netlink message comes in milliseconds, seconds on
// a machine loaded to the hilt.
const powerLossGrace = 5 * time.Second

func (r *phoneRun) fail(phase string, err error) {
	r.ph.failed.Store(true)
	if r.completed {
		r.rec.failAfterCompleting(r.ph.Name, phase, err)
		return
	}
	r.rec.fail(r.ph.Name, phase, err)
}

// powerLoser is a phase whose effects outlive it (a VLAN set in the NIC,
// an interface brought up, a registration kept alive): it undoes them
// when the phone loses power.
type powerLoser interface {
	powerLost(ph *Phone) error
}

// afterPowerLoss turns the phone off: what the phases set up is undone,
// last phase first, and the phone forgets what it learned (its stored
// load stays: a phone that upgraded boots the new one).
func (r *phoneRun) afterPowerLoss() error {
	ph := r.ph
	ph.powered.Store(false)
	ph.held.Store(nil)
	ph.closeHTTP() // its connections died with it
	var errs []error
	for i := len(r.phases) - 1; i >= 0; i-- {
		if pl, ok := r.phases[i].(powerLoser); ok {
			errs = append(errs, pl.powerLost(ph))
		}
	}
	ph.VoiceVLAN, ph.IP, ph.Subnet, ph.TFTPServers, ph.Config = 0, netip.Addr{}, netip.Prefix{}, nil, nil
	ph.Reboots++
	return errors.Join(errs...)
}

// takeDownNIC takes the phone's interface down and its address off, as
// the phone's IP stack is gone without power.
func (ph *Phone) takeDownNIC() error {
	if !ph.nicAddr.IsValid() {
		return nil
	}
	if err := ph.Port.rt.do(addrDelRequest(ph.nicIndex, ph.nicAddr), linkDownRequest(ph.nicIndex)); err != nil {
		return fmt.Errorf("take down %s (%s) with %s: %w", ph.nicName(), ph.MAC, ph.nicAddr, err)
	}
	ph.nicAddr = netip.Prefix{}
	return nil
}

// linkDownRequest takes the link with this index down.
func linkDownRequest(index int) []byte {
	ifi := nl.NewIfInfomsg(unix.AF_UNSPEC)
	ifi.Index = int32(index)
	ifi.Change = unix.IFF_UP
	return newRequest(unix.RTM_NEWLINK, 0, ifi)
}

// addrDelRequest removes prefix's address from the link with this index.
func addrDelRequest(index int, prefix netip.Prefix) []byte {
	m := nl.NewIfAddrmsg(unix.AF_INET)
	m.Index = uint32(index)
	m.Prefixlen = uint8(prefix.Bits())
	a := prefix.Addr().AsSlice()
	return newRequest(unix.RTM_DELADDR, 0, m, nl.NewRtAttr(unix.IFA_LOCAL, a), nl.NewRtAttr(unix.IFA_ADDRESS, a))
}

// The phases' part in a reboot.

func (c cdpPhase) powerLost(ph *Phone) error {
	if c.tagger == nil {
		return nil
	}
	return c.tagger.ClearVLAN(ph.MAC) // a phone boots untagged
}

func (configPhase) powerLost(ph *Phone) error { return ph.takeDownNIC() }

// powerLost waits for the registration to end (its context ends with the
// power): the phone's CallManager sees its keepalives stop.
func (p registerPhase) powerLost(ph *Phone) error {
	if ph.regDone != nil {
		<-ph.regDone
		ph.regDone = nil
	}
	p.stats.track.setLost(ph, time.Now())
	return nil
}
