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
// addresses: not when a per-port lease cap applies, which only the
// handler can count.
func (h *Handler) KernelAllocates() bool { return h.cfg.MaxLeasesPerPort == 0 }

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

// RecordKernelLease persists an OFFER or ACK the fast path sent.
func (h *Handler) RecordKernelLease(ctx context.Context, k KernelLease) error {
	p := h.byVLAN[k.VLAN]
	if p == nil {
		return fmt.Errorf("dhcp: fast path lease %s on VLAN %d, which has no pool", k.IP, k.VLAN)
	}
	mu := &h.macLocks[macStripe(k.MAC)]
	mu.Lock()
	defer mu.Unlock()
	st := lease.StateOffered
	if k.Bound {
		st = lease.StateBound
	}
	l := lease.Lease{IP: k.IP, MAC: k.MAC, Pool: p.name, State: st, Expires: k.Expires, Port: k.Port, VLAN: k.VLAN}
	if err := h.store.Allocate(ctx, l, time.Now()); err != nil {
		h.stats.fastpathConflicts.Add(1)
		return fmt.Errorf("dhcp: persisting fast path lease %s for %s: %w", k.IP, k.MAC, err)
	}
	p.alloc.kernelAssigned(k.IP)
	if k.Port != "" {
		h.ports.set(k.IP, k.Port, k.Expires, false)
	}
	return nil
}
