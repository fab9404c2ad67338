package tftp

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// raw is a client that sends whatever it is told to.
type raw struct {
	t    testing.TB
	conn *net.UDPConn
}

func newRaw(t testing.TB, local string) *raw {
	t.Helper()
	var laddr *net.UDPAddr
	if local != "" {
		laddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(local), 0))
	}
	c, err := net.ListenUDP("udp4", laddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &raw{t: t, conn: c}
}

func (r *raw) send(to netip.AddrPort, b []byte) {
	r.t.Helper()
	if _, err := r.conn.WriteToUDPAddrPort(b, to); err != nil {
		r.t.Fatal(err)
	}
}

// recv returns the next packet and where it came from, or ok false after
// wait.
func (r *raw) recv(wait time.Duration) (Packet, netip.AddrPort, bool) {
	r.t.Helper()
	buf := make([]byte, 70000)
	r.conn.SetReadDeadline(time.Now().Add(wait))
	n, from, err := r.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		return Packet{}, netip.AddrPort{}, false
	}
	p, err := Parse(buf[:n])
	if err != nil {
		r.t.Fatalf("server sent a malformed packet %q: %v", buf[:n], err)
	}
	return p, from, true
}

func rrq(name, mode string, kv ...string) []byte {
	p := Packet{Op: OpRRQ, Filename: name, Mode: mode}
	for i := 0; i+1 < len(kv); i += 2 {
		p.Options = append(p.Options, Option{kv[i], kv[i+1]})
	}
	return p.Append(nil)
}

