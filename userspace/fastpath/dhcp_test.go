package fastpath

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/insomniacslk/dhcp/dhcpv4"
)

// BPF_PROG_RUN tests of the DHCP fast path: requests in, replies out,
// decoded with two codecs nobody here wrote (gopacket for the frame and its
// checksums, insomniacslk/dhcp for the message).

var (
	testPortMAC   = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	testServer    = netip.MustParseAddr("10.0.0.1")
	testServer100 = netip.MustParseAddr("10.100.0.1")
	testPhoneMAC  = net.HardwareAddr{0x00, 0x1e, 0x7a, 0x00, 0x00, 0x42}
)

// testBlock renders an OFFER's options the way the Go server does (sorted
// by code, no END) and returns it with the offset of option 53's value.
func testBlock(server netip.Addr, tftp netip.Addr) ([]byte, int) {
	opts := dhcpv4.Options{}
	opts.Update(dhcpv4.OptSubnetMask(net.CIDRMask(24, 32)))
	opts.Update(dhcpv4.OptRouter(net.IP(server.AsSlice())))
	opts.Update(dhcpv4.OptIPAddressLeaseTime(time.Hour))
	opts.Update(dhcpv4.OptMessageType(dhcpv4.MessageTypeOffer))
	opts.Update(dhcpv4.OptServerIdentifier(net.IP(server.AsSlice())))
	opts.Update(dhcpv4.Option{Code: dhcpv4.OptionRenewTimeValue, Value: dhcpv4.Duration(30 * time.Minute)})
	opts.Update(dhcpv4.Option{Code: dhcpv4.OptionRebindingTimeValue, Value: dhcpv4.Duration(52*time.Minute + 30*time.Second)})
	opts.Update(dhcpv4.Option{Code: dhcpv4.GenericOptionCode(150), Value: dhcpv4.IPs{net.IP(tftp.AsSlice())}})
	var b bytes.Buffer
	off := -1
	for _, code := range []uint8{1, 3, 51, 53, 54, 58, 59, 150} {
		v := opts.Get(dhcpv4.GenericOptionCode(code))
		b.WriteByte(code)
		b.WriteByte(byte(len(v)))
		if code == 53 {
			off = b.Len()
		}
		b.Write(v)
	}
	return b.Bytes(), off
}

type dhcpFixture struct {
	o *Objects
	t *DHCPTables
}

func newDHCPFixture(t testing.TB) *dhcpFixture {
	o := loadTestObjects(t)
	tb := o.DHCP()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(tb.SetPort(1, testPortMAC, true))
	blk, off := testBlock(testServer, netip.MustParseAddr("10.0.0.2"))
	must(tb.SetBlock(1, blk, off))
	blk100, off100 := testBlock(testServer100, netip.MustParseAddr("10.100.0.2"))
	must(tb.SetBlock(2, blk100, off100))
	blkClass, offClass := testBlock(testServer, netip.MustParseAddr("10.0.0.3"))
	must(tb.SetBlock(3, blkClass, offClass))
	must(tb.SetPool(DHCPPool{ID: 1, VLAN: 0, ServerIP: testServer, DefaultBlock: 1, LeaseTime: time.Hour, OfferTime: time.Minute, Allocate: true}))
	must(tb.SetPool(DHCPPool{ID: 2, VLAN: 100, ServerIP: testServer100, DefaultBlock: 2, LeaseTime: time.Hour, OfferTime: time.Minute, Allocate: true}))
	must(tb.SetClass(1, "Cisco Systems, Inc. IP Phone CP-8845", 3))
	return &dhcpFixture{o: o, t: tb}
}

// request builds a client frame: Ethernet (optionally tagged), IPv4 from
// 0.0.0.0 (or ciaddr) to dst, UDP 68 -> 67, and the DHCP message.
func request(t testing.TB, vlan uint16, dst netip.Addr, m *dhcpv4.DHCPv4) []byte {
	t.Helper()
	src := net.IPv4zero
	if !m.ClientIPAddr.IsUnspecified() && m.ClientIPAddr != nil {
		src = m.ClientIPAddr
	}
	eth := &layers.Ethernet{SrcMAC: m.ClientHWAddr, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src, DstIP: net.IP(dst.AsSlice())}
	udp := &layers.UDP{SrcPort: 68, DstPort: 67}
	udp.SetNetworkLayerForChecksum(ip)
	ls := []gopacket.SerializableLayer{eth}
	if vlan != 0 {
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: vlan, Priority: 5, Type: layers.EthernetTypeIPv4})
	}
	ls = append(ls, ip, udp, gopacket.Payload(m.ToBytes()))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func discover(t testing.TB, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.NewDiscovery(testPhoneMAC, mods...)
	if err != nil {
		t.Fatal(err)
	}
	// Cisco phones ask for broadcast replies (they have no address yet).
	m.SetBroadcast()
	return m
}

