package control

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// These tests do not use t.Parallel: NewServer changes the process-wide
// umask around its Listen, which would race with files other tests create.

type fakeProvider struct {
	st        Status
	leases    []Lease
	neighbors []Neighbor
	poe       PoEStatus
	regs      []Registration
	err       error
}

func (p fakeProvider) Status(context.Context) Status { return p.st }

func (p fakeProvider) Leases(context.Context) ([]Lease, error) { return p.leases, p.err }

func (p fakeProvider) Neighbors(context.Context) ([]Neighbor, error) { return p.neighbors, p.err }

func (p fakeProvider) PoE(context.Context) (PoEStatus, error) { return p.poe, p.err }

func (p fakeProvider) PoEAction(_ context.Context, port, action, arg string) (PoEPort, error) {
	if p.err != nil {
		return PoEPort{}, p.err
	}
	switch port {
	case "swp1":
		return PoEPort{Port: port, State: action + "d", Priority: arg}, nil
	case "busy":
		return PoEPort{}, errors.New("controller timeout")
	}
	return PoEPort{}, fmt.Errorf("%w: port %s", ErrNotFound, port)
}

func (p fakeProvider) Load(context.Context) Load {
	return Load{DHCPBacklog: 3, TFTPActive: 2, ProxyQueued: 1}
}

func (p fakeProvider) Registrations(context.Context) ([]Registration, error) { return p.regs, p.err }

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// fullStatus has every field set. StartedAt comes from time.Unix in UTC:
// no monotonic reading, and the location JSON decoding gives back.
func fullStatus() Status {
	return Status{
		Version:   "v1.2.3-test",
		PID:       4242,
		StartedAt: time.Unix(1700000000, 123456789).UTC(),
		Uptime:    3661.25,
		Ports: []PortStatus{
			{Name: "swp1", Ifindex: 7, XDPMode: "native", PoEState: "delivering", PoEClass: 2, PowerMW: 7000},
			{Name: "swp2", Ifindex: 8, XDPMode: "off", PoEState: "fault", PoEFault: "overload"},
		},
		Services: []ServiceStatus{
			{Name: "control", State: "running"},
			{Name: "power", State: "failed", Error: "boom"},
		},
		Counters: []Counter{
			{Name: "dhcp", Packets: 1 << 40, Bytes: 1<<63 + 5},
			{Name: "tftp", Packets: 0, Bytes: 0},
		},
	}
}

// serve starts a server on a fresh socket and stops it when the test ends,
// checking that Run returned nil.
func serve(t *testing.T, st Status) (*Server, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "control.sock")
	s, err := NewServer(path, fakeProvider{st: st}, discard())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, path
}

func TestStatusRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   Status
	}{
		{"full", fullStatus()},
		{"zero", Status{}},
		{"empty lists", Status{Version: "x", Ports: []PortStatus{}, Services: []ServiceStatus{}, Counters: []Counter{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, path := serve(t, tc.st)
			got, err := NewClient(path).Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.st) {
				t.Errorf("status changed on the way:\n got  %#v\n want %#v", got, tc.st)
			}
		})
	}
}

func TestSocketMode(t *testing.T) {
	_, path := serve(t, Status{})
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("%s is %v, not a socket", path, fi.Mode())
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("socket mode %#o, want 0600", perm)
	}
}

func TestSocketDirectoryCreatedPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "phoneboot")
	s, err := NewServer(filepath.Join(dir, "control.sock"), fakeProvider{}, discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("socket directory mode %#o, want 0700", perm)
	}
}

func TestSecondServerRefused(t *testing.T) {
	want := fullStatus()
	_, path := serve(t, want)
	s2, err := NewServer(path, fakeProvider{}, discard())
	if err == nil {
		s2.Close()
		t.Fatal("second NewServer on a served socket succeeded")
	}
	if !strings.Contains(err.Error(), "in use") {
		t.Errorf("error %q does not say the socket is in use", err)
	}
	// The first server is untouched and still answers.
	got, err := NewClient(path).Status(context.Background())
	if err != nil {
		t.Fatalf("first server after the refused second: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("first server answers %#v, want %#v", got, want)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("no stale socket left to test with: %v, %v", fi, err)
	}

	want := fullStatus()
	s, err := NewServer(path, fakeProvider{st: want}, discard())
	if err != nil {
		t.Fatalf("NewServer over a stale socket: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		s.Close()
	})
	got, err := NewClient(path).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %#v, want %#v", got, want)
	}
}

func TestNonSocketRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(t *testing.T, path string)
	}{
		{"regular file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
		{"symlink", func(t *testing.T, path string) {
			if err := os.Symlink(filepath.Join(filepath.Dir(path), "elsewhere"), path); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "control.sock")
			tc.make(t, path)
			before, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			s, err := NewServer(path, fakeProvider{}, discard())
			if err == nil {
				s.Close()
				t.Fatal("NewServer took over a path that is not a socket")
			}
			if !strings.Contains(err.Error(), "is not a socket") {
				t.Errorf("error %q does not say the path is not a socket", err)
			}
			after, err := os.Lstat(path)
			if err != nil {
				t.Fatalf("the refused path is gone: %v", err)
			}
			if after.Mode() != before.Mode() || !os.SameFile(before, after) {
				t.Errorf("the refused path changed: %v -> %v", before.Mode(), after.Mode())
			}
			if before.Mode().IsRegular() {
				if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
					t.Errorf("file content now %q, %v", b, err)
				}
			}
		})
	}
}

func TestCloseRemovesSocket(t *testing.T) {
	t.Run("never run", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "control.sock")
		s, err := NewServer(path, fakeProvider{}, discard())
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket still there after Close: %v", err)
		}
		// The listener is released too, not only its path: closing it again
		// must report it already closed.
		if err := s.ln.Close(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("listener still open after Close (closing it again: %v)", err)
		}
	})
	t.Run("while serving", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "control.sock")
		s, err := NewServer(path, fakeProvider{}, discard())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		if _, err := NewClient(path).Status(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket still there after Close: %v", err)
		}
		select {
		case <-done: // Run ends when the server is closed under it
		case <-time.After(10 * time.Second):
			t.Fatal("Run still serving after Close")
		}
		if _, err := NewClient(path).Status(context.Background()); err == nil {
			t.Error("a client still reaches the closed server")
		}
	})
}

func TestRunReturnsNilOnCancel(t *testing.T) {
	for _, tc := range []struct {
		name          string
		cancelFirst   bool
		requestBefore bool
	}{
		{"cancelled while serving", false, true},
		{"cancelled before Run", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "control.sock")
			s, err := NewServer(path, fakeProvider{st: fullStatus()}, discard())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.cancelFirst {
				cancel()
			}
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx) }()
			if tc.requestBefore {
				if _, err := NewClient(path).Status(context.Background()); err != nil {
					t.Fatal(err)
				}
				cancel()
			}
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run = %v, want nil", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return after ctx was cancelled")
			}
			if err := s.Close(); err != nil {
				t.Errorf("Close after Run: %v", err)
			}
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket still there: %v", err)
			}
		})
	}
}

func TestClientNoDaemon(t *testing.T) {
	for _, tc := range []struct {
		name string
		path func(t *testing.T) string
	}{
		{"missing socket", func(t *testing.T) string {
			return filepath.Join(t.TempDir(), "control.sock")
		}},
		{"stale socket", func(t *testing.T) string {
			path := filepath.Join(t.TempDir(), "control.sock")
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			ln.SetUnlinkOnClose(false)
			ln.Close()
			return path
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewClient(tc.path(t)).Status(context.Background())
			if err == nil {
				t.Fatal("Status succeeded with no daemon")
			}
			if !strings.Contains(err.Error(), "is phoneboot running") {
				t.Errorf("error %q gives no hint that the daemon may be down", err)
			}
		})
	}
}

// rawRequest sends one HTTP/1.1 request over the unix socket and returns
// the response's status code and Content-Type.
func rawRequest(t *testing.T, path, method, target string) (int, string) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(method, "http://phoneboot"+target, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Close = true
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type")
}

func TestRoutes(t *testing.T) {
	_, path := serve(t, fullStatus())
	for _, tc := range []struct {
		method, target string
		code           int
	}{
		{http.MethodGet, "/v1/status", http.StatusOK},
		{http.MethodHead, "/v1/status", http.StatusOK},
		{http.MethodGet, "/v1/nothing", http.StatusNotFound},
		{http.MethodGet, "/", http.StatusNotFound},
		{http.MethodGet, "/v1/status/extra", http.StatusNotFound},
		{http.MethodPost, "/v1/status", http.StatusMethodNotAllowed},
		{http.MethodPut, "/v1/status", http.StatusMethodNotAllowed},
		{http.MethodDelete, "/v1/status", http.StatusMethodNotAllowed},
	} {
		t.Run(tc.method+" "+tc.target, func(t *testing.T) {
			code, ctype := rawRequest(t, path, tc.method, tc.target)
			if code != tc.code {
				t.Errorf("status %d, want %d", code, tc.code)
			}
			if code == http.StatusOK && ctype != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ctype)
			}
		})
	}
}

