package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

var update = flag.Bool("update", false, "rewrite firmware.yaml's sizes and hashes from Synthesize")

// TestSyntheticCatalogMatches proves that Synthesize is deterministic: the
// committed catalog's hashes are what it writes now, so the lab's files
// validate against the catalog on every run.
func TestSyntheticCatalogMatches(t *testing.T) {
	c, err := SyntheticCatalog()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	got, err := Synthesize(dir, c, SyntheticSeed)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		writeCatalog(t, got)
		return
	}
	want, _ := c.Marshal()
	have, _ := got.Marshal()
	if !bytes.Equal(want, have) {
		t.Fatalf("Synthesize no longer writes what firmware.yaml says (run with -update after a deliberate change):\n%s", have)
	}
	if err := c.Validate(context.Background(), os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	for _, l := range c.Loads {
		if s := l.Size(); s < 5e6 || s > 30e6 {
			t.Errorf("%s: %d bytes, outside the lab's 5-30 MB", l.ID, s)
		}
		data, err := os.ReadFile(filepath.Join(dir, l.LoadsFile.Name))
		if err != nil {
			t.Fatal(err)
		}
		lf, err := ParseLoads(data)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.sameFiles(lf); err != nil {
			t.Errorf("%s: %v", l.ID, err)
		}
	}
	// Another seed gives other content of the same sizes.
	other, err := Synthesize(t.TempDir(), c, SyntheticSeed+1)
	if err != nil {
		t.Fatal(err)
	}
	if f, g := got.Loads[0].Files[0], other.Loads[0].Files[0]; f.Size != g.Size || f.SHA256 == g.SHA256 {
		t.Errorf("seed %d: %+v, seed %d: %+v", SyntheticSeed, f, SyntheticSeed+1, g)
	}
}