// TestHostileRequests: every malformed or odd request gets the right
// OACK, DATA or ERROR (or, for packets that are no request, nothing), and
// the server keeps serving.
func TestHostileRequests(t *testing.T) {
	file := randomBytes(t, 100000)
	// Every case comes from 127.0.0.1, and a transfer the last case ended
	// with an ERROR may not have ended in the server yet on a busy machine:
	// the per-client limits are tested elsewhere (TestFloods).
	s := startServer(t, map[string][]byte{"f": file}, func(c *Config) {
		c.ClientRate, c.ClientBurst, c.MaxPerClient = 1000, 1000, 64
	})
	type want struct {
		op      Opcode    // 0: no answer
		code    ErrorCode // for ERROR
		options string    // for OACK: name=value pairs
		block   uint16    // for DATA
		dataLen int       // for DATA
	}
	for _, c := range []struct {
		name string
		in   []byte
		want want
	}{
		{"one byte", []byte{0}, want{op: OpError, code: ErrIllegalOp}},
		{"opcode only", []byte{0, 1}, want{op: OpError, code: ErrIllegalOp}},
		{"name without NUL", []byte("\x00\x01f"), want{op: OpError, code: ErrIllegalOp}},
		{"mode without NUL", []byte("\x00\x01f\x00octet"), want{op: OpError, code: ErrIllegalOp}},
		{"option without NUL", []byte("\x00\x01f\x00octet\x00blksize\x001024"), want{op: OpError, code: ErrIllegalOp}},
		{"option without value", []byte("\x00\x01f\x00octet\x00blksize\x00"), want{op: OpError, code: ErrIllegalOp}},
		{"empty name", []byte("\x00\x01\x00octet\x00"), want{op: OpError, code: ErrIllegalOp}},
		{"unknown opcode", []byte("\x00\x09f\x00octet\x00"), want{op: OpError, code: ErrIllegalOp}},
		{"oversized", append(rrq("f", "octet"), bytes.Repeat([]byte("x"), 3000)...), want{op: OpError, code: ErrIllegalOp}},
		{"mode mail", rrq("f", "mail"), want{op: OpError, code: ErrIllegalOp}},
		{"mode nonsense", rrq("f", "binary"), want{op: OpError, code: ErrIllegalOp}},
		{"write", (&Packet{Op: OpWRQ, Filename: "f", Mode: "octet"}).Append(nil), want{op: OpError, code: ErrAccess}},
		{"traversal", rrq("../../etc/passwd", "octet"), want{op: OpError, code: ErrAccess}},
		{"absolute outside", rrq("/etc/passwd", "octet"), want{op: OpError, code: ErrFileNotFound}},
		{"NUL in name", []byte("\x00\x01f\x00\x00octet\x00"), want{op: OpError, code: ErrIllegalOp}},
		{"missing", rrq("CTLSEP0011.tlv", "octet"), want{op: OpError, code: ErrFileNotFound}},
		{"duplicate blksize", rrq("f", "octet", "blksize", "1024", "blksize", "512"), want{op: OpError, code: ErrOptionRefused}},
		{"duplicate tsize other case", rrq("f", "octet", "tsize", "0", "TSize", "0"), want{op: OpError, code: ErrOptionRefused}},
		{"unknown options", rrq("f", "octet", "rollover", "0", "multicast", ""), want{op: OpData, block: 1, dataLen: 512}},
		{"blksize 0", rrq("f", "octet", "blksize", "0"), want{op: OpData, block: 1, dataLen: 512}},
		{"blksize 7", rrq("f", "octet", "blksize", "7"), want{op: OpData, block: 1, dataLen: 512}},
		{"blksize 8", rrq("f", "octet", "blksize", "8"), want{op: OpOACK, options: "blksize=8"}},
		{"blksize 65465", rrq("f", "octet", "blksize", "65465"), want{op: OpOACK, options: "blksize=65464"}},
		{"blksize garbage", rrq("f", "octet", "blksize", "1e3"), want{op: OpData, block: 1, dataLen: 512}},
		{"huge tsize", rrq("f", "octet", "tsize", "18446744073709551615999"), want{op: OpData, block: 1, dataLen: 512}},
		{"large tsize", rrq("f", "octet", "tsize", "9223372036854775807"), want{op: OpOACK, options: "tsize=100000"}},
		{"timeout 0", rrq("f", "octet", "timeout", "0"), want{op: OpData, block: 1, dataLen: 512}},
		{"timeout 256", rrq("f", "octet", "timeout", "256"), want{op: OpData, block: 1, dataLen: 512}},
		{"timeout 1", rrq("f", "octet", "timeout", "1"), want{op: OpOACK, options: "timeout=1"}},
		{"windowsize 0", rrq("f", "octet", "windowsize", "0"), want{op: OpData, block: 1, dataLen: 512}},
		{"windowsize 65536", rrq("f", "octet", "windowsize", "65536"), want{op: OpData, block: 1, dataLen: 512}},
		{"windowsize 65535", rrq("f", "octet", "windowsize", "65535"), want{op: OpOACK, options: "windowsize=64"}},
		{"DATA to port 69", []byte("\x00\x03\x00\x01abc"), want{}},
		{"ACK to port 69", []byte("\x00\x04\x00\x01"), want{}},
		{"ERROR to port 69", AppendError(nil, 0, "x"), want{}},
		{"OACK to port 69", []byte("\x00\x06blksize\x00512\x00"), want{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRaw(t, "")
			r.send(s.v4, c.in)
			wait := 500 * time.Millisecond
			if c.want.op == 0 {
				wait = 100 * time.Millisecond
			}
			p, from, ok := r.recv(wait)
			if c.want.op == 0 {
				if ok {
					t.Fatalf("answered %+v", p)
				}
				return
			}
			if !ok {
				t.Fatal("no answer")
			}
			if p.Op != c.want.op {
				t.Fatalf("answered %s %+v, want %s", p.Op, p, c.want.op)
			}
			switch p.Op {
			case OpError:
				if p.Code != c.want.code {
					t.Errorf("ERROR %d %q, want code %d", p.Code, p.Message, c.want.code)
				}
				if from != s.v4 {
					t.Errorf("ERROR from %s, want the listening address %s", from, s.v4)
				}
				return
			case OpOACK:
				var got []string
				for _, o := range p.Options {
					got = append(got, o.Name+"="+o.Value)
				}
				if strings.Join(got, " ") != c.want.options {
					t.Errorf("OACK %v, want %s", got, c.want.options)
				}
			case OpData:
				if p.Block != c.want.block || len(p.Data) != c.want.dataLen {
					t.Errorf("DATA %d of %d bytes, want %d of %d", p.Block, len(p.Data), c.want.block, c.want.dataLen)
				}
			}
			if from.Port() == s.v4.Port() || from.Addr() != s.v4.Addr() {
				t.Errorf("transfer from %s: want a new port on %s", from, s.v4.Addr())
			}
			// End the transfer as a client would.
			r.send(from, AppendError(nil, ErrUndefined, "bye"))
		})
	}
	st := s.idle(t)
	if st.Started != st.ClientAborted || st.Malformed == 0 || st.NotRequests != 4 || st.WriteRefused != 1 || st.OptionRefused != 2 || st.BadMode != 2 {
		t.Errorf("stats: %+v", st)
	}
	// And it still serves.
	if got, _, err := fetch(t, s.v4, "f", FetchOptions{BlockSize: 1024, WindowSize: 8}); err != nil || !bytes.Equal(got, file) {
		t.Fatalf("after the hostile requests: %v", err)
	}
}

