package lease

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/bits"
	"os"
)

// checkFile validates the bbolt file structure of f with plain reads,
// before bbolt maps the file. bbolt trusts its pages: a damaged page id,
// element offset or freelist count makes it read past its mapping (a
// fatal SIGBUS/SIGSEGV, not a panic), recurse forever on a cycle (a fatal
// stack overflow) or allocate a slice as large as a garbage count (a
// fatal out-of-memory). None of those can be recovered, so the open path
// checks, with bounds-checked reads, everything bbolt will dereference:
//
//   - it picks the meta page exactly as bbolt does (the valid one with the
//     highest txid) and requires the file to hold every page below its
//     high-water mark;
//   - the freelist page: type, count, every id in range and unique;
//   - every page reachable from the root bucket, nested buckets (inline
//     ones too) included: in range, visited once (no cycles or shared
//     pages), self-identifying id, branch or leaf type, elements and their
//     keys and values inside the page, keys in order within the page and
//     within the range their parent gives them (what bbolt's tx.Check
//     verifies), bounded depth;
//   - every page below the high-water mark is either reachable or free,
//     never both.
//
// It reads one page at a time into a buffer per tree depth, so it needs no
// more memory than a few of the largest pages plus two bitmaps of one bit
// per page. It follows bbolt's on-disk
// format version 2 (unchanged since boltdb) in native byte order, which
// is what bbolt writes.
func checkFile(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() == 0 {
		return nil // bbolt initialises an empty file
	}
	c := &fileChecker{f: f, size: fi.Size()}
	return c.run()
}

// errCorruptFile marks structural damage found by checkFile.
var errCorruptFile = errors.New("damaged bbolt file")

const (
	boltMagic          = 0xED0CDAED
	boltVersion        = 2
	pageHeaderSize     = 16
	elementSize        = 16 // leaf and branch elements are both 16 bytes
	metaSize           = 64
	metaChecksumOffset = 56
	branchPageFlag     = 0x01
	leafPageFlag       = 0x02
	freelistPageFlag   = 0x10
	bucketLeafFlag     = 0x01
	bucketHeaderSize   = 16
	noFreelist         = ^uint64(0)
	maxTreeDepth       = 64
)

var ne = binary.NativeEndian

type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	pgid     uint64
	txid     uint64
	valid    bool
}

func parseMeta(page []byte) boltMeta {
	if len(page) < pageHeaderSize+metaSize {
		return boltMeta{}
	}
	m := page[pageHeaderSize : pageHeaderSize+metaSize]
	h := fnv.New64a()
	h.Write(m[:metaChecksumOffset])
	bm := boltMeta{
		pageSize: ne.Uint32(m[8:]),
		root:     ne.Uint64(m[16:]),
		freelist: ne.Uint64(m[32:]),
		pgid:     ne.Uint64(m[40:]),
		txid:     ne.Uint64(m[48:]),
	}
	bm.valid = ne.Uint32(m[0:]) == boltMagic && ne.Uint32(m[4:]) == boltVersion &&
		ne.Uint64(m[metaChecksumOffset:]) == h.Sum64()
	return bm
}

type fileChecker struct {
	f         *os.File
	size      int64
	pageSize  uint64
	hwm       uint64
	reachable bitmap
	freed     bitmap
	bufs      [][]byte // page buffers by tree depth (readPage)
}

type bitmap []uint64

func (b bitmap) get(i uint64) bool { return b[i/64]&(1<<(i%64)) != 0 }
func (b bitmap) set(i uint64)      { b[i/64] |= 1 << (i % 64) }

func (c *fileChecker) corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errCorruptFile, fmt.Sprintf(format, args...))
}

// readAt reads len(buf) bytes at off; a short read is damage.
func (c *fileChecker) readAt(buf []byte, off int64) error {
	n, err := c.f.ReadAt(buf, off)
	if n == len(buf) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return c.corrupt("file ends at %d, inside the page at %d", c.size, off)
	}
	return err
}

