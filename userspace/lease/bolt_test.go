package lease

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	t0    = time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	macA  = hw("00:1b:54:00:00:0a")
	macB  = hw("00:1b:54:00:00:0b")
	macC  = hw("00:1b:54:00:00:0c")
	ipOne = ip4("10.1.0.1")
	ipTwo = ip4("10.1.0.2")
)

func lease(ip netip.Addr, mac net.HardwareAddr, pool string, st State, exp time.Time) Lease {
	return Lease{IP: ip, MAC: mac, Pool: pool, State: st, Expires: exp, Port: "gi1/0/7", VLAN: 100,
		ClientID: append([]byte{1}, mac...), Hostname: []byte("SEP" + strings.ToUpper(strings.ReplaceAll(mac.String(), ":", "")))}
}

func bound(ip netip.Addr, mac net.HardwareAddr) Lease {
	return lease(ip, mac, "voice", StateBound, t0.Add(time.Hour))
}

// fixture is a store plus a fixed clock.
type fixture struct {
	t   *testing.T
	s   *Bolt
	ctx context.Context
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	s := openTest(t, "", BoltOptions{Now: func() time.Time { return t0 }})
	return &fixture{t: t, s: s, ctx: context.Background()}
}

func (f *fixture) alloc(l Lease, now time.Time) {
	f.t.Helper()
	if err := f.s.Allocate(f.ctx, l, now); err != nil {
		f.t.Fatalf("Allocate(%s): %v", fmtLease(l), err)
	}
}

func (f *fixture) byIP(ip netip.Addr) Lease {
	f.t.Helper()
	l, err := f.s.ByIP(f.ctx, ip)
	if err != nil {
		f.t.Fatalf("ByIP(%s): %v", ip, err)
	}
	return l
}

func (f *fixture) wantState(ip netip.Addr, mac net.HardwareAddr, st State) {
	f.t.Helper()
	l := f.byIP(ip)
	if l.State != st || !bytes.Equal(l.MAC, mac) {
		f.t.Fatalf("lease %s = %s, want %s by %s", ip, fmtLease(l), st, mac)
	}
}

func (f *fixture) wantByMAC(pool string, mac net.HardwareAddr, want netip.Addr) {
	f.t.Helper()
	l, err := f.s.ByMAC(f.ctx, pool, mac)
	if !want.IsValid() {
		if !errors.Is(err, ErrNotFound) {
			f.t.Fatalf("ByMAC(%q, %s) = %s, %v; want ErrNotFound", pool, mac, fmtLease(l), err)
		}
		return
	}
	if err != nil || l.IP != want {
		f.t.Fatalf("ByMAC(%q, %s) = %s, %v; want %s", pool, mac, fmtLease(l), err, want)
	}
}

func TestAllocateValidation(t *testing.T) {
	f := newFixture(t)
	long := bytes.Repeat([]byte{'x'}, MaxFieldLen+1)
	for _, tc := range []struct {
		name string
		mod  func(*Lease)
	}{
		{"zero address", func(l *Lease) { l.IP = netip.Addr{} }},
		{"IPv6 address", func(l *Lease) { l.IP = ip4("2001:db8::1") }},
		{"empty MAC", func(l *Lease) { l.MAC = nil }},
		{"17-byte MAC", func(l *Lease) { l.MAC = make(net.HardwareAddr, 17) }},
		{"empty pool", func(l *Lease) { l.Pool = "" }},
		{"1025-byte pool", func(l *Lease) { l.Pool = string(long) }},
		{"state zero", func(l *Lease) { l.State = 0 }},
		{"state declined", func(l *Lease) { l.State = StateDeclined }},
		{"state released", func(l *Lease) { l.State = StateReleased }},
		{"state expired", func(l *Lease) { l.State = StateExpired }},
		{"state 99", func(l *Lease) { l.State = 99 }},
		{"1025-byte hostname", func(l *Lease) { l.Hostname = long }},
		{"1025-byte client ID", func(l *Lease) { l.ClientID = long }},
		{"1025-byte port", func(l *Lease) { l.Port = string(long) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := bound(ipOne, macA)
			tc.mod(&l)
			if err := f.s.Allocate(f.ctx, l, t0); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Allocate = %v, want ErrInvalid", err)
			}
			if _, err := f.s.ByIP(f.ctx, ipOne); !errors.Is(err, ErrNotFound) {
				t.Fatalf("the invalid lease was stored: %v", err)
			}
		})
	}
	t.Run("limits are inclusive", func(t *testing.T) {
		l := bound(ipOne, make(net.HardwareAddr, 16))
		l.Pool = string(long[:MaxFieldLen])
		l.Hostname, l.ClientID, l.Port = long[:MaxFieldLen], long[:MaxFieldLen], string(long[:MaxFieldLen])
		if err := f.s.Allocate(f.ctx, l, t0); err != nil {
			t.Fatal(err)
		}
		if got := f.byIP(ipOne); !sameLease(got, l) {
			t.Fatalf("got %s", fmtLease(got))
		}
	})
	t.Run("IPv4-mapped IPv6 is IPv4", func(t *testing.T) {
		l := bound(netip.AddrFrom16(ipTwo.As16()), macB)
		if err := f.s.Allocate(f.ctx, l, t0); err != nil {
			t.Fatal(err)
		}
		if got := f.byIP(netip.AddrFrom16(ipTwo.As16())); got.IP != ipTwo {
			t.Fatalf("got %s", got.IP)
		}
	})
	t.Run("other methods", func(t *testing.T) {
		bad := []struct {
			name string
			err  error
		}{}
		add := func(name string, err error) {
			bad = append(bad, struct {
				name string
				err  error
			}{name, err})
		}
		_, err := f.s.Renew(f.ctx, netip.Addr{}, macA, t0)
		add("Renew zero address", err)
		_, err = f.s.Renew(f.ctx, ipOne, nil, t0)
		add("Renew empty MAC", err)
		add("Release IPv6", f.s.Release(f.ctx, ip4("::1"), macA))
		add("Decline long MAC", f.s.Decline(f.ctx, ipOne, make(net.HardwareAddr, 20), t0))
		_, err = f.s.ByMAC(f.ctx, "", macA)
		add("ByMAC empty pool", err)
		_, err = f.s.ByMAC(f.ctx, "voice", nil)
		add("ByMAC empty MAC", err)
		_, err = f.s.ByIP(f.ctx, netip.Addr{})
		add("ByIP zero", err)
		add("Reserve empty pool", f.s.Reserve(f.ctx, Reservation{MAC: macA, IP: ipOne}))
		add("Reserve IPv6", f.s.Reserve(f.ctx, Reservation{Pool: "voice", MAC: macA, IP: ip4("2001:db8::2")}))
		add("Unreserve empty MAC", f.s.Unreserve(f.ctx, "voice", nil))
		for _, b := range bad {
			if !errors.Is(b.err, ErrInvalid) {
				t.Errorf("%s = %v, want ErrInvalid", b.name, b.err)
			}
		}
	})
}

