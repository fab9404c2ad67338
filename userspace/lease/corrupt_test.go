package lease

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// bulkLease is lease i of a large test store: distinct address and MAC,
// pool "voice" (every 7th "data"), client bytes of a realistic size.
func bulkLease(i int) Lease {
	pool := "voice"
	if i%7 == 0 {
		pool = "data"
	}
	st := StateBound
	if i%5 == 0 {
		st = StateOffered
	}
	return Lease{
		IP:       netip.AddrFrom4([4]byte{10, byte(16 + i>>16), byte(i >> 8), byte(i)}),
		MAC:      net.HardwareAddr{0x00, 0x1b, 0x54, byte(i >> 16), byte(i >> 8), byte(i)},
		Pool:     pool,
		State:    st,
		Expires:  t0.Add(time.Duration(i) * time.Second),
		Port:     fmt.Sprintf("gi1/0/%d", i%48+1),
		VLAN:     100,
		ClientID: append([]byte{1, 0x00, 0x1b, 0x54}, byte(i>>16), byte(i>>8), byte(i)),
		Hostname: fmt.Appendf(nil, "SEP001B54%06X", i),
	}
}

func bulkLeases(n int) []Lease {
	ls := make([]Lease, n)
	for i := range ls {
		ls[i] = bulkLease(i)
	}
	return ls
}