// run passes frame through the program as if it arrived on ifindex 1.
func (f *dhcpFixture) run(t testing.TB, frame []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(frame)+512)
	ctx := xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: 1}
	opts := &ebpf.RunOptions{Data: frame, DataOut: out, Context: ctx}
	ret, err := f.o.Program().Run(opts)
	if err != nil {
		t.Fatal(err)
	}
	return ret, opts.DataOut
}

// xdpMD is struct xdp_md as BPF_PROG_RUN takes it.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// reply decodes an answered frame and checks what every reply must carry.
func checkReply(t testing.TB, frame []byte, wantVLAN uint16) (*layers.Ethernet, *layers.IPv4, *dhcpv4.DHCPv4) {
	t.Helper()
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if el := pkt.ErrorLayer(); el != nil {
		t.Fatalf("reply does not decode: %v\n%x", el.Error(), frame)
	}
	eth := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if !bytes.Equal(eth.SrcMAC, testPortMAC) {
		t.Errorf("reply from %v, want the port's MAC", eth.SrcMAC)
	}
	if d := pkt.Layer(layers.LayerTypeDot1Q); (d != nil) != (wantVLAN != 0) || (d != nil && d.(*layers.Dot1Q).VLANIdentifier != wantVLAN) {
		t.Errorf("reply VLAN layer %v, want VLAN %d", d, wantVLAN)
	}
	ip := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	udp := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if udp.SrcPort != 67 || udp.DstPort != 68 {
		t.Errorf("reply UDP %d -> %d", udp.SrcPort, udp.DstPort)
	}
	// Checksums: serialize the decoded layers again with gopacket
	// computing them; the bytes must not change.
	ip2, udp2 := *ip, *udp
	udp2.SetNetworkLayerForChecksum(&ip2)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, &ip2, &udp2, gopacket.Payload(udp.Payload)); err != nil {
		t.Fatal(err)
	}
	want := buf.Bytes()
	// RFC 768: a UDP checksum that computes to zero goes out as all ones
	// (zero means none); gopacket leaves it zero. With a random xid that
	// is one reply in 65,536.
	if udp2.Checksum == 0 {
		c := int(ip2.IHL)*4 + 6
		want[c], want[c+1] = 0xff, 0xff
	}
	start := len(frame) - len(want)
	if !bytes.Equal(want, frame[start:]) {
		t.Errorf("IPv4/UDP checksums wrong:\n got %x\nwant %x", frame[start:start+28], want[:28])
	}
	if len(udp.Payload) < 300 {
		t.Errorf("DHCP payload of %d bytes, want at least 300", len(udp.Payload))
	}
	m, err := dhcpv4.FromBytes(udp.Payload)
	if err != nil {
		t.Fatalf("reply does not parse as DHCP: %v", err)
	}
	return eth, ip, m
}

func (f *dhcpFixture) counter(t *testing.T, name string) uint64 {
	t.Helper()
	cs, err := f.o.ReadCounters()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.Name == name {
			return c.Packets
		}
	}
	t.Fatalf("no counter %s", name)
	return 0
}

func readEvent(t *testing.T, ev *DHCPEvents) DHCPEvent {
	t.Helper()
	ev.SetDeadline(time.Now().Add(time.Second))
	e, err := ev.Read()
	if err != nil {
		t.Fatalf("no event: %v", err)
	}
	return e
}