func (c *fileChecker) run() error {
	// The page size: bbolt takes it from meta page 0 if that is valid, else
	// from the first valid meta page at 1 KiB << i.
	var buf [4096]byte
	var m0 boltMeta
	if n, _ := c.f.ReadAt(buf[:], 0); n == len(buf) {
		m0 = parseMeta(buf[:])
	}
	switch {
	case m0.valid:
		c.pageSize = uint64(m0.pageSize)
	default:
		for i := 0; i <= 14; i++ {
			pos := int64(1024) << i
			if pos >= c.size-1024 {
				break
			}
			n, _ := c.f.ReadAt(buf[:], pos)
			if m := parseMeta(buf[:n]); m.valid {
				c.pageSize = uint64(m.pageSize)
				break
			}
		}
	}
	if c.pageSize == 0 {
		return c.corrupt("no valid meta page (not a bbolt file, or both meta pages damaged)")
	}
	if c.pageSize < 1024 || c.pageSize > 1<<24 || bits.OnesCount64(c.pageSize) != 1 {
		return c.corrupt("implausible page size %d", c.pageSize)
	}
	if uint64(c.size) < 2*c.pageSize {
		return c.corrupt("file is %d bytes, shorter than two %d-byte meta pages", c.size, c.pageSize)
	}

	// Both meta pages as bbolt maps them; bbolt uses the one with the
	// higher txid if it is valid, else the other.
	page := make([]byte, c.pageSize)
	var metas [2]boltMeta
	for i := range metas {
		if err := c.readAt(page, int64(i)*int64(c.pageSize)); err != nil {
			return err
		}
		metas[i] = parseMeta(page)
	}
	a, b := metas[0], metas[1]
	if b.txid > a.txid {
		a, b = b, a
	}
	m := a
	if !m.valid {
		m = b
	}
	if !m.valid {
		return c.corrupt("both meta pages are invalid")
	}
	if uint64(m.pageSize) != c.pageSize {
		return c.corrupt("meta page size %d differs from %d", m.pageSize, c.pageSize)
	}
	c.hwm = m.pgid
	if c.hwm < 4 || c.hwm > uint64(c.size)/c.pageSize {
		return c.corrupt("high-water mark %d pages does not fit a %d-byte file of %d-byte pages", c.hwm, c.size, c.pageSize)
	}
	if m.root < 2 || m.root >= c.hwm {
		return c.corrupt("root bucket page %d out of range", m.root)
	}
	if m.freelist != noFreelist && (m.freelist < 2 || m.freelist >= c.hwm) {
		return c.corrupt("freelist page %d out of range", m.freelist)
	}
	words := (c.hwm + 63) / 64
	c.reachable = make(bitmap, words)
	c.freed = make(bitmap, words)
	c.reachable.set(0)
	c.reachable.set(1)

	if m.freelist != noFreelist {
		if err := c.checkFreelist(m.freelist); err != nil {
			return err
		}
	}
	if _, err := c.checkTree(m.root, nil, nil, 0); err != nil {
		return err
	}
	for id := uint64(2); id < c.hwm; id++ {
		r, f := c.reachable.get(id), c.freed.get(id)
		if r && f {
			return c.corrupt("page %d is both in use and free", id)
		}
		if !r && !f && m.freelist != noFreelist {
			return c.corrupt("page %d is neither in use nor free", id)
		}
	}
	return nil
}

