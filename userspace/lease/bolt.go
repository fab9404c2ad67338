package lease

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"golang.org/x/sys/unix"
)

// Bolt is the embedded lease store: one bbolt file, fsync on every commit.
//
// Buckets (keys and values are described in codec.go):
//
//	meta    "schema" -> uint32 BE schema version (2)
//	leases  address -> lease; one record per address, in any state
//	resv    (pool, MAC) -> reserved address
//	resvip  reserved address -> (pool, MAC)
//
// The index from (pool, MAC) to the MAC's current address in the pool is
// kept in memory (macIndex) and built from the leases at open; schema 1
// files had it as a bucket, which opening drops (schema 2: a build that
// reads only schema 1 refuses the file with ErrSchema instead of taking it
// for damaged). ByIP is one Get, ByMAC a map lookup and one Get.
// Invariants, verified at open: no (pool, MAC) holds two offered or bound
// leases; resv and resvip mirror each other.
//
// Semantics beyond the Store documentation:
//
//   - Addresses are IPv4; an IPv4-mapped IPv6 address is taken as its IPv4
//     address. Anything else, an empty pool, a MAC outside 1..16 bytes or a
//     pool, port, client ID or hostname over MaxFieldLen bytes fails with
//     ErrInvalid, as does an Allocate state other than offered or bound.
//   - A lease is held by its MAC while offered or bound (expired by time or
//     not: until another client takes the address, the holder may still
//     renew it). A declined lease is held by nobody: not even the MAC that
//     declined it may Allocate it before probation ends, and Renew,
//     Release and Decline on it fail with ErrNotOwner.
//   - Allocate stores l as given (its State and Expires), with Updated set
//     to now. The MAC's previous lease in the pool becomes released (kept
//     for address affinity); the previous holder of the address loses its
//     index entry.
//   - Renew fails with ErrNotOwner unless the lease is offered or bound by
//     mac (a released, expired or declined lease must be allocated again),
//     and with ErrReserved if the address has since been reserved for
//     another MAC.
//   - Release of a lease the MAC already released (or that expired) is a
//     no-op returning nil. The record stays, released, for affinity.
//   - Decline removes the MAC's index entry, so ByMAC then fails with
//     ErrNotFound and the server does not steer the client back to the
//     address it just declined.
//   - ByMAC gives the lease the index points at: the MAC's offered or
//     bound lease in the pool, or the one it last had (released, expired,
//     or taken from it by nobody else since). After a reopen the index is
//     rebuilt from the leases, and a MAC without an offered or bound lease
//     is then indexed to its most recently updated released or expired
//     lease in the pool (on a tie, the lowest address).
//   - Reserve fails with ErrReserved if the address is reserved for another
//     (pool, MAC), and with ErrAddressInUse if another MAC holds it or it is
//     declined and on probation (judged at the Now clock); a (pool, MAC)
//     that had another reservation moves to the new address. A reservation
//     blocks Allocate and Renew by other MACs, in any pool. Unreserve fails
//     with ErrNotFound if there is none.
//   - Reservations are listed in address order. Iterate reads the leases in
//     chunks, each its own read transaction, and calls fn outside them, so
//     fn may call the store (it sees a consistent chunk, not one snapshot of
//     the whole store).
//   - Lease times come back in UTC, exact to the nanosecond.
//   - A cancelled context fails the call with ctx.Err() and changes
//     nothing, unless the write was already committed when it was
//     cancelled (then the call returns nil: the change is durable).
//   - After Close every method fails with ErrClosed.
//
// Durability: every write returns after its transaction committed with
// fdatasync (bbolt NoSync off); concurrent writers share transactions
// (see CommitMode). Open takes an exclusive flock and checks the whole
// file (see checkFile and verify), so a damaged file is reported as a
// *CorruptError instead of crashing the process.
type Bolt struct {
	db    *bolt.DB
	path  string
	log   *slog.Logger
	now   func() time.Time
	mode  CommitMode
	group committer
	// wmu runs the write transactions one at a time through update, so
	// that each applies its index changes before the next begins.
	wmu   sync.Mutex
	index *macIndex

	closeOnce sync.Once
	closeErr  error
	closed    atomic.Bool // for ByMAC, whose index outlives the file
}

var _ Store = (*Bolt)(nil)

// BoltOptions configures OpenBolt.
type BoltOptions struct {
	// Log receives open, recovery and corruption records; nil discards them.
	Log *slog.Logger
	// Timeout is how long to wait for the file lock another process holds
	// before failing with ErrLocked: 0 means DefaultLockTimeout, a negative
	// value means do not wait.
	Timeout time.Duration
	// Commit selects how concurrent writes share commits; the zero value is
	// CommitGroup.
	Commit CommitMode
	// MaxBatch caps the operations in one shared transaction
	// (CommitGroup); 0 means 1000.
	MaxBatch int
	// CommitDelay is how long CommitGroup's next transaction waits for
	// more operations to share it while writes arrive at least one per
	// CommitDelay (PostgreSQL's commit_delay, with the arrival rate in
	// place of commit_siblings); 0 means DefaultCommitDelay, a negative
	// value never waits.
	CommitDelay time.Duration
	// Now is the clock for Updated stamps and Reserve's free check; nil
	// means time.Now. Allocate and Reclaim take their time from the caller.
	Now func() time.Time
}