// TestNoSorcerersApprentice: a client that acknowledges every block many
// times gets every block exactly once; one that stops acknowledging gets
// the window again only after each timeout, Retries times.
func TestNoSorcerersApprentice(t *testing.T) {
	file := randomBytes(t, 40*512+100)
	t.Run("duplicate acks", func(t *testing.T) {
		// A timeout long enough that a slow test machine does not make
		// the server send a block again on its own.
		s := startServer(t, map[string][]byte{"f": file}, func(c *Config) { c.Timeout = 5 * time.Second })
		r := newRaw(t, "")
		r.send(s.v4, rrq("f", "octet"))
		var got []byte
		var tid netip.AddrPort
		received := map[uint16]int{}
		for {
			p, from, ok := r.recv(time.Second)
			if !ok {
				t.Fatalf("stalled after %d bytes", len(got))
			}
			tid = from
			received[p.Block]++
			if received[p.Block] == 1 {
				got = append(got, p.Data...)
			}
			for range 5 {
				r.send(tid, AppendAck(nil, p.Block))
			}
			// Old ACKs too, as a confused client might.
			r.send(tid, AppendAck(nil, p.Block-1))
			if len(p.Data) < 512 {
				break
			}
		}
		if !bytes.Equal(got, file) {
			t.Fatal("wrong content")
		}
		if _, _, ok := r.recv(300 * time.Millisecond); ok {
			t.Error("server sent more after the last block")
		}
		for b, n := range received {
			if n != 1 {
				t.Errorf("block %d sent %d times", b, n)
			}
		}
		if st := s.idle(t); st.Completed != 1 || st.DuplicateAcks == 0 || st.Retransmitted != 0 {
			t.Errorf("stats: %+v", st)
		}
	})
	t.Run("silent client", func(t *testing.T) {
		s := startServer(t, map[string][]byte{"f": file}, func(c *Config) {
			c.Timeout, c.Retries = 100*time.Millisecond, 3
		})
		r := newRaw(t, "")
		r.send(s.v4, rrq("f", "octet", "windowsize", "4"))
		p, tid, ok := r.recv(time.Second)
		if !ok || p.Op != OpOACK {
			t.Fatalf("no OACK: %+v", p)
		}
		r.send(tid, AppendAck(nil, 0))
		count := map[uint16]int{}
		for {
			p, _, ok := r.recv(time.Second)
			if !ok {
				break
			}
			count[p.Block]++
		}
		// The first window, then 3 retries of it: 4 copies of blocks 1-4.
		for b := uint16(1); b <= 4; b++ {
			if count[b] != 4 {
				t.Errorf("block %d sent %d times, want 4", b, count[b])
			}
		}
		if len(count) != 4 {
			t.Errorf("blocks sent: %v", count)
		}
		if st := s.idle(t); st.TimedOut != 1 || st.Retransmitted != 12 {
			t.Errorf("stats: %+v", st)
		}
	})
}

// TestIdleTimeout: a client that negotiates the longest retransmission
// timeout (255 s) and goes silent is dropped after the idle timeout.
func TestIdleTimeout(t *testing.T) {
	s := startServer(t, map[string][]byte{"f": randomBytes(t, 10000)}, func(c *Config) {
		c.IdleTimeout = 300 * time.Millisecond
	})
	r := newRaw(t, "")
	r.send(s.v4, rrq("f", "octet", "timeout", "255"))
	if p, _, ok := r.recv(time.Second); !ok || p.Op != OpOACK {
		t.Fatalf("no OACK: %+v", p)
	}
	start := time.Now()
	st := s.idle(t)
	if st.TimedOut != 1 || time.Since(start) > 5*time.Second {
		t.Errorf("stats after %s: %+v", time.Since(start), st)
	}
}

// TestTruncatedUnderTransfer: a file cut short in place while a transfer
// reads its mapping ends that transfer with an ERROR; the server lives
// on and serves the next request.
func TestTruncatedUnderTransfer(t *testing.T) {
	s := startServer(t, map[string][]byte{"f": randomBytes(t, 8<<20)}, nil)
	r := newRaw(t, "")
	r.send(s.v4, rrq("f", "octet", "blksize", "1428", "windowsize", "8"))
	p, tid, ok := r.recv(time.Second)
	if !ok || p.Op != OpOACK {
		t.Fatalf("no OACK: %+v", p)
	}
	r.send(tid, AppendAck(nil, 0))
	for range 8 {
		if p, _, ok := r.recv(time.Second); !ok || p.Op != OpData {
			t.Fatalf("window: %+v", p)
		}
	}
	// In place, as a careless copy would; the mapping loses its pages.
	if err := os.Truncate(filepath.Join(s.root, "f"), 0); err != nil {
		t.Fatal(err)
	}
	r.send(tid, AppendAck(nil, 8))
	var last Packet
	for {
		p, _, ok := r.recv(time.Second)
		if !ok {
			break
		}
		last = p
	}
	if last.Op != OpError {
		t.Errorf("last packet %+v, want an ERROR", last)
	}
	if st := s.idle(t); st.Faulted != 1 {
		t.Errorf("stats: %+v", st)
	}
	os.WriteFile(filepath.Join(s.root, "g"), []byte("still here"), 0o644)
	if got, _, err := fetch(t, s.v4, "g", FetchOptions{}); err != nil || string(got) != "still here" {
		t.Fatalf("after the fault: %q, %v", got, err)
	}
}

