package lease

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// CommitMode selects how concurrent writes share transactions (and so
// fsyncs). Every mode returns from a write only after its transaction has
// committed with fsync.
type CommitMode uint8

const (
	// CommitGroup (the default) is group commit: a writer that finds no
	// transaction in progress commits at once; writers that arrive while
	// one is committing queue up and all go into the next transaction.
	// A lone writer pays one commit at once, a boot storm shares each
	// commit among everyone who arrived during the previous one and, while
	// writes come fast, during the leader's short wait for company
	// (BoltOptions.CommitDelay).
	CommitGroup CommitMode = iota
	// CommitSerial gives every write its own transaction (DB.Update).
	CommitSerial
)

func (m CommitMode) String() string {
	switch m {
	case CommitGroup:
		return "group"
	case CommitSerial:
		return "serial"
	}
	return fmt.Sprintf("CommitMode(%d)", uint8(m))
}

// opFunc is one write operation, run inside a read-write transaction. It
// returns the operation's outcome (nil, or an error such as
// ErrAddressInUse or ctx.Err(), in which case it has written nothing) and
// a non-nil err only when the transaction itself went wrong (a bbolt Put
// failed) and must be rolled back.
//
// An opFunc may run more than once, each time against a fresh
// transaction, when a transaction it shared is retried without a failed
// neighbour; so it must have no effect outside the transaction other than
// overwriting variables that only its caller reads after the write
// returns.
type opFunc func(tx *bolt.Tx) (outcome error, err error)

// errUnchanged is an outcome: the operation succeeded without writing
// (Release of a lease already released). It is reported to callers as nil.
var errUnchanged = errors.New("unchanged")

// errNothingToCommit rolls back a transaction in which no operation wrote.
var errNothingToCommit = errors.New("nothing to commit")

// call runs fn as its own transaction's only operation or joins others,
// per mode, and returns fn's outcome once the transaction has committed.
func (s *Bolt) call(fn opFunc) error { return s.callN(fn, 1) }

// callN is call for an operation of n steps (writeAll's chunks), which
// counts as n operations towards maxOps and CommitStats.
func (s *Bolt) callN(fn opFunc, n int) error {
	switch s.mode {
	case CommitSerial:
		var outcome error
		err := s.update(func(tx *bolt.Tx) error {
			o, err := safeCall(fn, tx)
			if err != nil {
				return err
			}
			outcome = o
			if o != nil {
				return errNothingToCommit
			}
			return nil
		})
		if err != nil && !errors.Is(err, errNothingToCommit) {
			return err
		}
		return outcomeError(outcome)
	default:
		return s.group.do(fn, n)
	}
}

// writeAll runs fns in order as write operations (see write) and returns
// their outcomes once all have committed. They go to the store as a few
// operations of at most maxOps steps each (per mode, sharing transactions
// with other writers), not as one operation each: fewer transactions,
// far less queueing, and the buckets opened once per transaction. A step
// whose transaction step fails (it is rolled back with its chunk) gets
// that error; the rest of its chunk is tried again without it.
func (s *Bolt) writeAll(ctx context.Context, fns []func(b *buckets) (outcome, err error)) []error {
	out := make([]error, len(fns))
	rest := make([]int, len(fns))
	for i := range rest {
		rest[i] = i
	}
	for len(rest) > 0 {
		chunk := rest[:min(len(rest), s.group.maxOps)]
		failed := -1
		err := s.callN(func(tx *bolt.Tx) (error, error) {
			failed = -1
			b, err := openBuckets(tx)
			if err != nil {
				return nil, err
			}
			b.idx = s.index
			wrote := false
			for j, i := range chunk {
				o := ctx.Err()
				if o == nil {
					if o, err = safeStep(fns[i], b); err != nil {
						failed = j
						return nil, err
					}
				}
				out[i] = o
				wrote = wrote || o == nil
			}
			if !wrote {
				return errUnchanged, nil
			}
			return nil, nil
		}, len(chunk))
		switch {
		case err == nil:
			for _, i := range chunk {
				out[i] = outcomeError(out[i])
			}
			rest = rest[len(chunk):]
		case failed >= 0:
			out[chunk[failed]] = mapErr(err)
			rest = slices.Delete(rest, failed, failed+1)
		default:
			for _, i := range chunk {
				out[i] = mapErr(err)
			}
			rest = rest[len(chunk):]
		}
	}
	return out
}

// safeStep is safeCall for one step of writeAll.
func safeStep(fn func(b *buckets) (outcome, err error), b *buckets) (outcome, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("lease store: internal error: %v", p)
		}
	}()
	return fn(b)
}

// safeCall runs fn, turning a panic into a transaction error so that the
// transaction is rolled back instead of committing half an operation.
func safeCall(fn opFunc, tx *bolt.Tx) (outcome, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("lease store: internal error: %v", p)
		}
	}()
	return fn(tx)
}

