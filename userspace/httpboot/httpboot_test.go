package httpboot

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/bootfiles"
	"github.com/phoneboot/phoneboot/userspace/internal/wiretest"
	"github.com/phoneboot/phoneboot/userspace/privtest"
)

// generated is a Source of one generated file next to a directory.
type generated struct {
	bootfiles.Source
	name string
	data []byte
	mod  time.Time
}

func (g generated) Open(ctx context.Context, r bootfiles.Request) (bootfiles.File, error) {
	if strings.EqualFold(strings.TrimPrefix(r.Name, "/"), g.name) {
		return &bootfiles.Bytes{Data: g.data, Modified: g.mod}, nil
	}
	return g.Source.Open(ctx, r)
}

type testServer struct {
	*Server
	url   string
	files map[string][]byte
	mod   time.Time
}

func start(t *testing.T, tweak func(*Config)) *testServer {
	t.Helper()
	root := t.TempDir()
	load := make([]byte, 3<<20+5)
	rand.Read(load)
	files := map[string][]byte{
		"SIP88xx.14-2-1.loads":                []byte("loads file\n"),
		"load.sbn":                            load,
		"Desktops/320x212x12/List.xml":        []byte("<CiscoIPPhoneImageList/>"),
		"English_United_States/mk-sip.jar":    []byte("jar"),
		"SEP001B54ABCDEF.cnf.xml (generated)": []byte("<device>generated</device>"),
	}
	mod := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	for name, data := range files {
		if strings.HasSuffix(name, "(generated)") {
			continue
		}
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, mod, mod)
	}
	dir, err := bootfiles.OpenDir(root)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Addr:   netip.MustParseAddrPort("127.0.0.1:0"),
		Source: generated{Source: dir, name: "SEP001B54ABCDEF.cnf.xml", data: files["SEP001B54ABCDEF.cnf.xml (generated)"], mod: mod},
	}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := New(cfg, privtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		s.Close()
		dir.Close()
	})
	return &testServer{Server: s, url: "http://" + s.Addr().String(), files: files, mod: mod}
}

func TestServe(t *testing.T) {
	s := start(t, nil)
	load := s.files["load.sbn"]
	gen := s.files["SEP001B54ABCDEF.cnf.xml (generated)"]
	for _, c := range []struct {
		name, method, path string
		header             map[string]string
		status             int
		body               []byte // nil: not checked
		want               map[string]string
	}{
		{"file", "GET", "/load.sbn", nil, 200, load, map[string]string{"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}},
		{"case and subdir", "GET", "/desktops/320X212X12/list.xml", nil, 200, s.files["Desktops/320x212x12/List.xml"], map[string]string{"Content-Type": "text/xml; charset=utf-8"}},
		{"escaped", "GET", "/English%5FUnited_States/mk-sip.jar", nil, 200, []byte("jar"), nil},
		{"generated", "GET", "/SEP001B54ABCDEF.cnf.xml", nil, 200, gen, map[string]string{"Last-Modified": "Sun, 01 Nov 2026 12:00:00 GMT"}},
		{"head", "HEAD", "/load.sbn", nil, 200, []byte{}, map[string]string{"Content-Length": "3145733"}},
		{"range", "GET", "/load.sbn", map[string]string{"Range": "bytes=100-199"}, 206, load[100:200], map[string]string{"Content-Range": "bytes 100-199/3145733"}},
		{"suffix range", "GET", "/load.sbn", map[string]string{"Range": "bytes=-10"}, 206, load[len(load)-10:], nil},
		{"range of generated", "GET", "/SEP001B54ABCDEF.cnf.xml", map[string]string{"Range": "bytes=1-6"}, 206, gen[1:7], nil},
		{"range beyond", "GET", "/load.sbn", map[string]string{"Range": "bytes=9999999-"}, 416, nil, nil},
		{"multiple ranges", "GET", "/load.sbn", map[string]string{"Range": "bytes=0-1,10-11"}, 206, nil, nil},
		{"not modified", "GET", "/load.sbn", map[string]string{"If-Modified-Since": "Sun, 01 Nov 2026 12:00:00 GMT"}, 304, []byte{}, nil},
		{"modified since", "GET", "/load.sbn", map[string]string{"If-Modified-Since": "Sat, 31 Oct 2026 12:00:00 GMT"}, 200, load, nil},
		{"generated not modified", "GET", "/SEP001B54ABCDEF.cnf.xml", map[string]string{"If-Modified-Since": "Mon, 02 Nov 2026 00:00:00 GMT"}, 304, []byte{}, nil},
		{"missing", "GET", "/CTLSEP001B54ABCDEF.tlv", nil, 404, nil, nil},
		{"directory", "GET", "/Desktops", nil, 404, nil, nil},
		{"root", "GET", "/", nil, 403, nil, nil},
		{"post", "POST", "/load.sbn", nil, 405, nil, map[string]string{"Allow": "GET, HEAD"}},
		{"put", "PUT", "/x", nil, 405, nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(c.method, s.url+c.path, nil)
			for k, v := range c.header {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, c.status, body)
			}
			if c.body != nil && !bytes.Equal(body, c.body) {
				t.Errorf("body of %d bytes, want %d", len(body), len(c.body))
			}
			for k, v := range c.want {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
		})
	}
	st := s.Stats()
	if st.Requests != 18 || st.OK != 6 || st.Partial != 4 || st.NotModified != 2 || st.NotFound != 2 || st.Forbidden != 1 || st.MethodNotAllowed != 2 || st.OtherStatus != 1 {
		t.Errorf("stats: %+v", st)
	}
	// The whole-file GETs of the file on disk went through sendfile.
	if st.SendfileBytes < 2*uint64(len(load)) {
		t.Errorf("%d bytes sent with sendfile, want at least %d: %+v", st.SendfileBytes, 2*len(load), st)
	}
}

// TestRawPaths: paths a browser or Go's client would clean first.
func TestRawPaths(t *testing.T) {
	s := start(t, nil)
	for path, want := range map[string]string{
		"/../../etc/passwd":          "403",
		"/Desktops/../../etc/passwd": "403",
		"/load.sbn%00.txt":           "403",
		"//load.sbn":                 "200",
		"/./SIP88xx.14-2-1.loads":    "200",
	} {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("HEAD " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if !strings.HasPrefix(line, "HTTP/1.1 "+want) {
			t.Errorf("%s: %q, want %s", path, line, want)
		}
	}
}

// TestLimits: past MaxConns a connection gets 503; a client that sends
// no request is dropped after ReadHeaderTimeout; slots come back.
func TestLimits(t *testing.T) {
	s := start(t, func(c *Config) { c.MaxConns, c.ReadHeaderTimeout = 2, 300*time.Millisecond })
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	// The server accepts asynchronously: wait until both are counted.
	for deadline := time.Now().Add(2 * time.Second); s.Stats().Conns < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("conns: %+v", s.Stats())
		}
	}
	resp, err := http.Get(s.url + "/load.sbn")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || s.Stats().ConnsRejected != 1 {
		t.Fatalf("third connection: %d, %+v", resp.StatusCode, s.Stats())
	}
	// The silent connections are closed by the server.
	for _, c := range held {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("read something from a silent connection")
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Error("silent connection not closed after ReadHeaderTimeout")
		}
		c.Close()
	}
	http.DefaultClient.CloseIdleConnections()
	for deadline := time.Now().Add(2 * time.Second); s.Stats().Conns != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("conns: %+v", s.Stats())
		}
	}
	resp, err = http.Get(s.url + "/load.sbn")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("after the slots came back: %d", resp.StatusCode)
	}
}

