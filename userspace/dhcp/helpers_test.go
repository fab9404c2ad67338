package dhcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/phoneboot/phoneboot/userspace/lease"
	"github.com/phoneboot/phoneboot/userspace/privtest"
)

func testLogger(tb testing.TB) *slog.Logger { return privtest.Logger(tb) }

var t0 = time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// macN is a distinct locally administered MAC per n.
func macN(n int) net.HardwareAddr {
	m := net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(m[2:], uint32(n))
	return m
}

const (
	vcPhone7841 = "Cisco Systems, Inc. IP Phone CP-7841"
	vcPhone8845 = "Cisco Systems, Inc. IP Phone CP-8845"
)

var (
	resvInMAC  = mac("00:11:22:33:44:01")
	resvOutMAC = mac("00:11:22:33:44:02")
)

// testConfig has a tagged voice pool with classes and reservations, an
// untagged data pool with explicit T1/T2, and a pool for relayed
// requests.
func testConfig() Config {
	return Config{
		Pools: []PoolConfig{{
			Name:           "voice",
			VLAN:           100,
			Subnet:         netip.MustParsePrefix("10.1.0.0/24"),
			RangeStart:     ip("10.1.0.10"),
			RangeEnd:       ip("10.1.0.200"),
			ServerIP:       ip("10.1.0.2"),
			Routers:        []netip.Addr{ip("10.1.0.1")},
			DNS:            []netip.Addr{ip("10.0.0.53"), ip("10.0.0.54")},
			Domain:         "voice.example.net",
			NTP:            []netip.Addr{ip("10.0.0.123")},
			TFTPServers:    []netip.Addr{ip("10.0.0.69"), ip("10.0.0.70")},
			TFTPServerName: "10.0.0.69",
			VendorInfo:     []byte{0x01, 0x04, 't', 'e', 's', 't'},
			LeaseTime:      24 * time.Hour,
			Classes: []ClassConfig{
				{Name: "78xx", VendorClassPrefix: "Cisco Systems, Inc. IP Phone CP-78", TFTPServers: []netip.Addr{ip("10.0.0.71")}},
				{Name: "8845", VendorClass: vcPhone8845, TFTPServerName: "tftp-8845.example.net", VendorInfo: []byte{0x02, 0x01, 0x88}},
			},
			Reservations: []ReservationConfig{
				{MAC: resvInMAC, IP: ip("10.1.0.50")}, // inside the range
				{MAC: resvOutMAC, IP: ip("10.1.0.5")}, // outside it
			},
		}, {
			Name:       "data",
			VLAN:       0,
			Subnet:     netip.MustParsePrefix("192.168.10.0/24"),
			RangeStart: ip("192.168.10.100"),
			RangeEnd:   ip("192.168.10.199"),
			ServerIP:   ip("192.168.10.1"),
			Routers:    []netip.Addr{ip("192.168.10.254")},
			LeaseTime:  time.Hour,
			T1:         20 * time.Minute,
			T2:         40 * time.Minute,
		}, {
			Name:        "remote",
			VLAN:        300,
			Subnet:      netip.MustParsePrefix("172.16.5.0/24"),
			RangeStart:  ip("172.16.5.10"),
			RangeEnd:    ip("172.16.5.20"),
			ServerIP:    ip("172.16.5.2"),
			Routers:     []netip.Addr{ip("172.16.5.1")},
			TFTPServers: []netip.Addr{ip("10.0.0.69")},
			LeaseTime:   12 * time.Hour,
		}},
		OfferTimeout:     30 * time.Second,
		DeclineProbation: time.Hour,
	}
}

// smallPool is one untagged pool of n addresses from 10.9.0.10.
func smallPool(n int) Config {
	return Config{
		Pools: []PoolConfig{{
			Name:       "small",
			Subnet:     netip.MustParsePrefix("10.9.0.0/16"),
			RangeStart: ip("10.9.0.10"),
			RangeEnd:   u32Addr(addrU32(ip("10.9.0.10")) + uint32(n) - 1),
			ServerIP:   ip("10.9.0.1"),
			Routers:    []netip.Addr{ip("10.9.0.1")},
			LeaseTime:  time.Hour,
		}},
		OfferTimeout:     30 * time.Second,
		DeclineProbation: time.Hour,
	}
}

type harness struct {
	tb    testing.TB
	h     *Handler
	store lease.Store
	now   time.Time
}

// newStore makes the store the tests run on.
var newStore = func(tb testing.TB) lease.Store { return lease.NewMemory() }

func newHarness(tb testing.TB, cfg Config) *harness {
	tb.Helper()
	return newHarnessStore(tb, cfg, newStore(tb))
}

func newHarnessStore(tb testing.TB, cfg Config, st lease.Store) *harness {
	tb.Helper()
	h, err := NewHandler(cfg, st, testLogger(tb))
	if err != nil {
		tb.Fatalf("NewHandler: %v", err)
	}
	return &harness{tb: tb, h: h, store: st, now: t0}
}

// do runs a request at the harness clock and checks every answered reply
// against the codec.
func (hs *harness) do(r Request) (Reply, Outcome) {
	hs.tb.Helper()
	if r.Received.IsZero() {
		r.Received = hs.now
	}
	rep, out := hs.h.Handle(context.Background(), r)
	if out.Action == Answered {
		checkCodecRoundTrip(hs.tb, rep.Payload)
	} else if rep.Payload != nil {
		hs.tb.Fatalf("%v with a payload", out)
	}
	if out.Reason == ReasonInternalError {
		hs.tb.Fatalf("handler panicked")
	}
	return rep, out
}

