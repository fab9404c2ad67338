package lease

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The crash test (reliability-ops test case 5) runs the storm below in a
// child process (this test binary re-executed with -test.run
// TestCrashHelper), kills it with SIGKILL at a random moment, and checks
// the store against the child's log.
//
// Exactness: goroutine g of the child only ever touches its own MACs
// (02:00:00:00:g:k) and its own addresses (10.1.g.x in pool "voice",
// 10.2.g.x in pool "voice\x00\x06"), so its operations are totally
// ordered and independent of every other goroutine's, while all of them
// share commits. For every operation it prints "B" (begin) before the
// call and "ACK" or "F" (failed) after it returns. The parent replays
// finished operations on the reference model, checks that the store
// agreed on every outcome (an ACK must be a success in the model, and its
// lease must be the model's), and then accepts, per goroutine, exactly
// two final states: with or without its one unfinished operation. An ACK
// can therefore never be "superseded" by something the parent did not
// see begin.

const (
	stormGoroutines = 32
	stormMACs       = 8  // per goroutine
	stormAddrs      = 16 // per goroutine and pool
)

var stormPools = []string{"voice", "voice\x00\x06"}

func stormMAC(g, k int) net.HardwareAddr { return net.HardwareAddr{2, 0, 0, 0, byte(g), byte(k)} }
func stormIP(p, g, k int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(1 + p), byte(g), byte(1 + k)})
}

// stormPartition tells which goroutine owns an address or a MAC, or -1.
func stormOwnerIP(ip netip.Addr) int {
	a := ip.As4()
	if a[0] == 10 && (a[1] == 1 || a[1] == 2) && int(a[2]) < stormGoroutines && a[3] >= 1 && int(a[3]) <= stormAddrs {
		return int(a[2])
	}
	return -1
}

func stormOwnerMAC(mac net.HardwareAddr) int {
	if len(mac) == 6 && mac[0] == 2 && mac[1] == 0 && mac[2] == 0 && mac[3] == 0 && int(mac[4]) < stormGoroutines && int(mac[5]) < stormMACs {
		return int(mac[4])
	}
	return -1
}

// TestCrashHelper is the child process; it does nothing in a normal run.
func TestCrashHelper(t *testing.T) {
	mode := os.Getenv("LEASE_HELPER")
	if mode == "" {
		t.Skip("helper process for TestCrashConsistency, TestLocked and TestMemory100k")
	}
	path := os.Getenv("LEASE_HELPER_PATH")
	out := &lineWriter{w: os.Stdout}
	switch mode {
	case "lock":
		s, err := OpenBolt(path, BoltOptions{Timeout: 300 * time.Millisecond})
		if err == nil {
			_ = s.Close()
			out.printf("OPENED")
			return
		}
		if errors.Is(err, ErrLocked) {
			out.printf("LOCKED %v", err)
			return
		}
		out.printf("ERROR %v", err)
	case "storm":
		seed, _ := strconv.ParseUint(os.Getenv("LEASE_HELPER_SEED"), 10, 64)
		runStorm(path, seed, out)
	case "memory":
		reportMemory(path, out)
	default:
		t.Fatalf("unknown helper mode %q", mode)
	}
}

// lineWriter writes whole lines with one write(2) each, so that a line is
// either entirely in the pipe or not at all when the process is killed.
type lineWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (lw *lineWriter) printf(format string, args ...any) {
	line := fmt.Appendf(nil, format+"\n", args...)
	lw.mu.Lock()
	defer lw.mu.Unlock()
	_, _ = lw.w.Write(line)
}

