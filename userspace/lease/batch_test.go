package lease

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// batchStores are the backends AllocateBatch is checked on.
var batchStores = []struct {
	name string
	open func(t *testing.T) Store
}{
	{"memory", func(*testing.T) Store { return NewMemory() }},
	{"bolt group", func(t *testing.T) Store { return openTest(t, "", BoltOptions{}) }},
	{"bolt group, 3 per commit", func(t *testing.T) Store { return openTest(t, "", BoltOptions{MaxBatch: 3}) }},
	{"bolt serial", func(t *testing.T) Store { return openTest(t, "", BoltOptions{Commit: CommitSerial}) }},
}

// contents lists a store's leases, without the Updated stamps.
func contents(t *testing.T, s Store) []string {
	t.Helper()
	var out []string
	err := s.Iterate(context.Background(), func(l Lease) error {
		out = append(out, fmt.Sprintf("%s %x %x %x", fmtLease(l), l.ClientID, l.Hostname, l.Port))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAllocateBatch(t *testing.T) {
	now := t0
	mac := func(i byte) net.HardwareAddr { return net.HardwareAddr{2, 0, 0, 0, 0, i} }
	ip := func(i byte) netip.Addr { return netip.AddrFrom4([4]byte{10, 1, 0, i}) }
	offered := func(a netip.Addr, m net.HardwareAddr) Lease {
		return lease(a, m, "voice", StateOffered, now.Add(30*time.Second))
	}
	tests := []struct {
		name  string
		setup []Lease // allocated one by one first
		batch []Lease
		want  []error // nil, or the sentinel each outcome wraps
	}{
		{"empty", nil, nil, nil},
		{"fresh leases", nil,
			[]Lease{offered(ip(1), mac(1)), bound(ip(2), mac(2)), bound(ip(3), mac(3))},
			[]error{nil, nil, nil}},
		{"offer then ACK of the same client", nil,
			[]Lease{offered(ip(1), mac(1)), bound(ip(1), mac(1))},
			[]error{nil, nil}},
		{"a later lease sees an earlier one", nil,
			[]Lease{bound(ip(1), mac(1)), bound(ip(1), mac(2))},
			[]error{nil, ErrAddressInUse}},
		{"the same MAC moves: its first address is released", nil,
			[]Lease{bound(ip(1), mac(1)), bound(ip(2), mac(1)), bound(ip(1), mac(2))},
			[]error{nil, nil, nil}},
		{"conflicts and invalid leases fail alone", []Lease{bound(ip(5), mac(5))},
			[]Lease{bound(ip(5), mac(6)), {IP: ip(7), MAC: mac(7), Pool: "voice", State: StateReleased}, bound(ip(8), mac(8)),
				{IP: netip.MustParseAddr("2001:db8::1"), MAC: mac(9), Pool: "voice", State: StateBound}},
			[]error{ErrAddressInUse, ErrInvalid, nil, ErrInvalid}},
	}
	for _, st := range batchStores {
		t.Run(st.name, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					ctx := context.Background()
					s, ref := st.open(t), st.open(t)
					for _, l := range tt.setup {
						if err := s.Allocate(ctx, l, now); err != nil {
							t.Fatal(err)
						}
						if err := ref.Allocate(ctx, l, now); err != nil {
							t.Fatal(err)
						}
					}
					got := s.AllocateBatch(ctx, tt.batch, now)
					if len(got) != len(tt.batch) {
						t.Fatalf("%d outcomes for %d leases", len(got), len(tt.batch))
					}
					for i, err := range got {
						if errClass(err) != errClass(tt.want[i]) {
							t.Errorf("lease %d (%s): %v, want %v", i, fmtLease(tt.batch[i]), err, tt.want[i])
						}
						// The same as Allocate one by one.
						if one := ref.Allocate(ctx, tt.batch[i], now); errClass(one) != errClass(err) {
							t.Errorf("lease %d: batch %v, Allocate %v", i, err, one)
						}
					}
					if g, w := contents(t, s), contents(t, ref); !slices.Equal(g, w) {
						t.Errorf("after the batch:\n%q\none by one:\n%q", g, w)
					}
				})
			}
		})
	}
}

