package lease

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAllocate measures durable Allocate calls per second (fsync on,
// every call waits for its commit) by commit mode and number of
// concurrent callers. Each call allocates a new address to a new MAC.
//
//	go test -run '^$' -bench BenchmarkAllocate -benchtime 2s ./userspace/lease
func BenchmarkAllocate(b *testing.B) {
	modes := []struct {
		name string
		opts BoltOptions
	}{
		{"serial", BoltOptions{Commit: CommitSerial}},
		{"group", BoltOptions{Commit: CommitGroup}},
	}
	for _, m := range modes {
		for _, conc := range []int{1, 8, 64, 256} {
			b.Run(fmt.Sprintf("%s/callers=%d", m.name, conc), func(b *testing.B) {
				s := openTest(b, "", m.opts)
				ctx := context.Background()
				var next atomic.Uint32
				alloc := func() {
					i := next.Add(1)
					l := Lease{
						IP:       netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}),
						MAC:      net.HardwareAddr{0, 0x1b, 0x54, byte(i >> 16), byte(i >> 8), byte(i)},
						Pool:     "voice",
						State:    StateBound,
						Expires:  t0.Add(time.Hour),
						Hostname: []byte("SEP001B54000000"),
					}
					if err := s.Allocate(ctx, l, t0); err != nil {
						b.Error(err)
					}
				}
				if conc == 1 {
					for b.Loop() {
						alloc()
					}
				} else {
					b.SetParallelism(max(1, conc/runtime.GOMAXPROCS(0)))
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							alloc()
						}
					})
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "allocs/s")
				if commits, ops := s.CommitStats(); commits > 0 {
					b.ReportMetric(float64(ops)/float64(commits), "ops/commit")
				}
			})
		}
	}
}

// BenchmarkAllocateBatch measures durable leases per second written with
// AllocateBatch, by batch size (the fast path's events arrive in batches
// of hundreds to thousands at high rates).
//
//	go test -run '^$' -bench BenchmarkAllocateBatch ./userspace/lease
func BenchmarkAllocateBatch(b *testing.B) {
	for _, size := range []int{1, 16, 256, 4096} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			s := openTest(b, "", BoltOptions{})
			ctx := context.Background()
			batch := make([]Lease, size)
			i := 0
			for b.Loop() {
				for j := range batch {
					i++
					batch[j] = Lease{
						IP:      netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}),
						MAC:     net.HardwareAddr{0, 0x1b, 0x54, byte(i >> 16), byte(i >> 8), byte(i)},
						Pool:    "voice",
						State:   StateBound,
						Expires: t0.Add(time.Hour),
						Port:    "swp1",
					}
				}
				for _, err := range s.AllocateBatch(ctx, batch, t0) {
					if err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "leases/s")
		})
	}
}

func BenchmarkByMAC(b *testing.B) {
	s := openTest(b, "", BoltOptions{})
	const n = 20000
	bulkLoad(b, s, bulkLeases(n))
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(rand.Uint64(), 0))
		for pb.Next() {
			l := bulkLease(r.IntN(n))
			if _, err := s.ByMAC(ctx, l.Pool, l.MAC); err != nil {
				b.Error(err)
			}
		}
	})
}

func BenchmarkByIP(b *testing.B) {
	s := openTest(b, "", BoltOptions{})
	const n = 20000
	bulkLoad(b, s, bulkLeases(n))
	ctx := context.Background()
	ips := make([]netip.Addr, 1024)
	for i := range ips {
		ips[i] = bulkLease(i * 19).IP
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := s.ByIP(ctx, ips[i%len(ips)]); err != nil {
			b.Error(err)
		}
		i++
	}
}

// BenchmarkOpen100k is the start-up cost: open and check every page and
// record of a 100,000-lease store.
func BenchmarkOpen100k(b *testing.B) {
	s := openTest(b, "", BoltOptions{})
	bulkLoad(b, s, bulkLeases(100000))
	path := s.Path()
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		s, err := OpenBolt(path, BoltOptions{Log: quietLog()})
		if err != nil {
			b.Fatal(err)
		}
		_ = s.Close()
	}
}

// BenchmarkBindAfterOffer measures what a REQUEST's write costs after its
// DISCOVER's: offered leases of random MACs (so their index entries sit
// on pages all over the by-MAC bucket) bound in batches of 256, per lease.
//
//	go test -run '^$' -bench BenchmarkBindAfterOffer ./userspace/lease
func BenchmarkBindAfterOffer(b *testing.B) {
	const size = 256
	s := openTest(b, "", BoltOptions{})
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	next := 0
	batch := func(st State) []Lease {
		ls := make([]Lease, size)
		for j := range ls {
			next++
			mac := make(net.HardwareAddr, 6)
			for k := range mac {
				mac[k] = byte(rng.Uint32())
			}
			mac[0] &^= 1
			ls[j] = Lease{
				IP:      netip.AddrFrom4([4]byte{10, byte(next >> 16), byte(next >> 8), byte(next)}),
				MAC:     mac,
				Pool:    "voice",
				State:   st,
				Expires: t0.Add(time.Minute),
				Port:    "swp1",
			}
		}
		return ls
	}
	write := func(ls []Lease) {
		for _, err := range s.AllocateBatch(ctx, ls, t0) {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	for range 200 { // 51,200 leases already, as in a storm under way
		ls := batch(StateOffered)
		write(ls)
		for j := range ls {
			ls[j].State = StateBound
		}
		write(ls)
	}
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		ls := batch(StateOffered)
		write(ls)
		for j := range ls {
			ls[j].State, ls[j].Expires = StateBound, t0.Add(time.Hour)
		}
		b.StartTimer()
		write(ls)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*size), "ns/lease")
}