func runStorm(path string, seed uint64, out *lineWriter) {
	out.printf("OPENING")
	s, err := OpenBolt(path, BoltOptions{Timeout: 5 * time.Second})
	if err != nil {
		out.printf("OPENFAIL %v", err)
		os.Exit(3)
	}
	out.printf("READY")
	deadline := time.Now().Add(10 * time.Second) // never outlive a lost parent
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range stormGoroutines {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(seed, uint64(g)))
			for seq := 0; time.Now().Before(deadline); seq++ {
				stormOp(ctx, s, r, g, seq, out)
			}
		})
	}
	wg.Wait()
	_ = s.Close()
	os.Exit(0)
}

func hexb(b []byte) string {
	if len(b) == 0 {
		return "-"
	}
	return hex.EncodeToString(b)
}

func unhex(s string) []byte {
	if s == "-" {
		return nil
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

var stormBytes = []byte("\n,\x00\"'\xff\xfe\x80 aZ")

func stormOp(ctx context.Context, s *Bolt, r *rand.Rand, g, seq int, out *lineWriter) {
	k, p := r.IntN(stormMACs), r.IntN(len(stormPools))
	mac, pool := stormMAC(g, k), stormPools[p]
	ip := stormIP(p, g, r.IntN(stormAddrs))
	// Half the time, act on the MAC's current address.
	if r.IntN(2) == 0 {
		if l, err := s.ByMAC(ctx, pool, mac); err == nil {
			ip = l.IP
		}
	}
	now := time.Now()
	var err error
	var res Lease
	switch x := r.IntN(100); {
	case x < 55:
		st, exp := StateOffered, now.Add(time.Duration(r.IntN(150))*time.Millisecond)
		if x >= 30 {
			st, exp = StateBound, now.Add(time.Hour)
			if r.IntN(3) == 0 {
				exp = now.Add(time.Duration(r.IntN(100)) * time.Millisecond)
			}
		}
		host := make([]byte, r.IntN(300))
		for i := range host {
			host[i] = stormBytes[r.IntN(len(stormBytes))]
		}
		l := Lease{IP: ip, MAC: mac, Pool: pool, State: st, Expires: exp, Port: "gi1/0/" + strconv.Itoa(k), VLAN: uint16(100 + p),
			ClientID: append([]byte{1}, mac...), Hostname: host}
		out.printf("B %d %d alloc %s %s %s %d %d %d %s %s %s %d", g, seq, ip, mac, hexb([]byte(pool)), st, exp.UnixNano(), now.UnixNano(),
			hexb(l.ClientID), hexb(host), hexb([]byte(l.Port)), l.VLAN)
		err = s.Allocate(ctx, l, now)
		res = l
	case x < 75:
		exp := now.Add(time.Hour)
		out.printf("B %d %d renew %s %s %d", g, seq, ip, mac, exp.UnixNano())
		res, err = s.Renew(ctx, ip, mac, exp)
	case x < 87:
		out.printf("B %d %d release %s %s", g, seq, ip, mac)
		err = s.Release(ctx, ip, mac)
	default:
		until := now.Add(time.Duration(r.IntN(200)) * time.Millisecond)
		out.printf("B %d %d decline %s %s %d", g, seq, ip, mac, until.UnixNano())
		err = s.Decline(ctx, ip, mac, until)
	}
	if err != nil {
		out.printf("F %d %d %s", g, seq, strings.ReplaceAll(errClass(err), " ", "_"))
		return
	}
	if res.IP.IsValid() {
		out.printf("ACK %d %d %s %s %s %s %d", g, seq, res.IP, res.MAC, hexb([]byte(res.Pool)), res.State, res.Expires.UnixNano())
	} else {
		out.printf("ACK %d %d", g, seq)
	}
}

// stormOp as the parent read it.
type loggedOp struct {
	g, seq int
	kind   string
	ip     netip.Addr
	mac    net.HardwareAddr
	lease  Lease     // alloc
	now    time.Time // alloc
	when   time.Time // renew expiry, decline until
	done   bool
	acked  bool
	ack    []string // the ACK line's fields after g and seq
	fail   string
}

func parseBegin(f []string) (*loggedOp, error) {
	if len(f) < 6 {
		return nil, fmt.Errorf("short line")
	}
	g, _ := strconv.Atoi(f[1])
	seq, _ := strconv.Atoi(f[2])
	op := &loggedOp{g: g, seq: seq, kind: f[3]}
	var err error
	if op.ip, err = netip.ParseAddr(f[4]); err != nil {
		return nil, err
	}
	if op.mac, err = net.ParseMAC(f[5]); err != nil {
		return nil, err
	}
	nano := func(s string) time.Time {
		n, perr := strconv.ParseInt(s, 10, 64)
		if perr != nil {
			err = perr
		}
		return time.Unix(0, n)
	}
	switch op.kind {
	case "alloc":
		if len(f) != 14 {
			return nil, fmt.Errorf("alloc line has %d fields", len(f))
		}
		st, _ := strconv.Atoi(f[7])
		vlan, _ := strconv.Atoi(f[13])
		op.lease = Lease{IP: op.ip, MAC: op.mac, Pool: string(unhex(f[6])), State: State(st), Expires: nano(f[8]),
			ClientID: unhex(f[10]), Hostname: unhex(f[11]), Port: string(unhex(f[12])), VLAN: uint16(vlan)}
		op.now = nano(f[9])
	case "renew", "decline":
		if len(f) != 7 {
			return nil, fmt.Errorf("%s line has %d fields", op.kind, len(f))
		}
		op.when = nano(f[6])
	case "release":
	default:
		return nil, fmt.Errorf("unknown op %q", op.kind)
	}
	return op, err
}

// apply runs op on the model and returns its outcome.
func (m *model) apply(op *loggedOp) error {
	switch op.kind {
	case "alloc":
		return m.allocate(op.lease, op.now)
	case "renew":
		return m.renew(op.ip, op.mac, op.when)
	case "release":
		return m.release(op.ip, op.mac)
	default:
		return m.decline(op.ip, op.mac, op.when)
	}
}

// childRun is one child process's life as the parent saw it.
type childRun struct {
	ops      []*loggedOp // in log order
	ready    bool        // READY printed: OpenBolt returned
	openedAt time.Duration
	readyAt  time.Duration
	killedAt time.Duration
	stderr   string
}

// runChild starts the storm on path and kills it kill after it printed
// OPENING (or, if killAfterReady, after READY).
func runChild(t *testing.T, path string, seed uint64, kill time.Duration, killAfterReady bool) childRun {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), "LEASE_HELPER=storm", "LEASE_HELPER_PATH="+path, "LEASE_HELPER_SEED="+strconv.FormatUint(seed, 10))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var run childRun
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var timer <-chan time.Time
	killed := false
	doKill := func() {
		if !killed {
			_ = cmd.Process.Signal(syscall.SIGKILL)
			run.killedAt = time.Since(start)
			killed = true
		}
	}
	safety := time.After(20 * time.Second)
	open := map[int]*loggedOp{}
	for done := false; !done; {
		select {
		case line, ok := <-lines:
			if !ok {
				done = true
				break
			}
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			switch f[0] {
			case "OPENING":
				run.openedAt = time.Since(start)
				if !killAfterReady {
					timer = time.After(kill)
				}
			case "READY":
				run.ready = true
				run.readyAt = time.Since(start)
				if killAfterReady {
					timer = time.After(kill)
				}
			case "OPENFAIL":
				t.Fatalf("child could not open the store: %s", line)
			case "B":
				op, err := parseBegin(f)
				if err != nil {
					t.Fatalf("bad line %q: %v", line, err)
				}
				if prev := open[op.g]; prev != nil && !prev.done {
					t.Fatalf("goroutine %d began %d before %d finished", op.g, op.seq, prev.seq)
				}
				open[op.g] = op
				run.ops = append(run.ops, op)
			case "ACK", "F":
				g, _ := strconv.Atoi(f[1])
				seq, _ := strconv.Atoi(f[2])
				op := open[g]
				if op == nil || op.seq != seq || op.done {
					t.Fatalf("%q does not finish an operation in progress", line)
				}
				op.done = true
				if f[0] == "ACK" {
					op.acked, op.ack = true, f[3:]
				} else {
					op.fail = f[3]
				}
			}
		case <-timer:
			doKill()
		case <-safety:
			doKill()
			t.Errorf("child did not finish")
		}
	}
	doKill()
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, not SIGKILL; stderr:\n%s", err, stderr.String())
	}
	run.stderr = stderr.String()
	return run
}