func TestDHCPFastPathDORA(t *testing.T) {
	f := newDHCPFixture(t)
	if n, err := f.t.PushFree(1, []netip.Addr{netip.MustParseAddr("10.0.0.50"), netip.MustParseAddr("10.0.0.51")}); err != nil || n != 2 {
		t.Fatalf("PushFree: %d, %v", n, err)
	}
	events, err := f.t.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()

	disc := discover(t)
	ret, out := f.run(t, request(t, 0, netip.MustParseAddr("255.255.255.255"), disc))
	if ret != 3 { // XDP_TX
		t.Fatalf("DISCOVER: verdict %d, want XDP_TX", ret)
	}
	eth, ip, offer := checkReply(t, out, 0)
	if offer.MessageType() != dhcpv4.MessageTypeOffer || offer.TransactionID != disc.TransactionID ||
		!offer.YourIPAddr.Equal(net.IPv4(10, 0, 0, 50)) || !bytes.Equal(offer.ClientHWAddr, testPhoneMAC) {
		t.Fatalf("OFFER = %s", offer.Summary())
	}
	if !offer.IsBroadcast() || !bytes.Equal(eth.DstMAC, layers.EthernetBroadcast) || !ip.DstIP.Equal(net.IPv4bcast) {
		t.Errorf("OFFER to %v/%v, want broadcast (flag set)", eth.DstMAC, ip.DstIP)
	}
	if !ip.SrcIP.Equal(net.IP(testServer.AsSlice())) || !offer.ServerIdentifier().Equal(net.IP(testServer.AsSlice())) {
		t.Errorf("OFFER from %v, server id %v", ip.SrcIP, offer.ServerIdentifier())
	}
	if got := dhcpv4.GetIPs(dhcpv4.GenericOptionCode(150), offer.Options); len(got) != 1 || !got[0].Equal(net.IPv4(10, 0, 0, 2)) {
		t.Errorf("option 150 = %v", got)
	}
	e := readEvent(t, events)
	if e.Acked || !e.Allocated || e.IP != netip.MustParseAddr("10.0.0.50") || !bytes.Equal(e.MAC, testPhoneMAC) || e.PoolID != 1 || e.Ifindex != 1 {
		t.Errorf("offer event %+v", e)
	}
	if d := time.Until(e.Expires); d < 50*time.Second || d > 70*time.Second {
		t.Errorf("offer expires in %v, want about the offer time (1m)", d)
	}

	// REQUEST (SELECTING) for the offered address.
	req, err := dhcpv4.NewRequestFromOffer(offer)
	if err != nil {
		t.Fatal(err)
	}
	req.Options.Del(dhcpv4.OptionParameterRequestList)
	ret, out = f.run(t, request(t, 0, netip.MustParseAddr("255.255.255.255"), req))
	if ret != 3 {
		t.Fatalf("REQUEST: verdict %d, want XDP_TX", ret)
	}
	_, _, ack := checkReply(t, out, 0)
	if ack.MessageType() != dhcpv4.MessageTypeAck || !ack.YourIPAddr.Equal(net.IPv4(10, 0, 0, 50)) {
		t.Fatalf("ACK = %s", ack.Summary())
	}
	e = readEvent(t, events)
	if !e.Acked || e.IP != netip.MustParseAddr("10.0.0.50") {
		t.Errorf("ack event %+v", e)
	}
	b, ok, err := f.t.Binding(0, testPhoneMAC)
	if err != nil || !ok || !b.Bound || b.IP != netip.MustParseAddr("10.0.0.50") {
		t.Errorf("binding after ACK: %+v %v %v", b, ok, err)
	}
	if d := time.Until(b.Expires); d < 59*time.Minute || d > 61*time.Minute {
		t.Errorf("bound lease expires in %v, want the lease time (1h)", d)
	}

	// RENEWING: unicast from the client's address, answered to it.
	renew, _ := dhcpv4.New(dhcpv4.WithHwAddr(testPhoneMAC), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithClientIP(net.IPv4(10, 0, 0, 50)))
	ret, out = f.run(t, request(t, 0, testServer, renew))
	if ret != 3 {
		t.Fatalf("RENEW: verdict %d, want XDP_TX", ret)
	}
	eth, ip, ack = checkReply(t, out, 0)
	if ack.MessageType() != dhcpv4.MessageTypeAck || !ip.DstIP.Equal(net.IPv4(10, 0, 0, 50)) ||
		!bytes.Equal(eth.DstMAC, testPhoneMAC) || !ack.ClientIPAddr.Equal(net.IPv4(10, 0, 0, 50)) {
		t.Errorf("RENEW ACK %s to %v/%v", ack.Summary(), eth.DstMAC, ip.DstIP)
	}
	readEvent(t, events)
	if got := f.counter(t, "dhcp_fast_offer"); got != 1 {
		t.Errorf("dhcp_fast_offer = %d", got)
	}
	if got := f.counter(t, "dhcp_fast_ack"); got != 2 {
		t.Errorf("dhcp_fast_ack = %d", got)
	}
}