// DefaultLockTimeout is how long OpenBolt waits for the file lock.
const DefaultLockTimeout = time.Second

// DefaultCommitDelay is CommitGroup's wait for company under load: it
// adds at most this much to a write's latency, and only when at least
// five writes a millisecond are arriving.
const DefaultCommitDelay = 200 * time.Microsecond

// preciseSleep sleeps d in a nanosleep system call: the Go runtime's
// timers wake about a millisecond late on an idle machine, five times
// the commit delay.
func preciseSleep(d time.Duration) {
	ts := unix.NsecToTimespec(d.Nanoseconds())
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}

// schemaVersion is the file format this build writes. Version 1 had the
// MAC index as a bucket; opening such a file drops it (see migrate).
const schemaVersion = 2

var (
	bucketMeta   = []byte("meta")
	bucketLeases = []byte("leases")
	bucketByMAC  = []byte("bymac") // schema 1 only
	bucketResv   = []byte("resv")
	bucketResvIP = []byte("resvip")
	keySchema    = []byte("schema")
)

var (
	// ErrLocked: another process has the lease file open.
	ErrLocked = errors.New("locked by another process")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("lease store is closed")
	// ErrSchema: the file was written by a newer build with a schema this
	// one cannot read. It is not corruption: OpenOrRecover leaves the file
	// alone and returns the error.
	ErrSchema = errors.New("unsupported lease store schema")

	// errInconsistent marks a store whose buckets disagree.
	errInconsistent = errors.New("inconsistent lease store")
)

// CorruptError reports a lease file that is damaged: not a bbolt file,
// truncated, structurally broken, or holding records that do not decode
// or do not agree with each other.
type CorruptError struct {
	Path string
	Err  error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("lease store %s is corrupt: %v", e.Path, e.Err)
}

func (e *CorruptError) Unwrap() error { return e.Err }

func isCorruption(err error) bool {
	return errors.Is(err, errCorruptFile) || errors.Is(err, errCorruptValue) || errors.Is(err, errInconsistent)
}

// OpenBolt opens the lease file at path, creating it (mode 0600) if it
// does not exist. It takes an exclusive lock on the file, waiting up to
// opts.Timeout, and checks the whole file before using it: a damaged file
// fails with an error wrapping *CorruptError, never with a panic.
func OpenBolt(path string, opts BoltOptions) (*Bolt, error) {
	s, _, err := openBolt(path, opts, false)
	return s, err
}

// OpenOrRecover is OpenBolt for a daemon that must come up. If the file is
// corrupt, it renames it to path+".corrupt-<unix-nanos>" (while still
// holding its lock), logs both paths at ERROR, and opens a fresh, empty
// store at path; recovered is the path the bad file was moved to.
// Any other failure (permissions, the lock, ErrSchema) is returned as is.
func OpenOrRecover(path string, opts BoltOptions) (store *Bolt, recovered string, err error) {
	s, aside, err := openBolt(path, opts, true)
	if err == nil {
		return s, "", nil
	}
	if aside == "" {
		return nil, "", err
	}
	logger(opts).Error("lease store is corrupt: moved it aside, starting with an empty store",
		"path", path, "aside", aside, "error", err)
	s, _, err = openBolt(path, opts, false)
	if err != nil {
		return nil, aside, fmt.Errorf("lease store %s: opening a fresh store after moving the corrupt one to %s: %w", path, aside, err)
	}
	return s, aside, nil
}

func logger(opts BoltOptions) *slog.Logger {
	if opts.Log != nil {
		return opts.Log
	}
	return slog.New(slog.DiscardHandler)
}

// opener carries one open attempt through bbolt's OpenFile hook.
type opener struct {
	path      string
	timeout   time.Duration
	moveAside bool
	log       *slog.Logger
	existed   bool

	file  *os.File
	aside string
}