// restrict returns the part of sn goroutine g owns (g == -1: nobody's).
func (sn snapshot) restrict(g int) snapshot {
	out := snapshot{leases: map[netip.Addr]Lease{}, bymac: map[string]netip.Addr{}, resv: map[string]netip.Addr{}}
	for ip, l := range sn.leases {
		if stormOwnerIP(ip) == g {
			out.leases[ip] = l
		}
	}
	for k, ip := range sn.bymac {
		_, mac, _ := parseMACKey([]byte(k))
		if stormOwnerMAC(mac) == g {
			out.bymac[k] = ip
		}
	}
	for k, ip := range sn.resv {
		_, mac, _ := parseMACKey([]byte(k))
		if stormOwnerMAC(mac) == g {
			out.resv[k] = ip
		}
	}
	return out
}

// crashChecker carries the model across rounds.
type crashChecker struct {
	t       *testing.T
	path    string
	m       *model
	pending map[int]*loggedOp // per goroutine: began, never finished
	outside snapshot          // content no storm goroutine owns, which must never change
	acks    int
}

// verify opens the store and checks it against the model and the
// pending operations of the last run, then resolves them.
func (c *crashChecker) verify(round int) {
	t := c.t
	t.Helper()
	s, err := OpenBolt(c.path, BoltOptions{Log: quietLog()})
	if err != nil {
		t.Fatalf("round %d: restart failed: %v", round, err)
	}
	defer func() { _ = s.Close() }()
	got := readSnapshot(t, s)
	if err := checkInvariants(got); err != nil {
		t.Fatalf("round %d: %v", round, err)
	}
	// The reopened store's index is rebuilt from its leases, which are
	// compared with the model's below; the model takes it over after.
	if d := (snapshot{bymac: rebuiltIndex(got.leases)}).diff(snapshot{bymac: got.bymac}); d != "" {
		t.Fatalf("round %d: the index is not the one rebuilt from the leases:\n%s", round, d)
	}
	index := got.bymac
	defer func() { c.m.bymac = index }()
	got = got.leasesOnly()
	if d := c.outside.leasesOnly().diff(got.restrict(-1)); d != "" {
		t.Fatalf("round %d: content outside the storm changed:\n%s", round, d)
	}
	for g := range stormGoroutines {
		before := c.m.snapshot().leasesOnly().restrict(g)
		d := before.diff(got.restrict(g))
		if d == "" {
			continue // the pending op, if any, did not commit
		}
		op := c.pending[g]
		if op == nil {
			t.Fatalf("round %d: goroutine %d's addresses differ from its acknowledged operations:\n%s", round, g, d)
		}
		after := c.m.clone()
		if err := after.apply(op); err != nil {
			t.Fatalf("round %d: goroutine %d's addresses differ, and its unfinished %s would fail (%v):\n%s", round, g, op.kind, err, d)
		}
		if d2 := after.snapshot().leasesOnly().restrict(g).diff(got.restrict(g)); d2 != "" {
			t.Fatalf("round %d: goroutine %d matches neither without its unfinished %s:\n%s\nnor with it:\n%s", round, g, op.kind, d, d2)
		}
		_ = c.m.apply(op) // it committed
	}
	c.pending = map[int]*loggedOp{}
}