// fakeDaemon serves h on a unix socket, standing in for a misbehaving daemon.
func fakeDaemon(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fake.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return path
}

func TestClientBadAnswers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		want    []string // substrings of the error
	}{
		{"internal error", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "provider exploded", http.StatusInternalServerError)
		}, []string{"/v1/status", "500", "provider exploded"}},
		{"not found", func(w http.ResponseWriter, r *http.Request) {
			http.NotFound(w, r)
		}, []string{"/v1/status", "404"}},
		{"not JSON", func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte("<html>hello</html>"))
		}, []string{"/v1/status", "bad answer"}},
		{"truncated JSON", func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(`{"version": "v1", "pid": 1`))
		}, []string{"/v1/status", "bad answer"}},
		{"wrong JSON type", func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(`{"pid": "not a number"}`))
		}, []string{"/v1/status", "bad answer"}},
		{"empty body", func(w http.ResponseWriter, r *http.Request) {}, []string{"/v1/status", "bad answer"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := fakeDaemon(t, tc.handler)
			_, err := NewClient(path).Status(context.Background())
			if err == nil {
				t.Fatal("Status succeeded on a bad answer")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestClientAsksForStatus(t *testing.T) {
	want := fullStatus()
	got := make(chan string, 1)
	path := fakeDaemon(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- r.Method + " " + r.URL.Path:
		default:
		}
		writeJSON(w, want)
	})
	st, err := NewClient(path).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(st, want) {
		t.Errorf("got %#v, want %#v", st, want)
	}
	if req := <-got; req != "GET /v1/status" {
		t.Errorf("client sent %q, want GET /v1/status", req)
	}
}

func TestClientHonoursContext(t *testing.T) {
	release := make(chan struct{})
	path := fakeDaemon(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := NewClient(path).Status(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Status with a cancelled context = %v, want context.Canceled", err)
	}
}

// listCase is one provider behind a list endpoint and what the client
// must get from it.
type listCase[T any] struct {
	name    string
	p       fakeProvider
	want    []T
	wantErr string
}

// checkList runs the cases of a list endpoint through a real server and
// client: a list, an empty list (never JSON null), and the provider's error.
func checkList[T any](t *testing.T, fetch func(*Client, context.Context) ([]T, error), cases []listCase[T]) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.sock")
			s, err := NewServer(path, tt.p, discard())
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			go s.Run(t.Context())
			got, err := fetch(NewClient(path), t.Context())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestLeases(t *testing.T) {
	exp := time.Unix(1_800_000_000, 0).UTC()
	want := []Lease{{IP: "10.1.0.10", MAC: "00:1e:7a:00:00:01", Pool: "voice", State: "bound", Expires: exp, Port: "swp1", VLAN: 100, Hostname: "SEP001E7A000001"}}
	checkList(t, (*Client).Leases, []listCase[Lease]{
		{"some", fakeProvider{leases: want}, want, ""},
		{"none", fakeProvider{}, []Lease{}, ""},
		{"dhcp off", fakeProvider{err: errors.New("dhcp is not enabled")}, nil, "dhcp is not enabled"},
	})
}

func TestNeighbors(t *testing.T) {
	exp := time.Unix(1_800_000_000, 0).UTC()
	want := []Neighbor{{
		Port: "swp1", Protocol: "cdp", MAC: "00:1e:7a:00:00:01", DeviceID: "SEP001E7A000001",
		Platform: "Cisco IP Phone 8845", PortID: "Port 1", Addresses: []string{"10.100.0.50"},
		SoftwareVersion: "sip88xx.14-2-1", PowerRequestedMW: 12900, VoiceVLANQuery: true, Expires: exp,
	}}
	checkList(t, (*Client).Neighbors, []listCase[Neighbor]{
		{"some", fakeProvider{neighbors: want}, want, ""},
		{"none", fakeProvider{}, []Neighbor{}, ""},
		{"discovery off", fakeProvider{err: errors.New("discovery is not enabled")}, nil, "discovery is not enabled"},
	})
}

func TestPoE(t *testing.T) {
	want := PoEStatus{
		Policy: "adaptive", Accounting: "class", BudgetMW: 370000, AllocatedMW: 22400, DrawnMW: 9100,
		RequestsGranted: 3, RequestsRefused: 1, AdaptiveHolds: 12,
		Ports: []PoEPort{
			{Port: "swp1", State: "delivering", Class: 2, PowerMW: 6100, Enabled: true, Priority: "high", AllocatedMW: 7000, RequestedMW: 7000, GrantedMW: 7000},
			{Port: "swp2", State: "disabled", Class: -1, Enabled: true, Priority: "low", Held: "not enough power budget"},
		},
	}
	for _, tc := range []struct {
		name    string
		p       fakeProvider
		want    PoEStatus
		wantErr string
	}{
		{"some", fakeProvider{poe: want}, want, ""},
		{"no ports", fakeProvider{poe: PoEStatus{Policy: "all"}}, PoEStatus{Policy: "all", Ports: []PoEPort{}}, ""},
		{"power off", fakeProvider{err: fmt.Errorf("%w: power.backend is none", ErrUnavailable)}, PoEStatus{}, "503 Service Unavailable: not enabled on the daemon: power.backend is none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.sock")
			s, err := NewServer(path, tc.p, discard())
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			go s.Run(t.Context())
			got, err := NewClient(path).PoE(t.Context())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestPoEActions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	s, err := NewServer(path, fakeProvider{}, discard())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	go s.Run(t.Context())
	c := NewClient(path)
	for _, tc := range []struct {
		port, action, arg string
		want              PoEPort
		wantErr           string
	}{
		{"swp1", PoEEnable, "", PoEPort{Port: "swp1", State: "enabled"}, ""},
		{"swp1", PoEDisable, "", PoEPort{Port: "swp1", State: "disabled"}, ""},
		{"swp1", PoECycle, "", PoEPort{Port: "swp1", State: "cycled"}, ""},
		{"swp1", PoEPriority, "critical", PoEPort{Port: "swp1", State: "priorityd", Priority: "critical"}, ""},
		{"swp9", PoEEnable, "", PoEPort{}, "404 Not Found: not found: port swp9"},
		{"busy", PoECycle, "", PoEPort{}, "500 Internal Server Error: controller timeout"},
		{"swp1", "explode", "", PoEPort{}, `404 Not Found: unknown PoE action "explode"`},
		{"a/b", PoEEnable, "", PoEPort{}, "not found: port a/b"}, // escaped, reaches the provider whole
	} {
		t.Run(tc.port+" "+tc.action, func(t *testing.T) {
			got, err := c.PoEAction(t.Context(), tc.port, tc.action, tc.arg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	if code, _ := rawRequest(t, path, http.MethodGet, "/v1/poe/swp1/enable"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET of an action: %d, want 405", code)
	}
	l, err := c.Load(t.Context())
	if err != nil || l != (Load{DHCPBacklog: 3, TFTPActive: 2, ProxyQueued: 1}) {
		t.Errorf("Load = %+v, %v", l, err)
	}
}

func TestRegistrations(t *testing.T) {
	since := time.Unix(1_800_000_000, 5).UTC()
	want := []Registration{
		{Device: "SEP001E7A000001", Phone: "10.64.0.20:51000", CallManager: "cm1", Protocol: "sccp", State: "registered",
			Since: since, DeviceType: 115, Load: "SCCP41.9-4-2SR3-1S", KeepAliveSeconds: 30},
		{Phone: "10.64.0.21:40000", Protocol: "sccp-tls", State: "connected", CallManager: "cm2", Since: since},
		{Phone: "10.64.0.22:40001", Protocol: "sip", State: "reading", Since: since},
		{Device: "SEP001B54ABCDEF", Phone: "10.64.0.23:51515", CallManager: "cm1", Protocol: "sip", State: "registered", Since: since,
			AOR: "sip:4001@10.1.1.1", Contact: "sip:4001@10.64.0.23:51515;transport=tcp"},
	}
	checkList(t, (*Client).Registrations, []listCase[Registration]{
		{"some", fakeProvider{regs: want}, want, ""},
		{"none", fakeProvider{}, []Registration{}, ""},
		{"proxy off", fakeProvider{err: errors.New("the registration proxy is not enabled")}, nil, "the registration proxy is not enabled"},
	})
}
