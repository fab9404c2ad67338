package dhcp

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sync/errgroup"

	"github.com/phoneboot/phoneboot/userspace/fastpath"
	"github.com/phoneboot/phoneboot/userspace/lease"
	"github.com/phoneboot/phoneboot/userspace/rawsock"
)

// ServerConfig places the server on the phone ports.
type ServerConfig struct {
	Ports []string
	// FastPath is the XDP program's DHCP tables; nil serves from userspace
	// only. The server fills them and persists what the kernel hands out.
	FastPath *fastpath.DHCPTables
	// Workers per port read and answer requests concurrently, so that
	// lease writes from many clients share the store's commits. The
	// default is DefaultWorkers shared among the ports, 8 to 64 a port.
	Workers int
	// ReclaimEvery is how often expired leases are reclaimed (default 10s).
	ReclaimEvery time.Duration
	// StopFastPathOnClose turns the kernel's answering off before the last
	// events are drained on Close: for a daemon that unpins its maps on
	// stop, after which unread events would be lost.
	StopFastPathOnClose bool
	// MaxRequestAge: a request that waited longer than this in its
	// socket's receive buffer is dropped unanswered (reason "stale";
	// default DefaultMaxRequestAge); a REQUEST may wait twice as long.
	// Under overload the buffer fills and every request would wait as
	// long as it takes to work through it; answers that late are mostly
	// to clients that gave up, or whose retry is queued behind, so the
	// server would do stale work while fresh requests wait. Dropping them
	// keeps the wait bounded, as shedding at a full queue does in Kea (its
	// issue #49). REQUESTs are shed last because each finishes an exchange
	// whose DISCOVER the server already answered: dropping it wastes that
	// work, while dropping a DISCOVER only declines to start one.
	MaxRequestAge time.Duration
	// KernelQueue is how many free addresses each pool's queue in the
	// kernel holds for new clients (default DefaultKernelQueue): the burst
	// of new clients the fast path answers before Go tops the queue up.
	KernelQueue int
}

// DefaultMaxRequestAge is well under the 4 s a client waits before it
// retransmits (RFC 2131 section 4.1), so that what the server still
// answers arrives in time, and above the wait of a server that is busy
// but keeping up (up to about 0.4 s in bench/dhcp on a shared 2-core
// machine), so that it sheds only when overloaded.
const DefaultMaxRequestAge = 500 * time.Millisecond

// DefaultKernelQueue is sized so that a boot storm of this many new
// phones is answered in the kernel alone, and the queue lasts about 0.3 s
// at 50,000 new clients per second should Go fall behind. It costs
// 64 KiB of kernel memory per pool.
const DefaultKernelQueue = 16384

// The fast path's events are read in batches of at most eventBatch, and
// at most every eventPoll while they trickle in: each time the reader
// catches up, the kernel wakes it from the next event (an irq_work, a
// self-IPI), which costs more than answering the request did. While the
// store commits, the reader collects what comes in for the next commit;
// with eventBacklog events collected it waits, and the rest stay in the
// kernel's ring buffer.
const (
	eventBatch   = 4096
	eventPoll    = time.Millisecond
	eventBacklog = 1 << 16
)

// Server answers DHCP on the phone ports: raw sockets feeding the Handler,
// and, with the fast path, the kernel's tables kept in step with it.
type Server struct {
	h     *Handler
	cfg   ServerConfig
	log   *slog.Logger
	ports []*phonePort
	byIdx map[int]*phonePort

	events *fastpath.DHCPEvents
	queued map[*Pool]*atomic.Int64 // addresses in each pool's kernel queue
	poolID map[*Pool]uint32        // the pool's ID in the kernel's tables

	kernelDrops atomic.Uint64
	inFlight    atomic.Int64 // requests read and not yet answered
	started     StartRecovery
}