// replay applies a run's finished operations to the model, checking each
// outcome, and records the unfinished ones.
func (c *crashChecker) replay(round int, run childRun) {
	t := c.t
	for _, op := range run.ops {
		if !op.done {
			c.pending[op.g] = op
			continue
		}
		err := c.m.apply(op) // the model changes nothing when it fails
		switch {
		case op.acked && err != nil:
			t.Fatalf("round %d: goroutine %d %s %s %s was acknowledged, the model says %v", round, op.g, op.kind, op.ip, op.mac, err)
		case op.acked:
			c.acks++
			if len(op.ack) == 5 {
				l := c.m.leases[op.ip]
				want := []string{l.IP.String(), l.MAC.String(), hexb([]byte(l.Pool)), l.State.String(), strconv.FormatInt(l.Expires.UnixNano(), 10)}
				if strings.Join(op.ack, " ") != strings.Join(want, " ") {
					t.Fatalf("round %d: ACK %v, model has %v", round, op.ack, want)
				}
			}
		case strings.HasPrefix(op.fail, "other"):
			t.Fatalf("round %d: goroutine %d %s failed unexpectedly: %s", round, op.g, op.kind, op.fail)
		case op.fail != strings.ReplaceAll(errClass(err), " ", "_"):
			t.Fatalf("round %d: goroutine %d %s %s %s failed with %s, the model says %v", round, op.g, op.kind, op.ip, op.mac, op.fail, err)
		}
	}
}