// TestCurl: curl, a client nobody here wrote, gets the file, a range,
// and a 304 for an unchanged file.
func TestCurl(t *testing.T) {
	wiretest.NeedTool(t, "curl")
	s := start(t, nil)
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		args []string
		want []byte
	}{
		{"whole", []string{s.url + "/load.sbn"}, s.files["load.sbn"]},
		{"range", []string{"-r", "1000-1999", s.url + "/load.sbn"}, s.files["load.sbn"][1000:2000]},
		{"generated", []string{s.url + "/sep001b54abcdef.cnf.xml"}, s.files["SEP001B54ABCDEF.cnf.xml (generated)"]},
		{"not modified", []string{"-z", "Sun, 01 Nov 2026 12:00:00 GMT", s.url + "/load.sbn"}, []byte{}},
	} {
		out := filepath.Join(dir, c.name)
		args := append([]string{"-sS", "-f", "-o", out}, c.args...)
		msg, err := exec.Command("curl", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: curl %v: %v\n%s", c.name, args, err, msg)
		}
		got, _ := os.ReadFile(out)
		if !bytes.Equal(got, c.want) {
			t.Errorf("%s: %d bytes, want %d", c.name, len(got), len(c.want))
		}
	}
	if st := s.Stats(); st.NotModified != 1 || st.Partial != 1 || st.OK != 2 {
		t.Errorf("stats: %+v", st)
	}
}

// mapped serves one file as a Source that hands out its mapping as Bytes
// and no *os.File, as a generated or cached source might.
type mapped struct{ data []byte }

func (m mapped) Open(context.Context, bootfiles.Request) (bootfiles.File, error) {
	return &bootfiles.Bytes{Data: m.data}, nil
}

// TestTruncatedMapping: content whose file shrank under its mapping ends
// that response, not the server.
func TestTruncatedMapping(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, 1<<20, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	s, err := New(Config{Addr: netip.MustParseAddrPort("127.0.0.1:0"), Source: mapped{m}}, privtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	go s.Run(context.Background())
	if err := os.Truncate(p, 0); err != nil {
		t.Fatal(err)
	}
	url := "http://" + s.Addr().String() + "/f"
	for range 2 { // the server is still there for the second
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && len(body) == 1<<20 {
			t.Fatal("a whole body from a truncated mapping")
		}
	}
}