func TestDHCPFastPathTaggedAndClass(t *testing.T) {
	f := newDHCPFixture(t)
	events, err := f.t.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	f.t.PushFree(2, []netip.Addr{netip.MustParseAddr("10.100.0.50")})
	f.t.PushFree(1, []netip.Addr{netip.MustParseAddr("10.0.0.60")})
	unicast := discover(t)
	unicast.SetUnicast()
	ret, out := f.run(t, request(t, 100, netip.MustParseAddr("255.255.255.255"), unicast))
	if ret != 3 {
		t.Fatalf("tagged DISCOVER: verdict %d", ret)
	}
	eth, ip, offer := checkReply(t, out, 100)
	if !offer.YourIPAddr.Equal(net.IPv4(10, 100, 0, 50)) || !ip.SrcIP.Equal(net.IP(testServer100.AsSlice())) {
		t.Errorf("VLAN 100 offer %s from %v", offer.Summary(), ip.SrcIP)
	}
	if e := readEvent(t, events); e.VLAN != 100 || e.PoolID != 2 || e.IP != netip.MustParseAddr("10.100.0.50") || !bytes.Equal(e.MAC, testPhoneMAC) {
		t.Errorf("VLAN 100 offer event %+v", e)
	}
	// No broadcast flag: unicast to the offered address and chaddr.
	if !ip.DstIP.Equal(net.IPv4(10, 100, 0, 50)) || !bytes.Equal(eth.DstMAC, testPhoneMAC) {
		t.Errorf("unicast OFFER to %v/%v", eth.DstMAC, ip.DstIP)
	}
	// Option 60 of a class: the class's block (option 150 = 10.0.0.3).
	disc := discover(t, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("Cisco Systems, Inc. IP Phone CP-8845")))
	disc.Options.Del(dhcpv4.OptionParameterRequestList)
	ret, out = f.run(t, request(t, 0, netip.MustParseAddr("255.255.255.255"), disc))
	if ret != 3 {
		t.Fatalf("class DISCOVER: verdict %d", ret)
	}
	_, _, offer = checkReply(t, out, 0)
	if got := dhcpv4.GetIPs(dhcpv4.GenericOptionCode(150), offer.Options); len(got) != 1 || !got[0].Equal(net.IPv4(10, 0, 0, 3)) {
		t.Errorf("class option 150 = %v, want 10.0.0.3", got)
	}
}

func TestDHCPFastPathPassesToUserspace(t *testing.T) {
	f := newDHCPFixture(t)
	f.t.PushFree(1, []netip.Addr{netip.MustParseAddr("10.0.0.50")})
	bcast := netip.MustParseAddr("255.255.255.255")
	relayed := discover(t)
	relayed.GatewayIPAddr = net.IPv4(10, 9, 9, 1)
	withOpt82 := discover(t, dhcpv4.WithOption(dhcpv4.OptRelayAgentInfo(dhcpv4.OptGeneric(dhcpv4.AgentCircuitIDSubOption, []byte("p1")))))
	withFQDN := discover(t, dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionFQDN, []byte{0, 0, 0})))
	spoofed := discover(t)
	spoofed.ClientHWAddr = net.HardwareAddr{0x00, 0x1e, 0x7a, 0x99, 0x99, 0x99}
	unknownRequest, _ := dhcpv4.New(dhcpv4.WithHwAddr(testPhoneMAC), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 0, 0, 77))))
	inform, _ := dhcpv4.New(dhcpv4.WithHwAddr(testPhoneMAC), dhcpv4.WithMessageType(dhcpv4.MessageTypeInform))
	tests := []struct {
		name  string
		frame []byte
	}{
		{"relayed (giaddr)", request(t, 0, bcast, relayed)},
		{"option 82", request(t, 0, bcast, withOpt82)},
		{"an option the fast path does not know", request(t, 0, bcast, withFQDN)},
		{"chaddr is not the source MAC", func() []byte {
			fr := request(t, 0, bcast, spoofed)
			copy(fr[6:12], testPhoneMAC)
			return fr
		}()},
		{"VLAN without a pool", request(t, 200, bcast, discover(t))},
		{"REQUEST without a binding", request(t, 0, bcast, unknownRequest)},
		{"INFORM", request(t, 0, bcast, inform)},
		{"no END option", func() []byte {
			fr := request(t, 0, bcast, discover(t))
			for i := len(fr) - 1; i > 0; i-- {
				if fr[i] == 255 {
					fr[i] = 0
					break
				}
			}
			return fr
		}()},
		{"to another server's address", request(t, 0, netip.MustParseAddr("10.0.0.9"), discover(t))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]byte(nil), tt.frame...)
			ret, out := f.run(t, tt.frame)
			if ret != 2 { // XDP_PASS
				t.Fatalf("verdict %d, want XDP_PASS", ret)
			}
			if !bytes.Equal(out, in) {
				t.Errorf("passed frame was modified")
			}
		})
	}
	if got := f.counter(t, "dhcp_fast_offer"); got != 0 {
		t.Errorf("dhcp_fast_offer = %d after requests it must not answer", got)
	}
	// The one queued address is still there for a client the fast path serves.
	ret, _ := f.run(t, request(t, 0, bcast, discover(t)))
	if ret != 3 {
		t.Errorf("a plain DISCOVER after them: verdict %d, want XDP_TX", ret)
	}
}

