package lease

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestCommitDelay: a leader waits for company only while writes arrive
// fast, and the writes that arrive while it waits share its commit.
func TestCommitDelay(t *testing.T) {
	s := openTest(t, "", BoltOptions{CommitDelay: 200 * time.Microsecond})
	c := &s.group
	var clockMu sync.Mutex
	clock := t0
	c.now = func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return clock }
	advance := func(d time.Duration) { clockMu.Lock(); clock = clock.Add(d); clockMu.Unlock() }
	var waits atomic.Int32
	c.sleep = func(time.Duration) { waits.Add(1) }
	ctx := context.Background()
	n := 0
	allocate := func() {
		t.Helper()
		n++
		ip := netip.AddrFrom4([4]byte{10, 3, byte(n >> 8), byte(n)})
		if err := s.Allocate(ctx, bound(ip, net.HardwareAddr{2, 3, 0, 0, byte(n >> 8), byte(n)}), t0); err != nil {
			t.Fatal(err)
		}
	}

	// A lone writer, one write a millisecond: every commit at once.
	for range 50 {
		advance(time.Millisecond)
		allocate()
	}
	if w := waits.Load(); w != 0 {
		t.Errorf("one write a millisecond: the leader waited %d times, want never", w)
	}
	// Writes 10 µs apart: once the mean gap has come down, leaders wait.
	for range 100 {
		advance(10 * time.Microsecond)
		allocate()
	}
	if w := waits.Load(); w < 50 {
		t.Errorf("writes 10 µs apart: the leader waited %d times in 100 commits", w)
	}
	// And writers that arrive during the wait join the leader's commit:
	// this wait ends once all eight are queued.
	const writers = 8
	c.sleep = func(time.Duration) {
		for {
			c.mu.Lock()
			queued := len(c.queue)
			c.mu.Unlock()
			if queued == writers {
				return
			}
			runtime.Gosched()
		}
	}
	commits0, ops0 := s.CommitStats()
	var wg sync.WaitGroup
	for i := range writers {
		ip := netip.AddrFrom4([4]byte{10, 4, 0, byte(i)})
		wg.Go(func() {
			advance(10 * time.Microsecond)
			if err := s.Allocate(ctx, bound(ip, net.HardwareAddr{2, 4, 0, 0, 0, byte(i)}), t0); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if commits, ops := s.CommitStats(); commits-commits0 != 1 || ops-ops0 != writers {
		t.Errorf("%d writers during a wait: %d commits carrying %d operations, want 1 carrying %d",
			writers, commits-commits0, ops-ops0, writers)
	}
	// After a pause the next writer commits at once again.
	c.sleep = func(time.Duration) { waits.Add(1) }
	before := waits.Load()
	advance(2 * time.Second)
	allocate()
	if waits.Load() != before {
		t.Error("the first write after a 2 s pause waited")
	}
}

// TestCommitDelayOff: a negative CommitDelay never waits.
func TestCommitDelayOff(t *testing.T) {
	s := openTest(t, "", BoltOptions{CommitDelay: -1})
	s.group.sleep = func(time.Duration) { t.Error("waited with CommitDelay -1") }
	for i := range 50 {
		ip := netip.AddrFrom4([4]byte{10, 5, 0, byte(i)})
		if err := s.Allocate(context.Background(), bound(ip, net.HardwareAddr{2, 5, 0, 0, 0, byte(i)}), t0); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPreciseSleep: the wait lasts at least what it is asked for.
func TestPreciseSleep(t *testing.T) {
	start := time.Now()
	preciseSleep(200 * time.Microsecond)
	if d := time.Since(start); d < 200*time.Microsecond {
		t.Errorf("slept %s, want at least 200µs", d)
	}
}