func TestAllocate(t *testing.T) {
	type step func(f *fixture)
	allocOK := func(l Lease, now time.Time) step { return func(f *fixture) { f.alloc(l, now) } }
	for _, tc := range []struct {
		name    string
		setup   []step
		lease   Lease
		now     time.Time
		wantErr error
		check   func(f *fixture)
	}{
		{
			name:  "new address",
			lease: lease(ipOne, macA, "voice", StateOffered, t0.Add(time.Minute)),
			now:   t0,
			check: func(f *fixture) {
				l := f.byIP(ipOne)
				want := lease(ipOne, macA, "voice", StateOffered, t0.Add(time.Minute))
				if !sameLease(l, want) || !l.Updated.Equal(t0) {
					f.t.Fatalf("got %+v", l)
				}
				f.wantByMAC("voice", macA, ipOne)
			},
		},
		{
			name:  "offered then bound by the same MAC",
			setup: []step{allocOK(lease(ipOne, macA, "voice", StateOffered, t0.Add(time.Minute)), t0)},
			lease: bound(ipOne, macA), now: t0,
			check: func(f *fixture) { f.wantState(ipOne, macA, StateBound) },
		},
		{
			name:    "held by another MAC",
			setup:   []step{allocOK(bound(ipOne, macA), t0)},
			lease:   bound(ipOne, macB),
			now:     t0.Add(time.Minute),
			wantErr: ErrAddressInUse,
			check: func(f *fixture) {
				f.wantState(ipOne, macA, StateBound)
				f.wantByMAC("voice", macA, ipOne)
				f.wantByMAC("voice", macB, netip.Addr{})
			},
		},
		{
			name:    "held by another MAC until exactly now+1ns",
			setup:   []step{allocOK(lease(ipOne, macA, "voice", StateOffered, t0.Add(time.Nanosecond)), t0)},
			lease:   bound(ipOne, macB),
			now:     t0,
			wantErr: ErrAddressInUse,
		},
		{
			name:  "offer expired at now goes to another MAC",
			setup: []step{allocOK(lease(ipOne, macA, "voice", StateOffered, t0), t0)},
			lease: bound(ipOne, macB), now: t0,
			check: func(f *fixture) {
				f.wantState(ipOne, macB, StateBound)
				f.wantByMAC("voice", macA, netip.Addr{}) // the previous holder lost its index entry
				f.wantByMAC("voice", macB, ipOne)
			},
		},
		{
			name: "released address goes to another MAC",
			setup: []step{allocOK(bound(ipOne, macA), t0), func(f *fixture) {
				if err := f.s.Release(f.ctx, ipOne, macA); err != nil {
					f.t.Fatal(err)
				}
			}},
			lease: bound(ipOne, macB), now: t0,
			check: func(f *fixture) {
				f.wantState(ipOne, macB, StateBound)
				f.wantByMAC("voice", macA, netip.Addr{})
			},
		},
		{
			name: "declined address is refused to everyone during probation",
			setup: []step{allocOK(bound(ipOne, macA), t0), func(f *fixture) {
				if err := f.s.Decline(f.ctx, ipOne, macA, t0.Add(time.Hour)); err != nil {
					f.t.Fatal(err)
				}
			}},
			lease: bound(ipOne, macA), now: t0.Add(time.Minute), wantErr: ErrAddressInUse,
			check: func(f *fixture) {
				if err := f.s.Allocate(f.ctx, bound(ipOne, macB), t0.Add(time.Minute)); !errors.Is(err, ErrAddressInUse) {
					f.t.Fatalf("another MAC: %v", err)
				}
				f.wantState(ipOne, macA, StateDeclined)
			},
		},
		{
			name: "declined address after probation",
			setup: []step{allocOK(bound(ipOne, macA), t0), func(f *fixture) {
				if err := f.s.Decline(f.ctx, ipOne, macA, t0.Add(time.Hour)); err != nil {
					f.t.Fatal(err)
				}
			}},
			lease: bound(ipOne, macB), now: t0.Add(time.Hour),
			check: func(f *fixture) { f.wantState(ipOne, macB, StateBound) },
		},
		{
			name:  "moving within a pool releases the old address and keeps it for affinity",
			setup: []step{allocOK(bound(ipOne, macA), t0)},
			lease: bound(ipTwo, macA), now: t0,
			check: func(f *fixture) {
				f.wantState(ipOne, macA, StateReleased)
				f.wantState(ipTwo, macA, StateBound)
				f.wantByMAC("voice", macA, ipTwo)
				// The released record still names macA; another MAC may take it.
				f.alloc(bound(ipOne, macB), t0)
				f.wantByMAC("voice", macA, ipTwo)
				f.wantByMAC("voice", macB, ipOne)
			},
		},
		{
			name:  "a MAC holds one address per pool, not per store",
			setup: []step{allocOK(bound(ipOne, macA), t0)},
			lease: lease(ipTwo, macA, "data", StateBound, t0.Add(time.Hour)), now: t0,
			check: func(f *fixture) {
				f.wantState(ipOne, macA, StateBound)
				f.wantByMAC("voice", macA, ipOne)
				f.wantByMAC("data", macA, ipTwo)
			},
		},
		{
			name:  "same MAC takes its address into another pool",
			setup: []step{allocOK(bound(ipOne, macA), t0), allocOK(lease(ipTwo, macA, "data", StateBound, t0.Add(time.Hour)), t0)},
			lease: lease(ipOne, macA, "data", StateBound, t0.Add(time.Hour)), now: t0,
			check: func(f *fixture) {
				if l := f.byIP(ipOne); l.Pool != "data" {
					f.t.Fatalf("pool %q", l.Pool)
				}
				f.wantState(ipTwo, macA, StateReleased)
				f.wantByMAC("voice", macA, netip.Addr{})
				f.wantByMAC("data", macA, ipOne)
			},
		},
		{
			name: "reserved for another MAC",
			setup: []step{func(f *fixture) {
				if err := f.s.Reserve(f.ctx, Reservation{Pool: "other", MAC: macB, IP: ipOne}); err != nil {
					f.t.Fatal(err)
				}
			}},
			lease: bound(ipOne, macA), now: t0, wantErr: ErrReserved,
		},
		{
			name: "reservation wins over address-in-use",
			setup: []step{allocOK(lease(ipOne, macC, "voice", StateBound, t0.Add(-time.Hour)), t0.Add(-2*time.Hour)), func(f *fixture) {
				// macC's lease expired by time, so the address can be reserved.
				if err := f.s.Reserve(f.ctx, Reservation{Pool: "voice", MAC: macB, IP: ipOne}); err != nil {
					f.t.Fatal(err)
				}
			}},
			lease: bound(ipOne, macA), now: t0.Add(-90 * time.Minute), wantErr: ErrReserved,
		},
		{
			name: "reserved for this MAC",
			setup: []step{func(f *fixture) {
				if err := f.s.Reserve(f.ctx, Reservation{Pool: "voice", MAC: macA, IP: ipOne}); err != nil {
					f.t.Fatal(err)
				}
			}},
			lease: bound(ipOne, macA), now: t0,
			check: func(f *fixture) { f.wantState(ipOne, macA, StateBound) },
		},
		{
			name:  "pool names that would collide without length prefixes",
			setup: []step{allocOK(lease(ipOne, hw("06:00:00:00:00:01"), "a", StateBound, t0.Add(time.Hour)), t0)},
			lease: lease(ipTwo, hw("00:00:00:00:00:01"), "a\x06", StateBound, t0.Add(time.Hour)), now: t0,
			check: func(f *fixture) {
				f.wantByMAC("a", hw("06:00:00:00:00:01"), ipOne)
				f.wantByMAC("a\x06", hw("00:00:00:00:00:01"), ipTwo)
				f.wantState(ipOne, hw("06:00:00:00:00:01"), StateBound)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			for _, s := range tc.setup {
				s(f)
			}
			before := readSnapshot(t, f.s)
			err := f.s.Allocate(f.ctx, tc.lease, tc.now)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("Allocate = %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr != nil {
				if d := before.diff(readSnapshot(t, f.s)); d != "" {
					t.Fatalf("a failed Allocate changed the store:\n%s", d)
				}
			}
			if tc.check != nil {
				tc.check(f)
			}
			if err := checkInvariants(readSnapshot(t, f.s)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestRenewReleaseDecline(t *testing.T) {
	type call struct {
		op   string // renew, release, decline
		ip   netip.Addr
		mac  net.HardwareAddr
		when time.Time
	}
	setupBound := func(f *fixture) { f.alloc(bound(ipOne, macA), t0) }
	setupOffered := func(f *fixture) { f.alloc(lease(ipOne, macA, "voice", StateOffered, t0.Add(time.Minute)), t0) }
	then := func(c call) func(f *fixture) {
		return func(f *fixture) {
			if err := do(f, c.op, c.ip, c.mac, c.when); err != nil {
				f.t.Fatalf("setup %s: %v", c.op, err)
			}
		}
	}
	exp := t0.Add(2 * time.Hour)
	for _, tc := range []struct {
		name      string
		setup     []func(*fixture)
		call      call
		wantErr   error
		wantState State
		wantExp   time.Time
		wantIndex bool
	}{
		{name: "renew missing", call: call{"renew", ipOne, macA, exp}, wantErr: ErrNotFound},
		{name: "renew by another MAC", setup: []func(*fixture){setupBound}, call: call{"renew", ipOne, macB, exp}, wantErr: ErrNotOwner, wantState: StateBound, wantExp: t0.Add(time.Hour), wantIndex: true},
		{name: "renew offered binds it", setup: []func(*fixture){setupOffered}, call: call{"renew", ipOne, macA, exp}, wantState: StateBound, wantExp: exp, wantIndex: true},
		{name: "renew bound", setup: []func(*fixture){setupBound}, call: call{"renew", ipOne, macA, exp}, wantState: StateBound, wantExp: exp, wantIndex: true},
		{name: "renew after expiry by time, not reclaimed", setup: []func(*fixture){setupOffered}, call: call{"renew", ipOne, macA, t0.Add(time.Second)}, wantState: StateBound, wantExp: t0.Add(time.Second), wantIndex: true},
		{name: "renew declined", setup: []func(*fixture){setupBound, then(call{"decline", ipOne, macA, exp})}, call: call{"renew", ipOne, macA, exp}, wantErr: ErrNotOwner, wantState: StateDeclined, wantExp: exp},
		{name: "renew released", setup: []func(*fixture){setupBound, then(call{"release", ipOne, macA, time.Time{}})}, call: call{"renew", ipOne, macA, exp}, wantErr: ErrNotOwner, wantState: StateReleased, wantExp: t0.Add(time.Hour), wantIndex: true},
		{name: "renew reclaimed", setup: []func(*fixture){setupOffered, func(f *fixture) { mustReclaim(f, t0.Add(time.Hour)) }}, call: call{"renew", ipOne, macA, exp}, wantErr: ErrNotOwner, wantState: StateExpired, wantExp: t0.Add(time.Minute), wantIndex: true},
		{name: "release missing", call: call{"release", ipOne, macA, time.Time{}}, wantErr: ErrNotFound},
		{name: "release by another MAC", setup: []func(*fixture){setupBound}, call: call{"release", ipOne, macB, time.Time{}}, wantErr: ErrNotOwner, wantState: StateBound, wantExp: t0.Add(time.Hour), wantIndex: true},
		{name: "release bound keeps the record for affinity", setup: []func(*fixture){setupBound}, call: call{"release", ipOne, macA, time.Time{}}, wantState: StateReleased, wantExp: t0.Add(time.Hour), wantIndex: true},
		{name: "release twice", setup: []func(*fixture){setupBound, then(call{"release", ipOne, macA, time.Time{}})}, call: call{"release", ipOne, macA, time.Time{}}, wantState: StateReleased, wantExp: t0.Add(time.Hour), wantIndex: true},
		{name: "release declined", setup: []func(*fixture){setupBound, then(call{"decline", ipOne, macA, exp})}, call: call{"release", ipOne, macA, time.Time{}}, wantErr: ErrNotOwner, wantState: StateDeclined, wantExp: exp},
		{name: "decline missing", call: call{"decline", ipOne, macA, exp}, wantErr: ErrNotFound},
		{name: "decline by another MAC", setup: []func(*fixture){setupBound}, call: call{"decline", ipOne, macB, exp}, wantErr: ErrNotOwner, wantState: StateBound, wantExp: t0.Add(time.Hour), wantIndex: true},
		{name: "decline bound", setup: []func(*fixture){setupBound}, call: call{"decline", ipOne, macA, exp}, wantState: StateDeclined, wantExp: exp},
		{name: "decline offered", setup: []func(*fixture){setupOffered}, call: call{"decline", ipOne, macA, exp}, wantState: StateDeclined, wantExp: exp},
		{name: "decline released", setup: []func(*fixture){setupBound, then(call{"release", ipOne, macA, time.Time{}})}, call: call{"decline", ipOne, macA, exp}, wantErr: ErrNotOwner, wantState: StateReleased, wantExp: t0.Add(time.Hour), wantIndex: true},
		{name: "decline twice", setup: []func(*fixture){setupBound, then(call{"decline", ipOne, macA, exp})}, call: call{"decline", ipOne, macA, exp.Add(time.Hour)}, wantErr: ErrNotOwner, wantState: StateDeclined, wantExp: exp},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			for _, s := range tc.setup {
				s(f)
			}
			err := do(f, tc.call.op, tc.call.ip, tc.call.mac, tc.call.when)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("%s = %v, want %v", tc.call.op, err, tc.wantErr)
			}
			l, err := f.s.ByIP(f.ctx, ipOne)
			if tc.wantState == 0 {
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("ByIP = %s, %v; want none", fmtLease(l), err)
				}
				return
			}
			if err != nil || l.State != tc.wantState || !l.Expires.Equal(tc.wantExp) || !bytes.Equal(l.MAC, macA) {
				t.Fatalf("after: %s, %v; want %s by %s until %s", fmtLease(l), err, tc.wantState, macA, tc.wantExp)
			}
			want := netip.Addr{}
			if tc.wantIndex {
				want = ipOne
			}
			f.wantByMAC("voice", macA, want)
		})
	}
	t.Run("renew returns the lease and stamps Updated", func(t *testing.T) {
		f := newFixture(t)
		f.alloc(bound(ipOne, macA), t0.Add(-time.Hour))
		got, err := f.s.Renew(f.ctx, ipOne, macA, exp)
		if err != nil {
			t.Fatal(err)
		}
		want := bound(ipOne, macA)
		want.Expires = exp
		if !sameLease(got, want) || !got.Updated.Equal(t0) || !sameLease(f.byIP(ipOne), got) {
			t.Fatalf("got %+v", got)
		}
	})
	t.Run("renew of an address since reserved for another MAC", func(t *testing.T) {
		f := newFixture(t)
		f.alloc(lease(ipOne, macA, "voice", StateBound, t0.Add(-time.Hour)), t0.Add(-2*time.Hour)) // expired by time at t0
		if err := f.s.Reserve(f.ctx, Reservation{Pool: "voice", MAC: macB, IP: ipOne}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.s.Renew(f.ctx, ipOne, macA, exp); !errors.Is(err, ErrReserved) {
			t.Fatalf("Renew = %v, want ErrReserved", err)
		}
	})
}

func do(f *fixture, op string, ip netip.Addr, mac net.HardwareAddr, when time.Time) error {
	switch op {
	case "renew":
		_, err := f.s.Renew(f.ctx, ip, mac, when)
		return err
	case "release":
		return f.s.Release(f.ctx, ip, mac)
	case "decline":
		return f.s.Decline(f.ctx, ip, mac, when)
	}
	panic(op)
}

func mustReclaim(f *fixture, now time.Time) []Lease {
	f.t.Helper()
	var ls []Lease
	n, err := f.s.Reclaim(f.ctx, now, func(l Lease) { ls = append(ls, l) })
	if err != nil {
		f.t.Fatal(err)
	}
	if n != len(ls) {
		f.t.Fatalf("Reclaim returned %d, reported %d leases", n, len(ls))
	}
	return ls
}

// Reclaim over more leases than one transaction takes: every expired
// lease is reported once, in address order, after its transaction
// committed, and the others are left alone.
func TestReclaimManyLeases(t *testing.T) {
	for _, n := range []int{reclaimChunk, 3*reclaimChunk + 100} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			f := newFixture(t)
			all := bulkLeases(n + 500)
			bulkLoad(t, f.s, all)
			// bulkLease i expires i seconds after t0: n of them by now.
			now := t0.Add(time.Duration(n)*time.Second - time.Nanosecond)
			var got []netip.Addr
			count, err := f.s.Reclaim(f.ctx, now, func(l Lease) {
				// Outside the transaction and after its commit: the
				// store answers, with the lease expired.
				if cur := f.byIP(l.IP); cur.State != StateExpired {
					t.Errorf("%s reported while the store has it %s", l.IP, cur.State)
				}
				got = append(got, l.IP)
			})
			if err != nil || count != n || len(got) != n {
				t.Fatalf("Reclaim: %d (%d reported), %v; want %d", count, len(got), err, n)
			}
			for i, ip := range got {
				if ip != all[i].IP {
					t.Fatalf("lease %d reported is %s, want %s", i, ip, all[i].IP)
				}
			}
			f.wantState(all[n].IP, all[n].MAC, all[n].State)
			if again := mustReclaim(f, now); len(again) != 0 {
				t.Fatalf("second Reclaim changed %d leases", len(again))
			}
		})
	}
}