// checkCodecRoundTrip: the payload parses and is exactly what ToBytes
// writes for what it parsed to.
func checkCodecRoundTrip(tb testing.TB, payload []byte) *dhcpv4.DHCPv4 {
	tb.Helper()
	d, err := dhcpv4.FromBytes(payload)
	if err != nil {
		tb.Fatalf("reply does not parse: %v", err)
	}
	if again := d.ToBytes(); !bytes.Equal(again, payload) {
		tb.Fatalf("reply is not what ToBytes writes:\n got %x\nwant %x", payload, again)
	}
	return d
}

// pkt builds a request message.
func pkt(mt dhcpv4.MessageType, m net.HardwareAddr, mods ...dhcpv4.Modifier) []byte {
	var xid dhcpv4.TransactionID
	copy(xid[:], m[2:])
	all := append([]dhcpv4.Modifier{
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithHwAddr(m),
		dhcpv4.WithTransactionID(xid),
	}, mods...)
	d, err := dhcpv4.New(all...)
	if err != nil {
		panic(err)
	}
	return d.ToBytes()
}

func optIP(code dhcpv4.OptionCode, a netip.Addr) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptGeneric(code, a.AsSlice()))
}

func withCiaddr(a netip.Addr) dhcpv4.Modifier { return dhcpv4.WithClientIP(net.IP(a.AsSlice())) }

func withGiaddr(a netip.Addr) dhcpv4.Modifier { return dhcpv4.WithGatewayIP(net.IP(a.AsSlice())) }

func withVendorClass(s string) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptClassIdentifier(s))
}

// onPort wraps a message as it arrives from a client on port/vlan.
func onPort(port string, vlan uint16, src net.HardwareAddr, payload []byte) Request {
	return Request{
		Port:    port,
		VLAN:    vlan,
		SrcMAC:  src,
		SrcIP:   netip.IPv4Unspecified(),
		DstIP:   broadcastIP,
		SrcPort: 68,
		Payload: payload,
	}
}

func (hs *harness) discover(port string, vlan uint16, m net.HardwareAddr, mods ...dhcpv4.Modifier) (Reply, Outcome) {
	hs.tb.Helper()
	return hs.do(onPort(port, vlan, m, pkt(dhcpv4.MessageTypeDiscover, m, mods...)))
}

// selectOffer sends the REQUEST (SELECTING) for an offer.
func (hs *harness) selectOffer(port string, vlan uint16, m net.HardwareAddr, server, a netip.Addr, mods ...dhcpv4.Modifier) (Reply, Outcome) {
	hs.tb.Helper()
	mods = append([]dhcpv4.Modifier{optIP(dhcpv4.OptionServerIdentifier, server), optIP(dhcpv4.OptionRequestedIPAddress, a)}, mods...)
	return hs.do(onPort(port, vlan, m, pkt(dhcpv4.MessageTypeRequest, m, mods...)))
}

// dora runs DISCOVER, OFFER, REQUEST, ACK and returns the address.
func (hs *harness) dora(port string, vlan uint16, m net.HardwareAddr, mods ...dhcpv4.Modifier) netip.Addr {
	hs.tb.Helper()
	rep, out := hs.discover(port, vlan, m, mods...)
	if out != (Outcome{Answered, ReasonOffer}) {
		hs.tb.Fatalf("DISCOVER from %v: %v", m, out)
	}
	offer := parseReply(hs.tb, rep)
	a := ip4(offer.YourIPAddr)
	rep, out = hs.selectOffer(port, vlan, m, ip4(offer.ServerIdentifier()), a, mods...)
	if out != (Outcome{Answered, ReasonAck}) {
		hs.tb.Fatalf("REQUEST from %v for %v: %v", m, a, out)
	}
	if got := ip4(parseReply(hs.tb, rep).YourIPAddr); got != a {
		hs.tb.Fatalf("ACK for %v gives %v", a, got)
	}
	return a
}

func parseReply(tb testing.TB, r Reply) *dhcpv4.DHCPv4 {
	tb.Helper()
	return checkCodecRoundTrip(tb, r.Payload)
}

func (hs *harness) leaseAt(a netip.Addr) lease.Lease {
	hs.tb.Helper()
	l, err := hs.store.ByIP(context.Background(), a)
	if err != nil {
		hs.tb.Fatalf("ByIP(%v): %v", a, err)
	}
	return l
}

// checkStore verifies the store never gives an address to two clients
// and no client holds two addresses in a pool, and that the allocator's
// belief matches it.
func (hs *harness) checkStore() {
	hs.tb.Helper()
	perMAC := map[string]netip.Addr{}
	err := hs.store.Iterate(context.Background(), func(l lease.Lease) error {
		if l.State != lease.StateOffered && l.State != lease.StateBound {
			return nil
		}
		k := l.Pool + "/" + l.MAC.String()
		if prev, ok := perMAC[k]; ok {
			hs.tb.Errorf("%s holds %v and %v", k, prev, l.IP)
		}
		perMAC[k] = l.IP
		p := hs.h.byName[l.Pool]
		if i, ok := p.alloc.index(l.IP); ok {
			p.alloc.mu.Lock()
			st := p.alloc.state[i]
			p.alloc.mu.Unlock()
			if st != stAssigned && !l.Free(hs.now) {
				hs.tb.Errorf("%v is %s in the store but %d in the allocator", l.IP, l.State, st)
			}
		}
		return nil
	})
	if err != nil {
		hs.tb.Fatal(err)
	}
}