// StartRecovery is what the server found at start that the fast path had
// handed out and the store lacked: the events the kernel's ring buffer
// held (leases it handed out while no daemon read them) and the live
// bound clients it adopted from the kernel's bindings (acknowledged, but
// not yet committed when the last daemon died), or refused.
type StartRecovery struct {
	Events, Adopted, Refused int
}

type phonePort struct {
	name    string
	ifindex int
	mac     net.HardwareAddr
	conn    *rawsock.Conn
}

// DefaultWorkers is how many requests the server has in hand at once,
// across its ports, by default. A worker holds its request until the
// store has committed it, and under load a commit waits for company (see
// lease.BoltOptions.CommitDelay), so a request takes about a millisecond:
// by Little's law 128 workers carry some 100,000 requests a second. With
// 16 on the one port of bench/dhcp, perfdhcp's requests queued from
// 12,000 DORA/s (17 ms average delay at 14,000); with 64, 1.4 ms.
const DefaultWorkers = 128

// NewServer opens the ports' sockets and, with the fast path, loads the
// kernel's tables from the handler's pools and leases. Sockets are opened
// in the calling thread's network namespace.
func NewServer(h *Handler, cfg ServerConfig, log *slog.Logger) (_ *Server, err error) {
	if cfg.Workers <= 0 {
		cfg.Workers = min(max(DefaultWorkers/max(len(cfg.Ports), 1), 8), 64)
	}
	if cfg.ReclaimEvery <= 0 {
		cfg.ReclaimEvery = 10 * time.Second
	}
	if cfg.KernelQueue <= 0 {
		cfg.KernelQueue = DefaultKernelQueue
	}
	if cfg.MaxRequestAge <= 0 {
		cfg.MaxRequestAge = DefaultMaxRequestAge
	}
	s := &Server{h: h, cfg: cfg, log: log, byIdx: map[int]*phonePort{}, queued: map[*Pool]*atomic.Int64{}, poolID: map[*Pool]uint32{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	for _, name := range cfg.Ports {
		conn, err := rawsock.Listen(name, rawsock.Options{Filter: socketFilter})
		if err != nil {
			return nil, fmt.Errorf("dhcp: %w", err)
		}
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("dhcp: %w", err)
		}
		p := &phonePort{name: name, ifindex: ifi.Index, mac: conn.HardwareAddr(), conn: conn}
		s.ports = append(s.ports, p)
		s.byIdx[ifi.Index] = p
	}
	if cfg.FastPath != nil {
		if err := s.loadKernel(context.Background()); err != nil {
			return nil, fmt.Errorf("dhcp fast path: %w", err)
		}
	}
	return s, nil
}

// loadKernel brings the fast path's tables in line with the handler.
func (s *Server) loadKernel(ctx context.Context) error {
	t := s.cfg.FastPath
	var err error
	if s.events, err = t.Events(); err != nil {
		return err
	}
	// First persist what the kernel handed out while no daemon listened
	// (its tables are pinned and kept answering), then take its queues
	// back: they hold addresses this run's allocator believes free.
	s.started.Events = s.drainEvents()
	s.events.SetDeadline(time.Time{})
	for id := uint32(1); id < fastpath.DHCPPoolMax; id++ {
		if _, err := t.DrainFree(id); err != nil {
			return err
		}
	}

	for _, p := range s.ports {
		if err := t.SetPort(p.ifindex, p.mac, s.h.VerifyClientMAC()); err != nil {
			return err
		}
	}
	pools := s.h.Pools()
	if len(pools) >= fastpath.DHCPPoolMax {
		return fmt.Errorf("%d pools, the fast path takes %d", len(pools), fastpath.DHCPPoolMax-1)
	}
	if err := t.ClearClasses(); err != nil {
		return err
	}
	inUse := map[uint16]bool{}
	blockID := uint32(0)
	for i, p := range pools {
		id := uint32(i + 1)
		inUse[p.VLAN()] = true
		prefix := false
		var defaultBlock uint32
		for c := 0; c <= p.Classes(); c++ {
			blk := p.OptionBlock(c, dhcpv4.MessageTypeOffer)
			exact, pfx := p.ClassMatch(c)
			if pfx != "" {
				prefix = true
				continue // only userspace matches prefixes
			}
			if c > 0 && len(exact) > fastpath.DHCPVendorClassMax {
				prefix = true // too long for the kernel's hash: treat like a prefix class
				continue
			}
			blockID++
			if err := t.SetBlock(blockID, blk, TypeOffset(blk)); err != nil {
				return fmt.Errorf("pool %s class %d: %w", p.Name(), c, err)
			}
			if c == 0 {
				defaultBlock = blockID
			} else if err := t.SetClass(id, exact, blockID); err != nil {
				return err
			}
		}
		err := t.SetPool(fastpath.DHCPPool{
			ID: id, VLAN: p.VLAN(), ServerIP: p.ServerIP(), DefaultBlock: defaultBlock,
			LeaseTime: p.LeaseTime(), OfferTime: s.h.OfferTimeout(),
			Allocate: s.h.KernelAllocates(), PrefixClasses: prefix, FreeQueue: s.cfg.KernelQueue,
		})
		if err != nil {
			return fmt.Errorf("pool %s: %w", p.Name(), err)
		}
		s.queued[p] = &atomic.Int64{}
		s.poolID[p] = id
	}
	for vlan := uint16(0); vlan <= 4095; vlan++ {
		if !inUse[vlan] {
			if err := t.ClearPool(vlan); err != nil {
				return err
			}
		}
	}
	if err := s.loadBindings(ctx); err != nil {
		return err
	}
	for _, p := range pools {
		if err := s.refill(p); err != nil {
			return err
		}
	}
	return nil
}

// loadBindings writes every lease the store holds into the kernel, live or
// not (a lapsed one still sends its client's DISCOVER to userspace, for
// its previous address), and removes bindings the store does not know,
// except those the kernel acknowledged and the store never heard of: it
// adopts them (see kernelAhead). It streams: bindings go to the kernel in
// batches as the store is read, and what it remembers of each client is
// one uint64 (bindingKey), besides the kernel's live bound clients.
func (s *Server) loadBindings(ctx context.Context) error {
	t := s.cfg.FastPath
	ahead, err := s.kernelBound(time.Now())
	if err != nil {
		return err
	}
	var want []uint64
	var batch fastpath.BindingBatch
	err = s.h.store.Iterate(ctx, func(l lease.Lease) error {
		p := s.h.byName[l.Pool]
		if p == nil || len(l.MAC) != 6 {
			return nil
		}
		b := fastpath.DHCPBinding{VLAN: p.VLAN(), MAC: l.MAC, IP: l.IP, Expires: l.Expires}
		switch l.State {
		case lease.StateBound:
			b.Bound = true
		case lease.StateOffered:
		default:
			b.Expires = time.Time{} // known client, no live lease
		}
		if idx, ok := s.portIndex(l.Port); ok {
			b.Ifindex = idx
		}
		k := bindingKey(b.VLAN, [6]byte(b.MAC))
		want = append(want, k)
		if kb := ahead.find(k); kb != nil {
			kb.inStore = true
			// The kernel acknowledged more than the store holds: keep
			// the kernel's binding, to be adopted below.
			kb.adopt = !(b.Bound && b.IP == kb.ip && !b.Expires.Before(kb.expires.Add(-time.Second)))
			if kb.adopt {
				return nil
			}
		}
		if err := batch.Add(b); err != nil {
			return err
		}
		if batch.Len() < bindingBatch {
			return nil
		}
		return t.PutBindings(&batch)
	})
	if err == nil {
		err = t.PutBindings(&batch)
	}
	if err != nil {
		return err
	}
	adopted, err := s.adoptKernelLeases(ctx, ahead)
	if err != nil {
		return err
	}
	want = append(want, adopted...)
	slices.Sort(want)
	known := func(k uint64) bool { _, ok := slices.BinarySearch(want, k); return ok }
	resv, err := s.h.store.Reservations(ctx)
	if err != nil {
		return err
	}
	// A (pool, MAC) has at most one reservation and a pool one VLAN, so
	// reservations do not repeat each other's keys.
	n := len(want)
	for _, r := range resv {
		p := s.h.byName[r.Pool]
		if p == nil || len(r.MAC) != 6 {
			continue
		}
		k := bindingKey(p.VLAN(), [6]byte(r.MAC))
		if known(k) {
			continue
		}
		want = append(want, k)
		if err := t.PutBinding(fastpath.DHCPBinding{VLAN: p.VLAN(), MAC: r.MAC, IP: r.IP}); err != nil {
			return err
		}
	}
	if len(want) > n {
		slices.Sort(want)
	}
	_, err = t.PruneBindings(func(vlan uint16, mac [6]byte) bool { return known(bindingKey(vlan, mac)) })
	return err
}

// kernelBinding is a live bound client in the kernel's binding map, as
// loadBindings compares it with the store.
type kernelBinding struct {
	key     uint64 // bindingKey
	ip      netip.Addr
	expires time.Time
	ifindex int
	inStore bool // the store has a lease for the client
	adopt   bool // ... which is behind the kernel's
}

// kernelAhead is the kernel's live bound clients, sorted by key. The
// kernel acknowledges before the store commits: a daemon killed between
// reading the ring buffer's events and committing them leaves ACKed
// clients in the pinned map that the store lacks, or holds as offered.
// Those phones use their addresses, so the next run adopts the kernel's
// bindings rather than deleting them and handing the addresses out again.
type kernelAhead []kernelBinding

func (a kernelAhead) find(k uint64) *kernelBinding {
	i, ok := slices.BinarySearchFunc(a, k, func(b kernelBinding, k uint64) int { return cmp.Compare(b.key, k) })
	if !ok {
		return nil
	}
	return &a[i]
}

// kernelBound reads the kernel's bound clients whose leases run past now.
func (s *Server) kernelBound(now time.Time) (kernelAhead, error) {
	var out kernelAhead
	err := s.cfg.FastPath.WalkBindings(func(b fastpath.DHCPBinding) {
		if b.Bound && b.Expires.After(now) {
			out = append(out, kernelBinding{key: bindingKey(b.VLAN, [6]byte(b.MAC)), ip: b.IP, expires: b.Expires, ifindex: b.Ifindex})
		}
	})
	slices.SortFunc(out, func(a, b kernelBinding) int { return cmp.Compare(a.key, b.key) })
	return out, err
}

// adoptKernelLeases records in the store the kernel's bindings it lacks
// or holds behind the kernel, where the pool allows the address, and
// returns the keys of those it adopted that the store did not know. One
// it cannot adopt (no pool, an address outside the range or reserved for
// another client, or held by another client in the store) is deleted from
// the kernel, so that the client's next request goes to the Go server,
// which answers from the store.
func (s *Server) adoptKernelLeases(ctx context.Context, ahead kernelAhead) ([]uint64, error) {
	var ks []KernelLease
	var keys []uint64
	refused := 0
	refuse := func(k KernelLease, why error) error {
		refused++
		if s.h.logs.allow("fastpath-adopt") {
			s.log.Warn("fast path lease not adopted; its client is sent to the Go server", "mac", k.MAC.String(), "ip", k.IP, "vlan", k.VLAN, "error", why)
		}
		return s.cfg.FastPath.DeleteBinding(k.VLAN, k.MAC)
	}
	for i := range ahead {
		kb := &ahead[i]
		if kb.inStore && !kb.adopt {
			continue
		}
		vlan, mac := unpackBindingKey(kb.key)
		k := KernelLease{VLAN: vlan, MAC: mac, IP: kb.ip, Bound: true, Expires: kb.expires}
		if p := s.byIdx[kb.ifindex]; p != nil {
			k.Port = p.name
		}
		p := s.h.byVLAN[vlan]
		switch {
		case p == nil:
			err := refuse(k, fmt.Errorf("no pool for VLAN %d", vlan))
			if err != nil {
				return nil, err
			}
			continue
		case p.reservedForOther(kb.ip, mac) || !(p.inRange(kb.ip) || reservedIs(p, mac, kb.ip)):
			if err := refuse(k, fmt.Errorf("address not in pool %s for this client", p.Name())); err != nil {
				return nil, err
			}
			continue
		}
		ks = append(ks, k)
		keys = append(keys, kb.key)
	}
	if len(ks) == 0 {
		return nil, nil // the usual start: nothing to commit
	}
	var newKeys []uint64
	adopted := 0
	for i, err := range s.h.RecordKernelLeases(ctx, ks) {
		if err != nil {
			if err := refuse(ks[i], err); err != nil {
				return nil, err
			}
			continue
		}
		adopted++
		if !ahead.find(keys[i]).inStore {
			newKeys = append(newKeys, keys[i])
		}
	}
	s.started.Adopted, s.started.Refused = adopted, refused
	if adopted > 0 || refused > 0 {
		s.log.Info("fast path leases the store lacked at start", "adopted", adopted, "refused", refused)
	}
	return newKeys, nil
}

// bindingBatch is how many bindings loadBindings hands the kernel at once.
const bindingBatch = 256

// reservedIs reports whether ip is the address reserved for mac in p.
func reservedIs(p *Pool, mac net.HardwareAddr, ip netip.Addr) bool {
	r, ok := p.reservedFor(mac)
	return ok && r == ip
}

// unpackBindingKey is bindingKey's inverse.
func unpackBindingKey(k uint64) (vlan uint16, mac net.HardwareAddr) {
	mac = make(net.HardwareAddr, 6)
	for i := range mac {
		mac[i] = byte(k >> (40 - 8*i))
	}
	return uint16(k >> 48), mac
}

// bindingKey packs a binding's VLAN and MAC into one comparable word.
func bindingKey(vlan uint16, mac [6]byte) uint64 {
	return uint64(vlan)<<48 | uint64(mac[0])<<40 | uint64(mac[1])<<32 |
		uint64(mac[2])<<24 | uint64(mac[3])<<16 | uint64(mac[4])<<8 | uint64(mac[5])
}

func (s *Server) portIndex(name string) (int, bool) {
	for _, p := range s.ports {
		if p.name == name {
			return p.ifindex, true
		}
	}
	return 0, false
}

// queueLow is the level below which a kernel queue is refilled: three
// quarters, since a refill costs a few syscalls besides one per address,
// and a queue kept near full takes the next burst.
func (s *Server) queueLow() int64 { return int64(s.cfg.KernelQueue - s.cfg.KernelQueue/4) }

// refill tops the pool's kernel queue up when it runs low.
func (s *Server) refill(p *Pool) error {
	q := s.queued[p]
	if q == nil || !s.h.KernelAllocates() || q.Load() >= s.queueLow() {
		return nil
	}
	ips := s.h.TakeForKernel(p, s.cfg.KernelQueue-int(q.Load()))
	if len(ips) == 0 {
		return nil
	}
	n, err := s.cfg.FastPath.PushFree(s.poolID[p], ips)
	q.Add(int64(n))
	if n < len(ips) {
		s.h.ReturnFromKernel(p, ips[n:])
	}
	return err
}

// readEvents reads what the kernel has buffered, at most eventBatch
// events: with block, it waits up to 200 ms for the first. Short waits: a
// deadline set while Read blocks does not wake it, and stopping must not
// wait for the next event.
func (s *Server) readEvents(block bool) ([]fastpath.DHCPEvent, error) {
	var evs []fastpath.DHCPEvent
	if block {
		s.events.SetDeadline(time.Now().Add(200 * time.Millisecond))
	} else {
		s.events.SetDeadline(time.Now())
	}
	for len(evs) < eventBatch {
		ev, err := s.events.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return evs, nil
		}
		if err != nil {
			return evs, err
		}
		evs = append(evs, ev)
		if len(evs) == 1 {
			s.events.SetDeadline(time.Now()) // the rest without waiting
		}
	}
	return evs, nil
}

