package dhcp

import (
	"math/bits"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/phoneboot/phoneboot/userspace/lease"
)

// addrState is what the allocator believes of one address. The lease
// store is the truth; this is a hint that makes picking a free address
// cheap. Every store answer corrects it: an address believed free that
// the store refuses is marked taken, and when a pool looks exhausted the
// handler rebuilds the belief from the store (rate-limited).
type addrState uint8

const (
	stFree     addrState = iota // never leased (or the lease record is gone)
	stFreeUsed                  // free, but remembered for its last client (released, expired)
	stAssigned                  // offered or bound
	stDeclined                  // in decline probation
	stReserved                  // reserved for a client that does not hold it now
	stPending                   // picked; Store.Allocate in flight
	stKernel                    // queued for the XDP fast path to hand out
	numStates
)

// bitset is a set of indexes in [0, size) with a summary level: bit j of
// summary says words[j] is non-zero. Finding the next member scans at most
// size/4096 summary words, about 25 for a 100,000-address range.
type bitset struct {
	words   []uint64
	summary []uint64
	n       int
}

func newBitset(size int) bitset {
	nw := (size + 63) / 64
	return bitset{words: make([]uint64, nw), summary: make([]uint64, (nw+63)/64)}
}

func (s *bitset) add(i int) {
	w := i >> 6
	if s.words[w]&(1<<(i&63)) != 0 {
		return
	}
	s.words[w] |= 1 << (i & 63)
	s.summary[w>>6] |= 1 << (w & 63)
	s.n++
}

func (s *bitset) remove(i int) {
	w := i >> 6
	if s.words[w]&(1<<(i&63)) == 0 {
		return
	}
	s.words[w] &^= 1 << (i & 63)
	if s.words[w] == 0 {
		s.summary[w>>6] &^= 1 << (w & 63)
	}
	s.n--
}

// next returns the first member >= i, or -1.
func (s *bitset) next(i int) int {
	w := i >> 6
	if w >= len(s.words) {
		return -1
	}
	if m := s.words[w] &^ (1<<(i&63) - 1); m != 0 {
		return w<<6 + bits.TrailingZeros64(m)
	}
	w++ // the first word after i's
	for sw := w >> 6; sw < len(s.summary); sw++ {
		m := s.summary[sw]
		if sw == w>>6 {
			m &^= 1<<(w&63) - 1
		}
		if m != 0 {
			wi := sw<<6 + bits.TrailingZeros64(m)
			return wi<<6 + bits.TrailingZeros64(s.words[wi])
		}
	}
	return -1
}

// allocator keeps the state of every address of a pool's range, plus
// reserved addresses outside it. Free addresses sit in two bitsets:
// fresh (never leased) ones are handed out first, so that addresses
// remembered for a previous client stay with it as long as possible. Each
// set has a cursor that moves forward round the range, so freed addresses
// are not reused at once and picking is O(1) amortised.
type allocator struct {
	mu       sync.Mutex
	base     uint32
	size     int
	state    []addrState
	fresh    bitset
	used     bitset
	cursor   [2]int
	extra    map[netip.Addr]addrState // reserved addresses outside the range
	reserved map[netip.Addr]net.HardwareAddr
	counts   [numStates]int
	// kernel holds the indexes queued for the fast path; a rebuild from
	// the store (which has no record of them) must not free them.
	kernel map[int]struct{}

	lastRecover time.Time
}

func newAllocator(start, end netip.Addr, reserved map[netip.Addr]net.HardwareAddr) *allocator {
	size := int(addrU32(end)-addrU32(start)) + 1
	a := &allocator{
		base:     addrU32(start),
		size:     size,
		state:    make([]addrState, size),
		fresh:    newBitset(size),
		used:     newBitset(size),
		extra:    map[netip.Addr]addrState{},
		reserved: reserved,
		kernel:   map[int]struct{}{},
	}
	a.resetLocked()
	return a
}

// resetLocked forgets everything: all addresses free, reserved ones held.
func (a *allocator) resetLocked() {
	clear(a.fresh.words)
	clear(a.fresh.summary)
	clear(a.used.words)
	clear(a.used.summary)
	a.fresh.n, a.used.n = 0, 0
	a.counts = [numStates]int{}
	for i := range a.state {
		a.state[i] = stFree
		a.fresh.add(i)
	}
	a.counts[stFree] = a.size
	clear(a.extra)
	for i := range a.kernel {
		a.setIndexLocked(i, stKernel)
	}
	for ip := range a.reserved {
		if i, ok := a.index(ip); ok {
			a.setIndexLocked(i, stReserved)
		} else {
			a.extra[ip] = stReserved
			a.counts[stReserved]++
		}
	}
}

