package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"runtime"
	"slices"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// Catalog is the firmware phoneboot serves: every load phones may be told
// to run, with its .loads file and component files. It is checked against
// the served directory when the daemon starts (Validate), so that a phone
// is never sent to a load whose files are missing, truncated or corrupt:
// a phone that cannot fetch its load retries it without end.
type Catalog struct {
	Loads []Load `yaml:"loads"`
}

// Load is one firmware load.
type Load struct {
	// ID is the load's name as <loadInformation> carries it: the .loads
	// file's name without the extension.
	ID string `yaml:"id"`
	// Models are the phone models it is for (CP-8851, ...).
	Models []string `yaml:"models,flow"`
	// LoadsFile is the .loads file.
	LoadsFile File `yaml:"loads_file"`
	// Files are the components the .loads file lists.
	Files []File `yaml:"files"`
}

// File is one file of a load. Platform and Role say where the .loads file
// lists a component (see LoadsFile); the .loads file itself has neither.
type File struct {
	Name     string `yaml:"name"`
	Size     int64  `yaml:"size"`
	SHA256   string `yaml:"sha256"`
	Platform int    `yaml:"platform,omitempty"`
	Role     string `yaml:"role,omitempty"`
}

// MarshalYAML writes a file on one line, as the committed catalog has it.
func (f File) MarshalYAML() (any, error) {
	type plain File // without this method
	var n yaml.Node
	if err := n.Encode(plain(f)); err != nil {
		return nil, err
	}
	n.Style = yaml.FlowStyle
	return &n, nil
}

// ParseCatalog decodes and checks a catalog: unknown keys, duplicate load
// IDs or file names, and malformed sizes or hashes are errors.
func ParseCatalog(data []byte) (*Catalog, error) {
	var c Catalog
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("firmware catalog: %w", err)
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Catalog) check() error {
	ids := map[string]bool{}
	names := map[string]string{} // lower-case file name -> load ID
	for i, l := range c.Loads {
		bad := func(format string, args ...any) error {
			return fmt.Errorf("firmware catalog: loads[%d] %s: %s", i, l.ID, fmt.Sprintf(format, args...))
		}
		if err := checkFileName(l.ID); err != nil {
			return bad("id: %v", err)
		}
		if ids[strings.ToLower(l.ID)] {
			return bad("id repeated")
		}
		ids[strings.ToLower(l.ID)] = true
		if len(l.Models) == 0 || len(l.Models) > maxModelsPerLoads {
			return bad("%d models; a load is for 1 to %d", len(l.Models), maxModelsPerLoads)
		}
		for _, m := range l.Models {
			if m == "" || strings.ContainsAny(m, " \t,") || !isPrintableASCII(m) {
				return bad("model %q is not a model name such as CP-8851", m)
			}
		}
		if !strings.EqualFold(l.LoadsFile.Name, l.ID+".loads") {
			return bad("loads_file %q is not named %s.loads", l.LoadsFile.Name, l.ID)
		}
		if len(l.Files) == 0 || len(l.Files) > MaxLoadsFiles {
			return bad("%d files; a load has 1 to %d", len(l.Files), MaxLoadsFiles)
		}
		all := append([]File{l.LoadsFile}, l.Files...)
		for j, f := range all {
			if err := checkFileName(f.Name); err != nil {
				return bad("%v", err)
			}
			if other, dup := names[strings.ToLower(f.Name)]; dup {
				return bad("file %s is also in load %s (names are matched case-insensitively)", f.Name, other)
			}
			names[strings.ToLower(f.Name)] = l.ID
			if f.Size < 0 || f.Size > MaxComponentSize {
				return bad("%s: size %d outside 0 to %d", f.Name, f.Size, MaxComponentSize)
			}
			if _, err := parseSHA256(f.SHA256); err != nil {
				return bad("%s: %v", f.Name, err)
			}
			if j == 0 {
				if f.Platform != 0 || f.Role != "" {
					return bad("the .loads file has no platform or role")
				}
				continue
			}
			if f.Platform < 1 || f.Platform > maxPlatform {
				return bad("%s: platform %d is not 1 to %d", f.Name, f.Platform, maxPlatform)
			}
			if !isRole(f.Role) {
				return bad("%s: role %q is not lower-case letters and digits", f.Name, f.Role)
			}
		}
	}
	return nil
}

