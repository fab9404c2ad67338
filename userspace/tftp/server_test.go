package tftp

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/bootfiles"
	"github.com/phoneboot/phoneboot/userspace/privtest"
)

// testServer runs a server on loopback (IPv4 and IPv6, ports chosen by
// the kernel) over a directory holding files; it stops when the test ends.
type testServer struct {
	*Server
	root string
	v4   netip.AddrPort
	v6   netip.AddrPort
}

func startServer(t testing.TB, files map[string][]byte, tweak func(*Config)) *testServer {
	t.Helper()
	root := t.TempDir()
	for name, data := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	src, err := bootfiles.OpenDir(root)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Addrs:   []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("[::1]:0")},
		Source:  src,
		Timeout: 200 * time.Millisecond,
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
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		src.Close()
	})
	ts := &testServer{Server: s, root: root}
	for _, a := range s.Addrs() {
		if a.Addr().Is4() {
			ts.v4 = a
		} else {
			ts.v6 = a
		}
	}
	return ts
}

// idle waits for the transfers in progress to end (the client is done
// before the server has counted the last ACK) and returns the stats.
func (s *testServer) idle(t testing.TB) Stats {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var last Stats
	for {
		// Settled: every request read has its outcome, every transfer
		// begun has ended, and nothing moved since the last look (the
		// listening socket may still hold requests that start more).
		st := s.Stats()
		if st.Active == 0 && st.Started == st.Completed+st.TimedOut+st.ClientAborted+st.Faulted+st.Failed+st.Cancelled &&
			st.Requests == requestOutcomes(st) && st == last {
			return st
		}
		last = st
		if time.Now().After(deadline) {
			t.Fatalf("transfers still running: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// requestOutcomes is how many requests read have had an outcome counted.
func requestOutcomes(st Stats) uint64 {
	return st.Malformed + st.NotRequests + st.WriteRefused + st.BadMode + st.OptionRefused + st.RateLimited +
		st.RateLimitedAll + st.Busy + st.BusyClient + st.NotFound + st.Forbidden + st.SourceErrors + st.NetasciiTooLong + st.Started
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func fetch(t testing.TB, server netip.AddrPort, name string, o FetchOptions) ([]byte, FetchResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var buf bytes.Buffer
	if o.Timeout == 0 {
		o.Timeout = 300 * time.Millisecond
	}
	res, err := Fetch(ctx, server, name, o, &buf)
	return buf.Bytes(), res, err
}

func TestFetch(t *testing.T) {
	big := randomBytes(t, 3*1468*7+11)
	exact := randomBytes(t, 512*4)
	s := startServer(t, map[string][]byte{"big.sbn": big, "exact.bin": exact, "empty": nil, "SEP001122334455.cnf.xml": []byte("<device/>\n")}, nil)
	for _, c := range []struct {
		name, file string
		o          FetchOptions
		want       []byte
		oack       bool
	}{
		{"plain", "big.sbn", FetchOptions{}, big, false},
		{"blksize", "big.sbn", FetchOptions{BlockSize: 1468}, big, true},
		{"window", "big.sbn", FetchOptions{BlockSize: 1468, WindowSize: 16, TSize: true}, big, true},
		{"window larger than file", "big.sbn", FetchOptions{BlockSize: 1468, WindowSize: 64}, big, true},
		{"big blocks", "big.sbn", FetchOptions{BlockSize: 8192, WindowSize: 4}, big, true},
		{"exact multiple", "exact.bin", FetchOptions{}, exact, false},
		{"exact multiple window", "exact.bin", FetchOptions{WindowSize: 4}, exact, true},
		{"empty", "empty", FetchOptions{TSize: true}, nil, true},
		{"case and slash", "/sep001122334455.CNF.XML", FetchOptions{}, []byte("<device/>\n"), false},
		{"netascii", "SEP001122334455.cnf.xml", FetchOptions{Netascii: true, TSize: true}, []byte("<device/>\n"), true},
	} {
		for _, server := range []netip.AddrPort{s.v4, s.v6} {
			t.Run(c.name+"/"+server.Addr().String(), func(t *testing.T) {
				got, res, err := fetch(t, server, c.file, c.o)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, c.want) {
					t.Fatalf("got %d bytes, want %d", len(got), len(c.want))
				}
				if res.OACK != c.oack {
					t.Errorf("OACK %v, want %v", res.OACK, c.oack)
				}
				if c.o.TSize && !c.o.Netascii && res.TSize != int64(len(c.want)) {
					t.Errorf("tsize %d, want %d", res.TSize, len(c.want))
				}
			})
		}
	}
	st := s.idle(t)
	if st.Completed != st.Started || st.Started != 20 || st.Active != 0 {
		t.Errorf("stats: %+v", st)
	}
}

// TestRollover: block numbers wrap from 65535 to 0 (RFC 1350 leaves it
// open; tftp-hpa, curl and atftp expect 0), in windows that straddle the
// wrap, and ACKs are matched to the right side of it.
func TestRollover(t *testing.T) {
	file := randomBytes(t, 8*(65536+100)+3)
	s := startServer(t, map[string][]byte{"f": file}, nil)
	for _, ws := range []int{1, 7, 64} {
		got, res, err := fetch(t, s.v4, "f", FetchOptions{BlockSize: 8, WindowSize: ws})
		if err != nil || !bytes.Equal(got, file) {
			t.Fatalf("windowsize %d: %d bytes, %v", ws, len(got), err)
		}
		if res.Blocks != len(file)/8+1 {
			t.Errorf("windowsize %d: %d blocks", ws, res.Blocks)
		}
	}
}

func TestErrors(t *testing.T) {
	s := startServer(t, map[string][]byte{"a": []byte("x")}, nil)
	for _, c := range []struct {
		name string
		code ErrorCode
	}{
		{"CTLSEP001122334455.tlv", ErrFileNotFound},
		{"../etc/passwd", ErrAccess},
		{"/../../etc/passwd", ErrAccess},
	} {
		_, _, err := fetch(t, s.v4, c.name, FetchOptions{})
		var re *RemoteError
		if !errors.As(err, &re) || re.Code != c.code {
			t.Errorf("%s: %v, want error %d", c.name, err, c.code)
		}
	}
}

// TestFetchListen: a transfer's socket comes from FetchOptions.Listen, a
// new one per transfer, and its failure is the transfer's.
func TestFetchListen(t *testing.T) {
	s := startServer(t, map[string][]byte{"a": []byte("x")}, nil)
	var opened []*net.UDPConn
	listen := func(network string, laddr *net.UDPAddr) (*net.UDPConn, error) {
		if network != "udp4" || laddr == nil || laddr.IP.String() != "127.0.0.1" {
			return nil, fmt.Errorf("asked for %s %v, want udp4 on 127.0.0.1", network, laddr)
		}
		c, err := net.ListenUDP(network, laddr)
		opened = append(opened, c)
		return c, err
	}
	for range 2 {
		got, _, err := fetch(t, s.v4, "a", FetchOptions{Local: netip.MustParseAddr("127.0.0.1"), Listen: listen})
		if err != nil || string(got) != "x" {
			t.Fatalf("fetch: %q, %v", got, err)
		}
	}
	if len(opened) != 2 || opened[0].LocalAddr().String() == opened[1].LocalAddr().String() {
		t.Errorf("sockets opened: %v, want two with their own ports", opened)
	}
	refused := errors.New("no sockets today")
	_, _, err := fetch(t, s.v4, "a", FetchOptions{Listen: func(string, *net.UDPAddr) (*net.UDPConn, error) { return nil, refused }})
	if !errors.Is(err, refused) {
		t.Errorf("fetch with a failing Listen: %v", err)
	}
}

// TestOverflowCounted: packets the kernel drops at a full listening socket
// are counted (SO_RXQ_OVFL), so that every packet sent is either read or
// counted as dropped.
func TestOverflowCounted(t *testing.T) {
	src, err := bootfiles.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	s, err := New(Config{Addrs: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Source: src, ReceiveBuffer: 4096},
		privtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(s.Addrs()[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stray := []byte{0, byte(OpData), 0, 1} // read and counted, never answered
	send := func() {
		if _, err := c.Write(stray); err != nil {
			t.Fatal(err)
		}
	}
	// Sent before the server reads: far more than 8 KiB of buffer holds.
	const burst = 500
	for range burst {
		send()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	// A drop is reported with the next packet read after it.
	sent := burst
	var st Stats
	for deadline := time.Now().Add(5 * time.Second); ; {
		send()
		sent++
		time.Sleep(10 * time.Millisecond)
		if st = s.Stats(); st.Requests+st.Overflowed == uint64(sent) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sent, %d read and %d counted as dropped", sent, st.Requests, st.Overflowed)
		}
	}
	if st.Overflowed == 0 || st.NotRequests != st.Requests {
		t.Errorf("%d sent: %+v", sent, st)
	}
}

// TestBlockSizePerFamily: the block size agreed to is capped per address
// family, so that a block fills one 1500-byte frame over either: 1468
// bytes over IPv4 (20-byte header), 1448 over IPv6 (40). An IPv4-mapped
// client counts as IPv4; without MaxBlockSizeV6 both take MaxBlockSize.
func TestBlockSizePerFamily(t *testing.T) {
	c := Config{MaxBlockSize: 1468, MaxBlockSizeV6: 1448}
	for addr, want := range map[string]int{"10.0.0.1": 1468, "::ffff:10.0.0.1": 1468, "2001:db8::1": 1448, "fe80::1%eth0": 1448} {
		if got := c.maxBlockSize(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s: %d, want %d", addr, got, want)
		}
	}

	file := randomBytes(t, 1468*5+7)
	for _, tc := range []struct {
		name         string
		v6Max        int
		want4, want6 int
	}{
		{"per family", 1448, 1468, 1448},
		{"default", 0, 1468, 1468},
	} {
		s := startServer(t, map[string][]byte{"f": file}, func(c *Config) { c.MaxBlockSize, c.MaxBlockSizeV6 = 1468, tc.v6Max })
		for _, server := range []netip.AddrPort{s.v4, s.v6} {
			want := tc.want4
			if server.Addr().Is6() {
				want = tc.want6
			}
			got, res, err := fetch(t, server, "f", FetchOptions{BlockSize: 1468, WindowSize: 4})
			if err != nil || !bytes.Equal(got, file) {
				t.Fatalf("%s over %s: %d bytes, %v", tc.name, server.Addr(), len(got), err)
			}
			if res.BlockSize != want || res.Blocks != len(file)/want+1 {
				t.Errorf("%s over %s: blksize %d in %d blocks, want %d", tc.name, server.Addr(), res.BlockSize, res.Blocks, want)
			}
		}
	}
	src, err := bootfiles.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := (&Config{Source: src, MaxBlockSizeV6: 7}).setDefaults(); err == nil || !strings.Contains(err.Error(), "IPv6 block size 7") {
		t.Errorf("MaxBlockSizeV6 7: %v", err)
	}
}
