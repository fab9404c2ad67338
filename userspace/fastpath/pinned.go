package fastpath

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Pinned is the part of a daemon's fast path state that is read from
// another process through its pins: the counters, the DHCP bindings and
// the pools' queues of free addresses. `phoneboot lab` uses it to check,
// after a storm, that the kernel's view of the leases agrees with the
// lease store's and the phones', and to count the answers the kernel gave
// while the daemon was down. It changes nothing: reading a queue takes its
// addresses out and puts them back in order.
type Pinned struct {
	objs Objects // only the maps named below are set
}

// OpenPinned opens the counters, bindings and free queues pinned in pinDir.
func OpenPinned(pinDir string) (_ *Pinned, err error) {
	p := &Pinned{}
	m := &p.objs.objs.phonePortMaps
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	for name, dst := range map[string]**ebpf.Map{
		phonePortMapPbCounters:     &m.PbCounters,
		phonePortMapPbDhcpBindings: &m.PbDhcpBindings,
		phonePortMapPbDhcpFree:     &m.PbDhcpFree,
	} {
		if *dst, err = ebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil); err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
	}
	return p, nil
}

// Counters sums every counter over the possible CPUs.
func (p *Pinned) Counters() ([]Counter, error) { return p.objs.ReadCounters() }

// WalkBindings calls fn with every DHCP binding (see DHCPTables.WalkBindings).
func (p *Pinned) WalkBindings(fn func(b DHCPBinding)) error {
	return p.objs.DHCP().WalkBindings(fn)
}

// FreeQueued calls fn with every address queued for a pool's new clients.
// A queue can only be read by taking its addresses out: they are put back
// at once, in their order, so the kernel hands them out as before; a
// client the kernel would have given one of them in the moment between
// gets its request passed to the daemon instead.
func (p *Pinned) FreeQueued(fn func(poolID uint32, ip netip.Addr)) error {
	t := p.objs.DHCP()
	for id := uint32(1); id < DHCPPoolMax; id++ {
		ips, err := t.DrainFree(id)
		if len(ips) > 0 {
			n, perr := t.PushFree(id, ips)
			if perr == nil && n < len(ips) {
				perr = fmt.Errorf("free queue %d: %d of %d addresses did not fit back", id, len(ips)-n, len(ips))
			}
			err = errors.Join(err, perr)
		}
		if err != nil {
			return err
		}
		for _, ip := range ips {
			fn(id, ip)
		}
	}
	return nil
}

// Close releases the maps; the pins stay.
func (p *Pinned) Close() error { return p.objs.objs.Close() }