// handedOut counts the queued addresses the kernel gave away and tops the
// queues up at once, before the events are persisted: the kernel's
// supply does not wait for the disk.
func (s *Server) handedOut(evs []fastpath.DHCPEvent) {
	var touched []*Pool
	for _, ev := range evs {
		if !ev.Allocated {
			continue
		}
		if p := s.h.PoolByVLAN(ev.VLAN); p != nil && s.queued[p] != nil {
			if s.queued[p].Add(-1) < s.queueLow() && !slices.Contains(touched, p) {
				touched = append(touched, p)
			}
		}
	}
	for _, p := range touched {
		if err := s.refill(p); err != nil {
			s.log.Warn("refill fast path queue", "pool", p.Name(), "error", err)
		}
	}
}

// persist records a batch of the kernel's events in the store. An event
// that a later one of the batch supersedes (the same client and address:
// an OFFER and then its ACK) is not written: the later one is, in the
// same commit, and leaves the store as both would. So an OFFER costs no
// write of its own when its ACK follows within a batch, and no commit of
// its own ever. (RFC 2131 does not ask that offers be kept; the store has
// them anyway, so that the Go server and a restart know them.)
func (s *Server) persist(ctx context.Context, evs []fastpath.DHCPEvent) {
	type client struct {
		vlan uint16
		mac  [6]byte
		ip   netip.Addr
	}
	seen := make(map[client]bool, len(evs))
	ks := make([]KernelLease, 0, len(evs))
	for i := len(evs) - 1; i >= 0; i-- {
		ev := evs[i]
		c := client{vlan: ev.VLAN, ip: ev.IP}
		copy(c.mac[:], ev.MAC)
		if seen[c] {
			continue
		}
		seen[c] = true
		port := ""
		if p := s.byIdx[ev.Ifindex]; p != nil {
			port = p.name
		}
		ks = append(ks, KernelLease{VLAN: ev.VLAN, MAC: ev.MAC, IP: ev.IP, Bound: ev.Acked, Expires: ev.Expires, Port: port})
	}
	slices.Reverse(ks)
	for _, err := range s.h.RecordKernelLeases(ctx, ks) {
		if err != nil && s.h.logs.allow("fastpath-record") {
			s.log.Error("fast path lease not recorded", "error", err)
		}
	}
}