func TestReclaim(t *testing.T) {
	f := newFixture(t)
	ips := []netip.Addr{ip4("10.1.0.9"), ip4("10.1.0.3"), ip4("10.1.0.7"), ip4("10.1.0.1"), ip4("10.1.0.5"), ip4("10.1.0.6")}
	macs := []net.HardwareAddr{hw("02:00:00:00:00:01"), hw("02:00:00:00:00:02"), hw("02:00:00:00:00:03"), hw("02:00:00:00:00:04"), hw("02:00:00:00:00:05"), hw("02:00:00:00:00:06")}
	now := t0.Add(time.Hour)
	f.alloc(lease(ips[0], macs[0], "voice", StateBound, now), t0)                      // expires exactly now: reclaimed
	f.alloc(lease(ips[1], macs[1], "voice", StateOffered, now.Add(-time.Second)), t0)  // reclaimed
	f.alloc(lease(ips[2], macs[2], "voice", StateBound, now.Add(time.Nanosecond)), t0) // not yet
	f.alloc(lease(ips[3], macs[3], "voice", StateBound, now.Add(-time.Hour)), t0)      // reclaimed
	f.alloc(lease(ips[4], macs[4], "voice", StateBound, now.Add(time.Hour)), t0)       // then declined until now: reclaimed
	f.alloc(lease(ips[5], macs[5], "voice", StateBound, now.Add(-time.Minute)), t0)    // then released: left alone
	if err := f.s.Decline(f.ctx, ips[4], macs[4], now); err != nil {
		t.Fatal(err)
	}
	if err := f.s.Release(f.ctx, ips[5], macs[5]); err != nil {
		t.Fatal(err)
	}
	got := mustReclaim(f, now)
	var gotIPs []netip.Addr
	for _, l := range got {
		if l.State != StateExpired || !l.Updated.Equal(now) {
			t.Errorf("returned %s updated %s", fmtLease(l), l.Updated)
		}
		gotIPs = append(gotIPs, l.IP)
	}
	want := []netip.Addr{ips[3], ips[1], ips[4], ips[0]} // address order
	if !slices.Equal(gotIPs, want) {
		t.Fatalf("Reclaim = %v, want %v", gotIPs, want)
	}
	for _, ip := range want {
		if l := f.byIP(ip); l.State != StateExpired {
			t.Errorf("%s is %s", ip, l.State)
		}
	}
	f.wantState(ips[2], macs[2], StateBound)
	f.wantState(ips[5], macs[5], StateReleased)
	f.wantByMAC("voice", macs[0], ips[0]) // expired leases keep affinity
	f.wantByMAC("voice", macs[4], netip.Addr{})
	if again := mustReclaim(f, now); len(again) != 0 {
		t.Fatalf("second Reclaim changed %d leases", len(again))
	}
	// An expired lease is free for another MAC, and for its own.
	f.alloc(bound(ips[0], macs[1]), now)
	f.alloc(bound(ips[3], macs[3]), now)
	if err := checkInvariants(readSnapshot(t, f.s)); err != nil {
		t.Fatal(err)
	}
}