// committer is the group-commit queue.
type committer struct {
	update func(func(*bolt.Tx) error) error // Bolt.update
	maxOps int
	// delay is how long a leader waits for more operations before it
	// commits, when writes arrive at least one per delay (see lingers);
	// 0: never.
	delay time.Duration
	now   func() time.Time
	sleep func(time.Duration)

	mu     sync.Mutex
	queue  []*pendingOp
	leader bool
	// lastArrival and gap (a moving mean of the time between two
	// operations' arrivals) tell a busy store from a lone writer.
	lastArrival time.Time
	gap         time.Duration

	commits atomic.Uint64 // transactions committed
	ops     atomic.Uint64 // operations they carried
}

type pendingOp struct {
	fn      opFunc
	n       int // steps, counted towards maxOps
	outcome error
	// done receives true when the operation has finished, or false when
	// its goroutine is to lead the next transaction.
	done chan bool
}

// do queues fn, an operation of n steps. If no transaction is being
// built, the caller leads: it takes everything queued (operations of at
// most maxOps steps in all, but at least one), commits it in one
// transaction, then hands the lead to the first still-queued caller, so
// every caller leads at most one transaction and returns as soon as its
// own has committed.
func (c *committer) do(fn opFunc, n int) error {
	p := &pendingOp{fn: fn, n: n, done: make(chan bool, 1)}
	c.mu.Lock()
	c.queue = append(c.queue, p)
	c.arrived()
	if c.leader {
		c.mu.Unlock()
		if <-p.done {
			return outcomeError(p.outcome)
		}
		// Promoted: p is at the head of the queue.
	} else {
		c.leader = true
		c.mu.Unlock()
	}

	if c.lingers() {
		c.sleep(c.delay)
	}
	c.mu.Lock()
	n, steps := 0, 0
	for n < len(c.queue) && (n == 0 || steps+c.queue[n].n <= c.maxOps) {
		steps += c.queue[n].n
		n++
	}
	group := make([]*pendingOp, n)
	copy(group, c.queue)
	rest := copy(c.queue, c.queue[n:])
	clear(c.queue[rest:])
	c.queue = c.queue[:rest]
	c.mu.Unlock()

	c.run(group) // p is in group: it is the oldest queued operation

	c.mu.Lock()
	if len(c.queue) == 0 {
		c.leader = false
		c.mu.Unlock()
	} else {
		next := c.queue[0]
		c.mu.Unlock()
		next.done <- false
	}
	return outcomeError(p.outcome)
}

// arrived updates the arrival gap's moving mean (weight 1/8) for an
// operation just queued; c.mu is held.
func (c *committer) arrived() {
	if c.delay <= 0 {
		return
	}
	now := c.now()
	if !c.lastArrival.IsZero() {
		c.gap += (now.Sub(c.lastArrival) - c.gap) / 8
	}
	c.lastArrival = now
}

// lingers reports whether the leader should wait c.delay before it takes
// its group: when operations have lately arrived at least one per delay
// (so that at least one more is due during the wait) and fewer than
// maxOps are queued. Without the wait a busy store commits
// almost every operation alone: the Go DHCP server at 9,000 DORA/s
// averaged 1.4 operations a commit, and a commit's fixed cost (the pages
// it rewrites, its writes and its sync) then dominates; with a handful
// per commit the store's CPU per operation is about half (measured in
// bench/dhcp: with the wait, 7 operations a commit at 9,000 DORA/s and
// the server's CPU from 83 to 62 % of a core). A lone writer, whose own arrival
// stretches the mean gap, commits at once as before.
func (c *committer) lingers() bool {
	if c.delay <= 0 {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	steps := 0
	for _, p := range c.queue {
		steps += p.n
	}
	return c.gap <= c.delay && steps < c.maxOps
}

func outcomeError(err error) error {
	if errors.Is(err, errUnchanged) {
		return nil
	}
	return err
}

// run commits group in one transaction. An operation whose transaction
// step fails is taken out and the others are retried without it (they
// are idempotent), as bbolt's Batch does.
func (c *committer) run(group []*pendingOp) {
	for len(group) > 0 {
		failed := -1
		err := c.update(func(tx *bolt.Tx) error {
			wrote := false
			for i, p := range group {
				o, err := safeCall(p.fn, tx)
				if err != nil {
					failed = i
					return err
				}
				p.outcome = o
				if o == nil {
					wrote = true
				}
			}
			if !wrote {
				return errNothingToCommit
			}
			return nil
		})
		if failed >= 0 {
			p := group[failed]
			p.outcome = err
			p.done <- true
			group = append(group[:failed], group[failed+1:]...)
			continue
		}
		if errors.Is(err, errNothingToCommit) {
			err = nil
		} else if err == nil {
			c.commits.Add(1)
			for _, p := range group {
				c.ops.Add(uint64(p.n))
			}
		}
		for _, p := range group {
			if err != nil {
				p.outcome = err
			}
			p.done <- true
		}
		return
	}
}