func TestDHCPFastPathEmptyQueue(t *testing.T) {
	f := newDHCPFixture(t)
	ret, _ := f.run(t, request(t, 0, netip.MustParseAddr("255.255.255.255"), discover(t)))
	if ret != 2 {
		t.Fatalf("DISCOVER with no free address queued: verdict %d, want XDP_PASS", ret)
	}
	if got := f.counter(t, "dhcp_fast_no_free"); got != 1 {
		t.Errorf("dhcp_fast_no_free = %d, want 1", got)
	}
}

// TestDHCPFastPathRingFull: with the event ring full (no daemon reading
// it) the kernel answers nothing it could not report: the request passes
// to Go and dhcp_fast_ring_full counts it. Once an event is read, the
// next request is answered again.
func TestDHCPFastPathRingFull(t *testing.T) {
	f := newDHCPFixture(t)
	addr := netip.MustParseAddr("10.0.0.50")
	if err := f.t.PutBinding(DHCPBinding{MAC: testPhoneMAC, IP: addr, Expires: time.Now().Add(time.Hour), Ifindex: 1}); err != nil {
		t.Fatal(err)
	}
	sel, err := dhcpv4.New(dhcpv4.WithHwAddr(testPhoneMAC), dhcpv4.WithBroadcast(true),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP(addr.AsSlice()))),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(testServer.AsSlice()))))
	if err != nil {
		t.Fatal(err)
	}
	frame := request(t, 0, netip.MustParseAddr("255.255.255.255"), sel)
	events, err := f.t.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()

	// 40 bytes an event: the ring holds DHCPEventRingSize/40 of them.
	acked := 0
	for ; acked <= DHCPEventRingSize/40; acked++ {
		if ret, _ := f.run(t, frame); ret != 3 {
			break
		}
	}
	if acked != DHCPEventRingSize/40 {
		t.Fatalf("%d ACKs before the ring was full, want %d", acked, DHCPEventRingSize/40)
	}
	if got := f.counter(t, "dhcp_fast_ring_full"); got != 1 {
		t.Errorf("dhcp_fast_ring_full = %d, want 1", got)
	}
	if got := f.counter(t, "dhcp_fast_ack"); got != uint64(acked) {
		t.Errorf("dhcp_fast_ack = %d, want %d: an ACK without its event", got, acked)
	}
	readEvent(t, events)
	if ret, _ := f.run(t, frame); ret != 3 {
		t.Errorf("REQUEST after an event was read: verdict %d, want XDP_TX", ret)
	}
}

// TestDHCPFastPathBindingsFull: with the bindings map at its size a new
// client's DISCOVER passes to Go, counted in dhcp_fast_bindings_full; the
// queued address stays queued and no event says it was given.
func TestDHCPFastPathBindingsFull(t *testing.T) {
	f := newDHCPFixture(t)
	addr := netip.MustParseAddr("10.0.0.50")
	if n, err := f.t.PushFree(1, []netip.Addr{addr}); err != nil || n != 1 {
		t.Fatalf("PushFree: %d, %v", n, err)
	}
	m := f.o.objs.PbDhcpBindings
	keys := make([]phonePortPbDhcpBindingKey, m.MaxEntries())
	vals := make([]phonePortPbDhcpBinding, len(keys))
	for i := range keys {
		// Locally administered MACs, none of them testPhoneMAC.
		keys[i] = phonePortPbDhcpBindingKey{Vlan: 7, Mac: [6]uint8{0x02, 0, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}}
		vals[i] = phonePortPbDhcpBinding{Ip: uint32(i), State: 1}
	}
	if n, err := m.BatchUpdate(keys, vals, nil); err != nil || n != len(keys) {
		t.Fatalf("fill the bindings map: %d of %d, %v", n, len(keys), err)
	}
	events, err := f.t.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()

	if ret, _ := f.run(t, request(t, 0, netip.MustParseAddr("255.255.255.255"), discover(t))); ret != 2 {
		t.Fatalf("DISCOVER with the bindings map full: verdict %d, want XDP_PASS", ret)
	}
	if got := f.counter(t, "dhcp_fast_bindings_full"); got != 1 {
		t.Errorf("dhcp_fast_bindings_full = %d, want 1", got)
	}
	events.SetDeadline(time.Now().Add(100 * time.Millisecond))
	if e, err := events.Read(); err == nil {
		t.Errorf("event %+v for a request the kernel did not answer", e)
	}
	if ips, err := f.t.DrainFree(1); err != nil || len(ips) != 1 || ips[0] != addr {
		t.Errorf("free queue after the request: %v, %v; want [%v]", ips, err, addr)
	}
}

