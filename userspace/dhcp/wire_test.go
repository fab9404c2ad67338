package dhcp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"unsafe"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/insomniacslk/dhcp/dhcpv4"
)

var serverMAC = mac("02:00:00:00:00:fe")

// TestEncodeFrameGopacket decodes real replies with gopacket's own
// decoders and checks every layer, including that the checksums are the
// ones gopacket computes.
func TestEncodeFrameGopacket(t *testing.T) {
	hs := newHarness(t, testConfig())
	cl := mac("00:de:ad:be:ef:07")
	var replies []Reply
	rep, _ := hs.discover("p1", 100, cl) // tagged, unicast to yiaddr
	replies = append(replies, rep)
	rep, _ = hs.discover("p1", 0, macN(5), dhcpv4.WithBroadcast(true)) // untagged, broadcast
	replies = append(replies, rep)
	rep, _ = hs.do(onPort("up", 300, mac("00:00:5e:00:01:01"), pkt(dhcpv4.MessageTypeDiscover, macN(6), withGiaddr(ip("172.16.5.1")),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionRelayAgentInformation, []byte{1, 2, 'a', 'b'}))))) // to a relay, odd-length payload
	replies = append(replies, rep)
	rep, _ = hs.do(onPort("p1", 100, cl, pkt(dhcpv4.MessageTypeRequest, cl, optIP(dhcpv4.OptionRequestedIPAddress, ip("8.8.8.8"))))) // NAK
	replies = append(replies, rep)

	for i, r := range replies {
		if r.Payload == nil {
			t.Fatalf("reply %d missing", i)
		}
		frame := EncodeFrame(serverMAC, r)
		p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.DecodeOptions{})
		if el := p.ErrorLayer(); el != nil {
			t.Fatalf("reply %d: gopacket: %v", i, el.Error())
		}
		eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		if !bytes.Equal(eth.SrcMAC, serverMAC) || !bytes.Equal(eth.DstMAC, r.DstMAC) {
			t.Errorf("reply %d: ethernet %v -> %v", i, eth.SrcMAC, eth.DstMAC)
		}
		var stack []gopacket.SerializableLayer
		stack = append(stack, eth)
		if r.VLAN != 0 {
			q, ok := p.Layer(layers.LayerTypeDot1Q).(*layers.Dot1Q)
			if !ok || q.VLANIdentifier != r.VLAN || q.Priority != 0 || q.DropEligible || eth.EthernetType != layers.EthernetTypeDot1Q {
				t.Fatalf("reply %d: 802.1Q %+v", i, q)
			}
			stack = append(stack, q)
		} else if p.Layer(layers.LayerTypeDot1Q) != nil || eth.EthernetType != layers.EthernetTypeIPv4 {
			t.Fatalf("reply %d: untagged reply has a tag", i)
		}
		ip4l := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if ip4l.IHL != 5 || ip4l.TOS != 0 || ip4l.Id != 0 || ip4l.Flags != 0 || ip4l.FragOffset != 0 || ip4l.TTL != 64 ||
			ip4l.Protocol != layers.IPProtocolUDP || !ip4l.SrcIP.Equal(net.IP(r.SrcIP.AsSlice())) || !ip4l.DstIP.Equal(net.IP(r.DstIP.AsSlice())) ||
			int(ip4l.Length) != 20+8+len(r.Payload) {
			t.Errorf("reply %d: IPv4 %+v", i, ip4l)
		}
		udp := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if udp.SrcPort != 67 || uint16(udp.DstPort) != r.DstPort || int(udp.Length) != 8+len(r.Payload) {
			t.Errorf("reply %d: UDP %d -> %d len %d", i, udp.SrcPort, udp.DstPort, udp.Length)
		}
		d, ok := p.Layer(layers.LayerTypeDHCPv4).(*layers.DHCPv4)
		if !ok {
			t.Fatalf("reply %d: gopacket found no DHCPv4 layer", i)
		}
		q, _ := dhcpv4.FromBytes(r.Payload)
		if d.Operation != layers.DHCPOpReply || d.HardwareType != layers.LinkTypeEthernet || d.HardwareLen != 6 ||
			!bytes.Equal(d.ClientHWAddr, q.ClientHWAddr) || d.Xid != binary.BigEndian.Uint32(q.TransactionID[:]) ||
			!d.YourClientIP.Equal(q.YourIPAddr) || !d.RelayAgentIP.Equal(q.GatewayIPAddr) {
			t.Errorf("reply %d: DHCPv4 %v", i, d)
		}
		var gotType layers.DHCPMsgType
		for _, o := range d.Options {
			if o.Type == layers.DHCPOptMessageType && len(o.Data) == 1 {
				gotType = layers.DHCPMsgType(o.Data[0])
			}
		}
		if uint8(gotType) != uint8(q.MessageType()) {
			t.Errorf("reply %d: gopacket sees type %v, the codec %v", i, gotType, q.MessageType())
		}

		// Checksums: let gopacket compute them over the same headers.
		wantIPSum, wantUDPSum := ip4l.Checksum, udp.Checksum
		ipCopy, udpCopy := *ip4l, *udp
		if err := udpCopy.SetNetworkLayerForChecksum(&ipCopy); err != nil {
			t.Fatal(err)
		}
		stack = append(stack, &ipCopy, &udpCopy, gopacket.Payload(r.Payload))
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, stack...); err != nil {
			t.Fatal(err)
		}
		if ipCopy.Checksum != wantIPSum || udpCopy.Checksum != wantUDPSum {
			t.Errorf("reply %d: checksums IP %#04x UDP %#04x, gopacket computes %#04x %#04x", i, wantIPSum, wantUDPSum, ipCopy.Checksum, udpCopy.Checksum)
		}
		if !bytes.Equal(buf.Bytes(), frame) {
			t.Errorf("reply %d: gopacket re-serialises\n%x\nwe sent\n%x", i, buf.Bytes(), frame)
		}
		// And they verify: the one's complement sums come to 0xffff.
		off := 14
		if r.VLAN != 0 {
			off = 18
		}
		if foldSum(sum16(0, frame[off:off+20])) != 0xffff {
			t.Errorf("reply %d: IPv4 header checksum does not verify", i)
		}
		ps := sum16(0, frame[off+12:off+20]) + ipProtoUDP + uint32(8+len(r.Payload))
		if foldSum(sum16(ps, frame[off+20:])) != 0xffff {
			t.Errorf("reply %d: UDP checksum does not verify", i)
		}
	}
}

