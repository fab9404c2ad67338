package dhcp

import (
	"net/netip"
	"sync"
	"time"
)

// rateLimiter is a token bucket per port: rate tokens a second, at most
// burst saved up. Ports come from the socket layer, a small fixed set.
type rateLimiter struct {
	rate, burst float64
	mu          sync.Mutex
	buckets     map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(rate float64, burst int) *rateLimiter {
	if rate <= 0 {
		return nil
	}
	b := float64(burst)
	if b < 1 {
		b = 1
	}
	return &rateLimiter{rate: rate, burst: b, buckets: map[string]*bucket{}}
}

// allow takes a token from port's bucket at time now.
func (r *rateLimiter) allow(port string, now time.Time) bool {
	if r == nil {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.buckets[port]
	if b == nil {
		b = &bucket{tokens: r.burst, last: now}
		r.buckets[port] = b
	}
	if dt := now.Sub(b.last); dt > 0 {
		b.tokens = min(r.burst, b.tokens+dt.Seconds()*r.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// portIndex tracks, per phone port, the addresses leased or declined
// through it, so that MaxLeasesPerPort and MaxDeclinesPerPort are checked
// without reading the store. pending counts allocations in flight that
// hold a slot.
type portIndex struct {
	mu      sync.Mutex
	byPort  map[string]*portLeases
	portOf  map[netip.Addr]string
	enabled bool
}

type portLeases struct {
	leases  map[netip.Addr]portLease
	pending int
}

type portLease struct {
	expires  time.Time
	declined bool
}

func newPortIndex(enabled bool) *portIndex {
	return &portIndex{byPort: map[string]*portLeases{}, portOf: map[netip.Addr]string{}, enabled: enabled}
}

// set records ip as leased (or declined) through port until expires.
func (x *portIndex) set(ip netip.Addr, port string, expires time.Time, declined bool) {
	if !x.enabled || port == "" {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.setLocked(ip, port, expires, declined)
}

func (x *portIndex) setLocked(ip netip.Addr, port string, expires time.Time, declined bool) {
	if old, ok := x.portOf[ip]; ok && old != port {
		x.removeLocked(ip)
	}
	pl := x.byPort[port]
	if pl == nil {
		pl = &portLeases{leases: map[netip.Addr]portLease{}}
		x.byPort[port] = pl
	}
	pl.leases[ip] = portLease{expires: expires, declined: declined}
	x.portOf[ip] = port
}

func (x *portIndex) remove(ip netip.Addr) {
	if !x.enabled {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.removeLocked(ip)
}

func (x *portIndex) removeLocked(ip netip.Addr) {
	port, ok := x.portOf[ip]
	if !ok {
		return
	}
	delete(x.portOf, ip)
	if pl := x.byPort[port]; pl != nil {
		delete(pl.leases, ip)
		if len(pl.leases) == 0 && pl.pending == 0 {
			delete(x.byPort, port)
		}
	}
}

// countLocked returns the unexpired leases and declines through port at
// now, not counting except, and drops expired entries.
func (x *portIndex) countLocked(port string, now time.Time, except netip.Addr) (leases, declines int) {
	pl := x.byPort[port]
	if pl == nil {
		return 0, 0
	}
	for ip, e := range pl.leases {
		if !now.Before(e.expires) {
			delete(pl.leases, ip)
			delete(x.portOf, ip)
			continue
		}
		if ip == except {
			continue
		}
		if e.declined {
			declines++
		} else {
			leases++
		}
	}
	return leases + pl.pending, declines
}

// acquire takes a lease slot on port if fewer than limit are in use,
// counting in-flight allocations; except is the client's current address,
// which the new lease replaces. done must be called with the outcome.
func (x *portIndex) acquire(port string, now time.Time, except netip.Addr, limit int) bool {
	if !x.enabled || limit <= 0 {
		return true
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if n, _ := x.countLocked(port, now, except); n >= limit {
		return false
	}
	pl := x.byPort[port]
	if pl == nil {
		pl = &portLeases{leases: map[netip.Addr]portLease{}}
		x.byPort[port] = pl
	}
	pl.pending++
	return true
}

// done releases a slot taken by acquire and, if the allocation succeeded
// (ip valid), records the lease.
func (x *portIndex) done(port string, limit int, ip netip.Addr, expires time.Time) {
	if !x.enabled {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if limit > 0 {
		if pl := x.byPort[port]; pl != nil && pl.pending > 0 {
			pl.pending--
		}
	}
	if ip.IsValid() && port != "" {
		x.setLocked(ip, port, expires, false)
	}
}

// declines returns the addresses in probation declined through port.
func (x *portIndex) declines(port string, now time.Time) int {
	if !x.enabled {
		return 0
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	_, d := x.countLocked(port, now, netip.Addr{})
	return d
}
