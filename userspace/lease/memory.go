package lease

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Memory is a Store that keeps everything in memory. It loses its leases
// with the process, so it serves tests and `dhcp.lease_db: ""` (a
// deliberate choice for throwaway setups), never a production default.
type Memory struct {
	mu     sync.Mutex
	byIP   map[netip.Addr]Lease
	byMAC  map[string]netip.Addr // poolKey -> address
	resv   map[string]Reservation
	resvIP map[netip.Addr]string // reserved address -> poolKey of its owner
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{
		byIP:   map[netip.Addr]Lease{},
		byMAC:  map[string]netip.Addr{},
		resv:   map[string]Reservation{},
		resvIP: map[netip.Addr]string{},
	}
}

func memKey(pool string, mac net.HardwareAddr) string {
	return fmt.Sprintf("%d:%s/%x", len(pool), pool, []byte(mac))
}

func cloneLease(l Lease) Lease {
	l.MAC = slices.Clone(l.MAC)
	l.ClientID = slices.Clone(l.ClientID)
	l.Hostname = slices.Clone(l.Hostname)
	return l
}

// Validate checks what every backend requires of a lease it stores.
func Validate(l Lease) error {
	switch {
	case !l.IP.Is4():
		return fmt.Errorf("%w: address %v is not IPv4", ErrInvalid, l.IP)
	case len(l.MAC) < 1 || len(l.MAC) > 16:
		return fmt.Errorf("%w: hardware address of %d bytes", ErrInvalid, len(l.MAC))
	case l.Pool == "":
		return fmt.Errorf("%w: no pool", ErrInvalid)
	case len(l.ClientID) > MaxClientBytes || len(l.Hostname) > MaxClientBytes || len(l.Port) > MaxClientBytes:
		return fmt.Errorf("%w: a field is over %d bytes", ErrInvalid, MaxClientBytes)
	}
	return nil
}

// MaxClientBytes bounds each client-supplied field a lease stores.
const MaxClientBytes = 1024

// Allocate implements Store.
func (m *Memory) Allocate(ctx context.Context, l Lease, now time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.allocateLocked(l, now)
}