// clientFrame builds a request frame with gopacket.
func clientFrame(t testing.TB, payload []byte, mut func(eth *layers.Ethernet, ip *layers.IPv4, udp *layers.UDP)) []byte {
	eth := &layers.Ethernet{SrcMAC: mac("00:de:ad:be:ef:01"), DstMAC: broadcastMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4zero, DstIP: net.IPv4bcast}
	udp := &layers.UDP{SrcPort: 68, DstPort: 67}
	if mut != nil {
		mut(eth, ip, udp)
	}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, eth, ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return slices.Clone(buf.Bytes())
}

func TestDecodeFrame(t *testing.T) {
	payload := pkt(dhcpv4.MessageTypeDiscover, mac("00:de:ad:be:ef:01"))
	good := clientFrame(t, payload, nil)
	withOpts := clientFrame(t, payload, func(_ *layers.Ethernet, ip *layers.IPv4, _ *layers.UDP) {
		ip.Options = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}} // router alert
	})
	fix := func(b []byte, mut func(b []byte)) []byte {
		b = slices.Clone(b)
		mut(b)
		// Recompute the IPv4 header checksum so only the intended fault remains.
		ihl := min(int(b[14]&0xf)*4, len(b)-14)
		b[24], b[25] = 0, 0
		binary.BigEndian.PutUint16(b[24:26], ^foldSum(sum16(0, b[14:14+ihl])))
		return b
	}
	tests := []struct {
		name    string
		frame   []byte
		wantErr bool
	}{
		{"good", good, false},
		{"ip options skipped", withOpts, false},
		{"ethernet padding", append(slices.Clone(good), make([]byte, 20)...), false},
		{"DF set", fix(good, func(b []byte) { b[20] = 0x40 }), false},
		{"short", good[:13], true},
		{"empty", nil, true},
		{"vlan tag inside", fix(good, func(b []byte) { b[12], b[13] = 0x81, 0x00 }), true},
		{"ipv6", fix(good, func(b []byte) { b[12], b[13] = 0x86, 0xdd }), true},
		{"multicast source", fix(good, func(b []byte) { b[6] = 0x01 }), true},
		{"ip version 6", fix(good, func(b []byte) { b[14] = 0x65 }), true},
		{"ihl 4", fix(good, func(b []byte) { b[14] = 0x44 }), true},
		{"ihl past end", good[:14+19], true},
		{"ihl 15 past frame", fix(good[:14+40], func(b []byte) { b[14] = 0x4f }), true},
		{"total length short", fix(good, func(b []byte) { binary.BigEndian.PutUint16(b[16:18], 27) }), true},
		{"total length long", fix(good, func(b []byte) { binary.BigEndian.PutUint16(b[16:18], uint16(len(good))) }), true},
		{"more fragments", fix(good, func(b []byte) { b[20] = 0x20 }), true},
		{"fragment offset", fix(good, func(b []byte) { b[21] = 0x01 }), true},
		{"tcp", fix(good, func(b []byte) { b[23] = 6 }), true},
		{"bad ip checksum", func() []byte { b := slices.Clone(good); b[24] ^= 0xff; return b }(), true},
		{"to port 68", fix(good, func(b []byte) { b[37] = 68 }), true},
		{"udp length 7", fix(good, func(b []byte) { binary.BigEndian.PutUint16(b[38:40], 7) }), true},
		{"udp length past ip", fix(good, func(b []byte) { binary.BigEndian.PutUint16(b[38:40], uint16(len(good))) }), true},
		{"truncated udp", good[:14+20+8+100], true},
		{"payload too big", clientFrame(t, make([]byte, MaxPayload+1), nil), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := DecodeFrame(tc.frame, 100, "p1")
			if tc.wantErr {
				if err == nil || !errors.Is(err, ErrFrame) {
					t.Fatalf("error %v, want an ErrFrame", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(req.Payload, payload) || req.Port != "p1" || req.VLAN != 100 || req.SrcPort != 68 ||
				req.SrcIP != netip.IPv4Unspecified() || req.DstIP != broadcastIP || !bytes.Equal(req.SrcMAC, mac("00:de:ad:be:ef:01")) {
				t.Fatalf("decoded %+v", req)
			}
			if cap(req.Payload) != len(req.Payload) {
				t.Fatal("payload capacity reaches past the UDP payload")
			}
		})
	}
	if got, _ := DecodeFrame(clientFrame(t, make([]byte, MaxPayload), nil), 0, ""); len(got.Payload) != MaxPayload {
		t.Fatal("largest payload refused")
	}
}

// TestFrameRoundTrip: what EncodeFrame writes (to port 67, untagged)
// DecodeFrame reads back.
func TestFrameRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 300, 301, MaxPayload} {
		r := Reply{DstMAC: mac("00:00:5e:00:01:01"), SrcIP: ip("10.1.0.2"), DstIP: ip("10.1.0.1"), DstPort: 67, Payload: bytes.Repeat([]byte{0x5a}, n)}
		req, err := DecodeFrame(EncodeFrame(serverMAC, r), 0, "p")
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if !bytes.Equal(req.Payload, r.Payload) || req.SrcIP != r.SrcIP || req.DstIP != r.DstIP || req.SrcPort != 67 || !bytes.Equal(req.SrcMAC, serverMAC) {
			t.Fatalf("%d bytes: %+v", n, req)
		}
	}
}

