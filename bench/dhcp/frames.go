package main

import (
	"encoding/binary"
	"net"
)

// DHCP frames as a Cisco phone sends them on its port: Ethernet from the
// phone's MAC to broadcast, IPv4 0.0.0.0 -> 255.255.255.255, UDP 68 -> 67,
// giaddr 0 (not relayed), chaddr = the source MAC, the broadcast flag set,
// and the options a phone carries (53, 61, 57, 12, 60, 55; REQUEST adds
// 50 and 54). These are all options the XDP fast path knows, so the
// kernel may answer them; perfdhcp cannot send such frames (it acts as a
// relay agent and its chaddr is not the frame's source MAC).

const (
	ethLen       = 14
	ipLen        = 20
	udpLen       = 8
	l4Off        = ethLen + ipLen // UDP header
	bootpOff     = l4Off + udpLen // BOOTP message
	optOff       = bootpOff + 240 // options, after the magic cookie
	minBootpLen  = 300
	vendorClass  = "Cisco Systems, Inc. IP Phone CP-8845"
	dhcpDiscover = 1
	dhcpOffer    = 2
	dhcpRequest  = 3
	dhcpAck      = 5
	dhcpNak      = 6
)

var paramList = []byte{1, 3, 6, 15, 42, 66, 150}

const hexDigits = "0123456789ABCDEF"

// clientMAC is client i's MAC: Cisco's OUI and a 24-bit index.
func clientMAC(i uint32) net.HardwareAddr {
	return net.HardwareAddr{0x00, 0x1e, 0x7a, byte(i >> 16), byte(i >> 8), byte(i)}
}

// frameLen is the length of every request frame the generator sends.
func frameLen() int {
	opts := 3 + 9 + 4 + 17 + (2 + len(vendorClass)) + (2 + len(paramList)) + 6 + 6 + 1
	n := 240 + opts
	if n < minBootpLen {
		n = minBootpLen
	}
	return bootpOff + n
}

// buildRequest writes a DISCOVER (reqIP and srvID zero) or a REQUEST
// (SELECTING: requested address and server identifier) into f, which must
// be frameLen() bytes, and returns it.
func buildRequest(f []byte, msgType byte, mac net.HardwareAddr, xid uint32, reqIP, srvID [4]byte) []byte {
	clear(f)
	// Ethernet.
	for i := 0; i < 6; i++ {
		f[i] = 0xff
	}
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:14], 0x0800)
	// IPv4: 0.0.0.0 -> 255.255.255.255.
	ip := f[ethLen:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(len(f)-ethLen))
	ip[8] = 64
	ip[9] = 17
	copy(ip[16:20], []byte{255, 255, 255, 255})
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip[:ipLen], 0))
	// UDP 68 -> 67.
	udp := f[l4Off:]
	binary.BigEndian.PutUint16(udp[0:2], 68)
	binary.BigEndian.PutUint16(udp[2:4], 67)
	binary.BigEndian.PutUint16(udp[4:6], uint16(len(f)-l4Off))
	// BOOTP.
	b := f[bootpOff:]
	b[0], b[1], b[2] = 1, 1, 6
	binary.BigEndian.PutUint32(b[4:8], xid)
	b[10] = 0x80 // broadcast: the phone has no address yet
	copy(b[28:34], mac)
	copy(b[236:240], []byte{0x63, 0x82, 0x53, 0x63})
	o := b[240:]
	n := 0
	put := func(code byte, v []byte) {
		o[n], o[n+1] = code, byte(len(v))
		copy(o[n+2:], v)
		n += 2 + len(v)
	}
	put(53, []byte{msgType})
	var cid [7]byte
	cid[0] = 1
	copy(cid[1:], mac)
	put(61, cid[:])
	put(57, []byte{0x05, 0xdc})
	var host [15]byte
	copy(host[:], "SEP")
	for i, c := range mac[:6] {
		host[3+2*i], host[4+2*i] = hexDigits[c>>4], hexDigits[c&0xf]
	}
	put(12, host[:])
	put(60, []byte(vendorClass))
	if msgType == dhcpRequest {
		put(50, reqIP[:])
		put(54, srvID[:])
	}
	put(55, paramList)
	o[n] = 255
	// UDP checksum over the pseudo-header (0.0.0.0, 255.255.255.255).
	ulen := len(f) - l4Off
	var pseudo [12]byte
	copy(pseudo[4:8], ip[16:20])
	pseudo[9] = 17
	binary.BigEndian.PutUint16(pseudo[10:12], uint16(ulen))
	sum := sum16(pseudo[:], 0)
	c := checksum(udp[:ulen], sum)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:8], c)
	return f
}

func sum16(b []byte, sum uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func checksum(b []byte, sum uint32) uint16 {
	sum = sum16(b, sum)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// reply is what the generator needs from a server's answer.
type reply struct {
	msgType byte
	xid     uint32
	chaddr  [6]byte
	yiaddr  [4]byte
	srvID   [4]byte
	opt150  bool
}

// parseReply reads a BOOTREPLY to port 68 from an Ethernet frame.
func parseReply(f []byte) (reply, bool) {
	var r reply
	if len(f) < ethLen+ipLen || binary.BigEndian.Uint16(f[12:14]) != 0x0800 {
		return r, false
	}
	ip := f[ethLen:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < ipLen || ip[9] != 17 || len(ip) < ihl+udpLen {
		return r, false
	}
	udp := ip[ihl:]
	if binary.BigEndian.Uint16(udp[2:4]) != 68 || len(udp) < udpLen+240 {
		return r, false
	}
	b := udp[udpLen:]
	if b[0] != 2 || b[236] != 0x63 || b[237] != 0x82 || b[238] != 0x53 || b[239] != 0x63 {
		return r, false
	}
	r.xid = binary.BigEndian.Uint32(b[4:8])
	copy(r.yiaddr[:], b[16:20])
	copy(r.chaddr[:], b[28:34])
	o := b[240:]
	for i := 0; i < len(o); {
		code := o[i]
		if code == 0 {
			i++
			continue
		}
		if code == 255 || i+1 >= len(o) {
			break
		}
		l := int(o[i+1])
		if i+2+l > len(o) {
			break
		}
		v := o[i+2 : i+2+l]
		switch code {
		case 53:
			if l == 1 {
				r.msgType = v[0]
			}
		case 54:
			if l == 4 {
				copy(r.srvID[:], v)
			}
		case 150:
			r.opt150 = l >= 4
		}
		i += 2 + l
	}
	return r, r.msgType != 0
}