// AllocateBatch implements Store; the whole batch is applied under one
// hold of the lock.
func (m *Memory) AllocateBatch(ctx context.Context, ls []Lease, now time.Time) []error {
	out := make([]error, len(ls))
	if err := ctx.Err(); err != nil {
		for i := range out {
			out[i] = err
		}
		return out
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, l := range ls {
		out[i] = m.allocateLocked(l, now)
	}
	return out
}

func (m *Memory) allocateLocked(l Lease, now time.Time) error {
	if err := Validate(l); err != nil {
		return err
	}
	if l.State != StateOffered && l.State != StateBound {
		return fmt.Errorf("%w: allocate in state %s", ErrInvalid, l.State)
	}
	key := memKey(l.Pool, l.MAC)
	if owner, ok := m.resvIP[l.IP]; ok && owner != key {
		return ErrReserved
	}
	if cur, ok := m.byIP[l.IP]; ok && !slices.Equal(cur.MAC, l.MAC) && !cur.Free(now) {
		return ErrAddressInUse
	}
	if old, ok := m.byMAC[key]; ok && old != l.IP {
		// A declined address stays in probation: moving its client on
		// must not free it early.
		if prev, ok := m.byIP[old]; ok && slices.Equal(prev.MAC, l.MAC) && prev.State != StateDeclined {
			prev.State = StateReleased
			prev.Updated = now
			m.byIP[old] = prev
		}
	}
	if cur, ok := m.byIP[l.IP]; ok && !slices.Equal(cur.MAC, l.MAC) {
		delete(m.byMAC, memKey(cur.Pool, cur.MAC))
	}
	l = cloneLease(l)
	l.Updated = now
	m.byIP[l.IP] = l
	m.byMAC[key] = l.IP
	return nil
}

func (m *Memory) owned(ip netip.Addr, mac net.HardwareAddr) (Lease, error) {
	l, ok := m.byIP[ip]
	if !ok {
		return Lease{}, ErrNotFound
	}
	if !slices.Equal(l.MAC, mac) {
		return Lease{}, ErrNotOwner
	}
	return l, nil
}

// Renew implements Store.
func (m *Memory) Renew(ctx context.Context, ip netip.Addr, mac net.HardwareAddr, expires time.Time) (Lease, error) {
	if err := ctx.Err(); err != nil {
		return Lease{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	l, err := m.owned(ip, mac)
	if err != nil {
		return Lease{}, err
	}
	if l.State == StateDeclined {
		return Lease{}, ErrNotOwner
	}
	l.State, l.Expires, l.Updated = StateBound, expires, time.Now()
	m.byIP[ip] = l
	m.byMAC[memKey(l.Pool, l.MAC)] = ip
	return cloneLease(l), nil
}

// Release implements Store.
func (m *Memory) Release(ctx context.Context, ip netip.Addr, mac net.HardwareAddr) error {
	return m.setState(ctx, ip, mac, StateReleased, time.Time{})
}

// Decline implements Store.
func (m *Memory) Decline(ctx context.Context, ip netip.Addr, mac net.HardwareAddr, until time.Time) error {
	return m.setState(ctx, ip, mac, StateDeclined, until)
}

func (m *Memory) setState(ctx context.Context, ip netip.Addr, mac net.HardwareAddr, s State, expires time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	l, err := m.owned(ip, mac)
	if err != nil {
		return err
	}
	l.State, l.Updated = s, time.Now()
	if !expires.IsZero() {
		l.Expires = expires
	}
	m.byIP[ip] = l
	return nil
}

// Reclaim implements Store.
func (m *Memory) Reclaim(ctx context.Context, now time.Time, fn func(Lease)) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	var out []Lease
	for ip, l := range m.byIP {
		switch l.State {
		case StateOffered, StateBound, StateDeclined:
			if !now.Before(l.Expires) {
				l.State, l.Updated = StateExpired, now
				m.byIP[ip] = l
				out = append(out, cloneLease(l))
			}
		}
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Lease) int { return a.IP.Compare(b.IP) })
	if fn != nil {
		for _, l := range out {
			fn(l)
		}
	}
	return len(out), nil
}

// ByMAC implements Store.
func (m *Memory) ByMAC(ctx context.Context, pool string, mac net.HardwareAddr) (Lease, error) {
	if err := ctx.Err(); err != nil {
		return Lease{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ip, ok := m.byMAC[memKey(pool, mac)]
	if !ok {
		return Lease{}, ErrNotFound
	}
	return cloneLease(m.byIP[ip]), nil
}

// ByIP implements Store.
func (m *Memory) ByIP(ctx context.Context, ip netip.Addr) (Lease, error) {
	if err := ctx.Err(); err != nil {
		return Lease{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	l, ok := m.byIP[ip]
	if !ok {
		return Lease{}, ErrNotFound
	}
	return cloneLease(l), nil
}

// Iterate implements Store.
func (m *Memory) Iterate(ctx context.Context, fn func(Lease) error) error {
	m.mu.Lock()
	all := make([]Lease, 0, len(m.byIP))
	for _, l := range m.byIP {
		all = append(all, cloneLease(l))
	}
	m.mu.Unlock()
	slices.SortFunc(all, func(a, b Lease) int { return a.IP.Compare(b.IP) })
	for _, l := range all {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(l); err != nil {
			return err
		}
	}
	return nil
}

// Reserve implements Store.
func (m *Memory) Reserve(ctx context.Context, r Reservation) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := Validate(Lease{IP: r.IP, MAC: r.MAC, Pool: r.Pool}); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	key := memKey(r.Pool, r.MAC)
	if cur, ok := m.byIP[r.IP]; ok && !slices.Equal(cur.MAC, r.MAC) && !cur.Free(time.Now()) {
		return ErrAddressInUse
	}
	if owner, ok := m.resvIP[r.IP]; ok && owner != key {
		return ErrReserved
	}
	if old, ok := m.resv[key]; ok {
		delete(m.resvIP, old.IP)
	}
	r.MAC = slices.Clone(r.MAC)
	m.resv[key] = r
	m.resvIP[r.IP] = key
	return nil
}

// Unreserve implements Store.
func (m *Memory) Unreserve(ctx context.Context, pool string, mac net.HardwareAddr) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	key := memKey(pool, mac)
	r, ok := m.resv[key]
	if !ok {
		return ErrNotFound
	}
	delete(m.resv, key)
	delete(m.resvIP, r.IP)
	return nil
}

// Reservations implements Store.
func (m *Memory) Reservations(ctx context.Context) ([]Reservation, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Reservation, 0, len(m.resv))
	for _, r := range m.resv {
		r.MAC = slices.Clone(r.MAC)
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Reservation) int { return a.IP.Compare(b.IP) })
	return out, nil
}

// Close implements Store.
func (m *Memory) Close() error { return nil }
