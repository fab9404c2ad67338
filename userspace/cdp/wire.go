package cdp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

const (
	ethHeaderLen = 14
	snapLen      = 8 // AA AA 03, OUI, protocol ID
	headerLen    = 4 // version, TTL, checksum
	tlvHeaderLen = 4
	// maxLength is the largest 802.3 length; larger values are EtherTypes.
	maxLength = 1500
	// minFrame is the Ethernet minimum without the FCS.
	minFrame = 60
	pidCDP   = 0x2000
)

var snapHeader = [snapLen]byte{0xaa, 0xaa, 0x03, 0x00, 0x00, 0x0c, pidCDP >> 8, pidCDP & 0xff}

// The protocol fields of an address record: NLPID 0xcc for IPv4, an 802.2
// LLC/SNAP header with EtherType 0x86dd for IPv6 (as scapy and Cisco
// encode it).
const (
	protoNLPID = 1
	proto8022  = 2
)

var (
	protoIPv4 = []byte{0xcc}
	protoIPv6 = []byte{0xaa, 0xaa, 0x03, 0x00, 0x00, 0x00, 0x86, 0xdd}
)

// AppendFrame appends m to b as a complete Ethernet frame from m.Source to
// MulticastAddr, padded to the Ethernet minimum, and returns the extended
// slice. It fails if m does not fit a frame or a field cannot be encoded;
// b is then returned unchanged.
func (m *Message) AppendFrame(b []byte) ([]byte, error) {
	start := len(b)
	out, err := m.appendFrame(b)
	if err != nil {
		return b[:start], err
	}
	return out, nil
}

func (m *Message) appendFrame(b []byte) ([]byte, error) {
	if len(m.Source) != 6 {
		return nil, fmt.Errorf("cdp: source address %q is not 6 bytes", m.Source)
	}
	version := m.Version
	if version == 0 {
		version = Version
	}
	if version > 2 {
		return nil, fmt.Errorf("cdp: version %d", version)
	}
	start := len(b)
	b = append(b, MulticastAddr...)
	b = append(b, m.Source...)
	b = append(b, 0, 0) // the 802.3 length, once known
	b = append(b, snapHeader[:]...)
	pdu := len(b)
	b = append(b, version, m.TTL, 0, 0)

	w := writer{b: b}
	w.str(TypeDeviceID, m.DeviceID)
	w.addresses(TypeAddresses, m.Addresses)
	w.str(TypePortID, m.PortID)
	if m.Capabilities != 0 {
		w.header(TypeCapabilities, 4)
		w.b = binary.BigEndian.AppendUint32(w.b, uint32(m.Capabilities))
	}
	w.str(TypeSoftwareVersion, m.SoftwareVersion)
	w.str(TypePlatform, m.Platform)
	w.prefixes(m.IPPrefixes)
	if g := m.ODRGateway; g.Is4() {
		w.header(TypeIPPrefix, 4)
		w.b = append(w.b, g.AsSlice()...)
	} else if g.IsValid() {
		w.fail("ODR gateway %v is not IPv4", g)
	}
	if h := m.ProtocolHello; h != nil {
		w.header(TypeProtocolHello, 5+len(h.Data))
		w.b = append(w.b, h.OUI[:]...)
		w.b = binary.BigEndian.AppendUint16(w.b, h.ProtocolID)
		w.b = append(w.b, h.Data...)
	}
	w.str(TypeVTPDomain, m.VTPDomain)
	if m.NativeVLAN != 0 {
		w.header(TypeNativeVLAN, 2)
		w.b = binary.BigEndian.AppendUint16(w.b, m.NativeVLAN)
	}
	if m.Duplex != nil {
		w.header(TypeDuplex, 1)
		w.b = append(w.b, byte(*m.Duplex))
	}
	w.applianceVLAN(TypeVoIPVLANReply, m.VoIPVLANReply)
	w.applianceVLAN(TypeVoIPVLANQuery, m.VoIPVLANQuery)
	if m.PowerConsumption != 0 {
		w.header(TypePower, 2)
		w.b = binary.BigEndian.AppendUint16(w.b, m.PowerConsumption)
	}
	if m.MTU != 0 {
		w.header(TypeMTU, 4)
		w.b = binary.BigEndian.AppendUint32(w.b, m.MTU)
	}
	w.byte(TypeTrustBitmap, m.TrustBitmap)
	w.byte(TypeUntrustedCoS, m.UntrustedCoS)
	w.str(TypeSystemName, m.SystemName)
	w.raw(TypeSystemOID, m.SystemOID)
	w.addresses(TypeManagementAddress, m.ManagementAddresses)
	if l := m.Location; l != nil {
		w.header(TypeLocation, 1+len(l.Text))
		w.b = append(w.b, l.Kind)
		w.b = append(w.b, l.Text...)
	}
	w.raw(TypeExternalPortID, m.ExternalPortID)
	if r := m.PowerRequested; r != nil {
		w.header(TypePowerRequested, 4+4*len(r.MilliWatts))
		w.b = binary.BigEndian.AppendUint16(w.b, r.RequestID)
		w.b = binary.BigEndian.AppendUint16(w.b, r.ManagementID)
		for _, mw := range r.MilliWatts {
			w.b = binary.BigEndian.AppendUint32(w.b, mw)
		}
	}
	if a := m.PowerAvailable; a != nil {
		w.header(TypePowerAvailable, 12)
		w.b = binary.BigEndian.AppendUint16(w.b, a.RequestID)
		w.b = binary.BigEndian.AppendUint16(w.b, a.ManagementID)
		w.b = binary.BigEndian.AppendUint32(w.b, a.MilliWatts)
		w.b = binary.BigEndian.AppendUint32(w.b, a.ManagementLevel)
	}
	w.raw(TypePortUnidirectional, m.PortUnidirectional)
	w.raw(TypeEnergyWise, m.EnergyWise)
	if m.SparePairPoE != nil {
		w.header(TypeSparePairPoE, 1)
		w.b = append(w.b, byte(*m.SparePairPoE))
	}
	if w.err != nil {
		return nil, w.err
	}
	b = w.b

	length := len(b) - start - ethHeaderLen
	if length > maxLength {
		return nil, fmt.Errorf("cdp: message of %d bytes does not fit a frame (at most %d)", length-snapLen, maxLength-snapLen)
	}
	binary.BigEndian.PutUint16(b[start+12:], uint16(length))
	binary.BigEndian.PutUint16(b[pdu+2:], checksum(b[pdu:]))
	for len(b)-start < minFrame {
		b = append(b, 0)
	}
	return b, nil
}

