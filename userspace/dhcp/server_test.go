package dhcp

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/phoneboot/phoneboot/userspace/fastpath"
	"github.com/phoneboot/phoneboot/userspace/lease"
	"github.com/phoneboot/phoneboot/userspace/privtest"
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