// writeCatalog rewrites firmware.yaml, keeping its leading comment.
func writeCatalog(t *testing.T, c *Catalog) {
	old, err := os.ReadFile("firmware.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var head []byte
	for line := range bytes.Lines(old) {
		if !bytes.HasPrefix(line, []byte("#")) {
			break
		}
		head = append(head, line...)
	}
	body, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("firmware.yaml", append(head, body...), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestModelsMatchCatalog keeps models.yaml and firmware.yaml consistent:
// the lab runs each model's load, so the catalog must have it for that
// model; its previous load must not be there, or a phone told to upgrade
// would find nothing to fetch that differs.
func TestModelsMatchCatalog(t *testing.T) {
	ms, err := Models()
	if err != nil {
		t.Fatal(err)
	}
	c, err := SyntheticCatalog()
	if err != nil {
		t.Fatal(err)
	}
	types := map[int]string{}
	for _, m := range ms {
		l := c.Load(m.Load)
		if l == nil {
			t.Errorf("%s: load %s is not in firmware.yaml", m.Model, m.Load)
			continue
		}
		if ids := c.LoadsFor(m.Model); len(ids) != 1 || ids[0] != l.ID {
			t.Errorf("%s: firmware.yaml lists it in %v, models.yaml says %s", m.Model, ids, m.Load)
		}
		if c.Load(m.PreviousLoad) != nil {
			t.Errorf("%s: previous load %s is in firmware.yaml", m.Model, m.PreviousLoad)
		}
		if other, dup := types[m.DeviceType]; dup {
			t.Errorf("%s and %s share device type %d", m.Model, other, m.DeviceType)
		}
		types[m.DeviceType] = m.Model
	}
}

func TestParseCatalogErrors(t *testing.T) {
	const h = "0000000000000000000000000000000000000000000000000000000000000000"
	load := func(id, loadsName, files string) string {
		return "loads:\n  - id: " + id + "\n    models: [CP-1]\n    loads_file: {name: " + loadsName + ", size: 1, sha256: " + h + "}\n    files:\n" + files
	}
	file := func(name, extra string) string {
		return "      - {name: " + name + ", size: 1, sha256: " + h + ", platform: 1, role: kern" + extra + "}\n"
	}
	good := load("a", "a.loads", file("a.sbn", ""))
	if _, err := ParseCatalog([]byte(good)); err != nil {
		t.Fatalf("good catalog: %v", err)
	}
	for _, tc := range []struct{ name, text, want string }{
		{"unknown key", good + "    foo: 1\n", "not found"},
		{"repeated id", good + load("A", "A.loads", file("b.sbn", ""))[len("loads:\n"):], "id repeated"},
		{"same file in two loads", good + load("b", "b.loads", file("A.SBN", ""))[len("loads:\n"):], "also in load a"},
		{"loads name", load("a", "b.loads", file("a.sbn", "")), "is not named a.loads"},
		{"no files", load("a", "a.loads", ""), "0 files"},
		{"no models", strings.Replace(good, "[CP-1]", "[]", 1), "0 models"},
		{"too many models", strings.Replace(good, "[CP-1]", "["+strings.Repeat("CP-1, ", 32)+"CP-1]", 1), "33 models"},
		{"non-ASCII model", strings.Replace(good, "[CP-1]", "[CP-é]", 1), "not a model name"},
		{"bad model", strings.Replace(good, "[CP-1]", "[\"CP 1\"]", 1), "not a model name"},
		{"bad id", load("a/b", "a/b.loads", file("a.sbn", "")), "not a plain file name"},
		{"bad name", load("a", "a.loads", file("x/../a.sbn", "")), "not a plain file name"},
		{"bad hash", strings.Replace(good, h+", platform", "abc, platform", 1), "not 64 hex"},
		{"negative size", strings.Replace(good, "size: 1, sha256: "+h+", platform", "size: -1, sha256: "+h+", platform", 1), "size -1"},
		{"platform 0", strings.Replace(good, "platform: 1", "platform: 0", 1), "platform 0"},
		{"bad role", strings.Replace(good, "role: kern", "role: Kern", 1), "role"},
		{"loads file with role", strings.Replace(good, "size: 1, sha256: "+h+"}", "size: 1, sha256: "+h+", role: x}", 1), "no platform or role"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCatalog([]byte(tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// smallCatalog synthesizes a tiny two-load catalog into a new directory.
func smallCatalog(t *testing.T) (*Catalog, string) {
	t.Helper()
	const h = "0000000000000000000000000000000000000000000000000000000000000000"
	spec := &Catalog{Loads: []Load{
		{ID: "sipA.1", Models: []string{"CP-1"}, LoadsFile: File{Name: "sipA.1.loads", SHA256: h}, Files: []File{
			{Name: "kernA.1.sbn", Size: 1000, SHA256: h, Platform: 1, Role: "kern"},
			{Name: "rootfsA.1.sbn", Size: 5000, SHA256: h, Platform: 1, Role: "rootfs"},
			{Name: "kern2.A.1.sbn", Size: 700, SHA256: h, Platform: 2, Role: "kern"},
		}},
		{ID: "sipB.1", Models: []string{"CP-2"}, LoadsFile: File{Name: "sipB.1.loads", SHA256: h}, Files: []File{
			{Name: "kernB.1.sbn", Size: 512, SHA256: h, Platform: 1, Role: "kern"},
		}},
	}}
	dir := t.TempDir()
	c, err := Synthesize(dir, spec, 7)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.check(); err != nil {
		t.Fatal(err)
	}
	return c, dir
}

func TestValidate(t *testing.T) {
	c, dir := smallCatalog(t)
	if err := c.Validate(context.Background(), os.DirFS(dir)); err != nil {
		t.Fatalf("fresh files: %v", err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Break one file in each way; Validate must name every one of them.
	must(os.Remove(filepath.Join(dir, "kernA.1.sbn")))
	must(os.Truncate(filepath.Join(dir, "rootfsA.1.sbn"), 4999))
	f, err := os.OpenFile(filepath.Join(dir, "kern2.A.1.sbn"), os.O_WRONLY, 0)
	must(err)
	_, err = f.WriteAt([]byte{'X'}, 350)
	must(err)
	must(f.Close())
	must(os.WriteFile(filepath.Join(dir, "kernB.1.sbn"), make([]byte, 513), 0o644))
	lf, err := os.ReadFile(filepath.Join(dir, "sipB.1.loads"))
	must(err)
	must(os.WriteFile(filepath.Join(dir, "sipB.1.loads"), bytes.Replace(lf, []byte("kernB"), []byte("kernC"), 1), 0o644))
	err = c.Validate(context.Background(), os.DirFS(dir))
	if err == nil {
		t.Fatal("broken files validated")
	}
	for name, problem := range map[string]string{
		"kernA.1.sbn":   "missing",
		"rootfsA.1.sbn": "short: 4999 bytes, the catalog says 5000",
		"kern2.A.1.sbn": "sha256",
		"kernB.1.sbn":   "513 bytes, more than the catalog's 512",
		"sipB.1.loads":  "sha256", // edited: its hash no longer matches
	} {
		found := false
		for _, e := range unjoin(err) {
			var fe *FileError
			if errors.As(e, &fe) && fe.Name == name && strings.Contains(fe.Problem, problem) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no error containing %q in\n%v", name, problem, err)
		}
	}
	if n := len(unjoin(err)); n != 5 {
		t.Errorf("%d errors, want 5:\n%v", n, err)
	}
}

// TestValidateLoadsListing catches a .loads file whose hash the catalog
// agrees with but whose listing differs from the catalog's components.
func TestValidateLoadsListing(t *testing.T) {
	c, dir := smallCatalog(t)
	l := &c.Loads[1]
	lf := l.Manifest()
	lf.Files[0].Size++ // a listing that disagrees with the catalog
	data := lf.Format()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, l.LoadsFile.Name), data, 0o644))
	withHash := *c
	withHash.Loads = append([]Load(nil), c.Loads...)
	withHash.Loads[1].LoadsFile = File{Name: l.LoadsFile.Name, Size: int64(len(data)), SHA256: sha256Hex(data)}
	err := withHash.Validate(context.Background(), os.DirFS(dir))
	if err == nil || !strings.Contains(err.Error(), "lists kernB.1.sbn differently") {
		t.Errorf("got %v", err)
	}
	must(os.Remove(filepath.Join(dir, "sipA.1.loads")))
	must(os.Mkdir(filepath.Join(dir, "sipA.1.loads"), 0o755))
	err = c.Validate(context.Background(), os.DirFS(dir))
	if err == nil || !strings.Contains(err.Error(), "sipA.1.loads: not a regular file") {
		t.Errorf("directory: got %v", err)
	}
}

func TestValidateCancelled(t *testing.T) {
	c, dir := smallCatalog(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Validate(ctx, os.DirFS(dir)); !errors.Is(err, context.Canceled) {
		t.Errorf("got %v", err)
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// BenchmarkValidate measures the start-up cost of checking one 30 MB
// component: warm (in the page cache, as after the lab wrote it) and cold
// (evicted first with POSIX_FADV_DONTNEED, read from disk).
func BenchmarkValidate(b *testing.B) {
	const size = 30_000_000
	const h = "0000000000000000000000000000000000000000000000000000000000000000"
	dir := b.TempDir()
	c, err := Synthesize(dir, &Catalog{Loads: []Load{{ID: "big", Models: []string{"CP-1"},
		LoadsFile: File{Name: "big.loads", SHA256: h},
		Files:     []File{{Name: "big.sbn", Size: size, SHA256: h, Platform: 1, Role: "rootfs"}}}}}, 1)
	if err != nil {
		b.Fatal(err)
	}
	for _, cold := range []bool{false, true} {
		name := "warm"
		if cold {
			name = "cold"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				if cold {
					b.StopTimer()
					f, err := os.Open(filepath.Join(dir, "big.sbn"))
					if err != nil {
						b.Fatal(err)
					}
					unix.Fdatasync(int(f.Fd()))
					unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
					f.Close()
					b.StartTimer()
				}
				if err := c.Validate(context.Background(), os.DirFS(dir)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSynthesize is the lab's start-up cost: writing the whole
// synthetic catalog (about 61 MB) into a directory.
func BenchmarkSynthesize(b *testing.B) {
	c, err := SyntheticCatalog()
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, l := range c.Loads {
		total += l.Size()
	}
	b.SetBytes(total)
	for b.Loop() {
		if _, err := Synthesize(b.TempDir(), c, SyntheticSeed); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzParseCatalog(f *testing.F) {
	f.Add(SyntheticCatalogYAML())
	f.Add([]byte("loads: []\n"))
	f.Add([]byte("loads:\n  - id: a\n    models: [x]\n    loads_file: {name: a.loads, size: 1, sha256: " + strings.Repeat("0", 64) + "}\n    files:\n      - {name: b, size: 2, sha256: " + strings.Repeat("f", 64) + ", platform: 1, role: kern}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseCatalog(data)
		if err != nil {
			return
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseCatalog(out)
		if err != nil {
			t.Fatalf("own output rejected: %v\n%s", err, out)
		}
		if out2, _ := again.Marshal(); !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed:\n%s\n%s", out, out2)
		}
		for _, l := range c.Loads {
			if lf, err := ParseLoads(l.Manifest().Format()); err != nil || l.sameFiles(lf) != nil {
				t.Fatalf("%s: manifest does not read back: %v", l.ID, err)
			}
		}
	})
}