// stopGrace bounds how long a request being handled when the server
// stops may still take to finish.
const stopGrace = 5 * time.Second

// Run serves until ctx ends. Stopping is orderly: requests being handled
// are finished and answered, and the kernel's events are all persisted.
func (s *Server) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	defer context.AfterFunc(ctx, func() { time.AfterFunc(stopGrace, hcancel) })()
	for _, p := range s.ports {
		for range s.cfg.Workers {
			g.Go(func() error { return s.serve(ctx, hctx, p) })
		}
	}
	if s.events != nil {
		batches := make(chan []fastpath.DHCPEvent, 1)
		g.Go(func() error { return s.readLoop(ctx, batches) })
		g.Go(func() error {
			// The kernel already answered these: they reach the store
			// even while stopping.
			for evs := range batches {
				s.persist(context.WithoutCancel(ctx), evs)
			}
			return nil
		})
	}
	g.Go(func() error {
		t := time.NewTicker(s.cfg.ReclaimEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				if _, err := s.h.Reclaim(ctx, time.Now()); err != nil && ctx.Err() == nil {
					s.log.Warn("reclaim leases", "error", err)
				}
				s.collectSocketStats()
			}
		}
	})
	<-ctx.Done()
	// Wake the workers blocked in Read; the sockets stay open for the
	// replies still being sent, until Close.
	for _, p := range s.ports {
		if err := p.conn.SetReadDeadline(time.Now()); err != nil && !errors.Is(err, os.ErrClosed) {
			s.log.Warn("dhcp: waking the readers", "port", p.name, "error", err)
		}
	}
	return g.Wait()
}