func parseSHA256(s string) ([32]byte, error) {
	var h [32]byte
	if len(s) != 64 {
		return h, fmt.Errorf("sha256 %q is not 64 hex digits", s)
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil {
		return h, fmt.Errorf("sha256 %q is not 64 hex digits", s)
	}
	return h, nil
}

// Load returns the load with this ID (case-insensitive), or nil.
func (c *Catalog) Load(id string) *Load {
	for i := range c.Loads {
		if strings.EqualFold(c.Loads[i].ID, id) {
			return &c.Loads[i]
		}
	}
	return nil
}

// LoadsFor returns the IDs of the loads that list model.
func (c *Catalog) LoadsFor(model string) []string {
	var ids []string
	for _, l := range c.Loads {
		if slices.ContainsFunc(l.Models, func(m string) bool { return strings.EqualFold(m, model) }) {
			ids = append(ids, l.ID)
		}
	}
	return ids
}

// Manifest is the .loads file the load's components make.
func (l *Load) Manifest() *LoadsFile {
	lf := &LoadsFile{ID: l.ID, Models: slices.Clone(l.Models)}
	for _, f := range l.Files {
		h, _ := parseSHA256(f.SHA256) // checked by ParseCatalog
		lf.Files = append(lf.Files, Component{Platform: f.Platform, Role: f.Role, Name: f.Name, Size: f.Size, SHA256: h})
	}
	return lf
}

// Size is the load's total size: its .loads file and components.
func (l *Load) Size() int64 {
	n := l.LoadsFile.Size
	for _, f := range l.Files {
		n += f.Size
	}
	return n
}

// Marshal encodes the catalog as YAML.
func (c *Catalog) Marshal() ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// FileError is one catalog file that does not match the served directory.
type FileError struct {
	Load, Name string
	Problem    string
}

func (e *FileError) Error() string {
	return fmt.Sprintf("firmware load %s: %s: %s", e.Load, e.Name, e.Problem)
}

// Validate checks every file of the catalog in root, the directory phones
// are served from: present, a regular file, the catalog's size and SHA-256,
// and each .loads file listing exactly the catalog's components. It reads
// every byte (about 22 ms per 30 MB from the page cache on one core with
// SHA extensions, 30-55 ms read from disk; see
// BenchmarkValidate), spread over GOMAXPROCS workers, and reports every
// problem at once as FileErrors joined.
//
// Hashes are checked here, at start, rather than when a phone first asks:
// a corrupt firmware file found at start is an operator fixing a file; found
// during a boot storm it is thousands of phones retrying a download that
// can never succeed.
func (c *Catalog) Validate(ctx context.Context, root fs.FS) error {
	type job struct {
		load *Load
		file File
	}
	var jobs []job
	for i := range c.Loads {
		l := &c.Loads[i]
		jobs = append(jobs, job{l, l.LoadsFile})
		for _, f := range l.Files {
			jobs = append(jobs, job{l, f})
		}
	}
	errs := make([]error, len(jobs))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(jobs)) {
		wg.Go(func() {
			for i := range next {
				errs[i] = checkFile(ctx, root, jobs[i].load, jobs[i].file)
			}
		})
	}
	for i := range jobs {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.Join(errs...)
}

func checkFile(ctx context.Context, root fs.FS, l *Load, f File) error {
	bad := func(format string, args ...any) error {
		return &FileError{Load: l.ID, Name: f.Name, Problem: fmt.Sprintf(format, args...)}
	}
	fh, err := root.Open(f.Name)
	if errors.Is(err, fs.ErrNotExist) {
		return bad("missing")
	}
	if err != nil {
		return bad("%v", err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return bad("%v", err)
	}
	switch {
	case !st.Mode().IsRegular():
		return bad("not a regular file (%s)", st.Mode().Type())
	case st.Size() < f.Size:
		return bad("short: %d bytes, the catalog says %d", st.Size(), f.Size)
	case st.Size() > f.Size:
		return bad("%d bytes, more than the catalog's %d", st.Size(), f.Size)
	}
	want, _ := parseSHA256(f.SHA256) // checked by ParseCatalog
	h := sha256.New()
	var content bytes.Buffer
	var w io.Writer = h
	if f.Role == "" { // the .loads file: keep it to compare its listing
		w = io.MultiWriter(h, &content)
	}
	if _, err := io.CopyBuffer(w, ctxReader{ctx, fh}, make([]byte, 256<<10)); err != nil {
		return bad("read: %v", err)
	}
	if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
		return bad("sha256 %x, the catalog says %s", got, f.SHA256)
	}
	if f.Role != "" {
		return nil
	}
	lf, err := ParseLoads(content.Bytes())
	if err != nil {
		return bad("%v", err)
	}
	if err := l.sameFiles(lf); err != nil {
		return bad("%v", err)
	}
	return nil
}

// sameFiles reports how a parsed .loads file differs from the catalog.
func (l *Load) sameFiles(lf *LoadsFile) error {
	if !strings.EqualFold(lf.ID, l.ID) {
		return fmt.Errorf("lists load %q", lf.ID)
	}
	want := l.Manifest()
	if len(lf.Files) != len(want.Files) {
		return fmt.Errorf("lists %d files, the catalog %d", len(lf.Files), len(want.Files))
	}
	for _, w := range want.Files {
		i := slices.IndexFunc(lf.Files, func(c Component) bool { return strings.EqualFold(c.Name, w.Name) })
		if i < 0 {
			return fmt.Errorf("does not list %s", w.Name)
		}
		if lf.Files[i] != w {
			return fmt.Errorf("lists %s differently from the catalog", w.Name)
		}
	}
	return nil
}

// ctxReader stops a long read when ctx ends (the daemon asked to stop).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