func openBolt(path string, opts BoltOptions, moveAside bool) (*Bolt, string, error) {
	start := time.Now()
	o := &opener{path: path, timeout: opts.Timeout, moveAside: moveAside, log: logger(opts)}
	if o.timeout == 0 {
		o.timeout = DefaultLockTimeout
	}
	fi, statErr := os.Stat(path)
	o.existed = statErr == nil

	db, err := o.open()
	if err != nil {
		return nil, o.aside, err
	}
	st, err := verify(db)
	if err != nil {
		if isCorruption(err) {
			err = o.corrupt(err)
		}
		_ = db.Close()
		return nil, o.aside, err
	}
	if st.fresh {
		if err := initBuckets(db); err != nil {
			_ = db.Close()
			return nil, "", fmt.Errorf("lease store %s: initialising: %w", path, err)
		}
		switch {
		case !o.existed:
			// bbolt syncs the file; the new directory entry needs its own sync.
			if err := syncDir(filepath.Dir(path)); err != nil {
				_ = db.Close()
				return nil, "", fmt.Errorf("lease store %s: %w", path, err)
			}
			o.log.Info("lease store created", "path", path)
		case fi.Size() == 0:
			o.log.Warn("lease store file was empty; initialised a new store", "path", path)
		}
	}
	if st.version == 1 {
		if err := migrate(db); err != nil {
			_ = db.Close()
			return nil, "", fmt.Errorf("lease store %s: moving to schema %d: %w", path, schemaVersion, err)
		}
		o.log.Info("lease store moved to a new schema", "path", path, "from", 1, "to", schemaVersion)
	}
	s := &Bolt{db: db, path: path, log: o.log, now: opts.Now, mode: opts.Commit}
	// The index is of the file as checked; initialising or migrating it
	// changed no lease, only the transaction the file is at.
	if err := db.View(func(tx *bolt.Tx) error { s.index = newMACIndex(st.index, tx.ID()); return nil }); err != nil {
		_ = db.Close()
		return nil, "", fmt.Errorf("lease store %s: %w", path, err)
	}
	if s.now == nil {
		s.now = time.Now
	}
	maxBatch := opts.MaxBatch
	if maxBatch <= 0 {
		maxBatch = 1000
	}
	delay := opts.CommitDelay
	if delay == 0 {
		delay = DefaultCommitDelay
	}
	s.group = committer{update: s.update, maxOps: maxBatch, delay: max(delay, 0), now: time.Now, sleep: preciseSleep,
		gap: time.Second} // as if idle: the first writes commit at once
	o.log.Info("lease store open", "path", path, "leases", st.leases, "reservations", st.reservations,
		"commit", s.mode.String(), "took", time.Since(start))
	return s, "", nil
}

// open runs bolt.Open with o.openFile as its file hook. A panic or memory
// fault in bbolt (on damage checkFile did not catch) becomes corruption.
func (o *opener) open() (db *bolt.DB, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = o.corrupt(fmt.Errorf("%w: bbolt failed while opening: %v", errCorruptFile, p))
			if o.file != nil {
				_ = o.file.Close() // releases the lock; bbolt's mapping leaks
			}
			db = nil
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	return bolt.Open(o.path, 0o600, &bolt.Options{
		Timeout:  time.Second, // the hook already holds the lock
		OpenFile: o.openFile,
	})
}

// openFile opens and locks the file, then checks its structure before
// bbolt maps it.
func (o *opener) openFile(name string, flag int, _ os.FileMode) (*os.File, error) {
	f, err := os.OpenFile(name, flag, 0o600)
	if err != nil {
		return nil, err
	}
	if err := lockFile(f, o.timeout); err != nil {
		_ = f.Close()
		if errors.Is(err, ErrLocked) {
			return nil, fmt.Errorf("lease store %s is %w (waited %v)", o.path, err, max(o.timeout, 0))
		}
		return nil, fmt.Errorf("lease store %s: lock: %w", o.path, err)
	}
	if err := checkFile(f); err != nil {
		if isCorruption(err) {
			err = o.corrupt(err)
		}
		_ = f.Close()
		return nil, err
	}
	o.file = f
	return f, nil
}

// corrupt wraps err in a *CorruptError and, for OpenOrRecover, renames the
// file aside. It runs while the file is still open and locked.
func (o *opener) corrupt(err error) error {
	ce := &CorruptError{Path: o.path, Err: err}
	if !o.moveAside || o.aside != "" {
		return ce
	}
	aside := fmt.Sprintf("%s.corrupt-%d", o.path, time.Now().UnixNano())
	if rerr := os.Rename(o.path, aside); rerr != nil {
		return errors.Join(ce, fmt.Errorf("moving it aside: %w", rerr))
	}
	o.aside = aside
	if derr := syncDir(filepath.Dir(o.path)); derr != nil {
		o.log.Warn("lease store: syncing the directory after moving the corrupt file aside", "path", o.path, "error", derr)
	}
	return ce
}

func lockFile(f *os.File, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return ErrLocked
		}
		time.Sleep(min(10*time.Millisecond, left))
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

type storeStats struct {
	fresh        bool
	version      uint32
	leases       int
	reservations int
	index        map[string][4]byte
}

// verify runs bbolt's own consistency check and then decodes every record
// and cross-checks the buckets. A panic or memory fault becomes
// corruption.
func verify(db *bolt.DB) (st storeStats, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: bbolt failed while checking: %v", errInconsistent, p)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	err = db.View(func(tx *bolt.Tx) error {
		var errs []error
		n := 0
		for cerr := range tx.Check() {
			if n++; n <= 5 {
				errs = append(errs, cerr)
			}
		}
		if n > 0 {
			if n > 5 {
				errs = append(errs, fmt.Errorf("and %d more", n-5))
			}
			return fmt.Errorf("%w: bbolt check: %w", errCorruptFile, errors.Join(errs...))
		}
		return checkTx(tx, &st)
	})
	return st, err
}

