package bootfiles

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func open(t *testing.T, d *Dir, name string) (File, error) {
	t.Helper()
	return d.Open(context.Background(), Request{Name: name, Protocol: "tftp"})
}

func TestDirConfinesAndMatches(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "root")
	for _, dir := range []string{"root/Desktops/320x212x12", "outside"} {
		if err := os.MkdirAll(filepath.Join(base, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"root/SEP001B54ABCDEF.cnf.xml":      "<device/>",
		"root/Desktops/320x212x12/List.xml": "<list/>",
		"root/sip88xx.14-2-1-0001-14.loads": "load",
		"outside/secret":                    "secret",
		"root/empty.txt":                    "",
	}
	for p, c := range files {
		if err := os.WriteFile(filepath.Join(base, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink("../outside/secret", filepath.Join(root, "escape")))
	must(os.Symlink("/etc/passwd", filepath.Join(root, "absolute")))
	must(os.Symlink("SEP001B54ABCDEF.cnf.xml", filepath.Join(root, "inside")))
	must(os.Symlink("../outside", filepath.Join(root, "outdir")))
	must(syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644))

	d, err := OpenDir(root)
	must(err)
	defer d.Close()
	for _, c := range []struct {
		name string
		want string // content, or the error
	}{
		{"SEP001B54ABCDEF.cnf.xml", "<device/>"},
		{"/SEP001B54ABCDEF.cnf.xml", "<device/>"},
		{"sep001b54abcdef.CNF.XML", "<device/>"},
		{"/desktops/320X212X12/list.xml", "<list/>"},
		{"./Desktops//320x212x12/./List.xml", "<list/>"},
		{"inside", "<device/>"},
		{"empty.txt", ""},
		{"CTLSEP001B54ABCDEF.tlv", ErrNotFound.Error()},
		{"Desktops", ErrNotFound.Error()},
		{strings.Repeat("0", 300), ErrNotFound.Error()},
		{"Desktops/" + strings.Repeat("x", 5000), ErrNotFound.Error()},
		{"SEP001B54ABCDEF.cnf.xml/x", ErrNotFound.Error()},
		{"../outside/secret", ErrForbidden.Error()},
		{"Desktops/../../outside/secret", ErrForbidden.Error()},
		{"/../outside/secret", ErrForbidden.Error()},
		{"..", ErrForbidden.Error()},
		{"escape", ErrForbidden.Error()},
		{"absolute", ErrForbidden.Error()},
		{"outdir/secret", ErrForbidden.Error()},
		{"fifo", ErrForbidden.Error()},
		{"SEP001B54ABCDEF.cnf.xml\x00.txt", ErrForbidden.Error()},
		{`..\outside\secret`, ErrForbidden.Error()},
		{"", ErrForbidden.Error()},
		{"/", ErrForbidden.Error()},
	} {
		done := make(chan struct{})
		go func() {
			defer close(done)
			f, err := open(t, d, c.name)
			got := ""
			if err != nil {
				got = err.Error()
			} else {
				got = string(f.Bytes())
				if c.want != "" && f.OS() == nil {
					t.Errorf("%q: no file for sendfile", c.name)
				}
				f.Close()
			}
			if got != c.want {
				t.Errorf("Open(%q) = %q, want %q", c.name, got, c.want)
			}
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("Open(%q) blocked", c.name)
		}
	}
	if n := d.Mapped(); n != 0 {
		t.Errorf("%d mappings left after every file was closed", n)
	}
}

// TestDirSharesMappings: concurrent transfers of one file share one
// mapping; a new version (renamed over the old) gets its own, and the old
// one stays valid for the transfer still reading it.
func TestDirSharesMappings(t *testing.T) {
	root := t.TempDir()
	p := filepath.Join(root, "load.sbn")
	if err := os.WriteFile(p, bytes.Repeat([]byte{1}, 100000), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := OpenDir(root)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	a, err := open(t, d, "load.sbn")
	if err != nil {
		t.Fatal(err)
	}
	b, err := open(t, d, "LOAD.SBN")
	if err != nil {
		t.Fatal(err)
	}
	if &a.Bytes()[0] != &b.Bytes()[0] || d.Mapped() != 1 {
		t.Errorf("two opens of one file do not share a mapping")
	}
	tmp := filepath.Join(root, ".new")
	if err := os.WriteFile(tmp, bytes.Repeat([]byte{2}, 5000), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
	c, err := open(t, d, "load.sbn")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Bytes()) != 5000 || c.Bytes()[0] != 2 {
		t.Errorf("new version: %d bytes starting %d", len(c.Bytes()), c.Bytes()[0])
	}
	if len(a.Bytes()) != 100000 || a.Bytes()[99999] != 1 {
		t.Errorf("the old version changed under a transfer")
	}
	for _, f := range []File{a, b, c} {
		if err := f.Close(); err != nil {
			t.Error(err)
		}
	}
	if n := d.Mapped(); n != 0 {
		t.Errorf("%d mappings left", n)
	}
}

// TestDirSeesNewFiles: a file added after start is found by a case-
// insensitive name once the index is refreshed (at most once a second).
func TestDirSeesNewFiles(t *testing.T) {
	root := t.TempDir()
	d, err := OpenDir(root)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := os.WriteFile(filepath.Join(root, "SEP00AA.cnf.xml"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := open(t, d, "SEP00AA.cnf.xml"); err != nil {
		t.Errorf("exact name of a new file: %v", err)
	}
	d.mu.Lock()
	d.indexedAt = time.Time{}
	d.mu.Unlock()
	f, err := open(t, d, "sep00aa.cnf.xml")
	if err != nil {
		t.Fatalf("other case of a new file: %v", err)
	}
	f.Close()
}

func TestCleanRefuses(t *testing.T) {
	for _, n := range []string{"", "/", ".", "a/../b", "..", "a\\b", "a\x00"} {
		if _, err := Clean(n); !errors.Is(err, ErrForbidden) {
			t.Errorf("Clean(%q) = %v, want ErrForbidden", n, err)
		}
	}
	for n, want := range map[string]string{"/a/b": "a/b", "a//b/./c": "a/b/c", "a/": "a"} {
		if got, err := Clean(n); err != nil || got != want {
			t.Errorf("Clean(%q) = %q, %v, want %q", n, got, err, want)
		}
	}
}

func FuzzClean(f *testing.F) {
	for _, s := range []string{"SEP.cnf.xml", "/a/b", "../x", "a/./b", "a\x00b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		p, err := Clean(name)
		if err != nil {
			return
		}
		if p == "" || p[0] == '/' || filepath.IsAbs(p) || !filepath.IsLocal(p) {
			t.Errorf("Clean(%q) = %q: not a local path", name, p)
		}
	})
}
