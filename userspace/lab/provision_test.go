package lab

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/images"
	"github.com/phoneboot/phoneboot/userspace/httpboot"
	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/provision"
	"github.com/phoneboot/phoneboot/userspace/tftp"
)

// The config and firmware phases against phoneboot's own provisioning and
// TFTP server on loopback: the files are generated as the daemon generates
// them, and travel over real TFTP with each model's options.

// smallCatalog has a load per family of the test phones, a few hundred KB
// each, so a test upgrades in milliseconds.
var smallCatalog = &images.Catalog{Loads: []images.Load{
	{ID: "sip88xx.14-2-1-0001-14", Models: []string{"CP-8851"},
		LoadsFile: images.File{Name: "sip88xx.14-2-1-0001-14.loads"},
		Files: []images.File{
			{Name: "kern88xx.14-2-1-0001-14.sbn", Size: 70001, Platform: 1, Role: "kern"},
			{Name: "rootfs88xx.14-2-1-0001-14.sbn", Size: 300000, Platform: 1, Role: "rootfs"},
		}},
	{ID: "sip78xx.14-2-1-0001-14", Models: []string{"CP-7821"},
		LoadsFile: images.File{Name: "sip78xx.14-2-1-0001-14.loads"},
		Files:     []images.File{{Name: "rootfs78xx.14-2-1-0001-14.sbn", Size: 20000, Platform: 1, Role: "rootfs"}}},
}}

type provisionFixture struct {
	root   string
	server netip.AddrPort
	f      *fetcher
}

