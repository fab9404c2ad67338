package lab

import (
	"sync"
	"time"
)

// registrationTrack follows which phones are registered, from their
// simulated phones' events (and their power: a phone that loses it is no
// longer registered, though its CallManager will only notice when its
// keepalives stop). It gives the report the registered phones over time,
// and the faults a way to wait until the phones they hit are registered
// again.
type registrationTrack struct {
	mu      sync.Mutex
	on      map[*Phone]bool
	regs    map[*Phone][]registration // each phone's registrations, in order
	changes []registeredChange
	watches []*recoveryWatch
}

// registration is one of a phone's registrations: when it completed, and
// when the phone opened its connection.
type registration struct {
	at, dialed time.Time
}

type registeredChange struct {
	at time.Time
	n  int // registered phones after the change
}

// RegisteredSample is how many phones were registered T seconds after
// the storm's start.
type RegisteredSample struct {
	T float64
	N int
}

// setRegistered records that ph registered at t, on a connection it
// opened at dialed.
func (r *registrationTrack) setRegistered(ph *Phone, t, dialed time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.on == nil {
		r.on, r.regs = map[*Phone]bool{}, map[*Phone][]registration{}
	}
	reg := registration{at: t, dialed: dialed}
	r.regs[ph] = append(r.regs[ph], reg)
	for _, w := range r.watches {
		w.consider(ph, reg)
	}
	if r.on[ph] {
		return
	}
	r.on[ph] = true
	r.changes = append(r.changes, registeredChange{at: t, n: len(r.on)})
}

// setLost records that ph is no longer registered, at t.
func (r *registrationTrack) setLost(ph *Phone, t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.on[ph] {
		return
	}
	delete(r.on, ph)
	r.changes = append(r.changes, registeredChange{at: t, n: len(r.on)})
}

// registeredPhones are the phones registered now.
func (r *registrationTrack) registeredPhones() []*Phone {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Phone, 0, len(r.on))
	for ph := range r.on {
		out = append(out, ph)
	}
	return out
}

// watch follows phones a fault hit at at until each has registered on a
// connection it opened at or after since(phone): a connection opened
// before may carry the very registration the fault ended (its
// RegisterAck read after the fault), one opened after cannot. A phone may
// have registered again already (the fault's injection takes time): its
// registrations so far are counted too.
func (r *registrationTrack) watch(at time.Time, phones []*Phone, since func(*Phone) time.Time) *recoveryWatch {
	w := &recoveryWatch{at: at, affected: len(phones), pending: map[*Phone]time.Time{}, done: make(chan struct{}), track: r}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ph := range phones {
		w.pending[ph] = since(ph)
	}
	for _, ph := range phones {
		for _, reg := range r.regs[ph] {
			w.consider(ph, reg)
		}
	}
	if len(phones) == 0 {
		w.last = at
		close(w.done)
	}
	r.watches = append(r.watches, w)
	return w
}

// series is the registered phones over time, in seconds from start.
func (r *registrationTrack) series(start time.Time) []RegisteredSample {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]RegisteredSample, 0, len(r.changes))
	for _, c := range r.changes {
		out = append(out, RegisteredSample{T: c.at.Sub(start).Seconds(), N: c.n})
	}
	return out
}

// recoveryWatch is the phones one fault hit, until each registered again.
type recoveryWatch struct {
	at       time.Time
	affected int
	track    *registrationTrack

	// Under track.mu:
	pending map[*Phone]time.Time // the phones not registered again, each with its since
	last    time.Time            // the latest registration that took a phone off pending
	done    chan struct{}        // closed when pending is empty
}

// consider takes ph off pending if reg is on a connection opened at or
// after its since; track.mu is held.
func (w *recoveryWatch) consider(ph *Phone, reg registration) {
	since, ok := w.pending[ph]
	if !ok || reg.dialed.Before(since) {
		return
	}
	delete(w.pending, ph)
	if reg.at.After(w.last) {
		w.last = reg.at
	}
	if len(w.pending) == 0 {
		close(w.done)
	}
}

// recoveredAt is when the last affected phone registered again; zero
// while some have not.
func (w *recoveryWatch) recoveredAt() time.Time {
	w.track.mu.Lock()
	defer w.track.mu.Unlock()
	if len(w.pending) > 0 {
		return time.Time{}
	}
	return w.last
}

// pendingPhones are the affected phones not registered again yet.
func (w *recoveryWatch) pendingPhones() []*Phone {
	w.track.mu.Lock()
	defer w.track.mu.Unlock()
	out := make([]*Phone, 0, len(w.pending))
	for ph := range w.pending {
		out = append(out, ph)
	}
	return out
}