// readLoop hands the kernel's events to the persister, counting and
// replacing the queued addresses given away as it reads them. What it
// reads while the persister is busy it hands over as one batch when the
// persister is free again. Once ctx ends it hands over what is buffered
// and closes batches.
func (s *Server) readLoop(ctx context.Context, batches chan<- []fastpath.DHCPEvent) error {
	defer close(batches)
	var pending []fastpath.DHCPEvent
	for {
		stopping := ctx.Err() != nil
		evs, err := s.readEvents(!stopping)
		if len(evs) > 0 {
			s.handedOut(evs)
			pending = append(pending, evs...)
		}
		if len(pending) > 0 {
			if stopping || err != nil || len(pending) >= eventBacklog {
				batches <- pending
				pending = nil
			} else {
				select {
				case batches <- pending:
					pending = nil
				default:
				}
			}
		}
		switch {
		case errors.Is(err, ringbuf.ErrClosed):
			return nil
		case err != nil:
			return fmt.Errorf("dhcp fast path events: %w", err)
		case stopping && len(evs) < eventBatch:
			return nil // the ring was empty a moment ago; Close drains again
		case !stopping && len(evs) < eventBatch:
			time.Sleep(eventPoll)
		}
	}
}

// drainEvents persists every event the kernel has buffered and returns
// how many there were.
func (s *Server) drainEvents() int {
	n := 0
	for {
		evs, err := s.readEvents(false)
		if len(evs) > 0 {
			n += len(evs)
			s.handedOut(evs)
			s.persist(context.Background(), evs)
		}
		if err != nil || len(evs) == 0 {
			if err != nil && !errors.Is(err, ringbuf.ErrClosed) {
				s.log.Error("dhcp fast path events", "error", err)
			}
			return n
		}
	}
}