func TestIterate(t *testing.T) {
	f := newFixture(t)
	r := rand.New(rand.NewPCG(1, 2))
	var want []netip.Addr
	for i := range 700 { // more than two chunks
		ip := netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(i >> 8), byte(i)})
		mac := net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)}
		f.alloc(bound(ip, mac), t0)
		want = append(want, ip)
	}
	slices.SortFunc(want, netip.Addr.Compare)
	var got []netip.Addr
	if err := f.s.Iterate(f.ctx, func(l Lease) error { got = append(got, l.IP); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Iterate gave %d addresses, not in order or not all", len(got))
	}

	stop := errors.New("stop")
	n := 0
	if err := f.s.Iterate(f.ctx, func(Lease) error {
		if n++; n == 300 {
			return stop
		}
		return nil
	}); !errors.Is(err, stop) || n != 300 {
		t.Fatalf("Iterate = %v after %d calls, want stop after 300", err, n)
	}

	// fn may write to the store (it runs outside the read transactions).
	n = 0
	if err := f.s.Iterate(f.ctx, func(l Lease) error {
		n++
		return f.s.Release(f.ctx, l.IP, l.MAC)
	}); err != nil || n != len(want) {
		t.Fatalf("Iterate with writes = %v after %d calls", err, n)
	}
	f.wantState(want[0], f.byIP(want[0]).MAC, StateReleased)

	ctx, cancel := context.WithCancel(f.ctx)
	n = 0
	if err := f.s.Iterate(ctx, func(Lease) error {
		if n++; n == 10 {
			cancel()
		}
		return nil
	}); !errors.Is(err, context.Canceled) || n != 10 {
		t.Fatalf("Iterate with cancel = %v after %d calls", err, n)
	}
}