// readPage reads page id and its overflow pages into the buffer of a
// tree depth and marks them reachable. The page stays valid until the
// next read at that depth: a branch page's keys outlive the reads of its
// children, one level down, and a child's largest key is compared before
// its next sibling is read. (A buffer per page made as much garbage as
// the file is large.)
func (c *fileChecker) readPage(id uint64, depth int) ([]byte, error) {
	if id < 2 || id >= c.hwm {
		return nil, c.corrupt("page id %d out of range [2, %d)", id, c.hwm)
	}
	for len(c.bufs) <= depth {
		c.bufs = append(c.bufs, make([]byte, c.pageSize))
	}
	first := c.bufs[depth][:c.pageSize]
	if err := c.readAt(first, int64(id*c.pageSize)); err != nil {
		return nil, err
	}
	if got := ne.Uint64(first); got != id {
		return nil, c.corrupt("page %d identifies itself as %d", id, got)
	}
	overflow := uint64(ne.Uint32(first[12:]))
	if overflow >= c.hwm-id {
		return nil, c.corrupt("page %d overflow %d runs past the high-water mark %d", id, overflow, c.hwm)
	}
	for i := id; i <= id+overflow; i++ {
		if c.reachable.get(i) {
			return nil, c.corrupt("page %d is referenced twice", i)
		}
		c.reachable.set(i)
	}
	if overflow == 0 {
		return first, nil
	}
	if n := (overflow + 1) * c.pageSize; uint64(cap(c.bufs[depth])) < n {
		c.bufs[depth] = append(make([]byte, 0, n), first...)
	}
	all := c.bufs[depth][:(overflow+1)*c.pageSize]
	if err := c.readAt(all[c.pageSize:], int64((id+1)*c.pageSize)); err != nil {
		return nil, err
	}
	return all, nil
}

func (c *fileChecker) checkFreelist(id uint64) error {
	p, err := c.readPage(id, 0) // read before the tree, which reuses the buffer
	if err != nil {
		return err
	}
	if flags := ne.Uint16(p[8:]); flags != freelistPageFlag {
		return c.corrupt("freelist page %d has type %#x", id, flags)
	}
	count, start := uint64(ne.Uint16(p[10:])), uint64(pageHeaderSize)
	if count == 0xFFFF {
		if len(p) < pageHeaderSize+8 {
			return c.corrupt("freelist page %d too short", id)
		}
		count = ne.Uint64(p[pageHeaderSize:])
		start += 8
	}
	if count > (uint64(len(p))-start)/8 {
		return c.corrupt("freelist page %d claims %d ids, more than it holds", id, count)
	}
	for i := range count {
		fid := ne.Uint64(p[start+8*i:])
		if fid < 2 || fid >= c.hwm {
			return c.corrupt("freelist page %d: free page id %d out of range", id, fid)
		}
		if c.freed.get(fid) {
			return c.corrupt("freelist page %d: page %d listed twice", id, fid)
		}
		c.freed.set(fid)
	}
	return nil
}

// element returns the key (and for leaves the value) of element i of the
// page p, checking that they lie inside p.
func (c *fileChecker) element(p []byte, i int, leaf bool) (flags uint32, key, val []byte, child uint64, err error) {
	off := uint64(pageHeaderSize + i*elementSize)
	e := p[off : off+elementSize]
	var pos, ksize, vsize uint64
	if leaf {
		flags = ne.Uint32(e)
		pos, ksize, vsize = uint64(ne.Uint32(e[4:])), uint64(ne.Uint32(e[8:])), uint64(ne.Uint32(e[12:]))
	} else {
		pos, ksize = uint64(ne.Uint32(e)), uint64(ne.Uint32(e[4:]))
		child = ne.Uint64(e[8:])
	}
	start := off + pos
	end := start + ksize + vsize
	if end > uint64(len(p)) {
		return 0, nil, nil, 0, c.corrupt("element %d runs past its page", i)
	}
	return flags, p[start : start+ksize], p[start+ksize : end], child, nil
}

// checkTree checks the subtree at page id, whose keys must lie in
// [lo, hi) (nil: unbounded), and returns its largest key.
func (c *fileChecker) checkTree(id uint64, lo, hi []byte, depth int) ([]byte, error) {
	if depth > maxTreeDepth {
		return nil, c.corrupt("tree deeper than %d at page %d", maxTreeDepth, id)
	}
	p, err := c.readPage(id, depth)
	if err != nil {
		return nil, err
	}
	switch flags := ne.Uint16(p[8:]); flags {
	case leafPageFlag:
		return c.checkLeaf(p, id, lo, hi, depth)
	case branchPageFlag:
		return c.checkBranch(p, id, lo, hi, depth)
	default:
		return nil, c.corrupt("page %d has type %#x in a bucket tree", id, flags)
	}
}

