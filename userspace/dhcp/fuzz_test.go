package dhcp

import (
	"bytes"
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/phoneboot/phoneboot/userspace/lease"
)

// FuzzHandle runs arbitrary payloads through the whole handler (strict
// checks, codec, pools, lease store). No input may panic (a recovered
// panic shows as internal-error), and every answer must re-parse with the
// codec to exactly itself.
func FuzzHandle(f *testing.F) {
	m := macN(1)
	seeds := [][]byte{
		pkt(dhcpv4.MessageTypeDiscover, m),
		pkt(dhcpv4.MessageTypeDiscover, m, withVendorClass(vcPhone8845), dhcpv4.WithBroadcast(true)),
		pkt(dhcpv4.MessageTypeDiscover, m, withGiaddr(ip("172.16.5.1")), dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionRelayAgentInformation, []byte{1, 2, 'a', 'b'}))),
		pkt(dhcpv4.MessageTypeRequest, m, optIP(dhcpv4.OptionServerIdentifier, ip("10.1.0.2")), optIP(dhcpv4.OptionRequestedIPAddress, ip("10.1.0.10"))),
		pkt(dhcpv4.MessageTypeRequest, m, optIP(dhcpv4.OptionRequestedIPAddress, ip("10.1.0.11"))),
		pkt(dhcpv4.MessageTypeRequest, m, withCiaddr(ip("10.1.0.10"))),
		pkt(dhcpv4.MessageTypeDecline, m, optIP(dhcpv4.OptionRequestedIPAddress, ip("10.1.0.10"))),
		pkt(dhcpv4.MessageTypeRelease, m, withCiaddr(ip("10.1.0.10"))),
		pkt(dhcpv4.MessageTypeInform, m, withCiaddr(ip("10.1.0.3"))),
		pkt(dhcpv4.MessageTypeOffer, m),
	}
	for _, p := range killerPackets() {
		seeds = append(seeds, p)
	}
	for _, s := range seeds {
		f.Add(s, uint8(0))
		f.Add(s, uint8(1))
	}
	cfg := testConfig()
	cfg.MaxLeasesPerPort = 50
	cfg.MaxDeclinesPerPort = 5
	h, err := NewHandler(cfg, lease.NewMemory(), nil)
	if err != nil {
		f.Fatal(err)
	}
	vlans := []uint16{100, 0, 300, 7}
	header := pkt(dhcpv4.MessageTypeDiscover, m)[:bootpHeaderLen+4]
	f.Add([]byte{53, 1, 1, 12, 0, 255}, uint8(16))
	f.Add([]byte{53, 1, 3, 50, 4, 10, 1, 0, 10, 82, 4, 1, 2, 'a', 'b', 255}, uint8(16))
	f.Fuzz(func(t *testing.T, payload []byte, sel uint8) {
		if sel&16 != 0 {
			// Fuzz the options alone behind a valid header and cookie.
			payload = append(bytes.Clone(header), payload...)
		}
		req := Request{
			Port:    []string{"p1", "p2"}[sel&1],
			VLAN:    vlans[(sel>>1)&3],
			SrcMAC:  m,
			SrcPort: 68,
			Payload: payload,
		}
		if sel&8 != 0 {
			req.Received = time.Now().Add(time.Duration(sel) * time.Minute)
		}
		// The server's cheap look at option 53 agrees with the parser.
		if msg, err := parseRequest(payload); err == nil && peekType(payload) != byte(msg.msgType) {
			t.Fatalf("peekType %d, parsed type %d", peekType(payload), msg.msgType)
		}
		orig := bytes.Clone(payload)
		rep, out := h.Handle(context.Background(), req)
		if out.Reason == ReasonInternalError {
			t.Fatal("handler panicked")
		}
		if !bytes.Equal(payload, orig) {
			t.Fatal("handler modified the request")
		}
		if _, ok := reasonIndex[out.Action][out.Reason]; !ok {
			t.Fatalf("outcome %v is not in the fixed set", out)
		}
		if out.Action != Answered {
			if rep.Payload != nil {
				t.Fatalf("%v with a reply", out)
			}
			return
		}
		d, err := dhcpv4.FromBytes(rep.Payload)
		if err != nil {
			t.Fatalf("answer does not parse: %v", err)
		}
		if !bytes.Equal(d.ToBytes(), rep.Payload) {
			t.Fatal("answer is not what the codec writes")
		}
		if len(rep.Payload) < 300 || !rep.DstIP.Is4() || (rep.DstPort != 67 && rep.DstPort != 68) || len(rep.DstMAC) != 6 && rep.DstPort == 68 {
			t.Fatalf("reply %+v", rep)
		}
		if d.OpCode != dhcpv4.OpcodeBootReply || d.MessageType() == dhcpv4.MessageTypeNone {
			t.Fatalf("reply op %v type %v", d.OpCode, d.MessageType())
		}
	})
}

