package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/phoneboot/phoneboot/userspace/fastpath"
	"github.com/phoneboot/phoneboot/userspace/lease"
)

// The lease integrity check, at the end of every run: the addresses the
// phones use, the daemon's lease store and the fast path's bindings must
// tell the same story. A lost lease is a phone using an address the store
// (or the kernel) does not bind to it: the next new client may be given
// that address. A duplicate is an address two clients hold. The check
// counts both, and what would lead to them: an address a phone holds
// sitting in the kernel's queue of free addresses for new clients.

// IntegrityReport is the check's result in the JSON report.
type IntegrityReport struct {
	// Phones is how many phones held an address at the end (a phone that
	// failed before DHCP holds none and is not checked).
	Phones int `json:"phones"`
	// StoreLeases is how many leases the daemon's store holds (offered or
	// bound, unexpired), read from its file after the daemon stopped.
	StoreLeases int `json:"store_leases"`
	// KernelBindings is how many live bound clients the fast path holds,
	// and KernelQueued how many addresses its pools' queues hold for new
	// clients; both read through its pins before the daemon stopped, and
	// 0 without the fast path.
	KernelBindings int  `json:"kernel_bindings"`
	KernelQueued   int  `json:"kernel_queued"`
	FastPath       bool `json:"fast_path"`
	// Violations counts every problem found; Problems lists the first
	// maxIntegrityProblems of them.
	Violations int                `json:"violations"`
	Problems   []IntegrityProblem `json:"problems"`
}

// IntegrityProblem is one violation.
type IntegrityProblem struct {
	Kind   string `json:"kind"`
	Phone  string `json:"phone,omitempty"`
	IP     string `json:"ip,omitempty"`
	Detail string `json:"detail"`
}

// The kinds of violation.
const (
	// Two phones use the same address.
	problemDuplicate = "duplicate_address"
	// The store has no lease for a phone's MAC, or one on another
	// address, or one not bound.
	problemStoreMissing = "store_missing"
	problemStoreDiffers = "store_differs"
	// The store has a phone's address leased to another MAC.
	problemStoreOtherHolder = "store_other_holder"
	// A MAC holds two addresses in the store.
	problemStoreTwoAddresses = "store_two_addresses"
	// The store file could not be opened or read (corrupt, locked).
	problemStoreUnreadable = "store_unreadable"
	// The kernel has no live bound binding for a phone, or one on another
	// address.
	problemKernelMissing = "kernel_missing"
	problemKernelDiffers = "kernel_differs"
	// Two clients are bound to one address in the kernel.
	problemKernelTwoClients = "kernel_two_clients"
	// A phone's address is queued for new clients.
	problemKernelQueued = "kernel_queued"
	// A client other than the phones is bound in the store but not in
	// the kernel, or the other way round.
	problemStoreKernel = "store_kernel_disagree"
	// The kernel's tables could not be read.
	problemKernelUnreadable = "kernel_unreadable"
)

const maxIntegrityProblems = 100

// leaseDBName is the agent's lease store in the lab's run directory.
const leaseDBName = "leases.db"

// heldAddress is the address a phone uses at the end of the run.
type heldAddress struct {
	Phone string
	MAC   net.HardwareAddr
	VLAN  uint16
	IP    netip.Addr
}

// integrityInput is what the check compares.
type integrityInput struct {
	phones []heldAddress
	store  []lease.Lease // every lease of the store, any state
	// fastPath says whether kernel and queued were read.
	fastPath bool
	kernel   []fastpath.DHCPBinding
	queued   []netip.Addr
	now      time.Time
	// unreadable are problems reading the store or the kernel.
	unreadable []IntegrityProblem
}

// clientKey names a DHCP client: its VLAN and MAC.
type clientKey struct {
	vlan uint16
	mac  string
}

func keyOf(vlan uint16, mac net.HardwareAddr) clientKey { return clientKey{vlan, string(mac)} }