func TestReservations(t *testing.T) {
	f := newFixture(t)
	ctx := f.ctx
	res := func(pool string, mac net.HardwareAddr, ip netip.Addr) Reservation {
		return Reservation{Pool: pool, MAC: mac, IP: ip}
	}
	steps := []struct {
		name    string
		run     func() error
		wantErr error
	}{
		{"reserve", func() error { return f.s.Reserve(ctx, res("voice", macA, ipTwo)) }, nil},
		{"again is a no-op", func() error { return f.s.Reserve(ctx, res("voice", macA, ipTwo)) }, nil},
		{"address reserved for another", func() error { return f.s.Reserve(ctx, res("voice", macB, ipTwo)) }, ErrReserved},
		{"address reserved for the same MAC in another pool", func() error { return f.s.Reserve(ctx, res("data", macA, ipTwo)) }, ErrReserved},
		{"held by another MAC", func() error {
			f.alloc(bound(ipOne, macC), t0)
			return f.s.Reserve(ctx, res("voice", macB, ipOne))
		}, ErrAddressInUse},
		{"held by the same MAC", func() error { return f.s.Reserve(ctx, res("voice", macC, ipOne)) }, nil},
		{"moving a reservation", func() error { return f.s.Reserve(ctx, res("voice", macA, ip4("10.1.0.3"))) }, nil},
		{"old address is free again", func() error { return f.s.Reserve(ctx, res("voice", macB, ipTwo)) }, nil},
		{"unreserve", func() error { return f.s.Unreserve(ctx, "voice", macC) }, nil},
		{"unreserve missing", func() error { return f.s.Unreserve(ctx, "voice", macC) }, ErrNotFound},
		{"unreserve in another pool", func() error { return f.s.Unreserve(ctx, "data", macA) }, ErrNotFound},
	}
	for _, st := range steps {
		if err := st.run(); !errors.Is(err, st.wantErr) || (st.wantErr == nil && err != nil) {
			t.Fatalf("%s: %v, want %v", st.name, err, st.wantErr)
		}
	}
	want := []Reservation{res("voice", macB, ipTwo), res("voice", macA, ip4("10.1.0.3"))}
	check := func(s *Bolt) {
		t.Helper()
		got, err := s.Reservations(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.EqualFunc(got, want, func(a, b Reservation) bool {
			return a.Pool == b.Pool && bytes.Equal(a.MAC, b.MAC) && a.IP == b.IP
		}) {
			t.Fatalf("Reservations = %v, want %v", got, want)
		}
	}
	check(f.s)
	// A reservation blocks other MACs, not its own.
	if err := f.s.Allocate(ctx, bound(ipTwo, macA), t0); !errors.Is(err, ErrReserved) {
		t.Fatalf("Allocate by another MAC = %v", err)
	}
	f.alloc(lease(ipTwo, macB, "voice", StateBound, t0.Add(time.Hour)), t0)
	// And they survive a reopen.
	path := f.s.Path()
	if err := f.s.Close(); err != nil {
		t.Fatal(err)
	}
	check(openTest(t, path, BoltOptions{}))
}

func TestContextCancelled(t *testing.T) {
	f := newFixture(t)
	f.alloc(bound(ipOne, macA), t0)
	if err := f.s.Reserve(f.ctx, Reservation{Pool: "voice", MAC: macB, IP: ipTwo}); err != nil {
		t.Fatal(err)
	}
	before := readSnapshot(t, f.s)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls := map[string]func() error{
		"Allocate": func() error { return f.s.Allocate(ctx, bound(ip4("10.1.0.9"), macC), t0) },
		"Renew": func() error {
			_, err := f.s.Renew(ctx, ipOne, macA, t0.Add(3*time.Hour))
			return err
		},
		"Release": func() error { return f.s.Release(ctx, ipOne, macA) },
		"Decline": func() error { return f.s.Decline(ctx, ipOne, macA, t0) },
		"Reclaim": func() error {
			_, err := f.s.Reclaim(ctx, t0.Add(10*time.Hour), nil)
			return err
		},
		"ByMAC": func() error {
			_, err := f.s.ByMAC(ctx, "voice", macA)
			return err
		},
		"ByMAC, not indexed": func() error {
			_, err := f.s.ByMAC(ctx, "voice", hw("02:00:00:00:00:99"))
			return err
		},
		"ByIP": func() error {
			_, err := f.s.ByIP(ctx, ipOne)
			return err
		},
		"Iterate":   func() error { return f.s.Iterate(ctx, func(Lease) error { return nil }) },
		"Reserve":   func() error { return f.s.Reserve(ctx, Reservation{Pool: "voice", MAC: macC, IP: ip4("10.1.0.8")}) },
		"Unreserve": func() error { return f.s.Unreserve(ctx, "voice", macB) },
		"Reservations": func() error {
			_, err := f.s.Reservations(ctx)
			return err
		},
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context = %v", name, err)
		}
	}
	if d := before.diff(readSnapshot(t, f.s)); d != "" {
		t.Fatalf("cancelled calls changed the store:\n%s", d)
	}
}

func TestCloseAndReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	s, err := OpenBolt(path, BoltOptions{Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", fi.Mode().Perm())
	}
	ctx := context.Background()
	if err := s.Allocate(ctx, bound(ipOne, macA), t0); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.ByIP(ctx, ipOne); !errors.Is(err, ErrClosed) {
		t.Fatalf("ByIP after Close = %v", err)
	}
	for _, mac := range []net.HardwareAddr{macA, macB} { // indexed, and not
		if _, err := s.ByMAC(ctx, "voice", mac); !errors.Is(err, ErrClosed) {
			t.Fatalf("ByMAC(%s) after Close = %v", mac, err)
		}
	}
	if err := s.Allocate(ctx, bound(ipTwo, macB), t0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Allocate after Close = %v", err)
	}
	if _, err := s.Reclaim(ctx, t0, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Reclaim after Close = %v", err)
	}
	s2 := openTest(t, path, BoltOptions{})
	if l, err := s2.ByIP(ctx, ipOne); err != nil || !sameLease(l, bound(ipOne, macA)) || !l.Updated.Equal(t0) {
		t.Fatalf("after reopen: %+v, %v", l, err)
	}
}

func TestCommitModes(t *testing.T) {
	// Every mode gives the same results under concurrency: 64 goroutines
	// race for 8 addresses; exactly one MAC gets each.
	for _, mode := range []CommitMode{CommitGroup, CommitSerial} {
		t.Run(mode.String(), func(t *testing.T) {
			s := openTest(t, "", BoltOptions{Commit: mode})
			ctx := context.Background()
			var mu sync.Mutex
			winners := map[netip.Addr][]int{}
			var wg sync.WaitGroup
			for g := range 64 {
				wg.Go(func() {
					ip := netip.AddrFrom4([4]byte{10, 9, 0, byte(g % 8)})
					mac := net.HardwareAddr{2, 9, 0, 0, 0, byte(g)}
					err := s.Allocate(ctx, bound(ip, mac), t0)
					switch {
					case err == nil:
						mu.Lock()
						winners[ip] = append(winners[ip], g)
						mu.Unlock()
					case !errors.Is(err, ErrAddressInUse):
						t.Errorf("goroutine %d: %v", g, err)
					}
				})
			}
			wg.Wait()
			if len(winners) != 8 {
				t.Fatalf("%d addresses allocated, want 8", len(winners))
			}
			for ip, w := range winners {
				if len(w) != 1 {
					t.Fatalf("%s went to goroutines %v", ip, w)
				}
				if l, err := s.ByIP(ctx, ip); err != nil || l.MAC[5] != byte(w[0]) {
					t.Fatalf("%s: %v, %v; winner %d", ip, l.MAC, err, w[0])
				}
			}
			if err := checkInvariants(readSnapshot(t, s)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestGroupCommitPanicIsolated(t *testing.T) {
	// An operation that panics inside a shared transaction fails alone; the
	// others in the transaction commit.
	s := openTest(t, "", BoltOptions{})
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, 16)
	for i := range 16 {
		wg.Go(func() {
			if i == 5 {
				errs[i] = s.write(ctx, func(*buckets) (error, error) { panic("boom") })
				return
			}
			errs[i] = s.Allocate(ctx, bound(netip.AddrFrom4([4]byte{10, 8, 0, byte(i)}), net.HardwareAddr{2, 8, 0, 0, 0, byte(i)}), t0)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if i == 5 {
			if err == nil || !strings.Contains(err.Error(), "boom") {
				t.Fatalf("the panicking op returned %v", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("op %d: %v", i, err)
		}
	}
	n := 0
	_ = s.Iterate(ctx, func(Lease) error { n++; return nil })
	if n != 15 {
		t.Fatalf("%d leases, want 15", n)
	}
}

// TestDifferential drives the store and the reference model with the same
// random operations on a small space (so that they collide) and compares
// every outcome and, periodically, the whole content, reopening the store
// now and then.
func TestDifferential(t *testing.T) {
	for _, mode := range []CommitMode{CommitGroup, CommitSerial} {
		t.Run(mode.String(), func(t *testing.T) {
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			r := rand.New(rand.NewPCG(seed, 7))
			path := filepath.Join(t.TempDir(), "leases.db")
			opts := BoltOptions{Commit: mode, Log: quietLog()}
			clock := t0
			opts.Now = func() time.Time { return clock }
			s, err := OpenBolt(path, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s.Close() }()
			m := newModel()
			ctx := context.Background()
			pools := []string{"voice", "data", "a", "a\x06"}
			randIP := func() netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(r.IntN(12))}) }
			randMAC := func() net.HardwareAddr { return net.HardwareAddr{6, 0, 0, 0, 0, byte(r.IntN(8))} }
			for i := range 3000 {
				clock = clock.Add(time.Duration(r.IntN(20)) * time.Second)
				ip, mac, pool := randIP(), randMAC(), pools[r.IntN(len(pools))]
				var got, want error
				op := ""
				switch x := r.IntN(100); {
				case x < 40:
					st := StateOffered
					if r.IntN(2) == 0 {
						st = StateBound
					}
					l := lease(ip, mac, pool, st, clock.Add(time.Duration(r.IntN(300)-60)*time.Second))
					l.Hostname = []byte{byte(i), 0, '\n', ','}
					op = "allocate " + fmtLease(l)
					got, want = s.Allocate(ctx, l, clock), m.allocate(l, clock)
				case x < 55:
					exp := clock.Add(time.Duration(r.IntN(300)) * time.Second)
					op = fmt.Sprintf("renew %s %s", ip, mac)
					_, got = s.Renew(ctx, ip, mac, exp)
					want = m.renew(ip, mac, exp)
				case x < 65:
					op = fmt.Sprintf("release %s %s", ip, mac)
					got, want = s.Release(ctx, ip, mac), m.release(ip, mac)
				case x < 75:
					until := clock.Add(time.Duration(r.IntN(120)) * time.Second)
					op = fmt.Sprintf("decline %s %s", ip, mac)
					got, want = s.Decline(ctx, ip, mac, until), m.decline(ip, mac, until)
				case x < 80:
					op = "reclaim"
					var gotIPs []netip.Addr
					_, got = s.Reclaim(ctx, clock, func(l Lease) { gotIPs = append(gotIPs, l.IP) })
					wantIPs := m.reclaim(clock)
					if !slices.Equal(gotIPs, wantIPs) {
						t.Fatalf("step %d reclaim: got %v, want %v", i, gotIPs, wantIPs)
					}
				case x < 88:
					rv := Reservation{Pool: pool, MAC: mac, IP: ip}
					op = fmt.Sprintf("reserve %v", rv)
					got, want = s.Reserve(ctx, rv), m.reserve(rv, clock)
				case x < 93:
					op = fmt.Sprintf("unreserve %q %s", pool, mac)
					got, want = s.Unreserve(ctx, pool, mac), m.unreserve(pool, mac)
				case x < 96:
					op = fmt.Sprintf("bymac %q %s", pool, mac)
					l, err := s.ByMAC(ctx, pool, mac)
					got = err
					if wip, ok := m.bymac[mk(pool, mac)]; ok {
						if err != nil || !sameLease(l, m.leases[wip]) {
							t.Fatalf("step %d %s: got %s, %v; want %s", i, op, fmtLease(l), err, fmtLease(m.leases[wip]))
						}
					} else {
						want = ErrNotFound
					}
				default:
					op = "reopen"
					if err := s.Close(); err != nil {
						t.Fatal(err)
					}
					if s, err = OpenBolt(path, opts); err != nil {
						t.Fatal(err)
					}
					// The reopened store's index is rebuilt from its leases
					// (compared with the model's at the next check).
					m.bymac = rebuiltIndex(readSnapshot(t, s).leases)
				}
				if errClass(got) != errClass(want) {
					t.Fatalf("step %d %s: store %v, model %v", i, op, got, want)
				}
				if i%100 == 0 || i == 2999 {
					sn := readSnapshot(t, s)
					if d := m.snapshot().diff(sn); d != "" {
						t.Fatalf("step %d (%s): store differs from model:\n%s", i, op, d)
					}
					if err := checkInvariants(sn); err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
				}
			}
		})
	}
}