// bulkLoad writes leases straight into the buckets and the index in
// transactions of 10,000 (test setup for large stores; Allocate's own
// path is tested elsewhere).
func bulkLoad(t testing.TB, s *Bolt, ls []Lease) {
	t.Helper()
	for len(ls) > 0 {
		chunk := ls[:min(len(ls), 10000)]
		ls = ls[len(chunk):]
		err := s.update(func(tx *bolt.Tx) error {
			b, err := openBuckets(tx)
			if err != nil {
				return err
			}
			for i := range chunk {
				l := chunk[i]
				l.Updated = t0
				k := ipKey(l.IP)
				if err := putLease(b, k[:], &l); err != nil {
					return err
				}
				s.index.put(macKey(l.Pool, l.MAC), k)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// buildGolden makes a store of n leases with some churn (so that it has
// free pages and released records) and reservations, closes it and
// returns its bytes.
func buildGolden(t testing.TB, path string, n int) []byte {
	t.Helper()
	s, err := OpenBolt(path, BoltOptions{Log: quietLog(), Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ls := bulkLeases(n)
	bulkLoad(t, s, ls)
	for i := 0; i < n; i += 10 {
		if err := s.Release(ctx, ls[i].IP, ls[i].MAC); err != nil {
			t.Fatal(err)
		}
	}
	for i := 3; i < n; i += 50 {
		if err := s.Decline(ctx, ls[i].IP, ls[i].MAC, t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		r := Reservation{Pool: "voice", MAC: net.HardwareAddr{2, 0xee, 0, 0, 0, byte(i)}, IP: netip.AddrFrom4([4]byte{10, 200, 0, byte(i)})}
		if err := s.Reserve(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// exercise uses an opened (possibly damaged) store every way it can; any
// call may fail, none may panic. It counts the failures that are not
// ordinary outcomes (ErrNotFound and the like).
func exercise(s *Bolt, ls []Lease) (errs int) {
	ctx := context.Background()
	count := func(err error) {
		if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrAddressInUse) &&
			!errors.Is(err, ErrReserved) && !errors.Is(err, ErrNotOwner) {
			errs++
		}
	}
	count(s.Iterate(ctx, func(Lease) error { return nil }))
	for _, l := range ls {
		_, err := s.ByIP(ctx, l.IP)
		count(err)
		_, err = s.ByMAC(ctx, l.Pool, l.MAC)
		count(err)
	}
	_, err := s.Reservations(ctx)
	count(err)
	count(s.Allocate(ctx, bound(ip4("10.250.0.1"), macA), t0))
	count(s.Allocate(ctx, bound(ls[1].IP, ls[1].MAC), t0))
	count(s.Release(ctx, ls[2].IP, ls[2].MAC))
	_, err = s.Reclaim(ctx, t0.Add(24*time.Hour), nil)
	count(err)
	count(s.Reserve(ctx, Reservation{Pool: "voice", MAC: macB, IP: ip4("10.250.0.2")}))
	return errs
}

type damage struct {
	name string
	data []byte
}

func TestTruncatedAndCorruptFiles(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 5))
	dir := t.TempDir()
	const n = 1000
	golden := buildGolden(t, filepath.Join(dir, "golden.db"), n)
	ls := bulkLeases(n)
	size := len(golden)
	t.Logf("golden store: %d leases, %d bytes", n, size)

	var cases []damage
	for _, l := range []int{0, 1, 4095, 4096, size / 2, size - 1} {
		cases = append(cases, damage{fmt.Sprintf("truncated to %d", l), golden[:l]})
	}
	cases = append(cases,
		damage{"text file", []byte("lease 10.0.0.1 {\n  hardware ethernet 00:1b:54:00:00:01;\n}\n")},
		damage{"64 KiB of zeros", make([]byte, 64<<10)},
		damage{"64 KiB of noise", func() []byte {
			b := make([]byte, 64<<10)
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			return b
		}()},
	)
	for i := range 50 {
		b := bytes.Clone(golden)
		off := r.IntN(size)
		b[off] ^= byte(1 + r.IntN(255))
		cases = append(cases, damage{fmt.Sprintf("flip %d at %d", i, off), b})
	}
	cases = append(cases, targetedDamage(t, golden)...)

	outcomes := map[string]int{}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "leases.db")
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := OpenBolt(path, BoltOptions{Log: quietLog()})
			var ce *CorruptError
			switch {
			case err == nil && strings.HasPrefix(tc.name, "targeted:"):
				_ = s.Close()
				t.Fatal("OpenBolt accepted targeted damage")
			case err == nil:
				e := exercise(s, ls)
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				outcomes["opened"]++
				if e > 0 {
					outcomes["opened, some calls failed"]++
				}
			case strings.HasPrefix(tc.name, "targeted:") && !errors.As(err, &ce):
				t.Fatalf("OpenBolt = %v, want a *CorruptError", err)
			case errors.As(err, &ce):
				if ce.Path != path || !strings.Contains(err.Error(), path) {
					t.Fatalf("CorruptError does not name the path: %v", err)
				}
				outcomes["CorruptError"]++
			default:
				t.Fatalf("OpenBolt = %v, want nil or a *CorruptError", err)
			}

			// OpenOrRecover always yields a working store.
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			s, recovered, err := OpenOrRecover(path, BoltOptions{Log: testLog(t)})
			if err != nil {
				t.Fatalf("OpenOrRecover: %v", err)
			}
			defer func() { _ = s.Close() }()
			if recovered != "" {
				if !strings.HasPrefix(recovered, path+".corrupt-") {
					t.Fatalf("moved aside to %s", recovered)
				}
				aside, err := os.ReadFile(recovered)
				if err != nil || !bytes.Equal(aside, tc.data) {
					t.Fatalf("the aside file %s does not hold the damaged bytes: %v", recovered, err)
				}
				if ce == nil {
					t.Fatalf("OpenOrRecover moved aside a file OpenBolt opened")
				}
			} else if ce != nil {
				t.Fatalf("OpenOrRecover opened a file OpenBolt found corrupt")
			}
			ctx := context.Background()
			if err := s.Allocate(ctx, bound(ip4("10.251.0.1"), macC), t0); err != nil {
				t.Fatalf("Allocate on the recovered store: %v", err)
			}
			if l, err := s.ByIP(ctx, ip4("10.251.0.1")); err != nil || !bytes.Equal(l.MAC, macC) {
				t.Fatalf("ByIP on the recovered store: %v", err)
			}
		})
	}
	t.Logf("outcomes over %d damaged files: %v", len(cases), outcomes)
}

// pageWalker finds in-use pages in a bbolt file image, for targeted
// damage: it follows the newest valid meta page to the root bucket, then
// the first nested bucket with its own pages.
type pageWalker struct {
	b        []byte
	ps       int
	freelist int
	branch   int // a branch page of a bucket tree
	leaf     int // a leaf page under it
}

func newPageWalker(t *testing.T, b []byte) pageWalker {
	ne := binary.NativeEndian
	ps := int(ne.Uint32(b[pageHeaderSize+8:]))
	if ps < 1024 || len(b)%ps != 0 {
		t.Fatalf("page size %d, file %d", ps, len(b))
	}
	w := pageWalker{b: b, ps: ps, branch: -1, leaf: -1}
	m0, m1 := parseMeta(b[:ps]), parseMeta(b[ps:2*ps])
	m := m0
	if m1.valid && m1.txid > m0.txid {
		m = m1
	}
	w.freelist = int(m.freelist)
	page := func(id int) []byte { return b[id*ps : (id+1)*ps] }
	root := page(int(m.root))
	// The root bucket's leaf holds the named buckets; find one with its own
	// root page that is a branch.
	for i := range int(ne.Uint16(root[10:])) {
		e := root[pageHeaderSize+i*elementSize:]
		pos, ks := int(ne.Uint32(e[4:])), int(ne.Uint32(e[8:]))
		val := e[pos+ks:]
		sub := int(ne.Uint64(val))
		if sub == 0 || ne.Uint16(page(sub)[8:]) != branchPageFlag {
			continue
		}
		w.branch = sub
		be := page(sub)[pageHeaderSize:]
		w.leaf = int(ne.Uint64(be[8:])) // first child
		if ne.Uint16(page(w.leaf)[8:]) != leafPageFlag {
			t.Fatalf("first child %d of branch %d is not a leaf", w.leaf, sub)
		}
		break
	}
	if w.branch < 0 {
		t.Fatal("no bucket with a branch root")
	}
	return w
}

// targetedDamage builds damage that bbolt itself would not survive: each
// would make it fault, recurse forever or allocate without bound. checkFile
// must turn every one into a CorruptError.
func targetedDamage(t *testing.T, golden []byte) []damage {
	w := newPageWalker(t, golden)
	var out []damage
	mod := func(name string, f func(b []byte)) {
		b := bytes.Clone(golden)
		f(b)
		out = append(out, damage{"targeted: " + name, b})
	}
	branch, leaf, free := w.branch, w.leaf, w.freelist
	ne := binary.NativeEndian
	at := func(id, off int) int { return id*w.ps + off }
	mod("branch child points to itself (cycle)", func(b []byte) {
		ne.PutUint64(b[at(branch, pageHeaderSize+8):], uint64(branch))
	})
	mod("branch child far past the end of the file", func(b []byte) {
		ne.PutUint64(b[at(branch, pageHeaderSize+8):], 1<<40)
	})
	mod("branch element count 0xffff", func(b []byte) { ne.PutUint16(b[at(branch, 10):], 0xffff) })
	mod("leaf key offset past its page", func(b []byte) {
		ne.PutUint32(b[at(leaf, pageHeaderSize+4):], 1<<30)
	})
	mod("leaf value size 4 GiB", func(b []byte) {
		ne.PutUint32(b[at(leaf, pageHeaderSize+12):], 0xffffffff)
	})
	mod("leaf overflow past the end", func(b []byte) { ne.PutUint32(b[at(leaf, 12):], 1<<30) })
	mod("leaf page turned into a meta page", func(b []byte) { ne.PutUint16(b[at(leaf, 8):], 0x04) })
	mod("freelist count 2^60", func(b []byte) {
		ne.PutUint16(b[at(free, 10):], 0xffff)
		ne.PutUint64(b[at(free, pageHeaderSize):], 1<<60)
	})
	mod("freelist lists a page past the end", func(b []byte) {
		if ne.Uint16(b[at(free, 10):]) == 0 {
			ne.PutUint16(b[at(free, 10):], 1)
		}
		ne.PutUint64(b[at(free, pageHeaderSize):], 1<<50)
	})
	mod("freelist frees the root page", func(b []byte) {
		if ne.Uint16(b[at(free, 10):]) == 0 {
			ne.PutUint16(b[at(free, 10):], 1)
		}
		ne.PutUint64(b[at(free, pageHeaderSize):], uint64(branch))
	})
	mod("lease value byte flipped", func(b []byte) {
		// The last byte of the first leaf's first value.
		e := at(leaf, pageHeaderSize)
		pos, ks, vs := int(ne.Uint32(b[e+4:])), int(ne.Uint32(b[e+8:])), int(ne.Uint32(b[e+12:]))
		b[e+pos+ks+vs-1] ^= 0x01
	})
	return out
}

func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTest(t, path, BoltOptions{})
	if err := s.Allocate(context.Background(), bound(ipOne, macA), t0); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		min     time.Duration
	}{{"no wait", -1, 0}, {"200ms", 200 * time.Millisecond, 200 * time.Millisecond}} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			s2, err := OpenBolt(path, BoltOptions{Timeout: tc.timeout, Log: quietLog()})
			took := time.Since(start)
			if err == nil {
				_ = s2.Close()
				t.Fatal("a second OpenBolt on a locked file succeeded")
			}
			if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "locked by another process") {
				t.Fatalf("error %q does not say the path is locked", err)
			}
			if took < tc.min || took > tc.min+2*time.Second {
				t.Fatalf("gave up after %v, want about %v", took, tc.min)
			}
			// OpenOrRecover does not treat the lock as corruption.
			if _, rec, err := OpenOrRecover(path, BoltOptions{Timeout: tc.timeout, Log: quietLog()}); !errors.Is(err, ErrLocked) || rec != "" {
				t.Fatalf("OpenOrRecover = %q, %v", rec, err)
			}
		})
	}
	t.Run("another process", func(t *testing.T) {
		out, err := runHelper(t, "lock", path, 10*time.Second)
		if err != nil {
			t.Fatalf("helper: %v\n%s", err, out)
		}
		if !strings.Contains(out, "LOCKED") || !strings.Contains(out, path) {
			t.Fatalf("helper output: %s", out)
		}
	})
	// Once closed, it opens.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	openTest(t, path, BoltOptions{Timeout: -1})
}

