package images

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
)

//go:embed firmware.yaml
var syntheticCatalogYAML []byte

// SyntheticSeed is the seed the embedded synthetic catalog's hashes were
// computed with.
const SyntheticSeed = 1

// SyntheticCatalog is the lab's firmware catalog: a load for each model
// family in models.yaml, with file names and sizes like Cisco's (scaled to
// 5-30 MB a load) and the hashes Synthesize produces with SyntheticSeed.
func SyntheticCatalog() (*Catalog, error) {
	c, err := ParseCatalog(syntheticCatalogYAML)
	if err != nil {
		return nil, fmt.Errorf("images/firmware.yaml: %w", err)
	}
	return c, nil
}

// SyntheticCatalogYAML is the embedded catalog's text, for writing next to
// synthesized loads as the daemon's catalog file.
func SyntheticCatalogYAML() []byte { return syntheticCatalogYAML }

// Synthesize writes the files of every load in c into dir: components of
// the catalog's names and sizes whose content is a keystream derived from
// seed and the file name (incompressible like real firmware, the same
// bytes on every run and machine), and each load's .loads file listing
// them. It returns c with the sizes and hashes of what it wrote, which
// equal c's own when c came from SyntheticCatalog and seed is
// SyntheticSeed.
//
// Files are written beside their final name and renamed into place, so
// a server already serving dir never maps a half-written file.
func Synthesize(dir string, c *Catalog, seed uint64) (*Catalog, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("synthesize loads: %w", err)
	}
	defer root.Close()
	out := &Catalog{Loads: make([]Load, len(c.Loads))}
	type job struct{ load, file int }
	var jobs []job
	for i, l := range c.Loads {
		out.Loads[i] = Load{ID: l.ID, Models: l.Models, LoadsFile: File{Name: l.LoadsFile.Name}, Files: make([]File, len(l.Files))}
		for j := range l.Files {
			jobs = append(jobs, job{i, j})
		}
	}
	errs := make([]error, len(jobs))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(jobs)) {
		wg.Go(func() {
			for k := range next {
				f := c.Loads[jobs[k].load].Files[jobs[k].file]
				sum, err := writeSynthetic(root, f.Name, f.Size, seed)
				f.SHA256 = hex.EncodeToString(sum[:])
				out.Loads[jobs[k].load].Files[jobs[k].file] = f
				errs[k] = err
			}
		})
	}
	for k := range jobs {
		next <- k
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for i := range out.Loads {
		l := &out.Loads[i]
		data := l.Manifest().Format()
		if err := writeFile(root, l.LoadsFile.Name, func(w io.Writer) error {
			_, err := w.Write(data)
			return err
		}); err != nil {
			return nil, err
		}
		sum := sha256.Sum256(data)
		l.LoadsFile.Size, l.LoadsFile.SHA256 = int64(len(data)), hex.EncodeToString(sum[:])
	}
	return out, nil
}

// writeSynthetic writes size bytes of AES-128-CTR keystream keyed by
// SHA-256(seed, name): about 8 GB/s with AES-NI, so the hashing, not the
// content, sets the pace.
func writeSynthetic(root *os.Root, name string, size int64, seed uint64) ([32]byte, error) {
	var key [8]byte
	binary.BigEndian.PutUint64(key[:], seed)
	k := sha256.Sum256(append(append([]byte("phoneboot synthetic firmware\x00"), key[:]...), name...))
	block, err := aes.NewCipher(k[:16])
	if err != nil {
		return [32]byte{}, err
	}
	stream := cipher.NewCTR(block, k[16:])
	h := sha256.New()
	err = writeFile(root, name, func(w io.Writer) error {
		buf := make([]byte, 1<<20)
		for left := size; left > 0; {
			n := int(min(left, int64(len(buf))))
			clear(buf[:n])
			stream.XORKeyStream(buf[:n], buf[:n])
			h.Write(buf[:n])
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			left -= int64(n)
		}
		return nil
	})
	return [32]byte(h.Sum(nil)), err
}

func writeFile(root *os.Root, name string, fill func(io.Writer) error) error {
	tmp := "." + name + ".tmp"
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("synthesize %s: %w", name, err)
	}
	err = fill(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Rename(tmp, name)
	}
	if err != nil {
		root.Remove(tmp)
		return fmt.Errorf("synthesize %s: %w", name, err)
	}
	return nil
}