// TestNetasciiFault: converting a mapping whose file shrank is an error,
// not a crash.
func TestNetasciiFault(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, bytes.Repeat([]byte("line\n"), 10000), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, 50000, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	if err := os.Truncate(p, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := netascii(m); err == nil {
		t.Fatal("no error reading a truncated mapping")
	}
}

// countFDs is how many file descriptors the process has open.
func countFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestFloods: request floods from one client and from many are held to
// the limits (rates, transfers in all and per client), every request is
// counted, and once the abandoned transfers time out the file
// descriptors and goroutines are back where they were.
func TestFloods(t *testing.T) {
	s := startServer(t, map[string][]byte{"f": randomBytes(t, 1<<20)}, func(c *Config) {
		c.Timeout, c.Retries = 50*time.Millisecond, 2
		c.MaxTransfers, c.MaxPerClient = 40, 3
		c.ClientRate, c.ClientBurst = 5, 10
		c.Rate, c.Burst = 500, 100
		c.MaxClients = 100
	})
	// Baseline once the server is serving (Run has started its
	// goroutines).
	if _, _, err := fetch(t, s.v4, "f", FetchOptions{}); err != nil {
		t.Fatal(err)
	}
	s.idle(t)
	fds, goroutines := countFDs(t), runtime.NumGoroutine()
	base := s.Stats()

	t.Run("one client", func(t *testing.T) {
		r := newRaw(t, "")
		for range 2000 {
			r.send(s.v4, rrq("f", "octet"))
		}
		st := s.Stats()
		if st.Active > 3 {
			t.Errorf("%d transfers for one client", st.Active)
		}
		s.idle(t)
	})
	t.Run("many clients", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := range 200 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := newRaw(t, netip.AddrFrom4([4]byte{127, 0, 1 + byte(i/250), 1 + byte(i%250)}).String())
				for range 20 {
					r.send(s.v4, rrq("f", "octet", "blksize", "1024"))
					r.send(s.v4, rrq("missing", "octet"))
				}
			}()
		}
		wg.Wait()
		if st := s.Stats(); st.Active > 40 {
			t.Errorf("%d transfers at once, limit 40", st.Active)
		}
		s.idle(t)
	})
	st := s.Stats()
	st.Requests -= base.Requests
	st.Started -= base.Started
	handled := requestOutcomes(st)
	// The kernel drops what overflows the socket's buffer; what was
	// read is all accounted for.
	if st.Requests > 2000+200*40 || handled != st.Requests {
		t.Errorf("%d requests, %d accounted for: %+v", st.Requests, handled, st)
	}
	if st.RateLimited == 0 || st.RateLimitedAll == 0 || st.Busy == 0 && st.BusyClient == 0 {
		t.Errorf("limits not reached: %+v", st)
	}
	if b, a := s.lim.tracked(); b > 100 || a != 0 {
		t.Errorf("limiter remembers %d clients and %d active", b, a)
	}
	deadline := time.Now().Add(5 * time.Second)
	for countFDs(t) > fds || runtime.NumGoroutine() > goroutines {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("fds %d (before %d), goroutines %d (before %d)\n%s", countFDs(t), fds, runtime.NumGoroutine(), goroutines, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestClose: Close ends transfers in progress, and Run returns.
func TestCloseEndsTransfers(t *testing.T) {
	s := startServer(t, map[string][]byte{"f": randomBytes(t, 1<<20)}, func(c *Config) { c.Timeout = 10 * time.Second })
	r := newRaw(t, "")
	r.send(s.v4, rrq("f", "octet"))
	if _, _, ok := r.recv(time.Second); !ok {
		t.Fatal("no DATA")
	}
	start := time.Now()
	s.Close()
	st := s.idle(t)
	if st.Cancelled != 1 || time.Since(start) > 2*time.Second {
		t.Errorf("after %s: %+v", time.Since(start), st)
	}
	_, err := Fetch(context.Background(), s.v4, "f", FetchOptions{Timeout: 50 * time.Millisecond, Retries: 1}, &bytes.Buffer{})
	if err == nil || errors.As(err, new(*RemoteError)) {
		t.Errorf("fetch from a closed server: %v", err)
	}
}