func inconsistent(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errInconsistent, fmt.Sprintf(format, args...))
}

// checkTx decodes every record and checks the invariants listed on Bolt.
func checkTx(tx *bolt.Tx, st *storeStats) error {
	st.index = map[string][4]byte{}
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		empty := true
		_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
		if empty {
			st.fresh = true
			return nil
		}
		return inconsistent("the meta bucket is missing")
	}
	v := meta.Get(keySchema)
	if len(v) != 4 {
		return inconsistent("schema version is %d bytes", len(v))
	}
	st.version = binary.BigEndian.Uint32(v)
	switch {
	case st.version > schemaVersion:
		return fmt.Errorf("%w: the file has schema version %d, this build reads versions 1 to %d", ErrSchema, st.version, schemaVersion)
	case st.version < 1:
		return inconsistent("schema version %d", st.version)
	}
	b, err := openBuckets(tx)
	if err != nil {
		return err
	}
	// Sized at once: grown from empty, the map for 100,000 leases left as
	// much garbage again at start.
	st.index = make(map[string][4]byte, b.leases.Stats().KeyN)
	byIP := b.leases.Cursor()
	idx := indexBuilder{m: st.index, lease: func(ip [4]byte) (Lease, error) {
		k, v := byIP.Seek(ip[:])
		if !bytes.Equal(k, ip[:]) {
			return Lease{}, inconsistent("lease %s vanished while checking", netip.AddrFrom4(ip))
		}
		return decodeLease(k, v)
	}}
	var mk []byte
	c := b.leases.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v == nil {
			return inconsistent("nested bucket %x in the leases bucket", k)
		}
		l, err := decodeLease(k, v)
		if err != nil {
			return err
		}
		st.leases++
		mk = appendMACKey(mk[:0], l.Pool, l.MAC)
		if err := idx.add([4]byte(k), &l, mk); err != nil {
			return err
		}
	}
	c = b.resv.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		pool, mac, err := parseMACKey(k)
		if err != nil {
			return err
		}
		if _, err := ipFromKey(v); err != nil {
			return fmt.Errorf("reservation of %s in pool %q: %w", mac, pool, err)
		}
		if back := b.resvip.Get(v); !bytes.Equal(back, k) {
			return inconsistent("reservation of %s in pool %q for %x is not in the address index", mac, pool, v)
		}
		st.reservations++
	}
	c = b.resvip.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		ip, err := ipFromKey(k)
		if err != nil {
			return err
		}
		if _, _, err := parseMACKey(v); err != nil {
			return fmt.Errorf("reservation of %s: %w", ip, err)
		}
		if back := b.resv.Get(v); !bytes.Equal(back, k) {
			return inconsistent("reservation of %s is not in the (pool, MAC) index", ip)
		}
	}
	return nil
}

// migrate moves a schema 1 file to the current schema: it drops the MAC
// index bucket (the index is now built in memory) in one transaction.
func migrate(db *bolt.DB) error {
	return db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketByMAC); err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keySchema, binary.BigEndian.AppendUint32(nil, schemaVersion))
	})
}

func initBuckets(db *bolt.DB) error {
	return db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketLeases, bucketResv, bucketResvIP} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		return meta.Put(keySchema, binary.BigEndian.AppendUint32(nil, schemaVersion))
	})
}

const addressFillPercent = 0.9

type buckets struct {
	leases, resv, resvip *bolt.Bucket
	// Cursors for lookups, made on first use and kept for the
	// transaction: Bucket.Get makes a cursor every time, and their
	// stacks were most of what a write allocated.
	leasesC, resvipC *bolt.Cursor
	// idx is the MAC index, in write transactions.
	idx *macIndex
	tx  *bolt.Tx
}

// get is bk.Get(key) through the cursor *c, made on first use.
func get(bk *bolt.Bucket, c **bolt.Cursor, key []byte) []byte {
	if *c == nil {
		*c = bk.Cursor()
	}
	k, v := (*c).Seek(key)
	if !bytes.Equal(k, key) {
		return nil
	}
	return v
}

func openBuckets(tx *bolt.Tx) (*buckets, error) {
	b := &buckets{
		leases: tx.Bucket(bucketLeases),
		resv:   tx.Bucket(bucketResv),
		resvip: tx.Bucket(bucketResvIP),
		tx:     tx,
	}
	if b.leases == nil || b.resv == nil || b.resvip == nil {
		return nil, inconsistent("a bucket is missing")
	}
	// Allocators hand out addresses mostly in ascending order, so the
	// address-keyed buckets grow at the end: split full pages 90/10
	// instead of bbolt's 50/50, which left them half empty (a 100,000
	// lease file shrinks from 32 to about 20 MiB).
	b.leases.FillPercent = addressFillPercent
	b.resvip.FillPercent = addressFillPercent
	return b, nil
}

// CommitStats reports how many shared transactions CommitGroup has
// committed and how many operations they carried (their ratio is the mean
// batch size).
func (s *Bolt) CommitStats() (commits, ops uint64) {
	return s.group.commits.Load(), s.group.ops.Load()
}

