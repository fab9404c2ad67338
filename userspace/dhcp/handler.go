package dhcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/phoneboot/phoneboot/userspace/lease"
)

// Defaults for Config fields left at zero.
const (
	DefaultOfferTimeout     = 30 * time.Second
	DefaultDeclineProbation = 24 * time.Hour // Kea's decline-probation-period

	// recoverInterval rate-limits the rebuild of a pool's free set from
	// the store when the pool looks exhausted.
	recoverInterval = 10 * time.Second
	// maxAllocTries bounds the Store.Allocate calls one DISCOVER makes.
	maxAllocTries = 64
)

var (
	broadcastIP  = netip.AddrFrom4([4]byte{255, 255, 255, 255})
	broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

// Handler is the DHCPv4 protocol engine: a request in, a reply out. It
// is safe for concurrent use; requests from one client are handled one
// at a time.
type Handler struct {
	cfg          Config
	store        lease.Store
	log          *slog.Logger
	pools        []*Pool
	byVLAN       map[uint16]*Pool
	byName       map[string]*Pool
	ours         map[netip.Addr]bool // unicast destinations we answer
	offerTimeout time.Duration
	probation    time.Duration
	rate         *rateLimiter
	ports        *portIndex

	resvMu      sync.Mutex
	resvPending map[netip.Addr]*Pool // reservations the store refused at start

	macLocks [256]sync.Mutex
	stats    counters
	logs     logLimiter
}

// NewHandler validates cfg, writes the configured reservations to the
// store (config is authoritative for its pools: reservations the store
// holds for them that the config lacks are removed) and builds the
// allocators from the store's leases. OfferTimeout and DeclineProbation
// default to DefaultOfferTimeout and DefaultDeclineProbation.
func NewHandler(cfg Config, store lease.Store, log *slog.Logger) (*Handler, error) {
	if store == nil {
		return nil, errors.New("dhcp: no lease store")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	switch {
	case cfg.OfferTimeout < 0:
		return nil, fmt.Errorf("dhcp: OfferTimeout %v is negative", cfg.OfferTimeout)
	case cfg.DeclineProbation < 0:
		return nil, fmt.Errorf("dhcp: DeclineProbation %v is negative", cfg.DeclineProbation)
	case cfg.MaxLeasesPerPort < 0:
		return nil, fmt.Errorf("dhcp: MaxLeasesPerPort %d is negative", cfg.MaxLeasesPerPort)
	case cfg.MaxDeclinesPerPort < 0:
		return nil, fmt.Errorf("dhcp: MaxDeclinesPerPort %d is negative", cfg.MaxDeclinesPerPort)
	case cfg.RatePerPort < 0 || cfg.RatePerPort != cfg.RatePerPort:
		return nil, fmt.Errorf("dhcp: RatePerPort %v is not a rate", cfg.RatePerPort)
	case cfg.RateBurst < 0:
		return nil, fmt.Errorf("dhcp: RateBurst %d is negative", cfg.RateBurst)
	}
	pools, err := NewPools(cfg)
	if err != nil {
		return nil, err
	}
	h := &Handler{
		cfg:          cfg,
		store:        store,
		log:          log,
		pools:        pools,
		byVLAN:       map[uint16]*Pool{},
		byName:       map[string]*Pool{},
		ours:         map[netip.Addr]bool{broadcastIP: true},
		offerTimeout: orDefault(cfg.OfferTimeout, DefaultOfferTimeout),
		probation:    orDefault(cfg.DeclineProbation, DefaultDeclineProbation),
		rate:         newRateLimiter(cfg.RatePerPort, cfg.RateBurst),
		ports:        newPortIndex(cfg.MaxLeasesPerPort > 0 || cfg.MaxDeclinesPerPort > 0),
		resvPending:  map[netip.Addr]*Pool{},
		logs:         logLimiter{last: map[string]time.Time{}},
	}
	for _, p := range pools {
		h.byVLAN[p.vlan] = p
		h.byName[p.name] = p
		h.ours[p.serverIP] = true
		h.ours[p.broadcast] = true
	}
	ctx := context.Background()
	if err := h.syncReservations(ctx); err != nil {
		return nil, err
	}
	if err := h.load(ctx, time.Now(), nil, true); err != nil {
		return nil, err
	}
	return h, nil
}

func orDefault(v, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return v
}

// Pools returns the pools in configuration order.
func (h *Handler) Pools() []*Pool { return slices.Clone(h.pools) }

func (h *Handler) syncReservations(ctx context.Context) error {
	have, err := h.store.Reservations(ctx)
	if err != nil {
		return fmt.Errorf("dhcp: reading reservations: %w", err)
	}
	done := map[netip.Addr]bool{}
	for _, r := range have {
		p := h.byName[r.Pool]
		if p == nil {
			continue
		}
		if ip, ok := p.reservedFor(r.MAC); ok && ip == r.IP {
			done[ip] = true
			continue
		}
		if err := h.store.Unreserve(ctx, r.Pool, r.MAC); err != nil && !errors.Is(err, lease.ErrNotFound) {
			return fmt.Errorf("dhcp: pool %q: removing reservation of %v for %v: %w", r.Pool, r.IP, r.MAC, err)
		}
		h.log.Info("dhcp: removed reservation not in the configuration", "pool", r.Pool, "mac", r.MAC.String(), "ip", r.IP.String())
	}
	for _, p := range h.pools {
		for _, r := range p.cfg.Reservations {
			if done[r.IP] {
				continue
			}
			err := h.store.Reserve(ctx, lease.Reservation{Pool: p.name, MAC: r.MAC, IP: r.IP})
			switch {
			case err == nil:
			case errors.Is(err, lease.ErrAddressInUse), errors.Is(err, lease.ErrReserved):
				// Another client holds the address; this server hands it
				// to nobody else and reserves it when the lease ends.
				h.resvPending[r.IP] = p
				h.log.Warn("dhcp: reserved address is held by another client; reserving it when that lease ends",
					"pool", p.name, "mac", r.MAC.String(), "ip", r.IP.String(), "error", err)
			default:
				return fmt.Errorf("dhcp: pool %q: reserving %v for %v: %w", p.name, r.IP, r.MAC, err)
			}
		}
	}
	return nil
}

// retryReservation writes a reservation the store refused at start, once
// its address has been freed.
func (h *Handler) retryReservation(ctx context.Context, ip netip.Addr) {
	h.resvMu.Lock()
	p := h.resvPending[ip]
	h.resvMu.Unlock()
	if p == nil {
		return
	}
	mac := p.resvByIP[ip]
	if err := h.store.Reserve(ctx, lease.Reservation{Pool: p.name, MAC: mac, IP: ip}); err != nil {
		return
	}
	h.resvMu.Lock()
	delete(h.resvPending, ip)
	h.resvMu.Unlock()
	h.log.Info("dhcp: reservation written", "pool", p.name, "mac", mac.String(), "ip", ip.String())
}

// load rebuilds the allocator of pool only (or every pool, only == nil)
// from the store at time now; withPorts also rebuilds the port index.
func (h *Handler) load(ctx context.Context, now time.Time, only *Pool, withPorts bool) error {
	// What the store says is gathered first and applied under the
	// allocator's lock at once. Eight bytes a lease: with 100,000 leases
	// a copy of each lease here made this the daemon's peak memory.
	type entry struct {
		ip uint32
		st addrState
	}
	got := map[*Pool][]entry{}
	err := h.store.Iterate(ctx, func(l lease.Lease) error {
		p := h.byName[l.Pool]
		if p == nil || (only != nil && p != only) || !p.subnet.Contains(l.IP) {
			return nil
		}
		got[p] = append(got[p], entry{addrU32(l.IP), leaseState(&l, now)})
		if withPorts && l.Port != "" && !l.Free(now) {
			switch l.State {
			case lease.StateOffered, lease.StateBound:
				h.ports.set(l.IP, l.Port, l.Expires, false)
			case lease.StateDeclined:
				h.ports.set(l.IP, l.Port, l.Expires, true)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("dhcp: reading leases: %w", err)
	}
	for _, p := range h.pools {
		if only != nil && p != only {
			continue
		}
		a := p.alloc
		a.mu.Lock()
		a.resetLocked()
		for _, e := range got[p] {
			a.setLocked(u32Addr(e.ip), e.st)
		}
		a.mu.Unlock()
	}
	return nil
}

// Reclaim expires offered and bound leases past their end and declined
// ones past probation (Store.Reclaim) and returns their addresses to the
// free set. It returns how many leases it reclaimed. Call it
// periodically; Handle also calls it when a pool runs out.
func (h *Handler) Reclaim(ctx context.Context, now time.Time) (int, error) {
	n, err := h.store.Reclaim(ctx, now, func(l lease.Lease) {
		if p := h.byName[l.Pool]; p != nil {
			p.alloc.set(l.IP, stFreeUsed)
		}
		h.ports.remove(l.IP)
		h.retryReservation(ctx, l.IP)
	})
	h.stats.reclaimed.Add(uint64(n))
	if err != nil {
		return n, fmt.Errorf("dhcp: reclaiming leases: %w", err)
	}
	return n, nil
}

// Handle answers one request. It never panics: a panic inside is
// recovered and reported as Dropped "internal-error".
func (h *Handler) Handle(ctx context.Context, req Request) (rep Reply, out Outcome) {
	h.stats.received.Add(1)
	defer func() {
		if r := recover(); r != nil {
			h.log.Error("dhcp: handler panic", "error", fmt.Sprint(r), "stack", string(debug.Stack()))
			rep, out = Reply{}, drop(ReasonInternalError)
		}
		h.stats.count(out)
		if out.Action == Dropped {
			h.log.Debug("dhcp: dropped", "port", req.Port, "vlan", req.VLAN, "reason", out.Reason)
		}
	}()
	now := req.Received
	if now.IsZero() {
		now = time.Now()
	}
	if !h.rate.allow(req.Port, now) {
		return Reply{}, drop(ReasonRateLimited)
	}
	m, err := parseRequest(req.Payload)
	switch {
	case errors.Is(err, errServerMessage):
		if m != nil {
			h.stats.countType(m.msgType)
		}
		if h.logs.allow("rogue:" + req.Port) {
			h.log.Warn("dhcp: server message from a client port (rogue DHCP server?)", "port", req.Port, "vlan", req.VLAN, "src", req.SrcMAC.String())
		}
		return Reply{}, drop(ReasonServerMessage)
	case errors.Is(err, errUnknownType):
		h.stats.countType(m.msgType)
		return Reply{}, drop(ReasonUnknownType)
	case err != nil:
		h.log.Debug("dhcp: malformed request", "port", req.Port, "error", err)
		return Reply{}, drop(ReasonParseFailed)
	}
	h.stats.countType(m.msgType)
	if req.DstIP.IsValid() && !h.ours[req.DstIP] {
		return Reply{}, drop(ReasonNotForUs)
	}
	if h.cfg.VerifyClientMAC && !m.giaddr.IsValid() && !bytes.Equal(m.chaddr, req.SrcMAC) {
		return Reply{}, drop(ReasonChaddrMismatch)
	}
	p := h.selectPool(m, req)
	if p == nil {
		return Reply{}, drop(ReasonNoPool)
	}
	mu := &h.macLocks[macStripe(m.chaddr)]
	mu.Lock()
	defer mu.Unlock()
	t := &txn{h: h, ctx: ctx, req: &req, m: m, p: p, class: p.ClassFor(m.vendorClass), now: now}
	switch m.msgType {
	case dhcpv4.MessageTypeDiscover:
		return t.discover()
	case dhcpv4.MessageTypeRequest:
		return t.request()
	case dhcpv4.MessageTypeDecline:
		return t.decline()
	case dhcpv4.MessageTypeRelease:
		return t.release()
	case dhcpv4.MessageTypeInform:
		return t.inform()
	}
	return Reply{}, drop(ReasonUnknownType)
}

func drop(reason string) Outcome { return Outcome{Action: Dropped, Reason: reason} }

func silent(reason string) Outcome { return Outcome{Action: Silent, Reason: reason} }

// macStripe hashes a MAC (FNV-1a) to one of the client locks.
func macStripe(mac net.HardwareAddr) uint8 {
	h := uint32(2166136261)
	for _, b := range mac {
		h = (h ^ uint32(b)) * 16777619
	}
	return uint8(h ^ h>>8 ^ h>>16 ^ h>>24)
}

// selectPool: relayed requests by the subnet holding giaddr, others by
// the VLAN they arrived on.
func (h *Handler) selectPool(m *message, req Request) *Pool {
	if m.giaddr.IsValid() {
		for _, p := range h.pools {
			if p.subnet.Contains(m.giaddr) {
				return p
			}
		}
		return nil
	}
	return h.byVLAN[req.VLAN]
}

// txn is one request being handled, under its client's lock.
type txn struct {
	h     *Handler
	ctx   context.Context
	req   *Request
	m     *message
	p     *Pool
	class int
	now   time.Time
}

func (t *txn) mac() net.HardwareAddr { return t.m.chaddr }

func (t *txn) failed(op string, err error) (Reply, Outcome) {
	if t.h.logs.allow("store:" + op) {
		t.h.log.Warn("dhcp: lease store failed", "op", op, "pool", t.p.name, "mac", t.mac().String(), "error", err)
	}
	return Reply{}, drop(ReasonProcessingFailed)
}

// current returns the client's lease in the pool, if any.
func (t *txn) current() (lease.Lease, bool, error) {
	l, err := t.h.store.ByMAC(t.ctx, t.p.name, t.mac())
	if errors.Is(err, lease.ErrNotFound) {
		return lease.Lease{}, false, nil
	}
	if err != nil {
		return lease.Lease{}, false, err
	}
	return l, true, nil
}

// allocate gives ip to the client in state st through Store.Allocate
// and brings the allocator and the port index up to date. prev is the
// client's lease in the pool before (hasPrev), which the store frees
// when ip differs. pending says the allocator holds ip as picked.
func (t *txn) allocate(ip netip.Addr, st lease.State, prev lease.Lease, hasPrev, pending bool) (time.Time, error) {
	exp := t.now.Add(t.h.offerTimeout)
	if st == lease.StateBound {
		exp = t.now.Add(t.p.leaseTime)
	}
	l := lease.Lease{
		IP:       ip,
		MAC:      slices.Clone(t.mac()),
		Pool:     t.p.name,
		State:    st,
		Expires:  exp,
		Port:     t.req.Port,
		VLAN:     t.req.VLAN,
		ClientID: slices.Clone(t.m.clientID),
		Hostname: slices.Clone(t.m.hostname),
	}
	err := t.h.store.Allocate(t.ctx, l, t.now)
	a := t.p.alloc
	switch {
	case err == nil:
		a.set(ip, stAssigned)
		t.h.ports.set(ip, t.req.Port, exp, false)
		if hasPrev && prev.IP != ip && t.p.subnet.Contains(prev.IP) {
			t.previousFreed(prev)
		}
	case errors.Is(err, lease.ErrAddressInUse):
		a.set(ip, stAssigned)
	case errors.Is(err, lease.ErrReserved):
		a.set(ip, stReserved)
	case pending:
		a.set(ip, stFreeUsed)
	}
	return exp, err
}

// previousFreed follows Store.Allocate freeing the client's previous
// address. A client that DECLINEs starts over with a DISCOVER (RFC 2131
// section 3.1 step 5); a store that frees a declined previous address on
// Allocate (the Memory store does) would end its probation there and
// then, so the handler puts it back on probation until its original end.
func (t *txn) previousFreed(prev lease.Lease) {
	h, a := t.h, t.p.alloc
	if prev.State == lease.StateDeclined && t.now.Before(prev.Expires) {
		l, err := h.store.ByIP(t.ctx, prev.IP)
		switch {
		case err == nil && l.State == lease.StateDeclined:
			return // the store kept it on probation
		case err == nil && !bytes.Equal(l.MAC, t.mac()):
			// Another client took it in between: record what it is now.
			a.mu.Lock()
			a.setFromLeaseLocked(l, t.now)
			a.mu.Unlock()
			h.ports.remove(prev.IP)
			return
		case err == nil:
			if err = h.store.Decline(t.ctx, prev.IP, t.mac(), prev.Expires); err == nil {
				return // still stDeclined, still counted on its port
			}
		}
		if h.logs.allow("redecline") {
			h.log.Warn("dhcp: could not keep a declined address on probation", "ip", prev.IP.String(), "error", err)
		}
	}
	a.set(prev.IP, stFreeUsed)
	h.ports.remove(prev.IP)
}

func conflict(err error) bool {
	return errors.Is(err, lease.ErrAddressInUse) || errors.Is(err, lease.ErrReserved)
}

func (t *txn) discover() (Reply, Outcome) {
	h, p, mac := t.h, t.p, t.mac()
	cur, hasCur, err := t.current()
	if err != nil {
		return t.failed("by-mac", err)
	}
	// A client still bound to the address it is about to be offered keeps
	// its lease as it is: nothing to write.
	stillBound := func(ip netip.Addr) bool {
		return hasCur && cur.IP == ip && cur.State == lease.StateBound && t.now.Before(cur.Expires)
	}
	if ip, ok := p.reservedFor(mac); ok {
		if stillBound(ip) {
			return t.reply(blockOffer, ip)
		}
		_, err := t.allocate(ip, lease.StateOffered, cur, hasCur, false)
		if err == nil {
			return t.reply(blockOffer, ip)
		}
		if !conflict(err) {
			return t.failed("allocate", err)
		}
		h.stats.reservationConflicts.Add(1)
		if h.logs.allow("resv-conflict:" + ip.String()) {
			h.log.Warn("dhcp: reserved address held by another client; offering a dynamic one",
				"pool", p.name, "mac", mac.String(), "ip", ip.String())
		}
	}
	if hasCur && cur.State != lease.StateDeclined && p.assignable(cur.IP, mac) && stillBound(cur.IP) {
		return t.reply(blockOffer, cur.IP)
	}

	limit := h.cfg.MaxLeasesPerPort
	if _, reserved := p.reservedFor(mac); reserved {
		limit = 0 // reserved clients are vetted by the administrator
	}
	var except netip.Addr
	if hasCur {
		except = cur.IP
	}
	if !h.ports.acquire(t.req.Port, t.now, except, limit) {
		return Reply{}, drop(ReasonPortLeaseLimit)
	}
	var got netip.Addr
	var gotExp time.Time
	defer func() { h.ports.done(t.req.Port, limit, got, gotExp) }()
	try := func(ip netip.Addr, pending bool) (bool, error) {
		exp, err := t.allocate(ip, lease.StateOffered, cur, hasCur, pending)
		if err == nil {
			got, gotExp = ip, exp
			return true, nil
		}
		if conflict(err) {
			return false, nil
		}
		return false, err
	}

	// 1. The client's previous address, in whatever free state.
	if hasCur && cur.State != lease.StateDeclined && p.assignable(cur.IP, mac) {
		pending := p.alloc.claim(cur.IP)
		if ok, err := try(cur.IP, pending); err != nil {
			return t.failed("allocate", err)
		} else if ok {
			return t.reply(blockOffer, got)
		}
	}
	// 2. The address it asks for (option 50), if free.
	if ip := t.m.requestedIP; ip.IsValid() && ip != cur.IP && p.assignable(ip, mac) && p.alloc.claim(ip) {
		if ok, err := try(ip, true); err != nil {
			return t.failed("allocate", err)
		} else if ok {
			return t.reply(blockOffer, got)
		}
	}
	// 3. Any free address.
	recovered := false
	for range maxAllocTries {
		ip, ok := p.alloc.take()
		if !ok {
			if recovered || !h.recoverPool(t.ctx, p, t.now) {
				break
			}
			recovered = true
			continue
		}
		if ok, err := try(ip, true); err != nil {
			return t.failed("allocate", err)
		} else if ok {
			return t.reply(blockOffer, got)
		}
	}
	if h.logs.allow("exhausted:" + p.name) {
		h.log.Warn("dhcp: pool exhausted", "pool", p.name, "port", t.req.Port)
	}
	return Reply{}, drop(ReasonPoolExhausted)
}

// recoverPool reclaims expired leases and rebuilds the pool's free set
// from the store, at most once per recoverInterval. It reports whether
// the pool has free addresses afterwards.
func (h *Handler) recoverPool(ctx context.Context, p *Pool, now time.Time) bool {
	a := p.alloc
	a.mu.Lock()
	if !a.lastRecover.IsZero() && !now.Before(a.lastRecover) && now.Sub(a.lastRecover) < recoverInterval {
		a.mu.Unlock()
		return false
	}
	a.lastRecover = now
	a.mu.Unlock()
	if _, err := h.Reclaim(ctx, now); err != nil {
		h.log.Warn("dhcp: reclaim failed", "pool", p.name, "error", err)
	}
	if err := h.load(ctx, now, p, false); err != nil {
		h.log.Warn("dhcp: rebuilding the free set failed", "pool", p.name, "error", err)
	}
	return a.free() > 0
}

func (t *txn) request() (Reply, Outcome) {
	m := t.m
	switch {
	case m.serverID.IsValid():
		return t.selecting()
	case m.requestedIP.IsValid() && !m.ciaddr.IsValid():
		return t.initReboot()
	case m.ciaddr.IsValid():
		return t.renewing()
	}
	return Reply{}, drop(ReasonNotRequestingAddr)
}

// selecting: the client chose an offer (option 54 names the server).
func (t *txn) selecting() (Reply, Outcome) {
	h, p, mac := t.h, t.p, t.mac()
	if t.m.serverID != p.serverIP {
		// It chose another server: drop the offer we made it.
		if cur, ok, err := t.current(); err == nil && ok && cur.State == lease.StateOffered {
			if h.store.Release(t.ctx, cur.IP, mac) == nil {
				p.alloc.set(cur.IP, stFreeUsed)
				h.ports.remove(cur.IP)
			}
		}
		return Reply{}, silent(ReasonNotOurServer)
	}
	ip := t.m.requestedIP
	if !ip.IsValid() {
		return Reply{}, drop(ReasonNotRequestingAddr)
	}
	// Whatever we offered it (its reserved address, or a dynamic one when
	// that was held by another client) is what it may have.
	if p.reservedForOther(ip, mac) {
		return t.nak()
	}
	l, err := h.store.ByIP(t.ctx, ip)
	if err != nil && !errors.Is(err, lease.ErrNotFound) {
		return t.failed("by-ip", err)
	}
	if err != nil || !bytes.Equal(l.MAC, mac) || l.Pool != p.name ||
		(l.State != lease.StateOffered && l.State != lease.StateBound) {
		return t.nak()
	}
	return t.bind(ip, l, true, false)
}

// bind allocates ip bound and ACKs, or NAKs on a conflict.
func (t *txn) bind(ip netip.Addr, prev lease.Lease, hasPrev, pending bool) (Reply, Outcome) {
	_, err := t.allocate(ip, lease.StateBound, prev, hasPrev, pending)
	switch {
	case err == nil:
		return t.reply(blockAck, ip)
	case conflict(err):
		return t.nak()
	}
	return t.failed("allocate", err)
}

// initReboot: the client asks to keep an address it remembers (option
// 50, no 54, ciaddr 0). The server is authoritative for its subnet.
func (t *txn) initReboot() (Reply, Outcome) {
	h, p, mac := t.h, t.p, t.mac()
	ip := t.m.requestedIP
	if !p.subnet.Contains(ip) || p.reservedForOther(ip, mac) {
		return t.nak()
	}
	if moved, err := t.reservationElsewhere(ip); err != nil {
		return t.failed("by-ip", err)
	} else if moved {
		return t.nak()
	}
	l, err := h.store.ByIP(t.ctx, ip)
	found := err == nil
	if err != nil && !errors.Is(err, lease.ErrNotFound) {
		return t.failed("by-ip", err)
	}
	if found && bytes.Equal(l.MAC, mac) && l.Pool == p.name {
		if l.State == lease.StateDeclined {
			return t.nak()
		}
		return t.bind(ip, l, true, false)
	}
	if found && !l.Free(t.now) {
		return t.nak() // another client's
	}
	if !p.assignable(ip, mac) {
		return t.nak()
	}
	cur, hasCur, err := t.current()
	if err != nil {
		return t.failed("by-mac", err)
	}
	limit := h.cfg.MaxLeasesPerPort
	if _, reserved := p.reservedFor(mac); reserved {
		limit = 0
	}
	var except netip.Addr
	if hasCur {
		except = cur.IP
	}
	if !h.ports.acquire(t.req.Port, t.now, except, limit) {
		return Reply{}, drop(ReasonPortLeaseLimit)
	}
	pending := p.alloc.claim(ip)
	exp, err := t.allocate(ip, lease.StateBound, cur, hasCur, pending)
	if err == nil {
		h.ports.done(t.req.Port, limit, ip, exp)
		return t.reply(blockAck, ip)
	}
	h.ports.done(t.req.Port, limit, netip.Addr{}, time.Time{})
	if conflict(err) {
		return t.nak()
	}
	return t.failed("allocate", err)
}

// reservationElsewhere reports whether the client has a reservation for
// an address other than ip that it could have now: then a NAK sends it
// back to DISCOVER, which gives it the reserved address. While another
// client holds the reserved address it keeps the dynamic one.
func (t *txn) reservationElsewhere(ip netip.Addr) (bool, error) {
	r, ok := t.p.reservedFor(t.mac())
	if !ok || r == ip {
		return false, nil
	}
	l, err := t.h.store.ByIP(t.ctx, r)
	switch {
	case errors.Is(err, lease.ErrNotFound):
		return true, nil
	case err != nil:
		return false, err
	}
	return bytes.Equal(l.MAC, t.mac()) || l.Free(t.now), nil
}

// renewing covers RENEWING (unicast) and REBINDING (broadcast): ciaddr
// set, no 50 or 54.
func (t *txn) renewing() (Reply, Outcome) {
	h, p, mac := t.h, t.p, t.mac()
	ip := t.m.ciaddr
	if !p.subnet.Contains(ip) || p.reservedForOther(ip, mac) {
		return t.nak()
	}
	if moved, err := t.reservationElsewhere(ip); err != nil {
		return t.failed("by-ip", err)
	} else if moved {
		return t.nak()
	}
	exp := t.now.Add(p.leaseTime)
	l, err := h.store.Renew(t.ctx, ip, mac, exp)
	switch {
	case errors.Is(err, lease.ErrNotFound), errors.Is(err, lease.ErrNotOwner), errors.Is(err, lease.ErrReserved):
		// ErrReserved: reserved for another client since it was leased.
		return t.nak()
	case err != nil:
		return t.failed("renew", err)
	}
	p.alloc.set(ip, stAssigned)
	h.ports.set(ip, l.Port, exp, false)
	return t.reply(blockAck, ip)
}

// owned checks that the client may RELEASE or DECLINE ip: its lease,
// active, taken through this port.
func (t *txn) owned(ip netip.Addr) (Outcome, bool) {
	l, err := t.h.store.ByIP(t.ctx, ip)
	switch {
	case errors.Is(err, lease.ErrNotFound):
		return drop(ReasonUnknownClient), false
	case err != nil:
		_, o := t.failed("by-ip", err)
		return o, false
	case !bytes.Equal(l.MAC, t.mac()):
		return drop(ReasonNotOwner), false
	case l.Port != t.req.Port:
		return drop(ReasonWrongPort), false
	case l.State != lease.StateOffered && l.State != lease.StateBound:
		return drop(ReasonUnknownClient), false
	}
	return Outcome{}, true
}

// givingBack checks a DECLINE or RELEASE of ip: an address given, sent to
// this server (if it names one), by the client holding it on this port.
func (t *txn) givingBack(ip netip.Addr) (Outcome, bool) {
	if !ip.IsValid() {
		return drop(ReasonRFCViolation), false
	}
	if t.m.serverID.IsValid() && t.m.serverID != t.p.serverIP {
		return drop(ReasonNotOurServer), false
	}
	return t.owned(ip)
}

func (t *txn) decline() (Reply, Outcome) {
	h, p := t.h, t.p
	ip := t.m.requestedIP
	if o, ok := t.givingBack(ip); !ok {
		return Reply{}, o
	}
	if h.cfg.MaxDeclinesPerPort > 0 && h.ports.declines(t.req.Port, t.now) >= h.cfg.MaxDeclinesPerPort {
		return Reply{}, drop(ReasonDeclineLimit)
	}
	until := t.now.Add(h.probation)
	err := h.store.Decline(t.ctx, ip, t.mac(), until)
	switch {
	case errors.Is(err, lease.ErrNotFound), errors.Is(err, lease.ErrNotOwner):
		return Reply{}, drop(ReasonNotOwner)
	case err != nil:
		return t.failed("decline", err)
	}
	p.alloc.set(ip, stDeclined)
	h.ports.set(ip, t.req.Port, until, true)
	h.log.Info("dhcp: address declined", "pool", p.name, "ip", ip.String(), "mac", t.mac().String(), "port", t.req.Port)
	return Reply{}, silent(ReasonDeclined)
}

func (t *txn) release() (Reply, Outcome) {
	h, p := t.h, t.p
	ip := t.m.ciaddr
	if o, ok := t.givingBack(ip); !ok {
		return Reply{}, o
	}
	err := h.store.Release(t.ctx, ip, t.mac())
	switch {
	case errors.Is(err, lease.ErrNotFound), errors.Is(err, lease.ErrNotOwner):
		return Reply{}, drop(ReasonNotOwner)
	case err != nil:
		return t.failed("release", err)
	}
	p.alloc.set(ip, stFreeUsed)
	h.ports.remove(ip)
	h.retryReservation(t.ctx, ip)
	return Reply{}, silent(ReasonReleased)
}

func (t *txn) inform() (Reply, Outcome) {
	if !t.m.ciaddr.IsValid() {
		return Reply{}, drop(ReasonRFCViolation)
	}
	return t.reply(blockInform, netip.Addr{})
}

func (t *txn) nak() (Reply, Outcome) { return t.reply(blockNak, netip.Addr{}) }

// reply builds the message and addresses it (RFC 2131 section 4.1).
func (t *txn) reply(kind blockKind, yiaddr netip.Addr) (Reply, Outcome) {
	m := t.m
	class := t.class
	if kind == blockNak {
		class = 0
	}
	flags := m.flags
	if kind == blockNak && m.giaddr.IsValid() {
		flags |= flagBroadcast // so the relay broadcasts it (RFC 2131 section 4.3.2)
	}
	// ciaddr is echoed in an ACK to a client that has its address
	// (RENEWING, REBINDING, INFORM); zero otherwise (RFC 2131 table 3).
	var ciaddr netip.Addr
	if kind == blockAck || kind == blockInform {
		ciaddr = m.ciaddr
	}
	payload := buildReply(t.p.blocks[class][kind], m, flags, ciaddr, yiaddr)

	r := Reply{Port: t.req.Port, VLAN: t.req.VLAN, SrcIP: t.p.serverIP, DstPort: 68, Payload: payload}
	switch {
	case m.giaddr.IsValid():
		r.DstIP, r.DstPort, r.DstMAC = m.giaddr, 67, slices.Clone(t.req.SrcMAC)
	case kind == blockNak:
		r.DstIP, r.DstMAC = broadcastIP, slices.Clone(broadcastMAC)
	case m.ciaddr.IsValid():
		r.DstIP, r.DstMAC = m.ciaddr, slices.Clone(m.chaddr)
	case m.flags&flagBroadcast != 0:
		r.DstIP, r.DstMAC = broadcastIP, slices.Clone(broadcastMAC)
	default:
		r.DstIP, r.DstMAC = yiaddr, slices.Clone(m.chaddr)
	}
	reason := ReasonAck
	switch kind {
	case blockOffer:
		reason = ReasonOffer
	case blockNak:
		reason = ReasonNak
	}
	return r, Outcome{Action: Answered, Reason: reason}
}

// buildReply writes the BOOTREPLY exactly as (*dhcpv4.DHCPv4).ToBytes
// would: header, cookie, the option block, option 82 echoed if the
// request had it (last, as the codec sorts it, split at 255 bytes), END,
// zero padding to 300 bytes.
func buildReply(block []byte, m *message, flags uint16, ciaddr, yiaddr netip.Addr) []byte {
	n := bootpHeaderLen + 4 + len(block) + 1
	if m.hasAgent {
		n += len(m.agentInfo) + 2*((len(m.agentInfo)+254)/255)
	}
	b := make([]byte, max(n, 300))
	b[0], b[1], b[2] = opReply, htypeEthernet, 6
	copy(b[4:8], m.xid[:])
	binary.BigEndian.PutUint16(b[10:12], flags)
	putIP(b[12:16], ciaddr)
	putIP(b[16:20], yiaddr)
	putIP(b[24:28], m.giaddr)
	copy(b[28:34], m.chaddr)
	copy(b[bootpHeaderLen:], magicCookie[:])
	i := bootpHeaderLen + 4
	i += copy(b[i:], block)
	if m.hasAgent {
		for rest := m.agentInfo; len(rest) > 0; {
			c := min(len(rest), 255)
			b[i], b[i+1] = optAgentInfo, byte(c)
			i += 2 + copy(b[i+2:], rest[:c])
			rest = rest[c:]
		}
	}
	b[i] = optEnd
	return b
}

func putIP(b []byte, a netip.Addr) {
	if a.Is4() {
		v := a.As4()
		copy(b, v[:])
	}
}

// logLimiter lets a warning that packets can trigger through at most
// once per logEvery per key, so a flood cannot flood the log too; the
// counters keep the full count.
type logLimiter struct {
	mu   sync.Mutex
	last map[string]time.Time
}

const logEvery = 10 * time.Second

func (l *logLimiter) allow(key string) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[key]; ok && now.Sub(t) < logEvery {
		return false
	}
	if len(l.last) > 4096 {
		clear(l.last)
	}
	l.last[key] = now
	return true
}
