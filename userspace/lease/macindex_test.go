package lease

import (
	"bytes"
	"context"
	"encoding/binary"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestIndexRebuiltAtOpen: a reopened store indexes each MAC to its
// offered or bound lease, or else to its most recently updated released
// or expired one; a declined lease is never indexed.
func TestIndexRebuiltAtOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	clock := t0
	s := openTest(t, path, BoltOptions{Now: func() time.Time { return clock }})
	ctx := context.Background()
	ipThree := ip4("10.1.0.3")
	step := func(err error) {
		t.Helper()
		clock = clock.Add(time.Second)
		if err != nil {
			t.Fatal(err)
		}
	}
	// macA: ipOne, then ipTwo (ipOne released by the move), then ipTwo
	// released too: its latest is ipTwo.
	step(s.Allocate(ctx, bound(ipOne, macA), clock))
	step(s.Allocate(ctx, bound(ipTwo, macA), clock))
	step(s.Release(ctx, ipTwo, macA))
	// macB: bound on ipThree, then declines it: no entry.
	step(s.Allocate(ctx, bound(ipThree, macB), clock))
	step(s.Decline(ctx, ipThree, macB, clock.Add(time.Hour)))
	want := map[string]string{mk("voice", macA): ipTwo.String()}
	check := func(when string) {
		t.Helper()
		got := map[string]string{}
		for k, ip := range readSnapshot(t, s).bymac {
			got[k] = ip.String()
		}
		if len(got) != len(want) || got[mk("voice", macA)] != want[mk("voice", macA)] {
			t.Errorf("%s: index %v, want %v", when, got, want)
		}
	}
	check("open")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, path, BoltOptions{Now: func() time.Time { return clock }})
	check("reopened")
	if l, err := s.ByMAC(ctx, "voice", macA); err != nil || l.IP != ipTwo || l.State != StateReleased {
		t.Errorf("ByMAC after reopen: %s, %v; want the released lease on %s", fmtLease(l), err, ipTwo)
	}
}

// TestSchemaOneMigrates: a file of schema 1, with the MAC index as a
// bucket, opens as schema 2 without the bucket and with its index built
// from the leases.
func TestSchemaOneMigrates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTest(t, path, BoltOptions{})
	ctx := context.Background()
	if err := s.Allocate(ctx, bound(ipOne, macA), t0); err != nil {
		t.Fatal(err)
	}
	// What a schema 1 build left: the bucket, with its entry.
	if err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(bucketByMAC)
		if err != nil {
			return err
		}
		k := ipKey(ipOne)
		if err := b.Put(macKey("voice", macA), k[:]); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keySchema, binary.BigEndian.AppendUint32(nil, 1))
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, path, BoltOptions{})
	if l, err := s.ByMAC(ctx, "voice", macA); err != nil || l.IP != ipOne {
		t.Errorf("ByMAC after the migration: %s, %v", fmtLease(l), err)
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketByMAC) != nil {
			t.Error("the MAC index bucket is still there")
		}
		if v := tx.Bucket(bucketMeta).Get(keySchema); !bytes.Equal(v, []byte{0, 0, 0, 2}) {
			t.Errorf("schema %x, want 2", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestByMACDuringWrites: while a MAC moves between two addresses, ByMAC
// always gives its bound lease, never the one it just left, although the
// index is changed a moment after the commit that moved it.
func TestByMACDuringWrites(t *testing.T) {
	s := openTest(t, "", BoltOptions{})
	ctx := context.Background()
	if err := s.Allocate(ctx, bound(ipOne, macA), t0); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	done, stop := make(chan struct{}), make(chan struct{})
	wg.Go(func() {
		defer close(done)
		for i := range 3000 {
			select {
			case <-stop:
				return
			default:
			}
			ip := ipTwo
			if i%2 == 1 {
				ip = ipOne
			}
			if err := s.Allocate(ctx, bound(ip, macA), t0); err != nil {
				t.Error(err)
				return
			}
		}
	})
	defer wg.Wait()
	reads := 0
	for {
		select {
		case <-done:
			if reads < 100 {
				t.Errorf("only %d reads during the writes", reads)
			}
			return
		default:
		}
		l, err := s.ByMAC(ctx, "voice", macA)
		if err != nil || l.State != StateBound || !bytes.Equal(l.MAC, macA) {
			t.Errorf("ByMAC during writes (after %d reads): %s, %v; want macA's bound lease", reads, fmtLease(l), err)
			close(stop)
			return
		}
		reads++
	}
}