// writer appends TLVs and keeps the first error. Lengths are not checked
// per TLV: a TLV too long for its 16-bit length is also too long for the
// frame, which AppendFrame checks.
type writer struct {
	b   []byte
	err error
}

func (w *writer) fail(format string, args ...any) {
	if w.err == nil {
		w.err = fmt.Errorf("cdp: "+format, args...)
	}
}

func (w *writer) header(t Type, n int) {
	w.b = binary.BigEndian.AppendUint16(w.b, uint16(t))
	w.b = binary.BigEndian.AppendUint16(w.b, uint16(tlvHeaderLen+n))
}

func (w *writer) str(t Type, s string) {
	if s == "" {
		return
	}
	w.header(t, len(s))
	w.b = append(w.b, s...)
}

func (w *writer) raw(t Type, v []byte) {
	if v == nil {
		return
	}
	w.header(t, len(v))
	w.b = append(w.b, v...)
}

func (w *writer) byte(t Type, v *uint8) {
	if v == nil {
		return
	}
	w.header(t, 1)
	w.b = append(w.b, *v)
}

func (w *writer) applianceVLAN(t Type, v *ApplianceVLAN) {
	if v == nil {
		return
	}
	w.header(t, 3)
	w.b = append(w.b, v.ID)
	w.b = binary.BigEndian.AppendUint16(w.b, v.VLAN)
}

func (w *writer) addresses(t Type, addrs []netip.Addr) {
	if len(addrs) == 0 {
		return
	}
	n := 4
	for _, a := range addrs {
		switch {
		case a.Is4():
			n += 2 + len(protoIPv4) + 2 + 4
		case a.Is6() && a.Zone() == "":
			n += 2 + len(protoIPv6) + 2 + 16
		default:
			w.fail("%v: cannot encode address %v", t, a)
			return
		}
	}
	w.header(t, n)
	w.b = binary.BigEndian.AppendUint32(w.b, uint32(len(addrs)))
	for _, a := range addrs {
		if a.Is4() {
			w.b = append(w.b, protoNLPID, byte(len(protoIPv4)))
			w.b = append(w.b, protoIPv4...)
		} else {
			w.b = append(w.b, proto8022, byte(len(protoIPv6)))
			w.b = append(w.b, protoIPv6...)
		}
		raw := a.AsSlice()
		w.b = binary.BigEndian.AppendUint16(w.b, uint16(len(raw)))
		w.b = append(w.b, raw...)
	}
}

