package fastpath

import (
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/privtest"
)

// TestOpenPinned: another process's view through the pins sees the
// daemon's bindings, counters and queued addresses, and reading the queues
// leaves them as they were.
func TestOpenPinned(t *testing.T) {
	privtest.Require(t)
	pinDir := filepath.Join(privtest.TempBPFFS(t), "phoneboot")
	o, err := LoadObjects(pinDir, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	tb := o.DHCP()
	blk, off := testBlock(testServer, netip.MustParseAddr("10.0.0.2"))
	if err := tb.SetBlock(1, blk, off); err != nil {
		t.Fatal(err)
	}
	if err := tb.SetPool(DHCPPool{ID: 3, VLAN: 0, ServerIP: testServer, DefaultBlock: 1, LeaseTime: time.Hour, OfferTime: time.Minute, Allocate: true, FreeQueue: 16}); err != nil {
		t.Fatal(err)
	}
	queued := []netip.Addr{netip.MustParseAddr("10.0.0.30"), netip.MustParseAddr("10.0.0.31"), netip.MustParseAddr("10.0.0.32")}
	if _, err := tb.PushFree(3, queued); err != nil {
		t.Fatal(err)
	}
	bound := DHCPBinding{VLAN: 0, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}, IP: netip.MustParseAddr("10.0.0.20"), Bound: true, Expires: time.Now().Add(time.Hour), Ifindex: 1}
	if err := tb.PutBinding(bound); err != nil {
		t.Fatal(err)
	}

	p, err := OpenPinned(pinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var bs []DHCPBinding
	if err := p.WalkBindings(func(b DHCPBinding) {
		b.MAC = slices.Clone(b.MAC)
		bs = append(bs, b)
	}); err != nil {
		t.Fatal(err)
	}
	if len(bs) != 1 || bs[0].IP != bound.IP || !bs[0].Bound || bs[0].MAC.String() != bound.MAC.String() {
		t.Errorf("bindings through the pins: %+v, want %+v", bs, bound)
	}
	for range 2 { // reading twice sees the same: the first read put them back
		var got []netip.Addr
		if err := p.FreeQueued(func(id uint32, ip netip.Addr) {
			if id != 3 {
				t.Errorf("address %s queued for pool %d, want 3", ip, id)
			}
			got = append(got, ip)
		}); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, queued) {
			t.Fatalf("queued %v, want %v", got, queued)
		}
	}
	cs, err := p.Counters()
	if err != nil || len(cs) != len(counterNames) {
		t.Errorf("counters through the pins: %d, %v", len(cs), err)
	}
	if _, err := OpenPinned(t.TempDir()); err == nil {
		t.Error("OpenPinned of a directory without pins succeeded")
	}
}
