package lease

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

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
	// A lone writer pays one commit, a boot storm shares each commit among
	// everyone who arrived during the previous one, and nobody waits on a
	// timer.
	CommitGroup CommitMode = iota
	// CommitBatch uses bbolt's DB.Batch: calls arriving within BatchDelay
	// of each other share a transaction. Every call waits at least
	// BatchDelay, so a lone writer is slow.
	CommitBatch
	// CommitSerial gives every write its own transaction (DB.Update).
	CommitSerial
)

func (m CommitMode) String() string {
	switch m {
	case CommitGroup:
		return "group"
	case CommitBatch:
		return "batch"
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
func (s *Bolt) call(fn opFunc) error {
	switch s.mode {
	case CommitSerial:
		var outcome error
		err := s.db.Update(func(tx *bolt.Tx) error {
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
	case CommitBatch:
		var outcome error
		err := s.db.Batch(func(tx *bolt.Tx) error {
			o, err := safeCall(fn, tx)
			outcome = o
			return err
		})
		if err != nil {
			return err
		}
		return outcomeError(outcome)
	default:
		return s.group.do(fn)
	}
}

// callAll runs fns in order as the operations of as few transactions as
// the mode allows and returns their outcomes once all have committed.
// With CommitGroup they queue together (sharing transactions with other
// writers too); the other modes commit them in transactions of their
// own, at most maxOps operations each.
func (s *Bolt) callAll(fns []opFunc) []error {
	ps := make([]*pendingOp, len(fns))
	for i, fn := range fns {
		ps[i] = &pendingOp{fn: fn, done: make(chan bool, 1)}
	}
	if s.mode == CommitGroup {
		s.group.doAll(ps)
	} else {
		for rest := ps; len(rest) > 0; {
			n := min(len(rest), s.group.maxOps)
			s.group.run(slices.Clone(rest[:n]))
			rest = rest[n:]
		}
	}
	out := make([]error, len(ps))
	for i, p := range ps {
		out[i] = outcomeError(p.outcome)
	}
	return out
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
	db     *bolt.DB
	maxOps int

	mu     sync.Mutex
	queue  []*pendingOp
	leader bool

	commits atomic.Uint64 // transactions committed
	ops     atomic.Uint64 // operations they carried
}

type pendingOp struct {
	fn      opFunc
	outcome error
	// done receives true when the operation has finished, or false when
	// its goroutine is to lead the next transaction.
	done chan bool
}

// do queues fn and returns its outcome once committed (see doAll).
func (c *committer) do(fn opFunc) error {
	p := &pendingOp{fn: fn, done: make(chan bool, 1)}
	c.doAll([]*pendingOp{p})
	return outcomeError(p.outcome)
}

// doAll queues ps, in order and together, and returns when all have
// finished (their outcomes set). If no transaction is being built, the
// caller leads: it takes everything queued (at most maxOps), commits it
// in one transaction, then hands the lead to the first still-queued
// operation's caller. A caller leads at most one transaction per
// operation of its own and returns as soon as its last one committed.
func (c *committer) doAll(ps []*pendingOp) {
	if len(ps) == 0 {
		return // nothing that would hand the lead on
	}
	c.mu.Lock()
	c.queue = append(c.queue, ps...)
	lead := !c.leader
	c.leader = true
	c.mu.Unlock()

	for _, p := range ps {
		// An operation already committed in a transaction this caller
		// led has its done value waiting; so does one another leader
		// committed. false: p heads the queue and its caller leads.
		if !lead && <-p.done {
			continue
		}
		lead = false
		c.lead()
	}
}

// lead commits the head of the queue (at most maxOps operations) in one
// transaction, then hands the lead on.
func (c *committer) lead() {
	c.mu.Lock()
	n := min(len(c.queue), c.maxOps)
	group := make([]*pendingOp, n)
	copy(group, c.queue)
	rest := copy(c.queue, c.queue[n:])
	clear(c.queue[rest:])
	c.queue = c.queue[:rest]
	c.mu.Unlock()

	c.run(group)

	c.mu.Lock()
	if len(c.queue) == 0 {
		c.leader = false
		c.mu.Unlock()
	} else {
		next := c.queue[0]
		c.mu.Unlock()
		next.done <- false
	}
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
		err := c.db.Update(func(tx *bolt.Tx) error {
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
			c.ops.Add(uint64(len(group)))
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
