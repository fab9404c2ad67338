package dhcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// Framing constants.
const (
	etherTypeIPv4  = 0x0800
	etherTypeVLAN  = 0x8100
	ipProtoUDP     = 17
	serverPort     = 67
	ipTTL          = 64
	ethHeaderLen   = 14
	vlanTagLen     = 4
	ipv4HeaderLen  = 20
	udpHeaderLen   = 8
	ipFlagsFragOff = 0x3fff // MF and the fragment offset; DF (0x4000) is allowed
)

// MaxPayload bounds the DHCP message DecodeFrame accepts: a 1500-byte
// IPv4 datagram less its IP and UDP headers. DHCP is never fragmented.
const MaxPayload = 1500 - ipv4HeaderLen - udpHeaderLen

// ErrFrame is wrapped by every error DecodeFrame returns.
var ErrFrame = errors.New("not a DHCP request frame")

func frameErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrFrame}, a...)...)
}

// EncodeFrame wraps r.Payload in Ethernet (from srcMAC to r.DstMAC, with
// an 802.1Q tag, PCP 0, when r.VLAN != 0), IPv4 (IHL 5, TOS 0, ID 0, DF
// clear, TTL 64, header checksum) and UDP (from port 67 to r.DstPort,
// with its checksum).
func EncodeFrame(srcMAC net.HardwareAddr, r Reply) []byte {
	eth := ethHeaderLen
	if r.VLAN != 0 {
		eth += vlanTagLen
	}
	udpLen := udpHeaderLen + len(r.Payload)
	ipLen := ipv4HeaderLen + udpLen
	b := make([]byte, eth+ipLen)
	copy(b[0:6], r.DstMAC)
	copy(b[6:12], srcMAC)
	if r.VLAN != 0 {
		binary.BigEndian.PutUint16(b[12:14], etherTypeVLAN)
		binary.BigEndian.PutUint16(b[14:16], r.VLAN&0x0fff)
	}
	binary.BigEndian.PutUint16(b[eth-2:eth], etherTypeIPv4)

	ip := b[eth : eth+ipv4HeaderLen]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(ipLen))
	ip[8] = ipTTL
	ip[9] = ipProtoUDP
	src, dst := r.SrcIP.As4(), r.DstIP.As4()
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	binary.BigEndian.PutUint16(ip[10:12], ^foldSum(sum16(0, ip)))

	udp := b[eth+ipv4HeaderLen:]
	binary.BigEndian.PutUint16(udp[0:2], serverPort)
	binary.BigEndian.PutUint16(udp[2:4], r.DstPort)
	binary.BigEndian.PutUint16(udp[4:6], uint16(udpLen))
	copy(udp[udpHeaderLen:], r.Payload)
	// Pseudo-header: source, destination, zero, protocol, UDP length.
	s := sum16(0, ip[12:20])
	s += ipProtoUDP + uint32(udpLen)
	s = sum16(s, udp)
	c := ^foldSum(s)
	if c == 0 {
		c = 0xffff // 0 means "no checksum" in UDP over IPv4
	}
	binary.BigEndian.PutUint16(udp[6:8], c)
	return b
}

// sum16 adds b as big-endian 16-bit words (odd length padded with zero)
// to s, the one's complement sum not yet folded.
func sum16(s uint32, b []byte) uint32 {
	for len(b) >= 2 {
		s += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	return s
}

func foldSum(s uint32) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// DecodeFrame parses a frame as AF_PACKET hands it over: Ethernet without
// the outer VLAN tag (vlan carries it, 0 for untagged), IPv4 (any IHL of 5
// or more, options skipped; not a fragment; header checksum correct), UDP
// to port 67 with a consistent length. Bytes after the IP datagram
// (Ethernet padding) are ignored. The UDP checksum is not verified: frames
// from local senders may carry a partial checksum offloaded to hardware.
//
// Request.Payload aliases frame (its capacity ends with the UDP payload);
// Request.SrcMAC is a copy. Received is left zero.
func DecodeFrame(frame []byte, vlan uint16, port string) (Request, error) {
	if len(frame) < ethHeaderLen {
		return Request{}, frameErr("%d bytes, shorter than an Ethernet header", len(frame))
	}
	if et := binary.BigEndian.Uint16(frame[12:14]); et != etherTypeIPv4 {
		return Request{}, frameErr("EtherType %#04x is not IPv4", et)
	}
	if frame[6]&1 != 0 {
		return Request{}, frameErr("multicast source MAC")
	}
	ip := frame[ethHeaderLen:]
	if len(ip) < ipv4HeaderLen {
		return Request{}, frameErr("truncated IPv4 header")
	}
	if ip[0]>>4 != 4 {
		return Request{}, frameErr("IP version %d", ip[0]>>4)
	}
	ihl := int(ip[0]&0x0f) * 4
	if ihl < ipv4HeaderLen || ihl > len(ip) {
		return Request{}, frameErr("IPv4 header length %d", ihl)
	}
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if total < ihl+udpHeaderLen || total > len(ip) {
		return Request{}, frameErr("IPv4 total length %d with %d bytes present", total, len(ip))
	}
	ip = ip[:total]
	if binary.BigEndian.Uint16(ip[6:8])&ipFlagsFragOff != 0 {
		return Request{}, frameErr("IPv4 fragment")
	}
	if ip[9] != ipProtoUDP {
		return Request{}, frameErr("IP protocol %d is not UDP", ip[9])
	}
	if foldSum(sum16(0, ip[:ihl])) != 0xffff {
		return Request{}, frameErr("bad IPv4 header checksum")
	}
	udp := ip[ihl:]
	if dp := binary.BigEndian.Uint16(udp[2:4]); dp != serverPort {
		return Request{}, frameErr("UDP destination port %d", dp)
	}
	ulen := int(binary.BigEndian.Uint16(udp[4:6]))
	if ulen < udpHeaderLen || ulen > len(udp) {
		return Request{}, frameErr("UDP length %d with %d bytes present", ulen, len(udp))
	}
	payload := udp[udpHeaderLen:ulen:ulen]
	if len(payload) > MaxPayload {
		return Request{}, frameErr("UDP payload of %d bytes, more than %d", len(payload), MaxPayload)
	}
	return Request{
		Port:    port,
		VLAN:    vlan,
		SrcMAC:  slices.Clone(net.HardwareAddr(frame[6:12])),
		SrcIP:   netip.AddrFrom4([4]byte(ip[12:16])),
		DstIP:   netip.AddrFrom4([4]byte(ip[16:20])),
		SrcPort: binary.BigEndian.Uint16(udp[0:2]),
		Payload: payload,
	}, nil
}
