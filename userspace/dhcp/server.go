package dhcp

import (
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
	// lease writes from many clients share the store's commits (default 16).
	Workers int
	// ReclaimEvery is how often expired leases are reclaimed (default 10s).
	ReclaimEvery time.Duration
	// StopFastPathOnClose turns the kernel's answering off before the last
	// events are drained on Close: for a daemon that unpins its maps on
	// stop, after which unread events would be lost.
	StopFastPathOnClose bool
}

// The kernel's free queue is kept between these two levels.
const (
	kernelQueueLow  = fastpath.DHCPFreeQueueMax / 4
	kernelQueueFull = fastpath.DHCPFreeQueueMax
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
}

type phonePort struct {
	name    string
	ifindex int
	mac     net.HardwareAddr
	conn    *rawsock.Conn
}

// NewServer opens the ports' sockets and, with the fast path, loads the
// kernel's tables from the handler's pools and leases. Sockets are opened
// in the calling thread's network namespace.
func NewServer(h *Handler, cfg ServerConfig, log *slog.Logger) (_ *Server, err error) {
	if cfg.Workers <= 0 {
		cfg.Workers = 16
	}
	if cfg.ReclaimEvery <= 0 {
		cfg.ReclaimEvery = 10 * time.Second
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
	s.drainEvents()
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
			Allocate: s.h.KernelAllocates(), PrefixClasses: prefix,
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
// its previous address), and removes bindings the store does not know.
// It streams: bindings go to the kernel in batches as the store is read,
// and what it remembers of each client is one uint64 (bindingKey).
func (s *Server) loadBindings(ctx context.Context) error {
	t := s.cfg.FastPath
	var want []uint64
	var batch fastpath.BindingBatch
	err := s.h.store.Iterate(ctx, func(l lease.Lease) error {
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
		want = append(want, bindingKey(b.VLAN, [6]byte(b.MAC)))
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

// bindingBatch is how many bindings loadBindings hands the kernel at once.
const bindingBatch = 256

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

// refill tops the pool's kernel queue up when it runs low.
func (s *Server) refill(p *Pool) error {
	q := s.queued[p]
	if q == nil || !s.h.KernelAllocates() || q.Load() > kernelQueueLow {
		return nil
	}
	ips := s.h.TakeForKernel(p, kernelQueueFull-int(q.Load()))
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

// record persists one kernel event and keeps the queue filled.
func (s *Server) record(ctx context.Context, ev fastpath.DHCPEvent) {
	port := ""
	if p := s.byIdx[ev.Ifindex]; p != nil {
		port = p.name
	}
	err := s.h.RecordKernelLease(ctx, KernelLease{
		VLAN: ev.VLAN, MAC: ev.MAC, IP: ev.IP, Bound: ev.Acked, Expires: ev.Expires, Port: port,
	})
	if err != nil {
		s.log.Error("fast path lease not recorded", "error", err)
	}
	if ev.Allocated {
		if p := s.h.PoolByVLAN(ev.VLAN); p != nil && s.queued[p] != nil {
			s.queued[p].Add(-1)
			if err := s.refill(p); err != nil {
				s.log.Warn("refill fast path queue", "pool", p.Name(), "error", err)
			}
		}
	}
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, p := range s.ports {
		for range s.cfg.Workers {
			g.Go(func() error { return s.serve(ctx, p) })
		}
	}
	if s.events != nil {
		g.Go(func() error {
			for {
				if ctx.Err() != nil {
					// The kernel already answered these: they must
					// reach the store even while stopping.
					s.drainEvents()
					return nil
				}
				// Short waits: a deadline set while Read blocks does not
				// wake it, and stopping must not wait for the next event.
				s.events.SetDeadline(time.Now().Add(200 * time.Millisecond))
				ev, err := s.events.Read()
				switch {
				case errors.Is(err, os.ErrDeadlineExceeded):
					continue
				case errors.Is(err, ringbuf.ErrClosed):
					return nil
				case err != nil:
					return fmt.Errorf("dhcp fast path events: %w", err)
				}
				s.record(context.WithoutCancel(ctx), ev)
			}
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
				if _, err := s.h.Reclaim(ctx, time.Now()); err != nil {
					s.log.Warn("reclaim leases", "error", err)
				}
				s.collectSocketStats()
			}
		}
	})
	<-ctx.Done()
	// Unblock the readers; the event reader drains what is buffered first.
	for _, p := range s.ports {
		p.conn.Close()
	}
	return g.Wait()
}

// drainEvents records every event the kernel has buffered.
func (s *Server) drainEvents() {
	for {
		s.events.SetDeadline(time.Now())
		ev, err := s.events.Read()
		if err != nil {
			return
		}
		s.record(context.Background(), ev)
	}
}

func (s *Server) serve(ctx context.Context, p *phonePort) error {
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
		req.Received = time.Now()
		rep, out := s.h.Handle(ctx, req)
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

// SocketDrops counts requests the kernel dropped because a socket's
// receive buffer was full (sampled every ReclaimEvery).
func (s *Server) SocketDrops() uint64 { return s.kernelDrops.Load() }

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
