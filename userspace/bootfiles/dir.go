package bootfiles

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Dir serves the regular files under a directory. Names are confined to
// it by os.Root (no "..", absolute path or symlink gets out), matched
// case-insensitively when there is no exact match, and each file version
// is mapped once, the mapping shared by every transfer of it.
//
// Replace served files by renaming a new file over the old one (as package
// managers do), never by rewriting them in place: a mapping of a file that
// shrinks under it faults on the missing pages. Servers reading Bytes
// guard against that (runtime/debug.SetPanicOnFault) so that a fault
// ends one transfer, not the daemon.
type Dir struct {
	root *os.Root

	mu        sync.Mutex
	index     map[string]string // lower-case path -> path on disk
	indexedAt time.Time
	maps      map[string]*mapping // path on disk -> its current version's mapping
}

// reindexEvery bounds how often a miss walks the tree again: phones ask for
// missing files (trust lists) all the time, and a walk per ask would let a
// storm of them cost a directory scan each.
const reindexEvery = time.Second

type mapping struct {
	path    string
	version fileVersion
	data    []byte
	refs    int
}

type fileVersion struct {
	size  int64
	mtime time.Time
	ino   uint64
}

// OpenDir opens dir as a Source.
func OpenDir(dir string) (*Dir, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("boot files: %w", err)
	}
	d := &Dir{root: root, maps: map[string]*mapping{}}
	if err := d.reindex(); err != nil {
		root.Close()
		return nil, err
	}
	return d, nil
}

// reindex walks the tree for case-insensitive lookups; d.mu is held (or d
// is not shared yet).
func (d *Dir) reindex() error {
	index := map[string]string{}
	err := fs.WalkDir(d.root.FS(), ".", func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return nil // an unreadable subdirectory hides its files, nothing more
		}
		if !e.IsDir() {
			lower := strings.ToLower(p)
			if _, dup := index[lower]; !dup || p < index[lower] {
				index[lower] = p // two names differing in case: the same one every time
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("boot files: index %s: %w", d.root.Name(), err)
	}
	d.index, d.indexedAt = index, time.Now()
	return nil
}

// Open implements Source.
func (d *Dir) Open(_ context.Context, r Request) (File, error) {
	p, err := Clean(r.Name)
	if err != nil {
		return nil, err
	}
	f, err := d.open(p)
	if errors.Is(err, fs.ErrNotExist) {
		d.mu.Lock()
		actual, ok := d.index[strings.ToLower(p)]
		if !ok && time.Since(d.indexedAt) >= reindexEvery {
			if ierr := d.reindex(); ierr != nil {
				d.mu.Unlock()
				return nil, ierr
			}
			actual, ok = d.index[strings.ToLower(p)]
		}
		d.mu.Unlock()
		if !ok {
			return nil, ErrNotFound
		}
		p = actual
		f, err = d.open(p)
	}
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		if st.IsDir() {
			return nil, ErrNotFound
		}
		return nil, ErrForbidden // a device or FIFO is nothing to serve
	}
	m, err := d.mapping(p, f, st)
	if err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.Seek(0, 0); err != nil {
		d.release(m)
		f.Close()
		return nil, err
	}
	return &dirFile{d: d, m: m, f: f, mtime: st.ModTime()}, nil
}

// open opens p under the root without blocking (a FIFO would block a
// plain open) and maps the root's refusals to ErrForbidden.
func (d *Dir) open(p string) (*os.File, error) {
	f, err := d.root.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err == nil {
		return f, nil
	}
	// A name too long to exist, or one that goes through a file as if it
	// were a directory, names nothing: "not found", like any other.
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENAMETOOLONG) || errors.Is(err, syscall.ENOTDIR) {
		return nil, fs.ErrNotExist
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && (strings.Contains(pe.Err.Error(), "escapes") || errors.Is(pe.Err, syscall.ELOOP)) {
		return nil, ErrForbidden
	}
	if errors.Is(err, fs.ErrPermission) {
		return nil, ErrForbidden
	}
	return nil, err
}

// mapping returns the shared mapping of this version of the file at p,
// mapping it if it is not yet.
func (d *Dir) mapping(p string, f *os.File, st fs.FileInfo) (*mapping, error) {
	v := fileVersion{size: st.Size(), mtime: st.ModTime()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		v.ino = sys.Ino
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if m := d.maps[p]; m != nil && m.version == v {
		m.refs++
		return m, nil
	}
	m := &mapping{path: p, version: v, refs: 1}
	if v.size > 0 {
		data, err := unix.Mmap(int(f.Fd()), 0, int(v.size), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return nil, fmt.Errorf("map %s: %w", p, err)
		}
		m.data = data
	}
	// An older version stays mapped until its last transfer ends.
	d.maps[p] = m
	return m, nil
}

func (d *Dir) release(m *mapping) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	if d.maps[m.path] == m {
		delete(d.maps, m.path)
	}
	if m.data != nil {
		unix.Munmap(m.data)
		m.data = nil
	}
}

// Mapped is how many file versions are mapped now (for tests and status).
func (d *Dir) Mapped() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.maps)
}

// Close releases the root; files still open stay valid until closed.
func (d *Dir) Close() error { return d.root.Close() }

type dirFile struct {
	d     *Dir
	m     *mapping
	f     *os.File
	mtime time.Time
	once  sync.Once
}

func (f *dirFile) Bytes() []byte      { return f.m.data }
func (f *dirFile) OS() *os.File       { return f.f }
func (f *dirFile) ModTime() time.Time { return f.mtime }

func (f *dirFile) Close() error {
	var err error
	f.once.Do(func() {
		err = f.f.Close()
		f.d.release(f.m)
	})
	return err
}