// TestAllocateBatchRandom: random batches on a small space (so that they
// collide with each other and with what is stored) give the outcomes and
// the content of the same Allocates one by one.
func TestAllocateBatchRandom(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	for _, st := range batchStores {
		t.Run(st.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 3))
			ctx := context.Background()
			s, ref := st.open(t), st.open(t)
			now := t0
			for round := range 40 {
				now = now.Add(time.Duration(r.IntN(40)) * time.Second)
				batch := make([]Lease, r.IntN(30))
				for i := range batch {
					state := StateOffered
					if r.IntN(2) == 0 {
						state = StateBound
					}
					batch[i] = lease(netip.AddrFrom4([4]byte{10, 0, 0, byte(r.IntN(16))}), net.HardwareAddr{6, 0, 0, 0, 0, byte(r.IntN(12))},
						[]string{"voice", "data"}[r.IntN(2)], state, now.Add(time.Duration(r.IntN(120)-20)*time.Second))
				}
				got := s.AllocateBatch(ctx, batch, now)
				for i, l := range batch {
					if one := ref.Allocate(ctx, l, now); errClass(one) != errClass(got[i]) {
						t.Fatalf("round %d lease %d %s: batch %v, Allocate %v", round, i, fmtLease(l), got[i], one)
					}
				}
				if g, w := contents(t, s), contents(t, ref); !slices.Equal(g, w) {
					t.Fatalf("round %d: after the batch:\n%q\none by one:\n%q", round, g, w)
				}
			}
		})
	}
}

func TestAllocateBatchFailures(t *testing.T) {
	batch := []Lease{bound(ipOne, macA), bound(ipTwo, macB)}
	for _, st := range batchStores {
		t.Run(st.name, func(t *testing.T) {
			s := st.open(t)
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			for i, err := range s.AllocateBatch(ctx, batch, t0) {
				if !errors.Is(err, context.Canceled) {
					t.Errorf("cancelled: lease %d: %v", i, err)
				}
			}
			if c := contents(t, s); len(c) != 0 {
				t.Errorf("a cancelled batch wrote %q", c)
			}
			if _, ok := s.(*Bolt); !ok {
				return
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			for i, err := range s.AllocateBatch(context.Background(), batch, t0) {
				if !errors.Is(err, ErrClosed) {
					t.Errorf("closed: lease %d: %v", i, err)
				}
			}
		})
	}
}

// TestAllocateBatchSharesCommits: a batch is one commit (up to MaxBatch),
// not one per lease, and is durable once returned.
func TestAllocateBatchSharesCommits(t *testing.T) {
	path := t.TempDir() + "/leases.db"
	s := openTest(t, path, BoltOptions{MaxBatch: 100})
	var batch []Lease
	for i := range 250 {
		batch = append(batch, bound(netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}), net.HardwareAddr{2, 2, 0, 0, byte(i >> 8), byte(i)}))
	}
	for i, err := range s.AllocateBatch(context.Background(), batch, t0) {
		if err != nil {
			t.Fatalf("lease %d: %v", i, err)
		}
	}
	if commits, ops := s.CommitStats(); commits != 3 || ops != 250 {
		t.Errorf("250 leases, at most 100 per commit: %d commits carrying %d operations, want 3 and 250", commits, ops)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(contents(t, openTest(t, path, BoltOptions{}))); n != 250 {
		t.Errorf("reopened: %d leases, want 250", n)
	}
}

// TestWriteAllStepFailsAlone: a step of a batch whose transaction step
// fails (here it panics) gets the error; the rest of the batch, before
// and after it in the same transaction, is committed without it.
func TestWriteAllStepFailsAlone(t *testing.T) {
	for _, mode := range []CommitMode{CommitGroup, CommitSerial} {
		t.Run(mode.String(), func(t *testing.T) {
			s := openTest(t, "", BoltOptions{Commit: mode})
			ctx := context.Background()
			var fns []func(*buckets) (error, error)
			for i := range 6 {
				fn, err := s.allocateOp(bound(netip.AddrFrom4([4]byte{10, 7, 0, byte(i)}), net.HardwareAddr{2, 7, 0, 0, 0, byte(i)}), t0)
				if err != nil {
					t.Fatal(err)
				}
				fns = append(fns, fn)
			}
			fns[2] = func(*buckets) (error, error) { panic("boom") }
			for i, err := range s.writeAll(ctx, fns) {
				if (i == 2) != (err != nil) {
					t.Errorf("step %d: %v", i, err)
				}
			}
			if n := len(contents(t, s)); n != 5 {
				t.Errorf("%d leases stored, want 5", n)
			}
		})
	}
}
