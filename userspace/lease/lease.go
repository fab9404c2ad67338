// Package lease keeps DHCP leases. Store is the contract every backend
// meets: the embedded bbolt store here, a distributed one (etcd) later.
// Every operation is atomic on its own; a call that returns nil has made
// its change durable, so an address acknowledged to a phone after Allocate
// or Renew returned is never lost, whatever happens to the process next.
package lease

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"
)

// State is where a lease is in its life.
type State uint8

const (
	// StateOffered: reserved for a client between OFFER and REQUEST.
	StateOffered State = 1
	// StateBound: acknowledged; the client uses the address until Expires.
	StateBound State = 2
	// StateDeclined: a client reported the address in use (DHCPDECLINE);
	// nobody gets it before Expires (the end of probation).
	StateDeclined State = 3
	// StateReleased: given back by its client; free, but remembered so the
	// same client gets the same address again.
	StateReleased State = 4
	// StateExpired: ran out unrenewed and was reclaimed; free, remembered
	// like StateReleased.
	StateExpired State = 5
)

func (s State) String() string {
	switch s {
	case StateOffered:
		return "offered"
	case StateBound:
		return "bound"
	case StateDeclined:
		return "declined"
	case StateReleased:
		return "released"
	case StateExpired:
		return "expired"
	}
	return "invalid"
}

// Lease is one address and who holds it.
type Lease struct {
	IP       netip.Addr
	MAC      net.HardwareAddr // chaddr, 1 to 16 bytes
	Pool     string           // the pool (voice VLAN) the address belongs to
	State    State
	Expires  time.Time // for StateDeclined: the end of probation
	Port     string    // the phone port the client was on: RELEASE and DECLINE are honoured only from it
	VLAN     uint16
	ClientID []byte // option 61, any bytes
	Hostname []byte // option 12, any bytes
	Updated  time.Time
}

// Free reports whether the address can go to a client other than l.MAC at
// time now.
func (l Lease) Free(now time.Time) bool {
	switch l.State {
	case StateReleased, StateExpired:
		return true
	case StateOffered, StateBound, StateDeclined:
		return !now.Before(l.Expires)
	}
	return false
}

// Reservation pins an address to a MAC in a pool (static assignment).
type Reservation struct {
	Pool string
	MAC  net.HardwareAddr
	IP   netip.Addr
}

// Errors the operations return; test with errors.Is.
var (
	ErrNotFound     = errors.New("no such lease")
	ErrAddressInUse = errors.New("address is held by another client")
	ErrReserved     = errors.New("address is reserved for another client")
	ErrNotOwner     = errors.New("lease belongs to another client")
	ErrInvalid      = errors.New("invalid lease")
)

// Store is a lease database.
type Store interface {
	// Allocate binds l.IP to l.MAC in l.Pool with l.State (offered or
	// bound) and l.Expires, if the address is free at now (see Lease.Free)
	// or already this MAC's. Any other address the MAC held in the pool is
	// freed in the same transaction, so a MAC never holds two addresses in
	// one pool. It fails with ErrAddressInUse or ErrReserved and changes
	// nothing then.
	Allocate(ctx context.Context, l Lease, now time.Time) error
	// AllocateBatch does what Allocate does for each lease of ls, in
	// order and with the same now, and returns one outcome per lease: nil,
	// or the error Allocate would have returned. It is for writers with
	// many leases at hand (the XDP fast path's events), which would
	// otherwise pay one commit each. Every lease whose outcome is nil is
	// durable when it returns. The batch is not atomic as a whole: a
	// backend may commit it in one transaction or in several, and a
	// failure of the store itself (closed, ctx cancelled, I/O) is the
	// outcome of each lease it did not commit.
	AllocateBatch(ctx context.Context, ls []Lease, now time.Time) []error
	// Renew extends the lease on ip held by mac and marks it bound.
	Renew(ctx context.Context, ip netip.Addr, mac net.HardwareAddr, expires time.Time) (Lease, error)
	// Release frees ip if mac holds it.
	Release(ctx context.Context, ip netip.Addr, mac net.HardwareAddr) error
	// Decline puts ip on probation until the given time, if mac holds it.
	Decline(ctx context.Context, ip netip.Addr, mac net.HardwareAddr, until time.Time) error
	// Reclaim marks offered and bound leases whose Expires is not after now
	// as expired, and declined ones past probation as expired. It calls
	// fn, if not nil, with each lease it changed once the change is
	// durable, outside any transaction (fn may call the store), and
	// returns how many it changed.
	Reclaim(ctx context.Context, now time.Time, fn func(Lease)) (int, error)
	// ByMAC returns the MAC's lease in the pool (in any state).
	ByMAC(ctx context.Context, pool string, mac net.HardwareAddr) (Lease, error)
	// ByIP returns the lease on the address (in any state).
	ByIP(ctx context.Context, ip netip.Addr) (Lease, error)
	// Iterate calls fn for every lease in address order until fn returns
	// an error, which Iterate then returns.
	Iterate(ctx context.Context, fn func(Lease) error) error

	// Reserve pins ip to mac in pool. It fails with ErrAddressInUse if
	// another MAC holds ip unexpired.
	Reserve(ctx context.Context, r Reservation) error
	// Unreserve removes the MAC's reservation in pool.
	Unreserve(ctx context.Context, pool string, mac net.HardwareAddr) error
	// Reservations lists every reservation.
	Reservations(ctx context.Context) ([]Reservation, error)

	Close() error
}