func TestDHCPTablesValidate(t *testing.T) {
	f := newDHCPFixture(t)
	blk, off := testBlock(testServer, testServer)
	if err := f.t.SetBlock(9, blk, off+1); err == nil {
		t.Error("SetBlock with a wrong option 53 offset succeeded")
	}
	if err := f.t.SetBlock(9, make([]byte, DHCPBlockMax+1), 2); err == nil {
		t.Error("SetBlock with an oversized block succeeded")
	}
	if err := f.t.SetPool(DHCPPool{ID: 0, ServerIP: testServer}); err == nil {
		t.Error("SetPool with ID 0 succeeded")
	}
	if err := f.t.SetClass(1, string(make([]byte, 65)), 1); err == nil {
		t.Error("SetClass with a 65-byte vendor class succeeded")
	}
	var ips []netip.Addr
	for i := range DHCPFreeQueueDefault + 10 {
		ips = append(ips, netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
	}
	n, err := f.t.PushFree(1, ips)
	if err != nil || n != DHCPFreeQueueDefault {
		t.Errorf("PushFree past capacity: %d, %v; want %d, nil", n, err, DHCPFreeQueueDefault)
	}
	got, err := f.t.DrainFree(1)
	if err != nil || len(got) != DHCPFreeQueueDefault || got[0] != ips[0] {
		t.Errorf("DrainFree: %d addresses (first %v), %v", len(got), got[0], err)
	}
}

func TestDHCPBindingBatchAndPrune(t *testing.T) {
	f := newDHCPFixture(t)
	macOf := func(i int) net.HardwareAddr { return net.HardwareAddr{0x02, 0, 0, 0, byte(i >> 8), byte(i)} }
	var bb BindingBatch
	if err := bb.Add(DHCPBinding{MAC: net.HardwareAddr{1, 2, 3}}); err == nil {
		t.Error("Add of a 3-byte MAC succeeded")
	}
	const n = 2500 // more than PruneBindings reads at once
	exp := time.Now().Add(time.Hour)
	for i := range n {
		b := DHCPBinding{VLAN: uint16(i % 2), MAC: macOf(i), IP: netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), Bound: i%3 == 0, Expires: exp, Ifindex: 1}
		if err := bb.Add(b); err != nil {
			t.Fatal(err)
		}
	}
	// A client twice in one batch: the later binding wins, as with Put.
	if err := bb.Add(DHCPBinding{VLAN: 0, MAC: macOf(0), IP: netip.MustParseAddr("10.9.9.9"), Expires: exp}); err != nil {
		t.Fatal(err)
	}
	if err := f.t.PutBindings(&bb); err != nil {
		t.Fatal(err)
	}
	if bb.Len() != 0 {
		t.Errorf("batch holds %d bindings after PutBindings, want 0", bb.Len())
	}
	for i := 1; i < n; i++ {
		b, ok, err := f.t.Binding(uint16(i%2), macOf(i))
		if err != nil || !ok || b.IP != netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}) || b.Bound != (i%3 == 0) || b.Ifindex != 1 {
			t.Fatalf("binding %d: %+v, %v, %v", i, b, ok, err)
		}
	}
	if b, _, _ := f.t.Binding(0, macOf(0)); b.IP != netip.MustParseAddr("10.9.9.9") || b.Bound {
		t.Errorf("client added twice: binding %+v, want the later one", b)
	}

	// Keep the VLAN 0 bindings: the 500 on VLAN 1 go.
	var seen int
	deleted, err := f.t.PruneBindings(func(vlan uint16, mac [6]byte) bool {
		seen++
		return vlan == 0
	})
	if err != nil || deleted != n/2 || seen != n {
		t.Fatalf("PruneBindings: %d deleted, %d seen, %v; want %d, %d", deleted, seen, err, n/2, n)
	}
	for i := range n {
		_, ok, err := f.t.Binding(uint16(i%2), macOf(i))
		if err != nil || ok != (i%2 == 0) {
			t.Fatalf("binding %d on VLAN %d after pruning: present %v (%v)", i, i%2, ok, err)
		}
	}
}

// sizedBlock renders an option block of exactly n bytes (3 to
// DHCPBlockMax): option 53 after a short option whose length moves it to
// either parity, then filler options of non-zero bytes (a pad byte where
// one byte is left). It returns the block and option 53's value offset.
func sizedBlock(n int) ([]byte, int) {
	var b []byte
	fill := func(code byte, l int) {
		b = append(b, code, byte(l))
		for i := range l {
			b = append(b, byte(len(b)+i)*37|1)
		}
	}
	if n >= 5 {
		fill(224, min(n%4, n-5))
	}
	b = append(b, 53, 1, byte(dhcpv4.MessageTypeOffer))
	off := len(b) - 1
	for n-len(b) >= 2 {
		fill(225, min(n-len(b)-2, 200))
	}
	if len(b) < n {
		b = append(b, 0)
	}
	return b, off
}