// Path is the lease file's path.
func (s *Bolt) Path() string { return s.path }

// Close closes the store; later calls do nothing and return the same
// result.
func (s *Bolt) Close() error {
	s.closeOnce.Do(func() { s.closed.Store(true); s.closeErr = s.db.Close() })
	return s.closeErr
}

func mapErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) || errors.Is(err, berrors.ErrTxClosed) {
		return ErrClosed
	}
	return err
}

// write runs fn as one write operation (see opFunc).
func (s *Bolt) write(ctx context.Context, fn func(b *buckets) (outcome, err error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return mapErr(s.call(func(tx *bolt.Tx) (error, error) {
		if err := ctx.Err(); err != nil {
			return err, nil
		}
		b, err := openBuckets(tx)
		if err != nil {
			return nil, err
		}
		b.idx = s.index
		return fn(b)
	}))
}

// update runs fn in a write transaction, after every earlier one has
// committed (or rolled back) and applied its index changes. Every write
// transaction of an open store goes through here: ByMAC relies on the
// index being at the store's last committed transaction.
func (s *Bolt) update(fn func(tx *bolt.Tx) error) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.db.Update(func(tx *bolt.Tx) error {
		s.index.begin(tx)
		return fn(tx)
	})
}

// view runs fn in a read transaction.
func (s *Bolt) view(ctx context.Context, fn func(b *buckets) error) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: lease store %s: bbolt failed reading: %v", errInconsistent, s.path, p)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	return mapErr(s.db.View(func(tx *bolt.Tx) error {
		b, err := openBuckets(tx)
		if err != nil {
			return err
		}
		return fn(b)
	}))
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

func validIP(ip netip.Addr) (netip.Addr, error) {
	u := ip.Unmap()
	if !u.Is4() {
		return u, invalid("address %v is not IPv4", ip)
	}
	return u, nil
}

func validMAC(mac net.HardwareAddr) error {
	if len(mac) == 0 || len(mac) > MaxMACLen {
		return invalid("MAC is %d bytes, want 1 to %d", len(mac), MaxMACLen)
	}
	return nil
}

func validPool(pool string) error {
	if pool == "" || len(pool) > MaxFieldLen {
		return invalid("pool name is %d bytes, want 1 to %d", len(pool), MaxFieldLen)
	}
	return nil
}

// normTime is t as the store returns it: UTC, no monotonic reading.
func normTime(t time.Time) time.Time {
	return time.Unix(t.Unix(), int64(t.Nanosecond())).UTC()
}

func held(l *Lease) bool { return l.State == StateOffered || l.State == StateBound }

// canTake reports whether mac may take the address of cur at now.
func canTake(cur *Lease, mac []byte, now time.Time) bool {
	return cur.Free(now) || (held(cur) && bytes.Equal(cur.MAC, mac))
}

func putLease(b *buckets, k []byte, l *Lease) error {
	v, err := encodeLease(k, l)
	if err != nil {
		return err
	}
	return b.leases.Put(k, v)
}

// getLease returns the lease at k, or ok false.
func getLease(b *buckets, k []byte) (l Lease, ok bool, err error) {
	v := get(b.leases, &b.leasesC, k)
	if v == nil {
		return Lease{}, false, nil
	}
	l, err = decodeLease(k, v)
	return l, err == nil, err
}

// Allocate implements Store.
func (s *Bolt) Allocate(ctx context.Context, l Lease, now time.Time) error {
	fn, err := s.allocateOp(l, now)
	if err != nil {
		return err
	}
	return s.write(ctx, fn)
}

// AllocateBatch implements Store. With CommitGroup the leases share
// transactions (at most MaxBatch operations each) with each other and
// with concurrent writers; in the other modes they are committed
// together, apart from everyone else.
func (s *Bolt) AllocateBatch(ctx context.Context, ls []Lease, now time.Time) []error {
	out := make([]error, len(ls))
	if err := ctx.Err(); err != nil {
		for i := range out {
			out[i] = err
		}
		return out
	}
	fns := make([]func(b *buckets) (error, error), 0, len(ls))
	idx := make([]int, 0, len(ls))
	for i, l := range ls {
		fn, err := s.allocateOp(l, now)
		if err != nil {
			out[i] = err
			continue
		}
		fns = append(fns, fn)
		idx = append(idx, i)
	}
	for j, err := range s.writeAll(ctx, fns) {
		out[idx[j]] = err
	}
	return out
}

