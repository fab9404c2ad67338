package dhcp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/phoneboot/phoneboot/userspace/fastpath"
	"github.com/phoneboot/phoneboot/userspace/lease"
	"github.com/phoneboot/phoneboot/userspace/privtest"
)

// loadBindings puts every lease of the store in the kernel, in batches,
// adds reservations without a lease, and removes bindings the store does
// not know.
func TestLoadBindings(t *testing.T) {
	privtest.Require(t)
	objs, err := fastpath.LoadObjects("", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	tb := objs.DHCP()
	cfg := smallPool(2000)
	resvMAC := resvInMAC // sorts before the leases' MACs
	resvIP := ip("10.9.0.5")
	cfg.Pools[0].Reservations = []ReservationConfig{{MAC: resvMAC, IP: resvIP}}
	store := lease.NewMemory()
	ctx := context.Background()
	now := time.Now()
	// More leases than one batch holds, in every state.
	const n = 3*bindingBatch + 17
	states := []lease.State{lease.StateBound, lease.StateOffered, lease.StateReleased}
	for i := range n {
		l := lease.Lease{
			IP: u32Addr(addrU32(ip("10.9.0.10")) + uint32(i)), MAC: macN(i), Pool: "small",
			State: states[i%3], Expires: now.Add(time.Hour), Port: "p1",
		}
		released := l.State == lease.StateReleased
		if released {
			l.State = lease.StateBound
		}
		if err := store.Allocate(ctx, l, now); err != nil {
			t.Fatal(err)
		}
		if released {
			if err := store.Release(ctx, l.IP, l.MAC); err != nil {
				t.Fatal(err)
			}
		}
	}
	// What an earlier run left: a client the store has since forgotten
	// with an address outside the pool, one on a VLAN with no pool, and
	// an outdated binding of a known one; and what a run killed between
	// the kernel's ACK and the store's commit leaves: ACKed clients the
	// store lacks (adopted unless another client holds the address, or
	// the lease ran out) or holds as offered (adopted).
	lease1 := u32Addr(addrU32(ip("10.9.0.10")) + 1)
	for _, b := range []fastpath.DHCPBinding{
		{VLAN: 0, MAC: macN(50000), IP: ip("10.9.9.9"), Bound: true, Expires: now.Add(time.Hour)},
		{VLAN: 7, MAC: macN(0), IP: ip("10.9.9.8"), Bound: true, Expires: now.Add(time.Hour)},
		{VLAN: 0, MAC: macN(3), IP: ip("10.9.9.7")},
		{VLAN: 0, MAC: macN(50001), IP: ip("10.9.7.200"), Bound: true, Expires: now.Add(time.Hour), Ifindex: 1},
		{VLAN: 0, MAC: macN(1), IP: lease1, Bound: true, Expires: now.Add(2 * time.Hour), Ifindex: 1},
		{VLAN: 0, MAC: macN(50002), IP: ip("10.9.0.10"), Bound: true, Expires: now.Add(time.Hour)},
		{VLAN: 0, MAC: macN(50003), IP: ip("10.9.7.201"), Bound: true, Expires: now.Add(-time.Minute)},
	} {
		if err := tb.PutBinding(b); err != nil {
			t.Fatal(err)
		}
	}
	h, err := NewHandler(cfg, store, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	p := &phonePort{name: "p1", ifindex: 1, mac: diffPortMAC}
	srv := &Server{h: h, cfg: ServerConfig{FastPath: tb}, log: testLogger(t),
		ports: []*phonePort{p}, byIdx: map[int]*phonePort{1: p}, queued: map[*Pool]*atomic.Int64{}, poolID: map[*Pool]uint32{}}
	if err := srv.loadBindings(ctx); err != nil {
		t.Fatal(err)
	}

	for i := range n {
		if i == 1 {
			continue // adopted from the kernel: checked below
		}
		b, ok, err := tb.Binding(0, macN(i))
		if err != nil || !ok {
			t.Fatalf("lease %d: binding %v, %v", i, ok, err)
		}
		wantIP := u32Addr(addrU32(ip("10.9.0.10")) + uint32(i))
		live := !b.Expires.Before(now.Add(time.Hour - time.Minute))
		if b.IP != wantIP || b.Bound != (states[i%3] == lease.StateBound) || live == (states[i%3] == lease.StateReleased) || b.Ifindex != 1 {
			t.Errorf("lease %d (%s): binding %+v", i, states[i%3], b)
		}
	}
	if b, ok, err := tb.Binding(0, resvMAC); err != nil || !ok || b.IP != resvIP || b.Bound {
		t.Errorf("reserved client: binding %+v, %v, %v; want %v, not bound", b, ok, err, resvIP)
	}
	for _, k := range []struct {
		vlan uint16
		mac  int
	}{{0, 50000}, {7, 0}, {0, 50002}, {0, 50003}} {
		if _, ok, err := tb.Binding(k.vlan, macN(k.mac)); err != nil || ok {
			t.Errorf("binding of VLAN %d MAC %v the store does not know: still there (%v)", k.vlan, macN(k.mac), err)
		}
	}
	for _, a := range []struct {
		mac     int
		ip      netip.Addr
		expires time.Time
	}{{50001, ip("10.9.7.200"), now.Add(time.Hour)}, {1, lease1, now.Add(2 * time.Hour)}} {
		l, err := store.ByMAC(ctx, "small", macN(a.mac))
		if err != nil || l.IP != a.ip || l.State != lease.StateBound || l.Expires.Sub(a.expires).Abs() > time.Second || l.Port != "p1" {
			t.Errorf("client %v the kernel ACKed: store has %+v (%v), want bound to %v until %v on p1", macN(a.mac), l, err, a.ip, a.expires)
		}
		if b, ok, err := tb.Binding(0, macN(a.mac)); err != nil || !ok || b.IP != a.ip || !b.Bound {
			t.Errorf("client %v the kernel ACKed: binding %+v (%v, %v), want it kept", macN(a.mac), b, ok, err)
		}
	}
	if l, err := store.ByIP(ctx, ip("10.9.0.10")); err != nil || !bytes.Equal(l.MAC, macN(0)) {
		t.Errorf("10.9.0.10 is held by %+v, want still by %v", l, macN(0))
	}
	// Adopted: 50001 and 1; refused: 50000 (outside the pool), the
	// client on VLAN 7 (no pool) and 50002 (another client's address).
	if st := srv.Started(); st.Adopted != 2 || st.Refused != 3 {
		t.Errorf("start recovery %+v, want 2 adopted and 3 refused", st)
	}
}

// BenchmarkLoad measures what a daemon does with its leases at start:
// open the bbolt store (which checks every page), build the allocators
// (NewHandler) and write every binding to the fast path (loadBindings).
// B/lease is what that allocates per lease; the Go heap's peak at start,
// and so the daemon's RSS, follows it.
//
//	go test -run '^$' -bench BenchmarkLoad -benchtime 5x ./userspace/dhcp
func BenchmarkLoad(b *testing.B) {
	privtest.Require(b)
	const n = 100000
	cfg := smallPool(n)
	cfg.Pools[0].Subnet = netip.MustParsePrefix("10.8.0.0/14")
	log := slog.New(slog.DiscardHandler)
	path := filepath.Join(b.TempDir(), "leases.db")
	fillStore(b, path, n)
	objs, err := fastpath.LoadObjects("", log)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { objs.Close() })
	ctx := context.Background()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for b.Loop() {
		store, err := lease.OpenBolt(path, lease.BoltOptions{Log: log})
		if err != nil {
			b.Fatal(err)
		}
		h, err := NewHandler(cfg, store, log)
		if err != nil {
			b.Fatal(err)
		}
		srv := &Server{h: h, cfg: ServerConfig{FastPath: objs.DHCP()}, log: log}
		if err := srv.loadBindings(ctx); err != nil {
			b.Fatal(err)
		}
		if err := store.Close(); err != nil {
			b.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/float64(b.N)/n, "B/lease")
}

// fillStore writes n bound leases of smallPool's pool to a new store at
// path, from concurrent writers that share commits.
func fillStore(b *testing.B, path string, n int) {
	s, err := lease.OpenBolt(path, lease.BoltOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now()
	var next atomic.Int64
	var g errgroup.Group
	for range 64 {
		g.Go(func() error {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				l := lease.Lease{
					IP: u32Addr(addrU32(ip("10.9.0.10")) + uint32(i)), MAC: macN(i), Pool: "small",
					State: lease.StateBound, Expires: now.Add(time.Hour), Port: "p1",
					ClientID: append([]byte{1}, macN(i)...), Hostname: fmt.Appendf(nil, "SEP%X", []byte(macN(i))),
				}
				if err := s.Allocate(ctx, l, now); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := errors.Join(g.Wait(), s.Close()); err != nil {
		b.Fatal(err)
	}
}