// TestDHCPFastPathBlockSizes checks every block length the kernel takes,
// in an OFFER and an ACK, tagged and not: the options, END, the padding to
// the BOOTP minimum and both checksums. The kernel copies blocks in words
// and sums them as it goes, so lengths around word and padding edges are
// where it could go wrong.
func TestDHCPFastPathBlockSizes(t *testing.T) {
	f := newDHCPFixture(t)
	bcast := netip.MustParseAddr("255.255.255.255")
	addr := netip.MustParseAddr("10.0.0.50")
	// A long host name keeps the request big enough for the largest
	// reply to fit in the headroom bpf_xdp_adjust_head grows into.
	host := dhcpv4.WithOption(dhcpv4.OptHostName(strings.Repeat("h", 200)))
	for n := 3; n <= DHCPBlockMax; n++ {
		blk, off := sizedBlock(n)
		if len(blk) != n {
			t.Fatalf("sizedBlock(%d) made %d bytes", n, len(blk))
		}
		// Odd lengths go to pool 2 on VLAN 100 (block 2), even ones to
		// pool 1, untagged.
		vlan, pool, l2 := uint16(0), uint32(1), 14
		if n%2 == 1 {
			vlan, pool, l2 = 100, 2, 18
		}
		if err := f.t.SetBlock(pool, blk, off); err != nil {
			t.Fatal(err)
		}
		for _, ack := range []bool{false, true} {
			var m *dhcpv4.DHCPv4
			if ack {
				if err := f.t.PutBinding(DHCPBinding{VLAN: vlan, MAC: testPhoneMAC, IP: addr, Expires: time.Now().Add(time.Minute), Ifindex: 1}); err != nil {
					t.Fatal(err)
				}
				m, _ = dhcpv4.New(dhcpv4.WithHwAddr(testPhoneMAC), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
					dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP(addr.AsSlice()))), host)
			} else {
				if err := f.t.DeleteBinding(vlan, testPhoneMAC); err != nil {
					t.Fatal(err)
				}
				if _, err := f.t.PushFree(pool, []netip.Addr{addr}); err != nil {
					t.Fatal(err)
				}
				m = discover(t, host)
			}
			ret, out := f.run(t, request(t, vlan, bcast, m))
			if ret != 3 {
				t.Fatalf("block of %d, ACK %v: verdict %d, want XDP_TX", n, ack, ret)
			}
			_, _, reply := checkReply(t, out, vlan)
			want := append([]byte(nil), blk...)
			want[off] = byte(dhcpv4.MessageTypeOffer)
			if ack {
				want[off] = byte(dhcpv4.MessageTypeAck)
			}
			want = append(want, 255)
			for len(want) < 60 {
				want = append(want, 0)
			}
			if got := out[len(out)-len(want):]; !bytes.Equal(got, want) || len(out) != l2+28+240+len(want) {
				t.Fatalf("block of %d, ACK %v: %d-byte frame ending in\n%x\nwant\n%x", n, ack, len(out), got, want)
			}
			if reply.TransactionID != m.TransactionID || !reply.YourIPAddr.Equal(net.IP(addr.AsSlice())) {
				t.Fatalf("block of %d, ACK %v: reply %s", n, ack, reply.Summary())
			}
		}
	}
}