// allocateOp checks l and returns Allocate's write.
func (s *Bolt) allocateOp(l Lease, now time.Time) (func(b *buckets) (error, error), error) {
	ip, err := validIP(l.IP)
	if err != nil {
		return nil, err
	}
	if err := validMAC(l.MAC); err != nil {
		return nil, err
	}
	if err := validPool(l.Pool); err != nil {
		return nil, err
	}
	if l.State != StateOffered && l.State != StateBound {
		return nil, invalid("Allocate state %s, want offered or bound", l.State)
	}
	for _, f := range []struct {
		name string
		n    int
	}{{"port", len(l.Port)}, {"client ID", len(l.ClientID)}, {"hostname", len(l.Hostname)}} {
		if f.n > MaxFieldLen {
			return nil, invalid("%s is %d bytes, over %d", f.name, f.n, MaxFieldLen)
		}
	}
	rec := l
	rec.IP = ip
	rec.MAC = bytes.Clone(l.MAC)
	rec.Updated = normTime(now)
	rec.Expires = normTime(l.Expires)
	key := ipKey(ip)
	k := key[:]
	val, err := encodeLease(k, &rec)
	if err != nil {
		return nil, err
	}
	mk := macKey(rec.Pool, rec.MAC)
	return func(b *buckets) (error, error) {
		if r := get(b.resvip, &b.resvipC, k); r != nil {
			pool, rmac, err := parseMACKey(r)
			if err != nil {
				return nil, err
			}
			if !bytes.Equal(rmac, rec.MAC) {
				return fmt.Errorf("%w: %s is reserved for %s in pool %q", ErrReserved, ip, rmac, pool), nil
			}
		}
		var prevHolder []byte
		cur, ok, err := getLease(b, k)
		if err != nil {
			return nil, err
		}
		if ok {
			if !canTake(&cur, rec.MAC, now) {
				return fmt.Errorf("%w: %s is %s by %s until %s", ErrAddressInUse, ip, cur.State, cur.MAC, cur.Expires.Format(time.RFC3339)), nil
			}
			if cur.Pool != rec.Pool || !bytes.Equal(cur.MAC, rec.MAC) {
				prevHolder = macKey(cur.Pool, cur.MAC)
			}
		}
		// The MAC's previous address in the pool is released and kept, so
		// that the MAC can get it back later.
		old, indexed := b.idx.get(mk)
		if indexed && old != key {
			ol, ok, err := getLease(b, old[:])
			if err != nil {
				return nil, err
			}
			if ok && held(&ol) && ol.Pool == rec.Pool && bytes.Equal(ol.MAC, rec.MAC) {
				ol.State = StateReleased
				ol.Updated = rec.Updated
				if err := putLease(b, old[:], &ol); err != nil {
					return nil, err
				}
			}
		}
		if prevHolder != nil {
			if ip, ok := b.idx.get(prevHolder); ok && ip == key {
				b.idx.del(prevHolder)
			}
		}
		if err := b.leases.Put(k, val); err != nil {
			return nil, err
		}
		b.idx.put(mk, key)
		return nil, nil
	}, nil
}

// Renew implements Store.
func (s *Bolt) Renew(ctx context.Context, ip netip.Addr, mac net.HardwareAddr, expires time.Time) (Lease, error) {
	ip, err := validIP(ip)
	if err != nil {
		return Lease{}, err
	}
	if err := validMAC(mac); err != nil {
		return Lease{}, err
	}
	now := normTime(s.now())
	expires = normTime(expires)
	key := ipKey(ip)
	k := key[:]
	var out Lease
	err = s.write(ctx, func(b *buckets) (error, error) {
		l, ok, err := getLease(b, k)
		if err != nil {
			return nil, err
		}
		if !ok {
			return fmt.Errorf("%w: %s", ErrNotFound, ip), nil
		}
		if !bytes.Equal(l.MAC, mac) {
			return fmt.Errorf("%w: %s belongs to %s", ErrNotOwner, ip, l.MAC), nil
		}
		if !held(&l) {
			return fmt.Errorf("%w: the lease on %s is %s", ErrNotOwner, ip, l.State), nil
		}
		if r := b.resvip.Get(k); r != nil {
			pool, rmac, err := parseMACKey(r)
			if err != nil {
				return nil, err
			}
			if !bytes.Equal(rmac, mac) {
				return fmt.Errorf("%w: %s is reserved for %s in pool %q", ErrReserved, ip, rmac, pool), nil
			}
		}
		l.State = StateBound
		l.Expires = expires
		l.Updated = now
		if err := putLease(b, k, &l); err != nil {
			return nil, err
		}
		out = l
		return nil, nil
	})
	if err != nil {
		return Lease{}, err
	}
	return out, nil
}

// Release implements Store.
func (s *Bolt) Release(ctx context.Context, ip netip.Addr, mac net.HardwareAddr) error {
	return s.endLease(ctx, ip, mac, StateReleased, time.Time{})
}

// Decline implements Store.
func (s *Bolt) Decline(ctx context.Context, ip netip.Addr, mac net.HardwareAddr, until time.Time) error {
	return s.endLease(ctx, ip, mac, StateDeclined, until)
}