// serve reads and answers requests on p until ctx ends; hctx is what the
// handler runs under, which lets a request in progress finish.
func (s *Server) serve(ctx, hctx context.Context, p *phonePort) error {
	buf := make([]byte, 2048)
	for {
		fr, err := p.conn.Read(buf)
		if errors.Is(err, os.ErrClosed) || ctx.Err() != nil {
			return nil
		}
		if err != nil {
			s.log.Debug("dhcp read", "port", p.name, "error", err)
			continue
		}
		vlan := uint16(0)
		if fr.Tagged {
			vlan = fr.VLAN
		}
		req, err := DecodeFrame(fr.Data, vlan, p.name)
		if err != nil {
			s.h.stats.received.Add(1)
			s.h.stats.count(drop("parse-failed"))
			continue
		}
		if s.stale(fr.Received, req.Payload) {
			s.h.stats.received.Add(1)
			s.h.stats.count(drop(ReasonStale))
			continue
		}
		req.Received = time.Now()
		s.inFlight.Add(1)
		rep, out := s.h.Handle(hctx, req)
		s.inFlight.Add(-1)
		if out.Action == Answered {
			if err := p.conn.Write(EncodeFrame(p.mac, rep)); err != nil {
				s.log.Warn("dhcp send", "port", p.name, "error", err)
			}
		}
		if s.cfg.FastPath != nil {
			s.syncBinding(p, req, rep, out)
		}
	}
}