func crashSeed(t *testing.T) uint64 {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("LEASE_CRASH_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (set LEASE_CRASH_SEED to repeat)", seed)
	return seed
}

func TestCrashConsistency(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary 40 times")
	}
	seed := crashSeed(t)
	r := rand.New(rand.NewPCG(seed, 1))
	path := filepath.Join(t.TempDir(), "leases.db")
	c := &crashChecker{t: t, path: path, m: newModel(), pending: map[int]*loggedOp{},
		outside: snapshot{leases: map[netip.Addr]Lease{}, bymac: map[string]netip.Addr{}, resv: map[string]netip.Addr{}}}
	const rounds = 40
	start := time.Now()
	var ops, acks, duringOpen int
	for round := range rounds {
		kill := 5*time.Millisecond + time.Duration(r.Int64N(int64(295*time.Millisecond)))
		run := runChild(t, path, r.Uint64(), kill, false)
		if !run.ready {
			duringOpen++
		}
		before := c.acks
		c.replay(round, run)
		ops += len(run.ops)
		acks += c.acks - before
		c.verify(round)
	}
	sn := c.m.snapshot()
	t.Logf("%d rounds in %v: %d operations begun, %d acknowledged, %d kills before OpenBolt returned; final store %d leases, %d MAC index entries",
		rounds, time.Since(start).Round(time.Millisecond), ops, acks, duringOpen, len(sn.leases), len(sn.bymac))
	if acks == 0 {
		t.Fatal("no operation was ever acknowledged")
	}
}

