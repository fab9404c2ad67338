package lab

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/fastpath"
	"github.com/phoneboot/phoneboot/userspace/lease"
)

// consistentRun is three phones on VLAN 100 whose addresses the store
// and the kernel agree on, with two free addresses queued.
func consistentRun(now time.Time) integrityInput {
	in := integrityInput{fastPath: true, now: now, queued: []netip.Addr{netip.MustParseAddr("10.64.0.50"), netip.MustParseAddr("10.64.0.51")}}
	for i := range 3 {
		mac := net.HardwareAddr{0x00, 0x1e, 0x7a, 0, 0, byte(i)}
		ip := netip.AddrFrom4([4]byte{10, 64, 0, byte(10 + i)})
		in.phones = append(in.phones, heldAddress{Phone: "SEP001E7A00000" + string(rune('0'+i)), MAC: mac, VLAN: 100, IP: ip})
		in.store = append(in.store, lease.Lease{IP: ip, MAC: mac, Pool: "voice100", State: lease.StateBound, Expires: now.Add(time.Hour), VLAN: 100})
		in.kernel = append(in.kernel, fastpath.DHCPBinding{VLAN: 100, MAC: mac, IP: ip, Bound: true, Expires: now.Add(time.Hour)})
	}
	// A lapsed lease of a client long gone: neither held nor a problem.
	in.store = append(in.store, lease.Lease{IP: netip.MustParseAddr("10.64.0.99"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, State: lease.StateExpired, Expires: now.Add(-time.Minute), VLAN: 100})
	return in
}

func kinds(rep IntegrityReport) []string {
	var ks []string
	for _, p := range rep.Problems {
		ks = append(ks, p.Kind)
	}
	return ks
}

func TestCheckIntegrity(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	rep := checkIntegrity(consistentRun(now))
	if rep.Violations != 0 || rep.Phones != 3 || rep.StoreLeases != 3 || rep.KernelBindings != 3 || rep.KernelQueued != 2 {
		t.Fatalf("consistent run: %+v, want 3 phones, leases and bindings, 2 queued, no violation", rep)
	}

	tests := []struct {
		name  string
		plant func(in *integrityInput)
		want  []string
	}{
		{"duplicate address between phones", func(in *integrityInput) {
			// Phone 2 uses phone 1's address; the store and kernel still
			// bind phone 2 to its own.
			in.phones[2].IP = in.phones[1].IP
		}, []string{problemDuplicate, problemKernelDiffers, problemStoreDiffers, problemStoreOtherHolder}},
		{"lease lost from the store", func(in *integrityInput) {
			in.store = in.store[1:]
		}, []string{problemStoreMissing}},
		{"store holds the lease as offered", func(in *integrityInput) {
			in.store[0].State = lease.StateOffered
		}, []string{problemStoreDiffers}},
		{"store gave the address to another client", func(in *integrityInput) {
			in.store[0].MAC = net.HardwareAddr{2, 0, 0, 0, 0, 7}
		}, []string{problemStoreKernel, problemStoreMissing, problemStoreOtherHolder}},
		{"client holds two addresses in the store", func(in *integrityInput) {
			l := in.store[0]
			l.IP = netip.MustParseAddr("10.64.0.60")
			in.store = append(in.store, l)
		}, []string{problemStoreTwoAddresses}},
		{"kernel lost the binding", func(in *integrityInput) {
			in.kernel = in.kernel[:2]
		}, []string{problemKernelMissing}},
		{"kernel binding expired", func(in *integrityInput) {
			in.kernel[1].Expires = now.Add(-time.Second)
		}, []string{problemKernelMissing}},
		{"kernel binds two clients to one address", func(in *integrityInput) {
			in.kernel[2].IP = in.kernel[0].IP
		}, []string{problemKernelDiffers, problemKernelTwoClients}},
		{"phone's address queued for new clients", func(in *integrityInput) {
			in.queued = append(in.queued, in.phones[0].IP)
		}, []string{problemKernelQueued}},
		{"stray client bound in the kernel only", func(in *integrityInput) {
			in.kernel = append(in.kernel, fastpath.DHCPBinding{VLAN: 100, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 8}, IP: netip.MustParseAddr("10.64.0.70"), Bound: true, Expires: now.Add(time.Hour)})
		}, []string{problemStoreKernel}},
		{"unreadable store", func(in *integrityInput) {
			in.store = nil
			in.unreadable = []IntegrityProblem{{Kind: problemStoreUnreadable, Detail: "locked"}}
		}, []string{problemStoreMissing, problemStoreMissing, problemStoreMissing, problemStoreUnreadable}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := consistentRun(now)
			tt.plant(&in)
			rep := checkIntegrity(in)
			if got := kinds(rep); !slices.Equal(got, tt.want) || rep.Violations != len(tt.want) {
				t.Errorf("%d violations %v, want %v\n%+v", rep.Violations, got, tt.want, rep.Problems)
			}
		})
	}

	// Without the fast path only the phones and the store are compared.
	in := consistentRun(now)
	in.fastPath, in.kernel, in.queued = false, nil, nil
	in.phones[1].IP = in.phones[0].IP
	rep = checkIntegrity(in)
	if got := kinds(rep); !slices.Equal(got, []string{problemDuplicate, problemStoreDiffers, problemStoreOtherHolder}) || rep.KernelBindings != 0 || rep.FastPath {
		t.Errorf("without the fast path: %v, %+v", got, rep)
	}
}

func TestCheckIntegrityCapsProblems(t *testing.T) {
	now := time.Now()
	in := integrityInput{now: now}
	for i := range 2 * maxIntegrityProblems {
		in.phones = append(in.phones, heldAddress{Phone: fmt.Sprintf("p%d", i), MAC: net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)}, IP: netip.MustParseAddr("10.64.0.10")})
	}
	rep := checkIntegrity(in)
	// Every phone lacks a lease; all but the first share the address.
	if rep.Violations != 4*maxIntegrityProblems-1 || len(rep.Problems) != maxIntegrityProblems {
		t.Errorf("%d violations, %d listed; want %d and %d", rep.Violations, len(rep.Problems), 4*maxIntegrityProblems-1, maxIntegrityProblems)
	}
}