func (s *Bolt) endLease(ctx context.Context, ip netip.Addr, mac net.HardwareAddr, to State, until time.Time) error {
	ip, err := validIP(ip)
	if err != nil {
		return err
	}
	if err := validMAC(mac); err != nil {
		return err
	}
	now := normTime(s.now())
	until = normTime(until)
	key := ipKey(ip)
	k := key[:]
	return s.write(ctx, func(b *buckets) (error, error) {
		l, ok, err := getLease(b, k)
		if err != nil {
			return nil, err
		}
		if !ok {
			return fmt.Errorf("%w: %s", ErrNotFound, ip), nil
		}
		if !bytes.Equal(l.MAC, mac) {
			return fmt.Errorf("%w: %s belongs to %s", ErrNotOwner, ip, l.MAC), nil
		}
		if !held(&l) {
			if to == StateReleased && (l.State == StateReleased || l.State == StateExpired) {
				return errUnchanged, nil
			}
			return fmt.Errorf("%w: the lease on %s is %s", ErrNotOwner, ip, l.State), nil
		}
		l.State = to
		l.Updated = now
		if to == StateDeclined {
			l.Expires = until
			mk := macKey(l.Pool, l.MAC)
			if ip, ok := b.idx.get(mk); ok && ip == key {
				b.idx.del(mk)
			}
		}
		return nil, putLease(b, k, &l)
	})
}

// reclaimChunk is how many leases Reclaim expires per transaction. In one
// transaction, the 100,000 leases of a daemon restarted after an outage
// longer than the lease time were all held in memory at once, with every
// page they dirtied: 80 MB.
const reclaimChunk = 1024

// Reclaim implements Store. It expires leases in transactions of up to
// reclaimChunk leases each, in address order, and reports each
// transaction's leases to fn once it has committed. On an error, or a
// cancelled context, the transactions that committed before stay
// committed: their leases were reported and are counted.
func (s *Bolt) Reclaim(ctx context.Context, now time.Time, fn func(Lease)) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	stamp := normTime(now)
	chunk := make([]Lease, 0, reclaimChunk)
	var from []byte // the first lease the next transaction looks at; nil: the first of all
	total := 0
	for {
		more := false
		err := s.update(func(tx *bolt.Tx) error {
			chunk, more = chunk[:0], false
			b, err := openBuckets(tx)
			if err != nil {
				return err
			}
			c := b.leases.Cursor()
			k, v := c.First()
			if from != nil {
				k, v = c.Seek(from)
			}
			for i := 1; k != nil; k, v = c.Next() {
				if len(chunk) == reclaimChunk {
					from, more = bytes.Clone(k), true
					break
				}
				if i++; i%1024 == 0 {
					if err := ctx.Err(); err != nil {
						return err
					}
				}
				// Peek at the state and expiry; decode only what changes.
				if len(v) >= minLeaseValueLen && v[0] == leaseEncodingV1 {
					st := State(v[1])
					exp, ok := readTime(v[4:16])
					if ok && !reclaimable(st, exp, now) {
						continue
					}
				}
				l, err := decodeLease(k, v)
				if err != nil {
					return err
				}
				if reclaimable(l.State, l.Expires, now) {
					l.State = StateExpired
					l.Updated = stamp
					chunk = append(chunk, l)
				}
			}
			if len(chunk) == 0 {
				return errNothingToCommit
			}
			for i := range chunk {
				key := ipKey(chunk[i].IP)
				if err := putLease(b, key[:], &chunk[i]); err != nil {
					return err
				}
			}
			return nil
		})
		if errors.Is(err, errNothingToCommit) {
			err = nil
		}
		if err != nil {
			return total, mapErr(err)
		}
		total += len(chunk)
		if fn != nil {
			for _, l := range chunk {
				fn(l)
			}
		}
		if !more {
			return total, nil
		}
	}
}

func reclaimable(st State, expires, now time.Time) bool {
	switch st {
	case StateOffered, StateBound:
		return !expires.After(now)
	case StateDeclined:
		return !now.Before(expires)
	}
	return false
}

// ByMAC implements Store.
func (s *Bolt) ByMAC(ctx context.Context, pool string, mac net.HardwareAddr) (Lease, error) {
	if err := validPool(pool); err != nil {
		return Lease{}, err
	}
	if err := validMAC(mac); err != nil {
		return Lease{}, err
	}
	if err := ctx.Err(); err != nil {
		return Lease{}, err
	}
	if s.closed.Load() {
		return Lease{}, ErrClosed
	}
	mk := macKey(pool, mac)
	var timeout <-chan time.Time
	for {
		k, ok, at, applied := s.index.lookup(mk)
		if !ok {
			return Lease{}, fmt.Errorf("%w: %s in pool %q", ErrNotFound, mac, pool)
		}
		var l Lease
		err := s.view(ctx, func(b *buckets) error {
			if b.tx.ID() != at {
				return errIndexBehind
			}
			var ok bool
			var err error
			if l, ok, err = getLease(b, k[:]); err != nil {
				return err
			}
			if !ok {
				return inconsistent("MAC index entry %s in pool %q points to %s, which has no lease", mac, pool, netip.AddrFrom4(k))
			}
			return nil
		})
		if !errors.Is(err, errIndexBehind) {
			return l, err
		}
		// A write is committing: readers see it, its sync has not
		// returned, its index changes are not applied yet.
		if timeout == nil {
			timeout = time.After(maxIndexWait)
		}
		select {
		case <-applied:
		case <-ctx.Done():
			return Lease{}, ctx.Err()
		case <-timeout:
			return Lease{}, fmt.Errorf("lease store %s: the MAC index stayed behind the store for %s", s.path, maxIndexWait)
		}
	}
}