func TestSchemaAndOtherErrors(t *testing.T) {
	t.Run("future schema is refused, not recovered", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "leases.db")
		s := openTest(t, path, BoltOptions{})
		if err := s.db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keySchema, []byte{0, 0, 0, 3})
		}); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		_, err := OpenBolt(path, BoltOptions{})
		var ce *CorruptError
		if !errors.Is(err, ErrSchema) || errors.As(err, &ce) || !strings.Contains(err.Error(), "version 3") {
			t.Fatalf("OpenBolt = %v", err)
		}
		if _, rec, err := OpenOrRecover(path, BoltOptions{}); !errors.Is(err, ErrSchema) || rec != "" {
			t.Fatalf("OpenOrRecover = %q, %v", rec, err)
		}
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("the file was moved: %v", err)
		}
	})
	t.Run("a MAC holding two addresses is corruption", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "leases.db")
		s := openTest(t, path, BoltOptions{})
		if err := s.Allocate(context.Background(), bound(ipOne, macA), t0); err != nil {
			t.Fatal(err)
		}
		// Written past Allocate, which would have released the first.
		if err := s.db.Update(func(tx *bolt.Tx) error {
			b, err := openBuckets(tx)
			if err != nil {
				return err
			}
			l := bound(ipTwo, macA)
			k := ipKey(ipTwo)
			return putLease(b, k[:], &l)
		}); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		var ce *CorruptError
		if _, err := OpenBolt(path, BoltOptions{}); !errors.As(err, &ce) || !strings.Contains(err.Error(), ipOne.String()) ||
			!strings.Contains(err.Error(), ipTwo.String()) {
			t.Fatalf("OpenBolt = %v", err)
		}
	})
	t.Run("missing directory is not corruption", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "no", "such", "leases.db")
		_, rec, err := OpenOrRecover(path, BoltOptions{})
		var ce *CorruptError
		if err == nil || errors.As(err, &ce) || rec != "" || !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("OpenOrRecover = %q, %v", rec, err)
		}
	})
	t.Run("empty file is a new store", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "leases.db")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		s := openTest(t, path, BoltOptions{Log: testLog(t)})
		if err := s.Allocate(context.Background(), bound(ipOne, macA), t0); err != nil {
			t.Fatal(err)
		}
	})
}