func FuzzDecodeFrame(f *testing.F) {
	payload := pkt(dhcpv4.MessageTypeDiscover, mac("00:de:ad:be:ef:01"))
	f.Add(clientFrame(f, payload, nil))
	f.Add(clientFrame(f, payload, func(_ *layers.Ethernet, ip *layers.IPv4, _ *layers.UDP) {
		ip.Options = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
	}))
	f.Add(EncodeFrame(serverMAC, Reply{DstMAC: broadcastMAC, SrcIP: ip("10.1.0.2"), DstIP: ip("10.1.0.1"), DstPort: 67, Payload: payload}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, frame []byte) {
		req, err := DecodeFrame(frame, 7, "p")
		if err != nil {
			if !errors.Is(err, ErrFrame) {
				t.Fatalf("error %v does not wrap ErrFrame", err)
			}
			return
		}
		if len(req.Payload) > MaxPayload || len(req.Payload) > len(frame)-14-20-8 {
			t.Fatalf("payload of %d bytes from a %d-byte frame", len(req.Payload), len(frame))
		}
		if len(req.Payload) > 0 {
			start := uintptr(unsafe.Pointer(unsafe.SliceData(frame)))
			p := uintptr(unsafe.Pointer(unsafe.SliceData(req.Payload)))
			if p < start+14+20+8 || p+uintptr(cap(req.Payload)) > start+uintptr(len(frame)) {
				t.Fatalf("payload [%#x, +%d) outside frame [%#x, +%d)", p, cap(req.Payload), start, len(frame))
			}
		}
		if len(req.SrcMAC) != 6 || req.VLAN != 7 || req.Port != "p" {
			t.Fatalf("request %+v", req)
		}
	})
}

func BenchmarkDecodeFrame(b *testing.B) {
	frame := clientFrame(b, pkt(dhcpv4.MessageTypeDiscover, mac("00:de:ad:be:ef:01")), nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeFrame(frame, 100, "p1"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeFrame(b *testing.B) {
	r := Reply{DstMAC: broadcastMAC, VLAN: 100, SrcIP: ip("10.1.0.2"), DstIP: broadcastIP, DstPort: 68, Payload: make([]byte, 300)}
	b.ReportAllocs()
	for b.Loop() {
		EncodeFrame(serverMAC, r)
	}
}
