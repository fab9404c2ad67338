package fastpath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// The frame builder used by the BPF_PROG_RUN, fuzz, live and benchmark
// tests. It writes what it is told, including impossible values, so the
// tests can build malformed frames too; TestBuilderMatchesGopacket decodes
// the valid ones with gopacket so the builder cannot silently be wrong.

var (
	macBroadcast = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	macCDP       = [6]byte{0x01, 0x00, 0x0c, 0xcc, 0xcc, 0xcc}
	macLLDP      = [6]byte{0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e}
	macPhone     = [6]byte{0x00, 0x1b, 0x54, 0x12, 0x34, 0x56} // a Cisco OUI
	macSwitch    = [6]byte{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
)

const (
	tpid8021Q  = 0x8100
	tpid8021AD = 0x88a8

	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
	etherTypeIPv6 = 0x86dd
	etherTypeLLDP = 0x88cc

	ipProtoTCP = 6
	ipProtoUDP = 17

	ipFlagMF = 0x2000 // more fragments, in the frag_off word
)

// snapCDP is the LLC/SNAP header CDP travels in: DSAP/SSAP 0xAA, UI
// control, Cisco OUI 00:00:0c, protocol ID 0x2000.
var snapCDP = []byte{0xaa, 0xaa, 0x03, 0x00, 0x00, 0x0c, 0x20, 0x00}

// cdpBody is a CDPv2 header (version, TTL, checksum) and a Device-ID TLV.
var cdpBody = func() []byte {
	b := []byte{0x02, 0xb4, 0x00, 0x00}
	id := []byte("SEP001B54123456")
	b = binary.BigEndian.AppendUint16(b, 0x0001)
	b = binary.BigEndian.AppendUint16(b, uint16(4+len(id)))
	b = append(b, id...)
	binary.BigEndian.PutUint16(b[2:4], inetChecksum(b))
	return b
}()

// lldpBody is a minimal LLDPDU: chassis ID, port ID, TTL, end.
var lldpBody = []byte{
	0x02, 0x07, 0x04, 0x00, 0x1b, 0x54, 0x12, 0x34, 0x56, // chassis ID (MAC)
	0x04, 0x04, 0x05, 'p', '1', '0', // port ID (interface name)
	0x06, 0x02, 0x00, 0x78, // TTL 120
	0x00, 0x00, // end
}

type vlanTag struct {
	tpid uint16 // tpid8021Q or tpid8021AD
	vid  uint16
}

// ipv4Hdr describes an IPv4 header. Zero version and IHL are filled in
// (4, and 5 plus the options) unless raw is set; set them to write
// impossible values.
type ipv4Hdr struct {
	version uint8
	ihl     uint8
	raw     bool   // write version and ihl as given, zeros included
	options []byte // padded with EOL to a multiple of 4
	fragOff uint16 // flags and offset as on the wire (ipFlagMF | offset/8)
	proto   uint8
	src     [4]byte
	dst     [4]byte
}

type udpHdr struct {
	src, dst uint16
}

// frame describes an Ethernet frame. With llc set it is an 802.3 frame:
// the EtherType field holds the length of what follows and llc is written
// first. Otherwise etherType is written, defaulting to IPv4 when ip is set.
type frame struct {
	dst, src  [6]byte
	tags      []vlanTag
	etherType uint16
	llc       []byte
	ip        *ipv4Hdr
	udp       *udpHdr
	payload   []byte
}

// optionsPadded returns the options padded to a 4-byte boundary.
func (h *ipv4Hdr) optionsPadded() []byte {
	o := append([]byte(nil), h.options...)
	for len(o)%4 != 0 {
		o = append(o, 0) // EOL
	}
	return o
}

// bytes encodes the frame.
func (f frame) bytes() []byte {
	var l4 []byte
	if f.udp != nil {
		l4 = binary.BigEndian.AppendUint16(l4, f.udp.src)
		l4 = binary.BigEndian.AppendUint16(l4, f.udp.dst)
		l4 = binary.BigEndian.AppendUint16(l4, uint16(8+len(f.payload)))
		l4 = binary.BigEndian.AppendUint16(l4, 0) // no checksum, legal over IPv4
	}
	l4 = append(l4, f.payload...)

	var l3 []byte
	if h := f.ip; h != nil {
		opts := h.optionsPadded()
		version, ihl := h.version, h.ihl
		if version == 0 && !h.raw {
			version = 4
		}
		if ihl == 0 && !h.raw {
			ihl = uint8(5 + len(opts)/4)
		}
		l3 = append(l3, version<<4|ihl&0x0f, 0)
		l3 = binary.BigEndian.AppendUint16(l3, uint16(20+len(opts)+len(l4)))
		l3 = binary.BigEndian.AppendUint16(l3, 0x1234) // ID
		l3 = binary.BigEndian.AppendUint16(l3, h.fragOff)
		l3 = append(l3, 64, h.proto, 0, 0)
		l3 = append(l3, h.src[:]...)
		l3 = append(l3, h.dst[:]...)
		l3 = append(l3, opts...)
		binary.BigEndian.PutUint16(l3[10:12], inetChecksum(l3))
	}
	l3 = append(l3, l4...)

	b := append([]byte(nil), f.dst[:]...)
	b = append(b, f.src[:]...)
	for _, tag := range f.tags {
		b = binary.BigEndian.AppendUint16(b, tag.tpid)
		b = binary.BigEndian.AppendUint16(b, tag.vid&0x0fff)
	}
	switch {
	case f.llc != nil:
		b = binary.BigEndian.AppendUint16(b, uint16(len(f.llc)+len(l3)))
		b = append(b, f.llc...)
	case f.etherType == 0 && f.ip != nil:
		b = binary.BigEndian.AppendUint16(b, etherTypeIPv4)
	default:
		b = binary.BigEndian.AppendUint16(b, f.etherType)
	}
	return append(b, l3...)
}

// headerLen is the length of the headers the classifier parses: Ethernet,
// the tags, LLC/SNAP, IPv4 with options and UDP (whichever are present).
func (f frame) headerLen() int {
	n := 14 + 4*len(f.tags) + len(f.llc)
	if f.ip != nil {
		n += 20 + len(f.ip.optionsPadded())
	}
	if f.udp != nil {
		n += 8
	}
	return n
}

func inetChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// dhcpDiscover is enough of a BOOTP/DHCP request to look like one.
var dhcpDiscover = func() []byte {
	b := make([]byte, 240)
	b[0], b[1], b[2] = 1, 1, 6 // BOOTREQUEST, Ethernet, hlen
	copy(b[28:], macPhone[:])
	copy(b[236:], []byte{99, 130, 83, 99}) // magic cookie
	return append(b, 53, 1, 1, 255)        // DHCPDISCOVER, end
}()

// The frames the tests start from. Each call returns a fresh value that a
// test may modify.

func dhcpFrame(dport uint16, tags ...vlanTag) frame {
	return frame{
		dst:     macBroadcast,
		src:     macPhone,
		tags:    tags,
		ip:      &ipv4Hdr{proto: ipProtoUDP, dst: [4]byte{255, 255, 255, 255}},
		udp:     &udpHdr{src: 68, dst: dport},
		payload: dhcpDiscover,
	}
}

func cdpFrame(tags ...vlanTag) frame {
	return frame{dst: macCDP, src: macPhone, tags: tags, llc: snapCDP, payload: cdpBody}
}

func lldpFrame(tags ...vlanTag) frame {
	return frame{dst: macLLDP, src: macPhone, tags: tags, etherType: etherTypeLLDP, payload: lldpBody}
}

// routerAlert is the 4-byte IPv4 Router Alert option; nop is 1 byte.
var (
	optRouterAlert = []byte{0x94, 0x04, 0x00, 0x00}
	optNOP         = []byte{0x01}
)

// ipOptions returns n 32-bit words of options: a Router Alert, then NOPs.
func ipOptions(words int) []byte {
	if words == 0 {
		return nil
	}
	o := append([]byte(nil), optRouterAlert...)
	for len(o) < 4*words {
		o = append(o, optNOP...)
	}
	return o
}

var (
	tagVoice = vlanTag{tpid: tpid8021Q, vid: 100}
	tagOuter = vlanTag{tpid: tpid8021AD, vid: 300}
)

// builderCase is a valid frame and what gopacket must find in it.
type builderCase struct {
	name      string
	f         frame
	dot1q     int    // number of Dot1Q layers
	ihl       uint8  // 0: no IPv4 layer expected
	udpDst    uint16 // 0: no UDP layer expected
	snap      bool   // LLC and SNAP layers with Cisco OUI / PID 0x2000
	lldp      bool
	innerType layers.EthernetType // EtherType after the last tag, if tagged
}

func builderCases() []builderCase {
	var cs []builderCase
	for _, port := range []uint16{67, 68, 5060} {
		cs = append(cs, builderCase{name: fmt.Sprintf("udp to %d", port), f: dhcpFrame(port), ihl: 5, udpDst: port})
	}
	cs = append(cs,
		builderCase{name: "tagged dhcp", f: dhcpFrame(67, tagVoice), dot1q: 1, ihl: 5, udpDst: 67, innerType: layers.EthernetTypeIPv4},
		builderCase{name: "double tagged dhcp", f: dhcpFrame(67, tagOuter, tagVoice), dot1q: 2, ihl: 5, udpDst: 67, innerType: layers.EthernetTypeIPv4},
		builderCase{name: "triple tagged dhcp", f: dhcpFrame(67, tagOuter, tagVoice, tagVoice), dot1q: 3, ihl: 5, udpDst: 67, innerType: layers.EthernetTypeIPv4},
		builderCase{name: "cdp", f: cdpFrame(), snap: true},
		// No tagged CDP: gopacket's Dot1Q cannot hand an 802.3 length on to LLC.
		builderCase{name: "lldp", f: lldpFrame(), lldp: true},
		builderCase{name: "tagged lldp", f: lldpFrame(tagVoice), dot1q: 1, lldp: true, innerType: layers.EthernetTypeLinkLayerDiscovery},
	)
	for words := 1; words <= 10; words++ {
		f := dhcpFrame(67)
		f.ip.options = ipOptions(words)
		cs = append(cs, builderCase{name: fmt.Sprintf("ipv4 ihl %d", 5+words), f: f, ihl: uint8(5 + words), udpDst: 67})
	}
	return cs
}

// TestBuilderMatchesGopacket decodes every valid frame the builder makes
// with gopacket, an independent decoder, and checks the intended layers.
func TestBuilderMatchesGopacket(t *testing.T) {
	for _, c := range builderCases() {
		b := c.f.bytes()
		t.Run(c.name, func(t *testing.T) {
			if got, want := len(b), c.f.headerLen()+len(c.f.payload); got != want {
				t.Fatalf("frame is %d bytes, headerLen+payload = %d", got, want)
			}
			p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
			if el := p.ErrorLayer(); el != nil {
				t.Fatalf("gopacket cannot decode the frame: %v\n%s", el.Error(), p.Dump())
			}
			eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			if eth == nil {
				t.Fatalf("no Ethernet layer:\n%s", p.Dump())
			}
			if !bytes.Equal(eth.DstMAC, c.f.dst[:]) || !bytes.Equal(eth.SrcMAC, c.f.src[:]) {
				t.Errorf("MACs %v > %v, want %v > %v", eth.SrcMAC, eth.DstMAC, net.HardwareAddr(c.f.src[:]), net.HardwareAddr(c.f.dst[:]))
			}

			var tags []*layers.Dot1Q
			for _, l := range p.Layers() {
				if q, ok := l.(*layers.Dot1Q); ok {
					tags = append(tags, q)
				}
			}
			if len(tags) != c.dot1q {
				t.Errorf("%d Dot1Q layers, want %d:\n%s", len(tags), c.dot1q, p.Dump())
			}
			for i, q := range tags {
				if i < len(c.f.tags) && q.VLANIdentifier != c.f.tags[i].vid {
					t.Errorf("tag %d has VID %d, want %d", i, q.VLANIdentifier, c.f.tags[i].vid)
				}
			}
			if c.dot1q > 0 {
				if got := layers.EthernetType(eth.EthernetType); got != layers.EthernetType(c.f.tags[0].tpid) {
					t.Errorf("outer TPID %#04x, want %#04x", uint16(got), c.f.tags[0].tpid)
				}
				if c.innerType != 0 && len(tags) > 0 && tags[len(tags)-1].Type != c.innerType {
					t.Errorf("EtherType after the tags is %v, want %v", tags[len(tags)-1].Type, c.innerType)
				}
			}

			ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			switch {
			case c.ihl == 0 && ip != nil:
				t.Errorf("unexpected IPv4 layer")
			case c.ihl != 0 && ip == nil:
				t.Errorf("no IPv4 layer:\n%s", p.Dump())
			case c.ihl != 0:
				if ip.IHL != c.ihl {
					t.Errorf("IPv4 IHL %d, want %d", ip.IHL, c.ihl)
				}
				if ip.Version != 4 || ip.Protocol != layers.IPProtocolUDP {
					t.Errorf("IPv4 version %d protocol %v", ip.Version, ip.Protocol)
				}
				if c.ihl > 5 && len(ip.Options) == 0 {
					t.Errorf("IHL %d but gopacket found no options", ip.IHL)
				}
				if int(ip.Length) != len(b)-14-4*len(c.f.tags) {
					t.Errorf("IPv4 total length %d, frame carries %d", ip.Length, len(b)-14-4*len(c.f.tags))
				}
				if csum := inetChecksum(b[len(b)-int(ip.Length) : len(b)-int(ip.Length)+int(ip.IHL)*4]); csum != 0 {
					t.Errorf("IPv4 header checksum does not verify (%#04x)", csum)
				}
			}

			udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
			switch {
			case c.udpDst == 0 && udp != nil:
				t.Errorf("unexpected UDP layer")
			case c.udpDst != 0 && udp == nil:
				t.Errorf("no UDP layer:\n%s", p.Dump())
			case c.udpDst != 0:
				if uint16(udp.DstPort) != c.udpDst || int(udp.Length) != 8+len(c.f.payload) {
					t.Errorf("UDP dst %d length %d, want %d and %d", udp.DstPort, udp.Length, c.udpDst, 8+len(c.f.payload))
				}
				if !bytes.Equal(udp.Payload, c.f.payload) {
					t.Errorf("UDP payload differs")
				}
			}

			llc, _ := p.Layer(layers.LayerTypeLLC).(*layers.LLC)
			snap, _ := p.Layer(layers.LayerTypeSNAP).(*layers.SNAP)
			if c.snap {
				if llc == nil || snap == nil {
					t.Fatalf("no LLC/SNAP layers:\n%s", p.Dump())
				}
				if llc.DSAP != 0xaa || llc.SSAP != 0xaa || llc.Control != 0x03 {
					t.Errorf("LLC %+v, want DSAP/SSAP 0xaa control 3", llc)
				}
				if !bytes.Equal(snap.OrganizationalCode, []byte{0, 0, 0x0c}) || snap.Type != layers.EthernetTypeCiscoDiscovery {
					t.Errorf("SNAP OUI %x type %v, want 00000c CiscoDiscovery", snap.OrganizationalCode, snap.Type)
				}
				if p.Layer(layers.LayerTypeCiscoDiscovery) == nil {
					t.Errorf("no CDP layer:\n%s", p.Dump())
				}
				if int(eth.Length) != len(b)-14-4*len(c.f.tags) {
					t.Errorf("802.3 length %d, frame carries %d", eth.Length, len(b)-14-4*len(c.f.tags))
				}
			} else if llc != nil || snap != nil {
				t.Errorf("unexpected LLC/SNAP layers")
			}
			if got := p.Layer(layers.LayerTypeLinkLayerDiscovery) != nil; got != c.lldp {
				t.Errorf("LLDP layer present: %v, want %v:\n%s", got, c.lldp, p.Dump())
			}
		})
	}
}
