package tftp

import (
	"net/netip"
	"sync"
	"time"
)

// limiter admits read requests: a token bucket per client address and one
// for everyone, and counts of transfers in progress, per client and in
// all. Clients are tracked by address, not port: a phone retrying from a
// new port is the same phone.
type limiter struct {
	perRate, perBurst       float64
	globalRate, globalBurst float64
	maxPerClient            int
	maxTransfers            int
	maxTracked              int

	mu       sync.Mutex
	global   bucket
	buckets  map[netip.Addr]*bucket
	active   map[netip.Addr]int
	inFlight int
}

type bucket struct {
	tokens float64
	last   time.Time
}

func (b *bucket) take(now time.Time, rate, burst float64) bool {
	if dt := now.Sub(b.last); dt > 0 {
		b.tokens = min(burst, b.tokens+dt.Seconds()*rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// admission is the limiter's verdict on a request.
type admission uint8

const (
	admitted admission = iota
	rateLimitedClient
	rateLimitedGlobal
	busyGlobal
	busyClient
)

// allowRequest takes a token for a request from client; requests over the
// rate are dropped without an answer (an answer is what a flood wants).
func (l *limiter) allowRequest(client netip.Addr, now time.Time) admission {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[client]
	if b == nil {
		if len(l.buckets) >= l.maxTracked {
			l.prune(now)
		}
		if len(l.buckets) >= l.maxTracked {
			// Too many clients at once to remember: the global bucket
			// alone decides (memory stays bounded).
			if !l.global.take(now, l.globalRate, l.globalBurst) {
				return rateLimitedGlobal
			}
			return admitted
		}
		b = &bucket{tokens: l.perBurst, last: now}
		l.buckets[client] = b
	}
	if !b.take(now, l.perRate, l.perBurst) {
		return rateLimitedClient
	}
	if !l.global.take(now, l.globalRate, l.globalBurst) {
		return rateLimitedGlobal
	}
	return admitted
}

// prune forgets clients whose bucket has refilled: they are no different
// from clients never seen.
func (l *limiter) prune(now time.Time) {
	for a, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.perRate >= l.perBurst {
			delete(l.buckets, a)
		}
	}
}

// acquire reserves a transfer slot for client.
func (l *limiter) acquire(client netip.Addr) admission {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inFlight >= l.maxTransfers {
		return busyGlobal
	}
	if l.active[client] >= l.maxPerClient {
		return busyClient
	}
	l.inFlight++
	l.active[client]++
	return admitted
}

func (l *limiter) release(client netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inFlight--
	if l.active[client]--; l.active[client] <= 0 {
		delete(l.active, client)
	}
}

// tracked is how many clients the limiter remembers (for tests).
func (l *limiter) tracked() (buckets, active int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets), len(l.active)
}
