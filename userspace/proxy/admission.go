package proxy

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

var errQueueFull = errors.New("admission queue full")

// bucket is a token bucket in its virtual-scheduling form (GCRA): each
// arrival reserves the next slot at once, so waiters leave in the order
// they came and a cancelled wait costs nothing to the others' order.
type bucket struct {
	interval  time.Duration // 1/rate; 0 admits at once
	tolerance time.Duration // (burst-1) intervals
	limit     int64

	mu      sync.Mutex
	tat     time.Time // theoretical arrival time of the next admission
	waiting atomic.Int64
}

func newBucket(rate float64, burst, limit int) *bucket {
	b := &bucket{limit: int64(limit)}
	if rate > 0 {
		b.interval = time.Duration(float64(time.Second) / rate)
		b.tolerance = time.Duration(burst-1) * b.interval
	}
	return b
}

// reserve takes the next slot and returns how long to wait for it.
func (b *bucket) reserve(now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	tat := b.tat
	if tat.Before(now) {
		tat = now
	}
	wait := tat.Add(-b.tolerance).Sub(now)
	b.tat = tat.Add(b.interval)
	return max(wait, 0)
}

// wait admits one connection: at once, after its slot, or errQueueFull
// when limit phones already wait. queued says whether it had to wait.
func (b *bucket) wait(ctx context.Context) (queued bool, err error) {
	if b.interval == 0 {
		return false, nil
	}
	if b.waiting.Add(1) > b.limit {
		b.waiting.Add(-1)
		return false, errQueueFull
	}
	defer b.waiting.Add(-1)
	d := b.reserve(time.Now())
	if d <= 0 {
		return false, nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true, nil
	case <-ctx.Done():
		return true, ctx.Err()
	}
}