// startProvisioning serves cfg's phones from a root with smallCatalog's
// loads (and extra files), over TFTP on 127.0.0.1.
func startProvisioning(t *testing.T, cfg provision.Config, extra map[string]string) *provisionFixture {
	t.Helper()
	privtest.RequireNetNS(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	c, err := images.Synthesize(root, smallCatalog, 5)
	if err != nil {
		t.Fatal(err)
	}
	data, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Root, cfg.Catalog = root, filepath.Join(dir, "catalog.yaml")
	if err := os.WriteFile(cfg.Catalog, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, content := range extra {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	src, err := provision.New(context.Background(), cfg, nil, privtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	s, err := tftp.New(tftp.Config{Addrs: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Source: src, MaxBlockSize: 1468}, privtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("tftp Run: %v", err)
		}
		s.Close()
		src.Close()
	})
	hs, err := httpboot.New(httpboot.Config{Addr: netip.MustParseAddrPort("127.0.0.1:0"), Source: src}, privtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	hdone := make(chan error, 1)
	go func() { hdone <- hs.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-hdone; err != nil {
			t.Errorf("http Run: %v", err)
		}
		hs.Close()
	})
	fx := &provisionFixture{root: root, server: s.Addrs()[0], f: newFetcher(0.0001)}
	fx.f.port = fx.server.Port()
	fx.f.httpPort = hs.Addr().Port()
	return fx
}

func labProvisionConfig(phones ...*Phone) provision.Config {
	cfg := provision.DefaultConfig()
	cfg.AutoRegistration = true
	cfg.Groups = []provision.Group{{Name: "lab", Members: []provision.Member{
		{Host: "10.250.0.12", Priority: 1}, {Host: "10.250.0.11", Priority: 0}}}}
	for _, ph := range phones {
		cfg.Phones = append(cfg.Phones, provision.Phone{MAC: provision.MAC(ph.MAC), Model: ph.Model.Model})
	}
	return cfg
}

// testPhone is a phone on loopback, past DHCP.
func testPhone(t *testing.T, index int, model string) *Phone {
	t.Helper()
	for _, m := range modelsForTest {
		if m.Model == model {
			ph := newPhone(index, m, nil, 1)
			ph.IP = netip.MustParseAddr("127.0.0.1")
			ph.TFTPServers = []netip.Addr{ph.IP}
			return ph
		}
	}
	t.Fatalf("no model %s", model)
	return nil
}

func noBringUp(*Phone) error { return nil }

func TestConfigPhase(t *testing.T) {
	listed := testPhone(t, 0, "CP-8851")
	unknown := testPhone(t, 1, "CP-7821") // plain RFC 1350 requests, not in the inventory
	withTrust := testPhone(t, 2, "CP-8851")
	fx := startProvisioning(t, labProvisionConfig(listed, withTrust), map[string]string{
		"ITL" + withTrust.Name + ".tlv": "a trust list of its own",
		"ITLFile.tlv":                   "the default trust list",
	})
	phase := configPhase{f: fx.f, bringUp: noBringUp}
	for _, ph := range []*Phone{listed, withTrust} {
		if err := phase.Run(context.Background(), ph); err != nil {
			t.Fatalf("%s: %v", ph.Name, err)
		}
		c := ph.Config
		if c.File != ph.Name+".cnf.xml" || c.Protocol != "SIP" || c.Load != "sip88xx.14-2-1-0001-14" || c.VersionStamp == "" {
			t.Errorf("%s: config %+v", ph.Name, c)
		}
		if len(c.CallManagers) != 2 || c.CallManagers[0].Host != "10.250.0.11" || c.CallManagers[1].Host != "10.250.0.12" || c.CallManagers[0].SIPPort != 5060 {
			t.Errorf("%s: CallManagers %+v, want 10.250.0.11 then 10.250.0.12 on 5060", ph.Name, c.CallManagers)
		}
	}
	if err := phase.Run(context.Background(), unknown); err != nil {
		t.Fatal(err)
	}
	if c := unknown.Config; c.File != "XMLDefault.cnf.xml" || c.Load != "sip78xx.14-2-1-0001-14" || len(c.CallManagers) != 2 {
		t.Errorf("phone outside the inventory: config %+v, want XMLDefault's load for device type %d", c, unknown.Model.DeviceType)
	}
	for _, ph := range []*Phone{listed, unknown, withTrust} {
		if ph.Retransmits != 0 || ph.FetchRetries != 0 {
			t.Errorf("%s: %d retransmits, %d retries on loopback", ph.Name, ph.Retransmits, ph.FetchRetries)
		}
	}
}

func TestConfigPhaseNoConfig(t *testing.T) {
	ph := testPhone(t, 0, "CP-8851")
	cfg := labProvisionConfig()
	cfg.AutoRegistration = false
	fx := startProvisioning(t, cfg, nil)
	err := configPhase{f: fx.f, bringUp: noBringUp}.Run(context.Background(), ph)
	if err == nil || !strings.Contains(err.Error(), "neither "+ph.Name+".cnf.xml nor XMLDefault.cnf.xml") {
		t.Fatalf("got %v, want the missing configuration named", err)
	}
	upErr := errors.New("no interface")
	if err := (configPhase{f: fx.f, bringUp: func(*Phone) error { return upErr }}).Run(context.Background(), ph); !errors.Is(err, upErr) {
		t.Errorf("with the interface failing: %v", err)
	}
}

func TestFirmwarePhase(t *testing.T) {
	models := []string{"CP-8851", "CP-7821"} // windowed, and plain RFC 1350
	var phones []*Phone
	for i, m := range models {
		phones = append(phones, testPhone(t, i, m))
	}
	fx := startProvisioning(t, labProvisionConfig(phones...), nil)
	var fetched atomic.Int64
	cfg := configPhase{f: fx.f, bringUp: noBringUp}
	fw := firmwarePhase{f: fx.f, bytes: &fetched, log: privtest.Logger(t)}
	var want int64
	for _, ph := range phones {
		ph.Load, ph.bootLoad = ph.Model.PreviousLoad, ph.Model.PreviousLoad
		if err := cfg.Run(context.Background(), ph); err != nil {
			t.Fatal(err)
		}
		if err := fw.Run(context.Background(), ph); err != nil {
			t.Fatalf("%s (%s): %v", ph.Name, ph.Model.Model, err)
		}
		if !ph.Upgraded || ph.Load != ph.Config.Load {
			t.Errorf("%s: upgraded %v, runs %s, want %s", ph.Name, ph.Upgraded, ph.Load, ph.Config.Load)
		}
		// The 88xx fetch over HTTP (the trust lists it lacks then over
		// TFTP); the 78xx only over TFTP.
		if http := ph.HTTPFetches > 0; http != ph.Model.HTTP || (ph.Model.HTTP && ph.HTTPFallbacks != 3) || (!ph.Model.HTTP && ph.HTTPFallbacks != 0) {
			t.Errorf("%s: %d files over HTTP, %d asked over TFTP after HTTP failed; the model has HTTP %v",
				ph.Name, ph.HTTPFetches, ph.HTTPFallbacks, ph.Model.HTTP)
		}
		l := smallCatalog.Load(ph.Config.Load)
		for _, f := range l.Files {
			want += f.Size
		}
		st, err := os.Stat(filepath.Join(fx.root, l.LoadsFile.Name))
		if err != nil {
			t.Fatal(err)
		}
		want += st.Size()
	}
	if fetched.Load() != want {
		t.Errorf("fetched %d bytes, want %d (every .loads file and component once)", fetched.Load(), want)
	}
	// Running the named load already: nothing to fetch.
	before := fetched.Load()
	ph := phones[0]
	ph.Upgraded = false
	if err := fw.Run(context.Background(), ph); err != nil || ph.Upgraded || fetched.Load() != before {
		t.Errorf("phone on its load: %v, upgraded %v, fetched %d more bytes", err, ph.Upgraded, fetched.Load()-before)
	}
}

// TestFirmwareDamaged: a component that does not match its .loads entry
// is fetched again, and after maxVerifyAttempts the phase fails naming
// the check.
func TestFirmwareDamaged(t *testing.T) {
	ph := testPhone(t, 0, "CP-8851")
	fx := startProvisioning(t, labProvisionConfig(ph), nil)
	ph.Load = ph.Model.PreviousLoad
	if err := (configPhase{f: fx.f, bringUp: noBringUp}).Run(context.Background(), ph); err != nil {
		t.Fatal(err)
	}
	if err := damageFile(filepath.Join(fx.root, "rootfs88xx.14-2-1-0001-14.sbn")); err != nil {
		t.Fatal(err)
	}
	var fetched atomic.Int64
	err := firmwarePhase{f: fx.f, bytes: &fetched, log: privtest.Logger(t)}.Run(context.Background(), ph)
	if err == nil || !strings.Contains(err.Error(), "rootfs88xx.14-2-1-0001-14.sbn: sha256") || !strings.Contains(err.Error(), "downloaded 3 times") {
		t.Fatalf("got %v, want the sha256 check failed after 3 downloads", err)
	}
	if ph.FetchRetries != maxVerifyAttempts-1 || ph.Upgraded || ph.Load != ph.Model.PreviousLoad || fetched.Load() != 0 {
		t.Errorf("retries %d, upgraded %v, load %s, fetched %d", ph.FetchRetries, ph.Upgraded, ph.Load, fetched.Load())
	}
}

func TestVerify(t *testing.T) {
	content := []byte("component")
	c := images.Component{Name: "kern.sbn", Size: int64(len(content))}
	s := &hashSink{h: sha256.New()}
	s.Write(content)
	c.SHA256 = [32]byte(s.h.Sum(nil))
	for _, tt := range []struct {
		name  string
		data  string
		tsize int64
		want  string
	}{
		{"good", "component", -1, ""},
		{"good with tsize", "component", 9, ""},
		{"tsize differs", "component", 10, "announced 10 bytes (tsize)"},
		{"short", "componen", -1, "8 bytes, the .loads file lists 9"},
		{"long", "components", -1, "10 bytes, the .loads file lists 9"},
		{"same size, other bytes", "Component", -1, "sha256"},
	} {
		s.reset()
		s.Write([]byte(tt.data))
		err := verify(c, s, tftp.FetchResult{TSize: tt.tsize})
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}

// TestFetchRetries: failed transfers are tried again at the next server
// after a pause; answers the server means are not.
func TestFetchRetries(t *testing.T) {
	ph := testPhone(t, 0, "CP-8851")
	ph.TFTPServers = []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")}
	run := func(results []error) ([]string, error) {
		var servers []string
		f := newFetcher(1)
		f.retryPause = func(*Phone) time.Duration { return time.Millisecond }
		f.get = noHTTP
		f.fetch = func(_ context.Context, server netip.AddrPort, _ string, _ tftp.FetchOptions, w io.Writer) (tftp.FetchResult, error) {
			servers = append(servers, server.Addr().String())
			err := results[0]
			if len(results) > 1 {
				results = results[1:]
			}
			return tftp.FetchResult{TSize: -1}, err
		}
		_, err := f.fetchFile(context.Background(), ph, "f", &bufferSink{max: 10}, nil)
		return servers, err
	}
	timeout := errors.New("tftp: no answer to the request")
	busy := &tftp.RemoteError{Code: tftp.ErrUndefined, Message: "server busy, try again"}
	// The server timed the transfer out and closed its port.
	refused := &net.OpError{Op: "read", Net: "udp4", Err: os.NewSyscallError("recvmmsg", syscall.ECONNREFUSED)}
	servers, err := run([]error{timeout, busy, refused, nil})
	if err != nil || strings.Join(servers, " ") != "10.0.0.1 10.0.0.2 10.0.0.1 10.0.0.2" {
		t.Errorf("timeout, busy, refused, success: servers %v, %v", servers, err)
	}
	servers, err = run([]error{&tftp.RemoteError{Code: tftp.ErrFileNotFound}})
	if !errors.Is(err, errNotFound) || len(servers) != 1 {
		t.Errorf("not found: %v after %d attempts, want errNotFound at once", err, len(servers))
	}
	servers, err = run([]error{&tftp.RemoteError{Code: tftp.ErrAccess, Message: "no"}})
	var re *tftp.RemoteError
	if !errors.As(err, &re) || re.Code != tftp.ErrAccess || len(servers) != 1 {
		t.Errorf("access violation: %v after %d attempts, want it at once", err, len(servers))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	f := newFetcher(1)
	f.retryPause = func(*Phone) time.Duration { return time.Millisecond }
	f.get = noHTTP
	f.fetch = func(context.Context, netip.AddrPort, string, tftp.FetchOptions, io.Writer) (tftp.FetchResult, error) {
		return tftp.FetchResult{}, timeout
	}
	if _, err := f.fetchFile(ctx, ph, "f", &bufferSink{max: 10}, nil); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no answer") {
		t.Errorf("server never answering: %v, want the deadline and the last failure", err)
	}
}

// noHTTP is a server without HTTP on 6970.
func noHTTP(context.Context, *Phone, string, io.Writer) (tftp.FetchResult, error) {
	return tftp.FetchResult{}, errors.New("connection refused")
}

// TestFetchHTTPFirst: a model with HTTP provisioning asks over HTTP once
// per attempt and over TFTP when that fails; a file HTTP delivered that
// fails its check fails the attempt (tried again after the pause), and a
// model without HTTP never asks over it.
func TestFetchHTTPFirst(t *testing.T) {
	type call struct{ proto, url string }
	run := func(model string, http []error, tftpErrs []error, check fileCheck) ([]call, *Phone, error) {
		ph := testPhone(t, 0, model)
		ph.TFTPServers = []netip.Addr{netip.MustParseAddr("10.0.0.1")}
		var calls []call
		f := newFetcher(1)
		f.retryPause = func(*Phone) time.Duration { return time.Millisecond }
		f.get = func(_ context.Context, _ *Phone, url string, w io.Writer) (tftp.FetchResult, error) {
			calls = append(calls, call{"http", url})
			err := http[0]
			http = http[1:]
			if err == nil {
				w.Write([]byte("x"))
			}
			return tftp.FetchResult{Bytes: 1, TSize: 1}, err
		}
		f.fetch = func(_ context.Context, server netip.AddrPort, name string, _ tftp.FetchOptions, w io.Writer) (tftp.FetchResult, error) {
			calls = append(calls, call{"tftp", server.String() + "/" + name})
			err := tftpErrs[0]
			tftpErrs = tftpErrs[1:]
			return tftp.FetchResult{TSize: -1}, err
		}
		_, err := f.fetchFile(context.Background(), ph, "SEP1.cnf.xml", &bufferSink{max: 10}, check)
		return calls, ph, err
	}
	str := func(cs []call) string {
		var b []string
		for _, c := range cs {
			b = append(b, c.proto+" "+c.url)
		}
		return strings.Join(b, ", ")
	}
	calls, ph, err := run("CP-8851", []error{nil}, nil, nil)
	if err != nil || str(calls) != "http http://10.0.0.1:6970/SEP1.cnf.xml" || ph.HTTPFetches != 1 || ph.HTTPFallbacks != 0 {
		t.Errorf("HTTP answering: %s, %v, %d/%d", str(calls), err, ph.HTTPFetches, ph.HTTPFallbacks)
	}
	calls, ph, err = run("CP-8851", []error{errors.New("HTTP 404 Not Found")}, []error{nil}, nil)
	if err != nil || str(calls) != "http http://10.0.0.1:6970/SEP1.cnf.xml, tftp 10.0.0.1:69/SEP1.cnf.xml" || ph.HTTPFallbacks != 1 {
		t.Errorf("HTTP failing: %s, %v, fallbacks %d", str(calls), err, ph.HTTPFallbacks)
	}
	bad := 0
	check := func(tftp.FetchResult) error {
		if bad++; bad == 1 {
			return errors.New("sha256 mismatch")
		}
		return nil
	}
	calls, ph, err = run("CP-8851", []error{nil, nil}, nil, check)
	if err != nil || str(calls) != "http http://10.0.0.1:6970/SEP1.cnf.xml, http http://10.0.0.1:6970/SEP1.cnf.xml" || ph.FetchRetries != 1 {
		t.Errorf("a bad file over HTTP: %s, %v, retries %d; want the attempt retried, not TFTP", str(calls), err, ph.FetchRetries)
	}
	calls, _, err = run("CP-7821", nil, []error{nil}, nil)
	if err != nil || str(calls) != "tftp 10.0.0.1:69/SEP1.cnf.xml" {
		t.Errorf("a model without HTTP: %s, %v", str(calls), err)
	}
}
