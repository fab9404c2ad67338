package lease

import (
	"net/netip"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// macIndex maps (pool, MAC) to the address of the MAC's current lease in
// the pool. It lives in memory: built from the leases when the store
// opens, then kept by the write transactions. In the file, as a bucket,
// every new client's entry rewrote a page at a random place of the
// index, which cost more than the lease's own write: a DORA of a new
// client took 27 µs of store CPU with the bucket and 12 µs without it
// (groups of about 6 operations a commit, random MACs).
//
// Write transactions run one at a time (Bolt.update). Each stages its
// index changes, which only it sees, and applies them when, and only if,
// it commits. Readers (ByMAC) read the applied map under mu, and know
// from txid which committed state it is. bbolt shows a commit to readers
// once its meta page is written, before its sync returns and so before
// the index changes are applied: a reader whose transaction is newer
// than the index waits for applied.
type macIndex struct {
	mu   sync.RWMutex
	m    map[string][4]byte
	txid int // the last committed write transaction applied to m
	// applied is closed, and replaced, whenever a transaction's changes
	// are applied.
	applied chan struct{}

	// The write transaction in progress, and its changes: an entry with
	// deleted set removes the key. Touched only by the writer, which
	// holds Bolt.wmu.
	staged map[string]stagedEntry
}

type stagedEntry struct {
	ip      [4]byte
	deleted bool
}

func newMACIndex(m map[string][4]byte, txid int) *macIndex {
	return &macIndex{m: m, txid: txid, staged: map[string]stagedEntry{}, applied: make(chan struct{})}
}

// begin starts tx's changes; they are applied if tx commits.
func (x *macIndex) begin(tx *bolt.Tx) {
	clear(x.staged)
	id := tx.ID() // tx.ID does not work once the transaction has closed
	tx.OnCommit(func() { x.apply(id) })
}

func (x *macIndex) apply(txid int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for k, e := range x.staged {
		if e.deleted {
			delete(x.m, k)
		} else {
			x.m[k] = e.ip
		}
	}
	x.txid = txid
	clear(x.staged)
	close(x.applied)
	x.applied = make(chan struct{})
}

// get is the writer's lookup: its own changes first. The writer reads m
// without mu: only apply, which the writer itself runs, changes it.
func (x *macIndex) get(mk []byte) ([4]byte, bool) {
	if e, ok := x.staged[string(mk)]; ok {
		return e.ip, !e.deleted
	}
	ip, ok := x.m[string(mk)]
	return ip, ok
}

func (x *macIndex) put(mk []byte, ip [4]byte) { x.staged[string(mk)] = stagedEntry{ip: ip} }

func (x *macIndex) del(mk []byte) { x.staged[string(mk)] = stagedEntry{deleted: true} }

// lookup is the readers' lookup, with the transaction the answer is of
// and a channel closed when a later one's changes are applied.
func (x *macIndex) lookup(mk []byte) (ip [4]byte, ok bool, txid int, applied <-chan struct{}) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	ip, ok = x.m[string(mk)]
	return ip, ok, x.txid, x.applied
}

// indexBuilder makes the index from the leases, in address order: a
// MAC's offered or bound lease in the pool, or else (for address
// affinity) its most recently updated released or expired one, the
// lowest address on a tie. While the store is open the index follows the
// writes instead (see the Bolt doc comment), which can differ after a
// restart only in which free address a MAC without a lease is steered
// back to. It keeps only the final map: a MAC with more than one lease in
// a pool, which is rare, has its indexed one read back to compare.
type indexBuilder struct {
	m map[string][4]byte
	// lease reads back the lease on an address already indexed.
	lease func(ip [4]byte) (Lease, error)
}

// add takes lease l, stored under address key k; it fails if l is a
// second offered or bound lease of its (pool, MAC).
func (b *indexBuilder) add(k [4]byte, l *Lease, mk []byte) error {
	if l.State == StateDeclined {
		return nil
	}
	cur, seen := b.m[string(mk)]
	if seen {
		c, err := b.lease(cur)
		if err != nil {
			return err
		}
		switch {
		case held(&c) && held(l):
			return inconsistent("%s in pool %q holds both %s and %s", l.MAC, l.Pool, netip.AddrFrom4(cur), netip.AddrFrom4(k))
		case held(&c), !held(l) && !l.Updated.After(c.Updated):
			return nil
		}
	}
	b.m[string(mk)] = k
	return nil
}