// benchHandler is a handler over a 100,000-address pool.
func benchHandler(b *testing.B) *Handler {
	cfg := Config{Pools: []PoolConfig{{
		Name:       "big",
		VLAN:       100,
		Subnet:     netip.MustParsePrefix("10.64.0.0/14"),
		RangeStart: ip("10.64.0.10"),
		RangeEnd:   u32Addr(addrU32(ip("10.64.0.10")) + 99_999),
		ServerIP:   ip("10.64.0.2"),
		Routers:    []netip.Addr{ip("10.64.0.1")},
		DNS:        []netip.Addr{ip("10.0.0.53")},
		TFTPServers: []netip.Addr{
			ip("10.0.0.69"), ip("10.0.0.70"),
		},
		LeaseTime: 24 * time.Hour,
	}}}
	h, err := NewHandler(cfg, newStore(b), nil)
	if err != nil {
		b.Fatal(err)
	}
	return h
}

// BenchmarkHandleDiscover: DISCOVERs from 65,536 clients in turn; the
// first round allocates, later rounds re-offer the same addresses.
func BenchmarkHandleDiscover(b *testing.B) {
	h := benchHandler(b)
	const clients = 1 << 16
	reqs := make([]Request, clients)
	for i := range reqs {
		reqs[i] = Request{Port: "p1", VLAN: 100, Received: t0, Payload: pkt(dhcpv4.MessageTypeDiscover, macN(i),
			dhcpv4.WithOption(dhcpv4.OptHostName("SEP0000000000")), withVendorClass(vcPhone8845))}
	}
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, out := h.Handle(ctx, reqs[i%clients]); out.Reason != ReasonOffer {
			b.Fatal(out)
		}
		i++
	}
}

// BenchmarkHandleDiscoverParallel: the same from concurrent callers, as
// the socket layer's workers would call Handle.
func BenchmarkHandleDiscoverParallel(b *testing.B) {
	h := benchHandler(b)
	const clients = 1 << 16
	reqs := make([]Request, clients)
	for i := range reqs {
		reqs[i] = Request{Port: "p1", VLAN: 100, Received: t0, Payload: pkt(dhcpv4.MessageTypeDiscover, macN(i))}
	}
	ctx := context.Background()
	var next atomic.Uint64
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, out := h.Handle(ctx, reqs[next.Add(1)%clients]); out.Reason != ReasonOffer {
				b.Error(out)
				return
			}
		}
	})
}

// BenchmarkHandleRequest: REQUESTs (SELECTING) from 4,096 offered
// clients in turn, each answered with an ACK and a bound lease.
func BenchmarkHandleRequest(b *testing.B) {
	h := benchHandler(b)
	const clients = 1 << 12
	ctx := context.Background()
	reqs := make([]Request, clients)
	for i := range reqs {
		rep, out := h.Handle(ctx, Request{Port: "p1", VLAN: 100, Received: t0, Payload: pkt(dhcpv4.MessageTypeDiscover, macN(i))})
		if out.Reason != ReasonOffer {
			b.Fatal(out)
		}
		d, _ := dhcpv4.FromBytes(rep.Payload)
		reqs[i] = Request{Port: "p1", VLAN: 100, Received: t0, Payload: pkt(dhcpv4.MessageTypeRequest, macN(i),
			optIP(dhcpv4.OptionServerIdentifier, ip("10.64.0.2")), optIP(dhcpv4.OptionRequestedIPAddress, ip4(d.YourIPAddr)))}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, out := h.Handle(ctx, reqs[i%clients]); out.Reason != ReasonAck {
			b.Fatal(out)
		}
		i++
	}
}

func BenchmarkParseRequest(b *testing.B) {
	p := pkt(dhcpv4.MessageTypeDiscover, macN(1), dhcpv4.WithOption(dhcpv4.OptHostName("SEP0000000000")), withVendorClass(vcPhone8845))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseRequest(p); err != nil {
			b.Fatal(err)
		}
	}
}
