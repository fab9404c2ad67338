package dhcp

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/net/bpf"

	"github.com/phoneboot/phoneboot/userspace/fastpath"
	"github.com/phoneboot/phoneboot/userspace/lease"
	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/rawsock"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// kernelEnv is a Server on a veth port with the fast path's tables
// loaded (the program is not attached: requests go through it with
// BPF_PROG_RUN, named as arriving on the port), so the kernel answers and
// reports events as in production.
type kernelEnv struct {
	app     *vnet.NS
	objs    *fastpath.Objects
	store   lease.Store
	srv     *Server
	ifindex int
	warns   *warnLog
}

// warnLog passes records to the test log and keeps those at WARN and up.
type warnLog struct {
	slog.Handler
	mu   *sync.Mutex
	msgs *[]string
}

func newWarnLog(tb testing.TB) *warnLog {
	return &warnLog{Handler: testLogger(tb).Handler(), mu: &sync.Mutex{}, msgs: new([]string)}
}

func (w *warnLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		w.mu.Lock()
		*w.msgs = append(*w.msgs, r.Message)
		w.mu.Unlock()
	}
	return w.Handler.Handle(ctx, r)
}

func (w *warnLog) WithAttrs(as []slog.Attr) slog.Handler {
	return &warnLog{Handler: w.Handler.WithAttrs(as), mu: w.mu, msgs: w.msgs}
}

func (w *warnLog) WithGroup(name string) slog.Handler {
	return &warnLog{Handler: w.Handler.WithGroup(name), mu: w.mu, msgs: w.msgs}
}

func (w *warnLog) list() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), *w.msgs...)
}

