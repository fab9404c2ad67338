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
	regs    map[*Phone][]time.Time // each phone's registrations, in order
	changes []registeredChange
	watches []*recoveryWatch
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

// set records that ph is (or is no longer) registered, at t.
func (r *registrationTrack) set(ph *Phone, registered bool, t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.on == nil {
		r.on, r.regs = map[*Phone]bool{}, map[*Phone][]time.Time{}
	}
	if r.on[ph] == registered {
		return
	}
	if registered {
		r.on[ph] = true
		r.regs[ph] = append(r.regs[ph], t)
	} else {
		delete(r.on, ph)
	}
	r.changes = append(r.changes, registeredChange{at: t, n: len(r.on)})
	if !registered {
		return
	}
	for _, w := range r.watches {
		if w.pending[ph] && !t.Before(w.since) {
			w.registered(ph, t)
		}
	}
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

// watch follows phones a fault at hit until each has registered at or
// after since. A phone may have done so already (the fault's injection
// takes time, and a phone may register again within it): its
// registrations so far are counted too.
func (r *registrationTrack) watch(at, since time.Time, phones []*Phone) *recoveryWatch {
	w := &recoveryWatch{at: at, since: since, affected: len(phones), pending: map[*Phone]bool{}, done: make(chan struct{}), track: r}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ph := range phones {
		w.pending[ph] = true
	}
	for _, ph := range phones {
		for _, t := range r.regs[ph] {
			if !t.Before(since) {
				w.registered(ph, t)
				break
			}
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
	at, since time.Time
	affected  int
	track     *registrationTrack

	// Under track.mu:
	pending map[*Phone]bool
	last    time.Time     // the latest registration that took a phone off pending
	done    chan struct{} // closed when pending is empty
}

// registered takes ph off pending, registered again at t; track.mu is held.
func (w *recoveryWatch) registered(ph *Phone, t time.Time) {
	delete(w.pending, ph)
	if t.After(w.last) {
		w.last = t
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