// stale reports whether a request received at t has waited too long to
// be answered (see ServerConfig.MaxRequestAge).
func (s *Server) stale(t time.Time, payload []byte) bool {
	if t.IsZero() {
		return false
	}
	age := time.Since(t)
	return age > s.cfg.MaxRequestAge && (age > 2*s.cfg.MaxRequestAge || peekType(payload) != byte(dhcpv4.MessageTypeRequest))
}

// peekType returns a DHCP message's option 53 without checking the rest
// of it, or 0.
func peekType(p []byte) byte {
	for i := bootpHeaderLen + 4; i+1 < len(p); {
		switch code, n := p[i], int(p[i+1]); {
		case code == optPad:
			i++
		case code == optEnd:
			return 0
		case code == optMessageType && n == 1 && i+2 < len(p):
			return p[i+2]
		default:
			i += 2 + n
		}
	}
	return 0
}

// syncBinding tells the kernel what the handler just decided, so the
// client's next request is answered in the kernel.
func (s *Server) syncBinding(p *phonePort, req Request, rep Reply, out Outcome) {
	if len(req.Payload) < 44 || req.Payload[24]|req.Payload[25]|req.Payload[26]|req.Payload[27] != 0 {
		return // relayed: the kernel passes those anyway
	}
	mac := net.HardwareAddr(req.Payload[28:34])
	pool := s.h.PoolByVLAN(req.VLAN)
	if pool == nil {
		return
	}
	now := time.Now()
	b := fastpath.DHCPBinding{VLAN: req.VLAN, MAC: mac, Ifindex: p.ifindex}
	switch {
	case out.Action == Answered && (out.Reason == ReasonOffer || out.Reason == ReasonAck) && len(rep.Payload) >= 20:
		yi, _ := netip.AddrFromSlice(rep.Payload[16:20])
		if yi.IsUnspecified() {
			return // ACK to an INFORM: no lease
		}
		b.IP = yi
		if out.Reason == ReasonAck {
			b.Bound, b.Expires = true, now.Add(pool.LeaseTime())
		} else {
			b.Expires = now.Add(s.h.OfferTimeout())
		}
	case out.Action == Silent && (out.Reason == "released" || out.Reason == "declined"):
		cur, ok, err := s.cfg.FastPath.Binding(req.VLAN, mac)
		if err != nil || !ok {
			return
		}
		b.IP = cur.IP // keep the client known, its lease over
	default:
		return
	}
	if err := s.cfg.FastPath.PutBinding(b); err != nil {
		s.log.Warn("dhcp fast path binding", "mac", mac.String(), "error", err)
	}
}