func newKernelEnv(t *testing.T, pool int, store lease.Store, queue int) *kernelEnv {
	t.Helper()
	app, _ := privtest.VethPair(t, "swp1", "eth0")
	e := &kernelEnv{app: app, store: store, warns: newWarnLog(t)}
	log := slog.New(e.warns)
	var err error
	if e.objs, err = fastpath.LoadObjects("", log); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.objs.Close() })
	h, err := NewHandler(smallPool(pool), store, log)
	if err != nil {
		t.Fatal(err)
	}
	err = app.Do(func() error {
		ifi, err := net.InterfaceByName("swp1")
		if err != nil {
			return err
		}
		e.ifindex = ifi.Index
		e.srv, err = NewServer(h, ServerConfig{Ports: []string{"swp1"}, FastPath: e.objs.DHCP(), Workers: 2, KernelQueue: queue}, log)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// run puts a frame through the program as if it came in on swp1 and
// returns the reply, or nil if the program passed it on to Go.
func (e *kernelEnv) run(t *testing.T, frame []byte) []byte {
	t.Helper()
	out := make([]byte, len(frame)+600)
	ctx := struct{ Data, DataEnd, DataMeta, Ingress, RxQueue, Egress uint32 }{DataEnd: uint32(len(frame)), Ingress: uint32(e.ifindex)}
	opts := &ebpf.RunOptions{Data: frame, DataOut: out, Context: ctx}
	var verdict uint32
	err := e.app.Do(func() (err error) {
		verdict, err = e.objs.Program().Run(opts)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	switch verdict {
	case 2: // XDP_PASS
		return nil
	case 3: // XDP_TX
		return opts.DataOut
	}
	t.Fatalf("verdict %d", verdict)
	return nil
}

// dora has the kernel offer and ACK an address to a new client; until
// the kernel's queue holds an address, it retries for up to 5 s.
func (e *kernelEnv) dora(t *testing.T, hw net.HardwareAddr) netip.Addr {
	t.Helper()
	disc := phoneDiscover(t, hw, true)
	var offer []byte
	for deadline := time.Now().Add(5 * time.Second); offer == nil; {
		if offer = e.run(t, frameFor(t, 0, net.IPv4zero, bcast, disc)); offer == nil {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the kernel passed the DISCOVER for 5 s: its queue is not refilled", hw)
			}
			time.Sleep(time.Millisecond)
		}
	}
	o := parseReplyFrame(t, offer)
	req, err := dhcpv4.NewRequestFromOffer(o)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBroadcast()
	if e.run(t, frameFor(t, 0, net.IPv4zero, bcast, req)) == nil {
		t.Fatalf("%s: the kernel passed the REQUEST for its own offer", hw)
	}
	ip, _ := netip.AddrFromSlice(o.YourIPAddr.To4())
	return ip
}

// wantBound checks that the store holds exactly the given bound leases.
func (e *kernelEnv) wantBound(t *testing.T, want map[string]netip.Addr) {
	t.Helper()
	got := map[string]netip.Addr{}
	err := e.store.Iterate(context.Background(), func(l lease.Lease) error {
		if l.State != lease.StateBound {
			t.Errorf("lease %s of %s is %s, want bound", l.IP, l.MAC, l.State)
		}
		if l.Port != "swp1" {
			t.Errorf("lease %s of %s on port %q, want swp1", l.IP, l.MAC, l.Port)
		}
		got[l.MAC.String()] = l.IP
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("the store holds %d leases, want %d", len(got), len(want))
	}
	for m, ip := range want {
		if got[m] != ip {
			t.Fatalf("%s: stored %v, the kernel gave %v", m, got[m], ip)
		}
	}
}

// TestServerRecordsKernelEventsOnClose: events nobody read while the
// server was not running are all persisted by Close, an OFFER and its ACK
// in one write, many clients in one commit.
func TestServerRecordsKernelEventsOnClose(t *testing.T) {
	const n = 2000 // 4,000 events: one batch read
	store, err := lease.OpenBolt(filepath.Join(t.TempDir(), "leases.db"), lease.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	e := newKernelEnv(t, n+10, store, 0)
	want := map[string]netip.Addr{}
	for i := range n {
		hw := macN(i)
		want[hw.String()] = e.dora(t, hw)
	}
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	e.wantBound(t, want)
	// 2,000 OFFER and 2,000 ACK events: 2,000 writes in two commits
	// (the store's default of at most 1,000 per commit).
	if commits, ops := store.CommitStats(); ops != n || commits != 2 {
		t.Errorf("%d commits carrying %d writes, want 2 and %d", commits, ops, n)
	}
	if w := e.warns.list(); len(w) > 0 {
		t.Errorf("warnings: %q", w)
	}
}

// blockingStore holds every AllocateBatch until released: a store whose
// disk is slow.
type blockingStore struct {
	lease.Store
	release chan struct{}
}

func (b *blockingStore) AllocateBatch(ctx context.Context, ls []lease.Lease, now time.Time) []error {
	<-b.release
	return b.Store.AllocateBatch(ctx, ls, now)
}

// TestServerRefillsWhileStoreIsSlow: the kernel's queue of 64 addresses
// is topped up as the kernel hands them out, while the store has not
// persisted any of it yet; stopping then persists everything.
func TestServerRefillsWhileStoreIsSlow(t *testing.T) {
	const n = 400
	store := &blockingStore{Store: lease.NewMemory(), release: make(chan struct{})}
	e := newKernelEnv(t, n+10, store, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Run(ctx) }()

	want := map[string]netip.Addr{}
	for i := range n {
		hw := macN(i)
		want[hw.String()] = e.dora(t, hw)
	}
	close(store.release)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	// Persisted by the time Run returns, before Close.
	e.wantBound(t, want)
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	if st := e.srv.Handler().Stats(); st.FastPathConflicts != 0 || st.Pools[0].Assigned != n {
		t.Errorf("conflicts %d, assigned %d; want 0 and %d", st.FastPathConflicts, st.Pools[0].Assigned, n)
	}
	if w := e.warns.list(); len(w) > 0 {
		t.Errorf("warnings: %q", w)
	}
}

// userEnv is a Server without the fast path on a veth port, and a socket
// on the other end to send requests from.
type userEnv struct {
	app   *vnet.NS
	srv   *Server
	phone *rawsock.Conn
	warns *warnLog
}

func newUserEnv(t *testing.T, store lease.Store, maxAge time.Duration) *userEnv {
	t.Helper()
	app, phone := privtest.VethPair(t, "swp1", "eth0")
	if err := phone.SetUp("eth0"); err != nil {
		t.Fatal(err)
	}
	e := &userEnv{app: app, warns: newWarnLog(t)}
	log := slog.New(e.warns)
	h, err := NewHandler(smallPool(5000), store, log)
	if err != nil {
		t.Fatal(err)
	}
	err = app.Do(func() (err error) {
		e.srv, err = NewServer(h, ServerConfig{Ports: []string{"swp1"}, MaxRequestAge: maxAge}, log)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.srv.Close() })
	// Any filter: the phone's socket only sends.
	err = phone.Do(func() (err error) {
		e.phone, err = rawsock.Listen("eth0", rawsock.Options{Filter: []bpf.Instruction{bpf.RetConstant{Val: 0}}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.phone.Close() })
	return e
}

func (e *userEnv) discover(t *testing.T, n int) {
	t.Helper()
	if err := e.phone.Write(frameFor(t, 0, net.IPv4zero, bcast, phoneDiscover(t, macN(n), true))); err != nil {
		t.Fatal(err)
	}
}

// waitStats polls the handler's counters until done says they are there.
func waitStats(t *testing.T, h *Handler, done func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := h.Stats()
		if done(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("counters: received %d, offers %d, dropped %v", st.Received, st.Offers, st.DroppedBy)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServerDropsStaleRequests: requests that waited in the socket longer
// than MaxRequestAge are dropped unanswered and counted; fresh ones are
// answered.
func TestServerDropsStaleRequests(t *testing.T) {
	e := newUserEnv(t, lease.NewMemory(), 100*time.Millisecond)
	// A second socket on the port, for all frames, sees them when the
	// server's does.
	var watch *rawsock.Conn
	err := e.app.Do(func() (err error) {
		watch, err = rawsock.Listen("swp1", rawsock.Options{Filter: []bpf.Instruction{bpf.RetConstant{Val: 0xffff}}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close()
	buf := make([]byte, 2048)
	read := func() rawsock.Frame {
		watch.SetReadDeadline(time.Now().Add(5 * time.Second))
		fr, err := watch.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		return fr
	}
	// The kernel turns stamping on shortly after the first socket asks;
	// until then a frame is stamped when read. Wait with frames the
	// server's socket does not take (UDP port 9).
	probe := frameFor(t, 0, net.IPv4zero, bcast, phoneDiscover(t, macN(1), true))
	probe[14+20+3] = 9
	for stamped := false; !stamped; {
		if err := e.phone.Write(probe); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
		stamped = time.Since(read().Received) >= 20*time.Millisecond
	}
	for i := range 5 {
		e.discover(t, i)
	}
	for range 5 {
		read()
	}
	time.Sleep(300 * time.Millisecond) // queued while nobody reads
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Run(ctx) }()
	e.discover(t, 100)
	st := waitStats(t, e.srv.Handler(), func(st Stats) bool { return st.Received == 6 && st.Offers+st.Dropped == 6 })
	if st.Offers != 1 || st.DroppedBy[ReasonStale] != 5 {
		t.Errorf("offers %d, dropped as stale %d; want 1 and 5", st.Offers, st.DroppedBy[ReasonStale])
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestServerBacklog: requests that arrive while nobody reads count in the
// backlog until the server has answered them.
func TestServerBacklog(t *testing.T) {
	e := newUserEnv(t, lease.NewMemory(), time.Minute)
	if n := e.srv.Backlog(); n != 0 {
		t.Fatalf("Backlog = %d before any request", n)
	}
	const sent = 7
	for i := range sent {
		e.discover(t, i)
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.srv.Backlog() != sent {
		if time.Now().After(deadline) {
			t.Fatalf("Backlog = %d, want the %d requests nobody read yet", e.srv.Backlog(), sent)
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Run(ctx) }()
	waitStats(t, e.srv.Handler(), func(st Stats) bool { return st.Offers == sent })
	// The last answer is counted just before its handler returns.
	for deadline := time.Now().Add(5 * time.Second); e.srv.Backlog() != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Backlog = %d after every request was answered", e.srv.Backlog())
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestServerStopsInOrder: stopped in the middle of a burst, the server
// finishes what it is handling, answers it, and logs no warning.
func TestServerStopsInOrder(t *testing.T) {
	store, err := lease.OpenBolt(filepath.Join(t.TempDir(), "leases.db"), lease.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	e := newUserEnv(t, store, 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Run(ctx) }()
	for i := range 2000 {
		e.discover(t, i)
	}
	waitStats(t, e.srv.Handler(), func(st Stats) bool { return st.Offers > 0 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := e.srv.Handler().Stats()
	if st.Received == 0 || st.Received != st.Offers+st.Dropped || st.Dropped != st.DroppedBy[ReasonStale] {
		t.Errorf("received %d, offered %d, dropped %v: every request taken must be answered or shed as stale",
			st.Received, st.Offers, st.DroppedBy)
	}
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	if w := e.warns.list(); len(w) > 0 {
		t.Errorf("warnings: %q", w)
	}
}

// BenchmarkServerPersist measures the fast path's events persisted per
// second: batches of 4,096 (an OFFER and its ACK for 2,048 new clients),
// into a bbolt store on tmpfs when there is one (so that the disk's
// fsync does not hide the CPU cost).
//
//	go test -run '^$' -bench BenchmarkServerPersist -benchmem ./userspace/dhcp
func BenchmarkServerPersist(b *testing.B) {
	dir := b.TempDir()
	if shm, err := os.MkdirTemp("/dev/shm", "pbbench-"); err == nil {
		dir = shm
		b.Cleanup(func() { os.RemoveAll(shm) })
	}
	store, err := lease.OpenBolt(filepath.Join(dir, "leases.db"), lease.BoltOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	const clients = 1 << 20
	cfg := smallPool(clients)
	cfg.Pools[0].Subnet = netip.MustParsePrefix("10.0.0.0/8")
	h, err := NewHandler(cfg, store, nil)
	if err != nil {
		b.Fatal(err)
	}
	port := &phonePort{name: "swp1", ifindex: 7}
	s := &Server{h: h, log: slog.New(slog.DiscardHandler), byIdx: map[int]*phonePort{7: port}}
	base := addrU32(ip("10.9.0.10"))
	exp := time.Now().Add(time.Hour)
	n := 0
	evs := make([]fastpath.DHCPEvent, 4096)
	for b.Loop() {
		for i := 0; i < len(evs); i += 2 {
			if n == clients {
				b.Fatal("out of clients")
			}
			ev := fastpath.DHCPEvent{Allocated: true, PoolID: 1, MAC: macN(n), IP: u32Addr(base + uint32(n)), Expires: exp, Ifindex: 7}
			evs[i] = ev
			ev.Allocated, ev.Acked = false, true
			evs[i+1] = ev
			n++
		}
		s.persist(context.Background(), evs)
	}
	b.ReportMetric(float64(b.N*len(evs))/b.Elapsed().Seconds(), "events/s")
	if st := h.Stats(); st.FastPathConflicts != 0 {
		b.Fatalf("%d conflicts", st.FastPathConflicts)
	}
}

func TestStale(t *testing.T) {
	s := &Server{cfg: ServerConfig{MaxRequestAge: 500 * time.Millisecond}}
	disc := pkt(dhcpv4.MessageTypeDiscover, macN(1))
	req := pkt(dhcpv4.MessageTypeRequest, macN(1))
	padded := append(append(bytes.Clone(req[:bootpHeaderLen+4]), optPad, optPad), req[bootpHeaderLen+4:]...)
	tests := []struct {
		name    string
		age     time.Duration
		payload []byte
		want    bool
	}{
		{"fresh DISCOVER", 100 * time.Millisecond, disc, false},
		{"old DISCOVER", 600 * time.Millisecond, disc, true},
		{"REQUEST as old", 600 * time.Millisecond, req, false},
		{"REQUEST twice as old", 1100 * time.Millisecond, req, true},
		{"REQUEST after padding", 600 * time.Millisecond, padded, false},
		{"no option 53", 600 * time.Millisecond, req[:bootpHeaderLen+4], true},
		{"truncated", 600 * time.Millisecond, req[:bootpHeaderLen+5], true},
		{"not stamped", 0, disc, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var at time.Time
			if tt.age > 0 {
				at = time.Now().Add(-tt.age)
			}
			if got := s.stale(at, tt.payload); got != tt.want {
				t.Errorf("stale = %v, want %v", got, tt.want)
			}
		})
	}
}