// checkIntegrity compares the phones' addresses with the store and the
// kernel and lists every disagreement.
func checkIntegrity(in integrityInput) IntegrityReport {
	rep := IntegrityReport{Phones: len(in.phones), FastPath: in.fastPath, Problems: []IntegrityProblem{}}
	add := func(p IntegrityProblem) {
		rep.Violations++
		if len(rep.Problems) < maxIntegrityProblems {
			rep.Problems = append(rep.Problems, p)
		}
	}
	for _, p := range in.unreadable {
		add(p)
	}

	// Phones against each other.
	byIP := map[netip.Addr][]string{}
	for _, ph := range in.phones {
		byIP[ph.IP] = append(byIP[ph.IP], ph.Phone)
	}
	for _, ph := range in.phones {
		if others := byIP[ph.IP]; others[0] != ph.Phone {
			add(IntegrityProblem{Kind: problemDuplicate, Phone: ph.Phone, IP: ph.IP.String(),
				Detail: fmt.Sprintf("also used by %s", strings.Join(others[:slices.Index(others, ph.Phone)], ", "))})
		}
	}

	// The store: who holds what, unexpired.
	storeByIP := map[netip.Addr]lease.Lease{}
	storeByClient := map[clientKey][]lease.Lease{}
	for _, l := range in.store {
		if (l.State != lease.StateOffered && l.State != lease.StateBound) || !in.now.Before(l.Expires) {
			continue
		}
		rep.StoreLeases++
		storeByIP[l.IP] = l
		k := keyOf(l.VLAN, l.MAC)
		storeByClient[k] = append(storeByClient[k], l)
	}
	for k, ls := range storeByClient {
		if len(ls) > 1 {
			var ips []string
			for _, l := range ls {
				ips = append(ips, l.IP.String())
			}
			slices.Sort(ips)
			add(IntegrityProblem{Kind: problemStoreTwoAddresses, IP: ips[0],
				Detail: fmt.Sprintf("%s (VLAN %d) holds %s", net.HardwareAddr(k.mac), k.vlan, strings.Join(ips, ", "))})
		}
	}
	phoneClients := map[clientKey]bool{}
	for _, ph := range in.phones {
		k := keyOf(ph.VLAN, ph.MAC)
		phoneClients[k] = true
		ip := ph.IP.String()
		switch ls := storeByClient[k]; {
		case len(ls) == 0:
			add(IntegrityProblem{Kind: problemStoreMissing, Phone: ph.Phone, IP: ip, Detail: "the store has no lease for the phone"})
		case !slices.ContainsFunc(ls, func(l lease.Lease) bool { return l.IP == ph.IP && l.State == lease.StateBound }):
			add(IntegrityProblem{Kind: problemStoreDiffers, Phone: ph.Phone, IP: ip,
				Detail: fmt.Sprintf("the store has %s %s for the phone", ls[0].State, ls[0].IP)})
		}
		if l, ok := storeByIP[ph.IP]; ok && keyOf(l.VLAN, l.MAC) != k {
			add(IntegrityProblem{Kind: problemStoreOtherHolder, Phone: ph.Phone, IP: ip,
				Detail: fmt.Sprintf("the store has the address %s to %s", l.State, l.MAC)})
		}
	}
	if !in.fastPath {
		sortProblems(rep.Problems)
		return rep
	}

	// The kernel: live bound clients.
	kernelByClient := map[clientKey]fastpath.DHCPBinding{}
	kernelByIP := map[netip.Addr][]fastpath.DHCPBinding{}
	for _, b := range in.kernel {
		if !b.Bound || !in.now.Before(b.Expires) {
			continue
		}
		rep.KernelBindings++
		kernelByClient[keyOf(b.VLAN, b.MAC)] = b
		kernelByIP[b.IP] = append(kernelByIP[b.IP], b)
	}
	for ip, bs := range kernelByIP {
		if len(bs) > 1 {
			var macs []string
			for _, b := range bs {
				macs = append(macs, fmt.Sprintf("%s (VLAN %d)", b.MAC, b.VLAN))
			}
			slices.Sort(macs)
			add(IntegrityProblem{Kind: problemKernelTwoClients, IP: ip.String(), Detail: "bound to " + strings.Join(macs, " and ")})
		}
	}
	queued := map[netip.Addr]bool{}
	for _, ip := range in.queued {
		queued[ip] = true
	}
	rep.KernelQueued = len(in.queued)
	for _, ph := range in.phones {
		ip := ph.IP.String()
		switch b, ok := kernelByClient[keyOf(ph.VLAN, ph.MAC)]; {
		case !ok:
			add(IntegrityProblem{Kind: problemKernelMissing, Phone: ph.Phone, IP: ip, Detail: "the fast path has no live bound binding for the phone"})
		case b.IP != ph.IP:
			add(IntegrityProblem{Kind: problemKernelDiffers, Phone: ph.Phone, IP: ip, Detail: fmt.Sprintf("the fast path binds the phone to %s", b.IP)})
		}
		if queued[ph.IP] {
			add(IntegrityProblem{Kind: problemKernelQueued, Phone: ph.Phone, IP: ip, Detail: "the address is queued in the fast path for new clients"})
		}
	}
	// Clients other than the phones: bound in one and not the other.
	for k, ls := range storeByClient {
		if phoneClients[k] {
			continue
		}
		for _, l := range ls {
			if b, ok := kernelByClient[k]; l.State == lease.StateBound && (!ok || b.IP != l.IP) {
				add(IntegrityProblem{Kind: problemStoreKernel, IP: l.IP.String(),
					Detail: fmt.Sprintf("the store binds it to %s (VLAN %d), the fast path does not", l.MAC, l.VLAN)})
			}
		}
	}
	for k, b := range kernelByClient {
		if phoneClients[k] {
			continue
		}
		if !slices.ContainsFunc(storeByClient[k], func(l lease.Lease) bool { return l.IP == b.IP && l.State == lease.StateBound }) {
			add(IntegrityProblem{Kind: problemStoreKernel, IP: b.IP.String(),
				Detail: fmt.Sprintf("the fast path binds it to %s (VLAN %d), the store does not", b.MAC, b.VLAN)})
		}
	}
	sortProblems(rep.Problems)
	return rep
}

