package dhcp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/phoneboot/phoneboot/userspace/lease"
)

// The handler's side of the XDP fast path: the kernel hands out addresses
// from a queue the handler fills, and reports what it handed out so the
// handler persists it.

// PoolByVLAN returns the pool serving a VLAN, or nil.
func (h *Handler) PoolByVLAN(vlan uint16) *Pool { return h.byVLAN[vlan] }

// ClassMatch returns class c's exact option 60 or its prefix (one is set).
func (p *Pool) ClassMatch(c int) (exact, prefix string) {
	if c < 1 || c > len(p.classes) {
		return "", ""
	}
	return p.classes[c-1].VendorClass, p.classes[c-1].VendorClassPrefix
}

// OfferTimeout is how long an offered address is held.
func (h *Handler) OfferTimeout() time.Duration { return h.offerTimeout }

// KernelAllocates reports whether the fast path may give new clients
// addresses: not when a per-port lease cap or rate limit applies, which
// only the handler counts. Otherwise a port sending DISCOVERs from made-up
// MACs would drain the pool at line rate through the kernel, past the
// defences configured against exactly that. Bound clients are still
// answered in the kernel: they take nothing new.
func (h *Handler) KernelAllocates() bool {
	return h.cfg.MaxLeasesPerPort == 0 && h.cfg.RatePerPort == 0
}

// VerifyClientMAC reports whether chaddr must equal the frame's source.
func (h *Handler) VerifyClientMAC() bool { return h.cfg.VerifyClientMAC }

// TakeForKernel takes up to n never-leased addresses of p for the fast
// path's free queue; until returned or reported, no client gets them here.
func (h *Handler) TakeForKernel(p *Pool, n int) []netip.Addr { return p.alloc.takeForKernel(n) }

// ReturnFromKernel takes back queued addresses the fast path did not use.
func (h *Handler) ReturnFromKernel(p *Pool, ips []netip.Addr) { p.alloc.returnFromKernel(ips) }

// KernelLease is an address the fast path handed out.
type KernelLease struct {
	VLAN    uint16
	MAC     net.HardwareAddr
	IP      netip.Addr
	Bound   bool // ACKed; else offered
	Expires time.Time
	Port    string
}

// RecordKernelLeases persists OFFERs and ACKs the fast path sent, in one
// batch (lease.Store.AllocateBatch: one commit for many, where a lease
// each would cost a commit each), and returns one outcome per lease. A
// lease whose outcome is nil is durable and its address assigned in the
// allocator; until then the allocator keeps the address as the kernel's,
// so no other client gets it.
func (h *Handler) RecordKernelLeases(ctx context.Context, ks []KernelLease) []error {
	out := make([]error, len(ks))
	pools := make([]*Pool, len(ks))
	ls := make([]lease.Lease, 0, len(ks))
	idx := make([]int, 0, len(ks))
	var stripes [len(h.macLocks)]bool
	for i, k := range ks {
		p := h.byVLAN[k.VLAN]
		if p == nil {
			out[i] = fmt.Errorf("dhcp: fast path lease %s on VLAN %d, which has no pool", k.IP, k.VLAN)
			continue
		}
		st := lease.StateOffered
		if k.Bound {
			st = lease.StateBound
		}
		pools[i] = p
		ls = append(ls, lease.Lease{IP: k.IP, MAC: k.MAC, Pool: p.name, State: st, Expires: k.Expires, Port: k.Port, VLAN: k.VLAN})
		idx = append(idx, i)
		stripes[macStripe(k.MAC)] = true
	}
	// The clients' locks, as Handle takes them, in stripe order: Handle
	// holds one at a time, so the batch cannot deadlock with it.
	for i, take := range stripes {
		if take {
			h.macLocks[i].Lock()
		}
	}
	defer func() {
		for i, took := range stripes {
			if took {
				h.macLocks[i].Unlock()
			}
		}
	}()
	for j, err := range h.store.AllocateBatch(ctx, ls, time.Now()) {
		i := idx[j]
		k := ks[i]
		if err != nil {
			if conflict(err) {
				h.stats.fastpathConflicts.Add(1)
			}
			out[i] = fmt.Errorf("dhcp: persisting fast path lease %s for %s: %w", k.IP, k.MAC, err)
			continue
		}
		pools[i].alloc.kernelAssigned(k.IP)
		if k.Port != "" {
			h.ports.set(k.IP, k.Port, k.Expires, false)
		}
	}
	return out
}