func (c *fileChecker) elementCount(p []byte, id uint64) (int, error) {
	n := int(ne.Uint16(p[10:]))
	if pageHeaderSize+n*elementSize > len(p) {
		return 0, c.corrupt("page %d claims %d elements, more than it holds", id, n)
	}
	return n, nil
}

func (c *fileChecker) checkBranch(p []byte, id uint64, lo, hi []byte, depth int) ([]byte, error) {
	n, err := c.elementCount(p, id)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, c.corrupt("branch page %d is empty", id)
	}
	running := lo
	var maxKey []byte
	for i := range n {
		_, key, _, child, err := c.element(p, i, false)
		if err != nil {
			return nil, fmt.Errorf("page %d: %w", id, err)
		}
		if err := c.keyOrder(id, i, key, running, hi); err != nil {
			return nil, err
		}
		next := hi
		if i < n-1 {
			_, nk, _, _, err := c.element(p, i+1, false)
			if err != nil {
				return nil, fmt.Errorf("page %d: %w", id, err)
			}
			next = nk
		}
		maxKey, err = c.checkTree(child, key, next, depth+1)
		if err != nil {
			return nil, err
		}
		if maxKey != nil {
			running = maxKey
		}
	}
	return maxKey, nil
}

// keyOrder is bbolt's tx.Check key-order rule: the first key of a page is
// >= the bound its ancestors give, every later key is > its predecessor,
// and all are < the upper bound.
func (c *fileChecker) keyOrder(id uint64, i int, key, prev, hi []byte) error {
	if i == 0 && prev != nil && bytes.Compare(prev, key) > 0 {
		return c.corrupt("page %d: first key %x below its ancestor's %x", id, key, prev)
	}
	if i > 0 && bytes.Compare(prev, key) >= 0 {
		return c.corrupt("page %d: key %d (%x) not above its predecessor %x", id, i, key, prev)
	}
	if hi != nil && bytes.Compare(key, hi) >= 0 {
		return c.corrupt("page %d: key %d (%x) not below the next branch key %x", id, i, key, hi)
	}
	return nil
}

func (c *fileChecker) checkLeaf(p []byte, id uint64, lo, hi []byte, depth int) ([]byte, error) {
	n, err := c.elementCount(p, id)
	if err != nil {
		return nil, err
	}
	prev := lo
	for i := range n {
		flags, key, val, _, err := c.element(p, i, true)
		if err != nil {
			return nil, fmt.Errorf("page %d: %w", id, err)
		}
		if err := c.keyOrder(id, i, key, prev, hi); err != nil {
			return nil, err
		}
		prev = key
		if flags&bucketLeafFlag != 0 {
			if err := c.checkBucketValue(id, key, val, depth); err != nil {
				return nil, err
			}
		}
	}
	if n == 0 {
		return nil, nil
	}
	return prev, nil
}

// checkBucketValue checks a nested bucket: a bucket header and either a
// root page id or, for an inline bucket, a leaf page inside the value.
func (c *fileChecker) checkBucketValue(id uint64, key, val []byte, depth int) error {
	if len(val) < bucketHeaderSize {
		return c.corrupt("page %d: bucket %x has a %d-byte header", id, key, len(val))
	}
	if root := ne.Uint64(val); root != 0 {
		_, err := c.checkTree(root, nil, nil, depth+1)
		return err
	}
	inline := val[bucketHeaderSize:]
	if len(inline) < pageHeaderSize {
		return c.corrupt("page %d: inline bucket %x too short", id, key)
	}
	if flags := ne.Uint16(inline[8:]); flags != leafPageFlag {
		return c.corrupt("page %d: inline bucket %x has page type %#x", id, key, flags)
	}
	if depth > maxTreeDepth {
		return c.corrupt("buckets nested deeper than %d", maxTreeDepth)
	}
	// The inline page's elements are addressed relative to it, like any
	// page's; its id is not meaningful.
	_, err := c.checkLeaf(inline, id, nil, nil, depth+1)
	return err
}