// TestCrashDuringOpen kills the child while it opens (and checks) a large
// store, then while its first writes commit.
func TestCrashDuringOpen(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a large store")
	}
	seed := crashSeed(t)
	r := rand.New(rand.NewPCG(seed, 2))
	path := filepath.Join(t.TempDir(), "leases.db")
	s, err := OpenBolt(path, BoltOptions{Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	bulkLoad(t, s, bulkLeases(50000))
	outside := readSnapshot(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	c := &crashChecker{t: t, path: path, m: newModel(), pending: map[int]*loggedOp{}, outside: outside}
	// Round 0 measures how long the child takes to open the store.
	run := runChild(t, path, r.Uint64(), 20*time.Millisecond, true)
	c.replay(0, run)
	c.verify(0)
	window := run.readyAt - run.openedAt
	t.Logf("the child opens and checks 50,000 leases in %v", window)
	during := 0
	const rounds = 8
	for round := 1; round <= rounds; round++ {
		// Stratified over 0..1.25 times the shortest open seen so far, so
		// that most kills land inside OpenBolt (the file check, bbolt's
		// check, the record check) and the rest in the first writes.
		frac := (float64(round-1) + r.Float64()) / rounds * 1.25
		kill := time.Duration(frac * float64(window))
		run := runChild(t, path, r.Uint64(), kill, false)
		if run.ready {
			window = min(window, run.readyAt-run.openedAt)
		} else {
			during++
		}
		t.Logf("round %d: killed %v after OPENING; OpenBolt returned: %v; %d operations begun",
			round, kill.Round(time.Millisecond), run.ready, len(run.ops))
		c.replay(round, run)
		c.verify(round)
	}
	t.Logf("%d of %d kills landed before OpenBolt returned", during, rounds)
}

// reportMemory is the child side of TestMemory100k: a fresh process opens
// the store, reads every lease and reports heap and RSS.
func reportMemory(path string, out *lineWriter) {
	start := time.Now()
	s, err := OpenBolt(path, BoltOptions{})
	if err != nil {
		out.printf("ERROR %v", err)
		return
	}
	opened := time.Since(start)
	ctx := context.Background()
	n := 0
	start = time.Now()
	if err := s.Iterate(ctx, func(Lease) error { n++; return nil }); err != nil {
		out.printf("ERROR %v", err)
		return
	}
	iterated := time.Since(start)
	for i := 0; i < n; i += 97 {
		l := bulkLease(i)
		if _, err := s.ByMAC(ctx, l.Pool, l.MAC); err != nil {
			out.printf("ERROR %v", err)
			return
		}
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	status, _ := os.ReadFile("/proc/self/status")
	kb := func(key string) int {
		for line := range strings.SplitSeq(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, key+":"); ok {
				n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
				return n
			}
		}
		return -1
	}
	out.printf("MEM leases=%d open=%v iterate=%v heapAlloc=%d heapInuse=%d heapSys=%d sys=%d vmRSS=%d rssAnon=%d rssFile=%d vmHWM=%d",
		n, opened.Round(time.Millisecond), iterated.Round(time.Millisecond), ms.HeapAlloc, ms.HeapInuse, ms.HeapSys, ms.Sys,
		kb("VmRSS")<<10, kb("RssAnon")<<10, kb("RssFile")<<10, kb("VmHWM")<<10)
	_ = s.Close()
}

func runHelper(t *testing.T, mode, path string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), "LEASE_HELPER="+mode, "LEASE_HELPER_PATH="+path)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestMemory100k reports the heap and RSS of a fresh process that opened
// a 100,000-lease store and read every lease (the daemon's budget is
// 64 MiB RSS).
func TestMemory100k(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 100,000-lease store")
	}
	path := filepath.Join(t.TempDir(), "leases.db")
	s, err := OpenBolt(path, BoltOptions{Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	bulkLoad(t, s, bulkLeases(100000))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	out, err := runHelper(t, "memory", path, 60*time.Second)
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	var mem string
	for line := range strings.SplitSeq(out, "\n") {
		if strings.HasPrefix(line, "MEM ") {
			mem = line
		}
	}
	if mem == "" {
		t.Fatalf("helper output: %s", out)
	}
	t.Logf("file %d bytes (%.1f MiB); %s", fi.Size(), float64(fi.Size())/(1<<20), mem)
	fields := map[string]int{}
	for _, f := range strings.Fields(mem)[1:] {
		k, v, _ := strings.Cut(f, "=")
		fields[k], _ = strconv.Atoi(v)
	}
	if fields["leases"] != 100000 {
		t.Fatalf("read %d leases", fields["leases"])
	}
	if rss := fields["vmRSS"]; rss > 64<<20 {
		t.Errorf("RSS %.1f MiB after loading 100,000 leases, over the 64 MiB budget", float64(rss)/(1<<20))
	}
}