func (s *Server) collectSocketStats() {
	for _, p := range s.ports {
		if st, err := p.conn.Stats(); err == nil {
			s.kernelDrops.Add(st.Dropped)
		}
	}
}

// Started is what the server recovered from the fast path at start.
func (s *Server) Started() StartRecovery { return s.started }

// SocketDrops counts requests the kernel dropped because a socket's
// receive buffer was full (sampled every ReclaimEvery).
func (s *Server) SocketDrops() uint64 { return s.kernelDrops.Load() }

// Backlog is the work the server has in hand: requests waiting in the
// ports' receive queues plus those being handled. The fast path's answers
// never reach it. It is what the power manager's adaptive policy paces
// the storm by.
func (s *Server) Backlog() int {
	n := int(s.inFlight.Load())
	for _, p := range s.ports {
		if q, err := p.conn.Queued(); err == nil {
			n += q
		}
	}
	return n
}

// Handler is the protocol engine behind the server.
func (s *Server) Handler() *Handler { return s.h }

// Close releases the sockets. The fast path's tables stay, pinned: the
// kernel keeps answering bound clients while the daemon is away.
func (s *Server) Close() error {
	var errs []error
	for _, p := range s.ports {
		if err := p.conn.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if s.events != nil {
		if s.cfg.StopFastPathOnClose {
			for _, p := range s.ports {
				errs = append(errs, s.cfg.FastPath.DeletePort(p.ifindex))
			}
		}
		// Whatever the kernel handed out up to now reaches the store.
		s.drainEvents()
		s.events.Close()
	}
	return errors.Join(errs...)
}