// errIndexBehind: a reader's transaction is of a later commit than the
// index entry it looked up.
var errIndexBehind = errors.New("MAC index behind the store")

// maxIndexWait bounds ByMAC's wait for a commit's index changes: the
// commit's sync, at most, unless the sync failed after bbolt had shown
// the commit to readers.
const maxIndexWait = 5 * time.Second

// ByIP implements Store.
func (s *Bolt) ByIP(ctx context.Context, ip netip.Addr) (Lease, error) {
	ip, err := validIP(ip)
	if err != nil {
		return Lease{}, err
	}
	key := ipKey(ip)
	var l Lease
	err = s.view(ctx, func(b *buckets) error {
		var ok bool
		var err error
		if l, ok, err = getLease(b, key[:]); err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: %s", ErrNotFound, ip)
		}
		return nil
	})
	return l, err
}

// iterateChunk is how many leases Iterate decodes per read transaction.
const iterateChunk = 256

// Iterate implements Store; see Bolt for its consistency.
func (s *Bolt) Iterate(ctx context.Context, fn func(Lease) error) error {
	chunk := make([]Lease, 0, iterateChunk)
	var after []byte
	for {
		chunk = chunk[:0]
		err := s.view(ctx, func(b *buckets) error {
			c := b.leases.Cursor()
			var k, v []byte
			if after == nil {
				k, v = c.First()
			} else if k, v = c.Seek(after); bytes.Equal(k, after) {
				k, v = c.Next()
			}
			for ; k != nil && len(chunk) < iterateChunk; k, v = c.Next() {
				l, err := decodeLease(k, v)
				if err != nil {
					return err
				}
				chunk = append(chunk, l)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, l := range chunk {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(l); err != nil {
				return err
			}
		}
		if len(chunk) < iterateChunk {
			return nil
		}
		last := ipKey(chunk[len(chunk)-1].IP)
		after = last[:]
	}
}

// Reserve implements Store.
func (s *Bolt) Reserve(ctx context.Context, r Reservation) error {
	if err := validPool(r.Pool); err != nil {
		return err
	}
	if err := validMAC(r.MAC); err != nil {
		return err
	}
	ip, err := validIP(r.IP)
	if err != nil {
		return err
	}
	now := s.now()
	mk := macKey(r.Pool, r.MAC)
	key := ipKey(ip)
	k := key[:]
	return s.write(ctx, func(b *buckets) (error, error) {
		if cur := b.resvip.Get(k); cur != nil {
			if bytes.Equal(cur, mk) {
				return errUnchanged, nil
			}
			pool, mac, err := parseMACKey(cur)
			if err != nil {
				return nil, err
			}
			return fmt.Errorf("%w: %s is reserved for %s in pool %q", ErrReserved, ip, mac, pool), nil
		}
		l, ok, err := getLease(b, k)
		if err != nil {
			return nil, err
		}
		if ok && !canTake(&l, r.MAC, now) {
			return fmt.Errorf("%w: %s is %s by %s until %s", ErrAddressInUse, ip, l.State, l.MAC, l.Expires.Format(time.RFC3339)), nil
		}
		if old := b.resv.Get(mk); old != nil {
			if err := b.resvip.Delete(bytes.Clone(old)); err != nil {
				return nil, err
			}
		}
		if err := b.resv.Put(mk, k); err != nil {
			return nil, err
		}
		return nil, b.resvip.Put(k, mk)
	})
}

// Unreserve implements Store.
func (s *Bolt) Unreserve(ctx context.Context, pool string, mac net.HardwareAddr) error {
	if err := validPool(pool); err != nil {
		return err
	}
	if err := validMAC(mac); err != nil {
		return err
	}
	mk := macKey(pool, mac)
	return s.write(ctx, func(b *buckets) (error, error) {
		old := b.resv.Get(mk)
		if old == nil {
			return fmt.Errorf("%w: no reservation for %s in pool %q", ErrNotFound, mac, pool), nil
		}
		ipk := bytes.Clone(old)
		if bytes.Equal(b.resvip.Get(ipk), mk) {
			if err := b.resvip.Delete(ipk); err != nil {
				return nil, err
			}
		}
		return nil, b.resv.Delete(mk)
	})
}

// Reservations implements Store.
func (s *Bolt) Reservations(ctx context.Context) ([]Reservation, error) {
	var out []Reservation
	err := s.view(ctx, func(b *buckets) error {
		out = out[:0]
		c := b.resvip.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			ip, err := ipFromKey(k)
			if err != nil {
				return err
			}
			pool, mac, err := parseMACKey(v)
			if err != nil {
				return fmt.Errorf("reservation of %s: %w", ip, err)
			}
			out = append(out, Reservation{Pool: pool, MAC: mac, IP: ip})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