func (a *allocator) index(ip netip.Addr) (int, bool) {
	if !ip.Is4() {
		return 0, false
	}
	off := addrU32(ip) - a.base
	if addrU32(ip) < a.base || int64(off) >= int64(a.size) {
		return 0, false
	}
	return int(off), true
}

func (a *allocator) addr(i int) netip.Addr { return u32Addr(a.base + uint32(i)) }

// set records what the store says of ip. A reserved address that becomes
// free is held for its client instead.
func (a *allocator) set(ip netip.Addr, st addrState) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.setLocked(ip, st)
}

func (a *allocator) setLocked(ip netip.Addr, st addrState) {
	if (st == stFree || st == stFreeUsed) && a.reserved[ip] != nil {
		st = stReserved
	}
	if i, ok := a.index(ip); ok {
		a.setIndexLocked(i, st)
		return
	}
	if old, ok := a.extra[ip]; ok {
		a.counts[old]--
		a.extra[ip] = st
		a.counts[st]++
	}
}

func (a *allocator) setIndexLocked(i int, st addrState) {
	old := a.state[i]
	a.counts[old]--
	a.counts[st]++
	a.state[i] = st
	switch old {
	case stFree:
		a.fresh.remove(i)
	case stFreeUsed:
		a.used.remove(i)
	}
	switch st {
	case stFree:
		a.fresh.add(i)
	case stFreeUsed:
		a.used.add(i)
	}
}

// leaseState is what a lease read from the store at time now makes of its
// address.
func leaseState(l *lease.Lease, now time.Time) addrState {
	if !l.Free(now) {
		switch l.State {
		case lease.StateOffered, lease.StateBound:
			return stAssigned
		case lease.StateDeclined:
			return stDeclined
		}
	}
	return stFreeUsed
}

// setFromLease records a lease read from the store at time now.
func (a *allocator) setFromLeaseLocked(l lease.Lease, now time.Time) {
	a.setLocked(l.IP, leaseState(&l, now))
}

// take picks a free address, fresh ones first, and marks it pending.
func (a *allocator) take() (netip.Addr, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, s := range []*bitset{&a.fresh, &a.used} {
		if s.n == 0 {
			continue
		}
		i := s.next(a.cursor[k])
		if i < 0 {
			i = s.next(0)
		}
		if i < 0 {
			continue // cannot happen while n > 0
		}
		a.cursor[k] = (i + 1) % a.size
		a.setIndexLocked(i, stPending)
		return a.addr(i), true
	}
	return netip.Addr{}, false
}

// claim marks ip pending if the allocator believes it free.
func (a *allocator) claim(ip netip.Addr) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	i, ok := a.index(ip)
	if !ok || (a.state[i] != stFree && a.state[i] != stFreeUsed) {
		return false
	}
	a.setIndexLocked(i, stPending)
	return true
}

// free is the number of addresses believed free.
func (a *allocator) free() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.fresh.n + a.used.n
}

// stats returns the counts of addresses in each state.
func (a *allocator) stats() [numStates]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.counts
}

// total is the number of addresses the pool can hand out: the range plus
// reserved addresses outside it.
func (a *allocator) total() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.size + len(a.extra)
}

// takeForKernel moves up to n never-leased free addresses, in the order
// take would have picked them, to the fast path's keeping.
func (a *allocator) takeForKernel(n int) []netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []netip.Addr
	for len(out) < n && a.fresh.n > 0 {
		i := a.fresh.next(a.cursor[0])
		if i < 0 {
			i = a.fresh.next(0)
		}
		if i < 0 {
			break
		}
		a.cursor[0] = (i + 1) % a.size
		a.setIndexLocked(i, stKernel)
		a.kernel[i] = struct{}{}
		out = append(out, a.addr(i))
	}
	return out
}

// returnFromKernel frees addresses the fast path gave back unused.
func (a *allocator) returnFromKernel(ips []netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ip := range ips {
		if i, ok := a.index(ip); ok {
			if _, held := a.kernel[i]; held {
				delete(a.kernel, i)
				if a.state[i] == stKernel {
					a.setIndexLocked(i, stFree)
				}
			}
		}
	}
}

// kernelAssigned records that the fast path handed ip to a client.
func (a *allocator) kernelAssigned(ip netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if i, ok := a.index(ip); ok {
		delete(a.kernel, i)
	}
	a.setLocked(ip, stAssigned)
}