// TestDHCPFastPathVendorClassLengths matches option 60 of every length the
// kernel hashes (it reads whole words, then the last partial one) against
// a class set with VendorClassHash, and one byte off against none. The
// class's block carries option 150 = 10.0.0.3, the default 10.0.0.2.
func TestDHCPFastPathVendorClassLengths(t *testing.T) {
	f := newDHCPFixture(t)
	bcast := netip.MustParseAddr("255.255.255.255")
	addr := netip.MustParseAddr("10.0.0.50")
	if err := f.t.ClearClasses(); err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= DHCPVendorClassMax+1; n++ {
		vc := make([]byte, n)
		for i := range vc {
			vc[i] = byte('A' + (i*7+n)%26)
		}
		if n <= DHCPVendorClassMax {
			if err := f.t.SetClass(1, string(vc), 3); err != nil {
				t.Fatal(err)
			}
		}
		other := append([]byte(nil), vc...)
		other[n-1]++
		for _, c := range []struct {
			vc   []byte
			want string // option 150; "" for XDP_PASS
		}{
			{vc, "10.0.0.3"},
			{other, "10.0.0.2"},
		} {
			if n > DHCPVendorClassMax {
				c.want = "" // too long to hash: Go matches it
			}
			if err := f.t.DeleteBinding(0, testPhoneMAC); err != nil {
				t.Fatal(err)
			}
			if _, err := f.t.DrainFree(1); err != nil {
				t.Fatal(err)
			}
			if _, err := f.t.PushFree(1, []netip.Addr{addr}); err != nil {
				t.Fatal(err)
			}
			disc := discover(t, dhcpv4.WithOption(dhcpv4.OptClassIdentifier(string(c.vc))))
			ret, out := f.run(t, request(t, 0, bcast, disc))
			if c.want == "" {
				if ret != xdpPass {
					t.Errorf("option 60 of %d bytes: verdict %d, want XDP_PASS", n, ret)
				}
				continue
			}
			if ret != 3 {
				t.Fatalf("option 60 of %d bytes (%q): verdict %d, want XDP_TX", n, c.vc, ret)
			}
			_, _, offer := checkReply(t, out, 0)
			if got := dhcpv4.GetIPs(dhcpv4.GenericOptionCode(150), offer.Options); len(got) != 1 || got[0].String() != c.want {
				t.Errorf("option 60 of %d bytes (%q): option 150 = %v, want %s", n, c.vc, got, c.want)
			}
		}
		if err := f.t.ClearClasses(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDHCPClasslessHint follows the hint that lets the kernel skip the
// class lookup: set for a pool without classes, cleared by a class (the
// fixture adds CP-8845 to pool 1 after SetPool), set again by ClearClasses.
// A hint wrongly set would answer a class's phones with the default block
// (TestDHCPFastPathTaggedAndClass); one wrongly cleared only costs time,
// which is why it is checked here.
func TestDHCPClasslessHint(t *testing.T) {
	f := newDHCPFixture(t)
	hint := func(pool uint32) uint32 {
		t.Helper()
		var v uint32
		if err := f.o.objs.PbDhcpClassless.Lookup(pool, &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	if hint(1) != 0 || hint(2) != 1 {
		t.Errorf("after setup: pool 1 (a class) hint %d, pool 2 (none) hint %d; want 0, 1", hint(1), hint(2))
	}
	if err := f.t.ClearClasses(); err != nil {
		t.Fatal(err)
	}
	if hint(1) != 1 {
		t.Errorf("after ClearClasses: pool 1 hint %d, want 1", hint(1))
	}
	if err := f.t.SetClass(2, "SEP", 1); err != nil {
		t.Fatal(err)
	}
	if err := f.t.SetPool(DHCPPool{ID: 2, VLAN: 100, ServerIP: testServer100, DefaultBlock: 2, Allocate: true}); err != nil {
		t.Fatal(err)
	}
	if hint(2) != 0 {
		t.Errorf("pool 2 set again with a class: hint %d, want 0", hint(2))
	}
}

// TestDHCPFreeQueueSize: a pool's queue can be larger than the size the C
// program declares; SetPool with another size replaces the queue, and
// the kernel hands out from the new one.
func TestDHCPFreeQueueSize(t *testing.T) {
	f := newDHCPFixture(t)
	const size = 3 * DHCPFreeQueueDefault
	pool := DHCPPool{ID: 1, VLAN: 0, ServerIP: testServer, DefaultBlock: 1, LeaseTime: time.Hour, OfferTime: time.Minute, Allocate: true, FreeQueue: size}
	if err := f.t.SetPool(pool); err != nil {
		t.Fatal(err)
	}
	var ips []netip.Addr
	for i := range size + 10 {
		ips = append(ips, netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}))
	}
	if n, err := f.t.PushFree(1, ips); err != nil || n != size {
		t.Fatalf("PushFree past capacity: %d, %v; want %d, nil", n, err, size)
	}
	ret, out := f.run(t, request(t, 0, netip.MustParseAddr("255.255.255.255"), discover(t)))
	if ret != 3 {
		t.Fatalf("DISCOVER: verdict %d, want XDP_TX", ret)
	}
	if _, _, m := checkReply(t, out, 0); !m.YourIPAddr.Equal(ips[0].AsSlice()) {
		t.Errorf("offered %v, want the first queued address %v", m.YourIPAddr, ips[0])
	}
	// The same size again keeps the queue and what it holds.
	if err := f.t.SetPool(pool); err != nil {
		t.Fatal(err)
	}
	if got, err := f.t.DrainFree(1); err != nil || len(got) != size-1 {
		t.Errorf("after SetPool with the same size: %d queued, %v; want %d", len(got), err, size-1)
	}
	pool.FreeQueue = -1
	if err := f.t.SetPool(pool); err == nil {
		t.Error("SetPool with a negative queue size succeeded")
	}
}
