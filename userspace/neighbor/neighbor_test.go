package neighbor

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// clock is a settable clock for the table.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func mac(b byte) net.HardwareAddr { return net.HardwareAddr{0x00, 0x1b, 0x54, 0, 0, b} }

func names(ns []Neighbor) []string {
	var out []string
	for _, n := range ns {
		out = append(out, fmt.Sprintf("%s/%s/%s", n.LocalPort, n.Protocol, n.DeviceID))
	}
	return out
}

func TestTableExpiry(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	tab := NewTable(c.now, 0)
	tab.Update(Neighbor{Protocol: CDP, LocalPort: "swp1", MAC: mac(1), DeviceID: "SEP1", TTL: 180 * time.Second})
	tab.Update(Neighbor{Protocol: LLDP, LocalPort: "swp1", MAC: mac(1), DeviceID: "SEP1", TTL: 120 * time.Second})
	tab.Update(Neighbor{Protocol: CDP, LocalPort: "swp2", MAC: mac(2), DeviceID: "SEP2", TTL: 60 * time.Second})

	if got, want := fmt.Sprint(names(tab.List())), "[swp1/cdp/SEP1 swp1/lldp/SEP1 swp2/cdp/SEP2]"; got != want {
		t.Fatalf("list %s, want %s", got, want)
	}
	if ns := tab.List(); !ns[0].Expires.Equal(c.t.Add(180 * time.Second)) {
		t.Errorf("expires %v, want now+180s", ns[0].Expires)
	}
	c.advance(60 * time.Second) // swp2's TTL is up: gone at exactly its expiry
	if got, want := fmt.Sprint(names(tab.List())), "[swp1/cdp/SEP1 swp1/lldp/SEP1]"; got != want {
		t.Errorf("after 60s: %s, want %s", got, want)
	}
	// A fresh advertisement restarts the TTL.
	tab.Update(Neighbor{Protocol: LLDP, LocalPort: "swp1", MAC: mac(1), DeviceID: "SEP1", TTL: 200 * time.Second})
	c.advance(130 * time.Second) // CDP's 180 s are up, LLDP's renewed 200 s not
	if got, want := fmt.Sprint(names(tab.Port("swp1"))), "[swp1/lldp/SEP1]"; got != want {
		t.Errorf("after 190s: %s, want %s", got, want)
	}
	// TTL 0 withdraws at once.
	tab.Update(Neighbor{Protocol: LLDP, LocalPort: "swp1", MAC: mac(1)})
	if got := tab.List(); len(got) != 0 {
		t.Errorf("after withdrawal: %v", names(got))
	}
}

func TestTableCopiesAndReplaces(t *testing.T) {
	tab := NewTable(nil, 0)
	m := mac(1)
	addrs := []netip.Addr{netip.MustParseAddr("10.0.0.1")}
	tab.Update(Neighbor{Protocol: CDP, LocalPort: "swp1", MAC: m, DeviceID: "old", Addresses: addrs, TTL: time.Minute})
	m[5], addrs[0] = 9, netip.MustParseAddr("10.0.0.9") // the caller reuses its buffers
	tab.Update(Neighbor{Protocol: CDP, LocalPort: "swp1", MAC: mac(1), DeviceID: "new", TTL: time.Minute})
	ns := tab.List()
	if len(ns) != 1 || ns[0].DeviceID != "new" || ns[0].Addresses != nil {
		t.Fatalf("the second advertisement did not replace the first: %+v", ns)
	}
	tab.Update(Neighbor{Protocol: CDP, LocalPort: "swp1", MAC: mac(2), Addresses: addrs[:1:1], TTL: time.Minute})
	addrs[0] = netip.MustParseAddr("10.0.0.7")
	if got := tab.List()[1].Addresses[0]; got != netip.MustParseAddr("10.0.0.9") {
		t.Errorf("table shares the caller's slice: address now %v", got)
	}
}

// TestTableBoundPerPort: made-up source MACs on one port evict that
// port's soonest-expiring entries and never touch other ports.
func TestTableBoundPerPort(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	tab := NewTable(c.now, 3)
	tab.Update(Neighbor{Protocol: CDP, LocalPort: "swp2", MAC: mac(200), DeviceID: "other", TTL: time.Second})
	for i := range 10 {
		tab.Update(Neighbor{Protocol: CDP, LocalPort: "swp1", MAC: mac(byte(i)), DeviceID: fmt.Sprint("d", i), TTL: time.Duration(100-i) * time.Second})
	}
	got := names(tab.Port("swp1"))
	// TTLs fall with i, so the latest are the soonest to expire and go
	// first; the port keeps d0, d1 and the newest.
	if want := "[swp1/cdp/d0 swp1/cdp/d1 swp1/cdp/d9]"; fmt.Sprint(got) != want {
		t.Errorf("swp1 keeps %v, want %s", got, want)
	}
	if got := tab.Port("swp2"); len(got) != 1 {
		t.Errorf("swp2 lost its neighbour to swp1's flood")
	}
}

func TestTableConcurrent(t *testing.T) {
	tab := NewTable(nil, 0)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				port := fmt.Sprint("swp", i%8)
				tab.Update(Neighbor{Protocol: LLDP, LocalPort: port, MAC: mac(byte(w)), TTL: time.Minute})
				_ = tab.Port(port)
				_ = tab.List()
			}
		}()
	}
	wg.Wait()
	if n := len(tab.List()); n != 32 {
		t.Errorf("%d neighbours, want 8 ports × 4 MACs", n)
	}
}