// sortProblems orders the problems by kind, phone and address, for a
// report that reads the same from run to run.
func sortProblems(ps []IntegrityProblem) {
	slices.SortStableFunc(ps, func(a, b IntegrityProblem) int {
		return strings.Compare(a.Kind+"/"+a.Phone+"/"+a.IP, b.Kind+"/"+b.Phone+"/"+b.IP)
	})
}

// kernelLeases reads the fast path's bindings and queued addresses
// through the agent's pins, while it runs: a daemon that stops cleanly in
// the lab removes its pins.
func (l *lab) kernelLeases() (bindings []fastpath.DHCPBinding, queued []netip.Addr, err error) {
	p, err := fastpath.OpenPinned(l.pinDir)
	if err != nil {
		return nil, nil, err
	}
	defer p.Close()
	err = p.WalkBindings(func(b fastpath.DHCPBinding) {
		b.MAC = slices.Clone(b.MAC)
		bindings = append(bindings, b)
	})
	if err != nil {
		return nil, nil, err
	}
	err = p.FreeQueued(func(_ uint32, ip netip.Addr) { queued = append(queued, ip) })
	return bindings, queued, err
}

// integrityBeforeStop takes what the check needs from the running agent:
// the kernel's view, which goes with the pins when it stops.
func (l *lab) integrityBeforeStop() integrityInput {
	in := integrityInput{fastPath: !l.o.NoXDP && !l.o.Baseline}
	for _, ph := range l.phones {
		if a := ph.held.Load(); a != nil {
			in.phones = append(in.phones, *a)
		}
	}
	if in.fastPath {
		var err error
		if in.kernel, in.queued, err = l.kernelLeases(); err != nil {
			in.unreadable = append(in.unreadable, IntegrityProblem{Kind: problemKernelUnreadable, Detail: err.Error()})
		}
	}
	return in
}

// integrityAfterStop reads the store the stopped agent left and runs the
// check.
func (l *lab) integrityAfterStop(ctx context.Context, in integrityInput) *IntegrityReport {
	in.now = time.Now()
	if l.baseline != nil { // the leases are Kea's
		var err error
		if in.store, err = keaLeaseStore(l.baseline.leaseFile); err != nil {
			in.unreadable = append(in.unreadable, IntegrityProblem{Kind: problemStoreUnreadable, Detail: err.Error()})
		}
		rep := checkIntegrity(in)
		return &rep
	}
	store, err := lease.OpenBolt(filepath.Join(l.runDir, leaseDBName), lease.BoltOptions{})
	if err == nil {
		err = store.Iterate(ctx, func(le lease.Lease) error { in.store = append(in.store, le); return nil })
		store.Close()
	}
	if err != nil {
		in.unreadable = append(in.unreadable, IntegrityProblem{Kind: problemStoreUnreadable, Detail: err.Error()})
	}
	rep := checkIntegrity(in)
	return &rep
}