func (w *writer) prefixes(ps []netip.Prefix) {
	if len(ps) == 0 {
		return
	}
	w.header(TypeIPPrefix, 5*len(ps))
	for _, p := range ps {
		if !p.IsValid() || !p.Addr().Is4() {
			w.fail("IP prefix %v is not IPv4", p)
			return
		}
		w.b = append(w.b, p.Addr().AsSlice()...)
		w.b = append(w.b, byte(p.Bits()))
	}
}

// checksum is the CDP checksum of pdu (the CDP header and TLVs), its
// checksum field counted as zero: RFC 1071's, except for an odd final byte
// v. RFC 1071 pads it on the right (v<<8); Cisco adds it as a signed char
// in the low byte, so a v with bit 7 set counts as 0xff00+v-1 (the sign
// extension, less the end-around carry that is lost). Wireshark and lldpd
// do the same; scapy tests v <= 0x80 instead and gets v = 0x80 wrong.
func checksum(pdu []byte) uint16 {
	// Version and TTL, then everything after the checksum field; the
	// field's offset is even, so skipping it keeps the words aligned.
	sum := uint32(pdu[0])<<8 | uint32(pdu[1])
	tail := pdu[headerLen:]
	n := len(tail) &^ 1
	for i := 0; i < n; i += 2 {
		sum += uint32(tail[i])<<8 | uint32(tail[i+1])
	}
	if len(tail)&1 == 1 {
		v := uint32(tail[len(tail)-1])
		if v&0x80 != 0 {
			sum += 0xff00 + v - 1
		} else {
			sum += v
		}
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// Decode parses a CDP frame as a packet socket delivers it (from the
// Ethernet header on, without FCS; padding after the 802.3 length is
// ignored). Errors match ErrNotCDP, ErrMalformed or ErrChecksum; with
// ErrChecksum the message is returned as well (see the package comment).
// What Decode allocates is bounded by a small multiple of the frame's
// length, whatever its counts claim: a count is checked against the bytes
// that would hold it before anything is allocated for it.
func Decode(frame []byte) (*Message, error) {
	if len(frame) < ethHeaderLen {
		return nil, fmt.Errorf("%w: %d bytes, short of an Ethernet header", ErrNotCDP, len(frame))
	}
	if !bytes.Equal(frame[:6], MulticastAddr) {
		return nil, fmt.Errorf("%w: destination %s", ErrNotCDP, net.HardwareAddr(frame[:6]))
	}
	length := int(binary.BigEndian.Uint16(frame[12:14]))
	if length > maxLength {
		return nil, fmt.Errorf("%w: EtherType %#04x", ErrNotCDP, length)
	}
	llc := frame[ethHeaderLen:]
	if len(llc) < snapLen || !bytes.Equal(llc[:6], snapHeader[:6]) {
		return nil, fmt.Errorf("%w: not LLC/SNAP with Cisco's OUI", ErrNotCDP)
	}
	if pid := binary.BigEndian.Uint16(llc[6:8]); pid != pidCDP {
		return nil, fmt.Errorf("%w: SNAP protocol %#04x", ErrNotCDP, pid)
	}
	if length > len(llc) {
		return nil, fmt.Errorf("%w: 802.3 length %d, %d bytes in the frame", ErrMalformed, length, len(llc))
	}
	if length < snapLen+headerLen {
		return nil, fmt.Errorf("%w: 802.3 length %d, short of the CDP header", ErrMalformed, length)
	}
	pdu := llc[snapLen:length]

	m := &Message{
		Source:  net.HardwareAddr(bytes.Clone(frame[6:12])),
		Version: pdu[0],
		TTL:     pdu[1],
	}
	if m.Version != 1 && m.Version != 2 {
		return nil, fmt.Errorf("%w: version %d", ErrMalformed, m.Version)
	}
	for rest := pdu[headerLen:]; len(rest) > 0; {
		if len(rest) < tlvHeaderLen {
			return nil, fmt.Errorf("%w: %d bytes after the last TLV", ErrMalformed, len(rest))
		}
		t := Type(binary.BigEndian.Uint16(rest))
		n := int(binary.BigEndian.Uint16(rest[2:]))
		if n < tlvHeaderLen || n > len(rest) {
			return nil, fmt.Errorf("%w: %v of length %d with %d bytes left", ErrMalformed, t, n, len(rest))
		}
		if err := m.decodeTLV(t, rest[tlvHeaderLen:n]); err != nil {
			return nil, fmt.Errorf("%w: %v: %v", ErrMalformed, t, err)
		}
		rest = rest[n:]
	}

	if got, want := binary.BigEndian.Uint16(pdu[2:4]), checksum(pdu); got != want {
		return m, &ChecksumError{Got: got, Want: want}
	}
	return m, nil
}

func (m *Message) decodeTLV(t Type, v []byte) error {
	switch t {
	case TypeDeviceID:
		m.DeviceID = string(v)
	case TypeAddresses, TypeManagementAddress:
		addrs, err := decodeAddresses(v)
		if err != nil {
			return err
		}
		if t == TypeAddresses {
			m.Addresses = addrs
		} else {
			m.ManagementAddresses = addrs
		}
	case TypePortID:
		m.PortID = string(v)
	case TypeCapabilities:
		if err := size(v, 4); err != nil {
			return err
		}
		m.Capabilities = Capabilities(binary.BigEndian.Uint32(v))
	case TypeSoftwareVersion:
		m.SoftwareVersion = string(v)
	case TypePlatform:
		m.Platform = string(v)
	case TypeIPPrefix:
		return m.decodePrefixes(v)
	case TypeProtocolHello:
		if len(v) < 5 {
			return fmt.Errorf("%d bytes, short of OUI and protocol ID", len(v))
		}
		h := &ProtocolHello{ProtocolID: binary.BigEndian.Uint16(v[3:5]), Data: bytes.Clone(v[5:])}
		copy(h.OUI[:], v)
		m.ProtocolHello = h
	case TypeVTPDomain:
		m.VTPDomain = string(v)
	case TypeNativeVLAN:
		if err := size(v, 2); err != nil {
			return err
		}
		m.NativeVLAN = binary.BigEndian.Uint16(v)
	case TypeDuplex:
		if err := size(v, 1); err != nil {
			return err
		}
		d := Duplex(v[0])
		m.Duplex = &d
	case TypeVoIPVLANReply:
		if err := size(v, 3); err != nil {
			return err
		}
		m.VoIPVLANReply = &ApplianceVLAN{ID: v[0], VLAN: binary.BigEndian.Uint16(v[1:])}
	case TypeVoIPVLANQuery:
		// Any length: what a phone puts here is undocumented (a 7960 sends
		// four bytes), and the query is answered whatever it holds.
		q := &ApplianceVLAN{}
		if len(v) >= 3 {
			q.ID, q.VLAN = v[0], binary.BigEndian.Uint16(v[1:])
		}
		m.VoIPVLANQuery = q
	case TypePower:
		if err := size(v, 2); err != nil {
			return err
		}
		m.PowerConsumption = binary.BigEndian.Uint16(v)
	case TypeMTU:
		if err := size(v, 4); err != nil {
			return err
		}
		m.MTU = binary.BigEndian.Uint32(v)
	case TypeTrustBitmap, TypeUntrustedCoS:
		if err := size(v, 1); err != nil {
			return err
		}
		b := v[0]
		if t == TypeTrustBitmap {
			m.TrustBitmap = &b
		} else {
			m.UntrustedCoS = &b
		}
	case TypeSystemName:
		m.SystemName = string(v)
	case TypeSystemOID:
		m.SystemOID = bytes.Clone(v)
	case TypeLocation:
		if len(v) < 1 {
			return fmt.Errorf("empty")
		}
		m.Location = &Location{Kind: v[0], Text: string(v[1:])}
	case TypeExternalPortID:
		m.ExternalPortID = bytes.Clone(v)
	case TypePowerRequested:
		if len(v) < 4 || len(v)%4 != 0 {
			return fmt.Errorf("%d bytes: not IDs followed by 32-bit levels", len(v))
		}
		r := &PowerRequest{
			RequestID:    binary.BigEndian.Uint16(v),
			ManagementID: binary.BigEndian.Uint16(v[2:]),
		}
		if levels := v[4:]; len(levels) > 0 {
			r.MilliWatts = make([]uint32, 0, len(levels)/4)
			for i := 0; i < len(levels); i += 4 {
				r.MilliWatts = append(r.MilliWatts, binary.BigEndian.Uint32(levels[i:]))
			}
		}
		m.PowerRequested = r
	case TypePowerAvailable:
		if err := size(v, 12); err != nil {
			return err
		}
		m.PowerAvailable = &PowerAvailable{
			RequestID:       binary.BigEndian.Uint16(v),
			ManagementID:    binary.BigEndian.Uint16(v[2:]),
			MilliWatts:      binary.BigEndian.Uint32(v[4:]),
			ManagementLevel: binary.BigEndian.Uint32(v[8:]),
		}
	case TypePortUnidirectional:
		m.PortUnidirectional = bytes.Clone(v)
	case TypeEnergyWise:
		m.EnergyWise = bytes.Clone(v)
	case TypeSparePairPoE:
		if err := size(v, 1); err != nil {
			return err
		}
		s := SparePairPoE(v[0])
		m.SparePairPoE = &s
	}
	return nil
}

func size(v []byte, want int) error {
	if len(v) != want {
		return fmt.Errorf("%d bytes, want %d", len(v), want)
	}
	return nil
}

// decodeAddresses reads the Addresses (and Management Address) TLV: a
// 32-bit count, then exactly that many records filling the value. The
// count is checked against the bytes before anything is allocated for it.
func decodeAddresses(v []byte) ([]netip.Addr, error) {
	if len(v) < 4 {
		return nil, fmt.Errorf("%d bytes, short of the count", len(v))
	}
	count := binary.BigEndian.Uint32(v)
	rest := v[4:]
	// The shortest record (empty protocol and address) is 4 bytes.
	if uint64(count)*4 > uint64(len(rest)) {
		return nil, fmt.Errorf("%d addresses cannot fit %d bytes", count, len(rest))
	}
	addrs := make([]netip.Addr, 0, count)
	for i := range count {
		if len(rest) < 2 {
			return nil, fmt.Errorf("address %d: truncated", i)
		}
		ptype, plen := rest[0], int(rest[1])
		if len(rest) < 2+plen+2 {
			return nil, fmt.Errorf("address %d: protocol of %d bytes truncated", i, plen)
		}
		proto := rest[2 : 2+plen]
		alen := int(binary.BigEndian.Uint16(rest[2+plen:]))
		rest = rest[2+plen+2:]
		if alen > len(rest) {
			return nil, fmt.Errorf("address %d: %d bytes, %d left", i, alen, len(rest))
		}
		raw := rest[:alen]
		rest = rest[alen:]
		switch {
		case ptype == protoNLPID && bytes.Equal(proto, protoIPv4) && alen == 4,
			ptype == proto8022 && bytes.Equal(proto, protoIPv6) && alen == 16:
			a, _ := netip.AddrFromSlice(raw)
			addrs = append(addrs, a)
		}
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%d bytes after %d addresses", len(rest), count)
	}
	if len(addrs) == 0 {
		return nil, nil // as if absent, which is how AppendFrame sends none
	}
	return addrs, nil
}

func (m *Message) decodePrefixes(v []byte) error {
	if len(v) == 4 {
		m.ODRGateway = netip.AddrFrom4([4]byte(v))
		return nil
	}
	if len(v)%5 != 0 {
		return fmt.Errorf("%d bytes: neither a gateway nor 5-byte prefixes", len(v))
	}
	ps := make([]netip.Prefix, 0, len(v)/5)
	for i := 0; i < len(v); i += 5 {
		bits := int(v[i+4])
		if bits > 32 {
			return fmt.Errorf("prefix length %d", bits)
		}
		ps = append(ps, netip.PrefixFrom(netip.AddrFrom4([4]byte(v[i:i+4])), bits))
	}
	if len(ps) > 0 {
		m.IPPrefixes = ps
	}
	return nil
}
