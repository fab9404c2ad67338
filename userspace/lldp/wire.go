package lldp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

type tlvType uint8

const (
	tlvEnd                tlvType = 0
	tlvChassisID          tlvType = 1
	tlvPortID             tlvType = 2
	tlvTTL                tlvType = 3
	tlvPortDescription    tlvType = 4
	tlvSystemName         tlvType = 5
	tlvSystemDescription  tlvType = 6
	tlvSystemCapabilities tlvType = 7
	tlvManagementAddress  tlvType = 8
	tlvOrgSpecific        tlvType = 127
)

var tlvNames = map[tlvType]string{
	tlvEnd:                "End of LLDPDU",
	tlvChassisID:          "Chassis ID",
	tlvPortID:             "Port ID",
	tlvTTL:                "Time To Live",
	tlvPortDescription:    "Port Description",
	tlvSystemName:         "System Name",
	tlvSystemDescription:  "System Description",
	tlvSystemCapabilities: "System Capabilities",
	tlvManagementAddress:  "Management Address",
	tlvOrgSpecific:        "Organizationally Specific",
}

// TIA's OUI and its LLDP-MED subtypes.
var ouiTIA = [3]byte{0x00, 0x12, 0xbb}

const (
	medCapabilities     = 1
	medNetworkPolicy    = 2
	medExtendedPower    = 4
	medHardwareRevision = 5 // inventory: 5-11
	medAssetID          = 11
)

const (
	ethHeaderLen = 14
	maxTLVLen    = 511 // a 9-bit length
	// maxIDLen bounds Chassis and Port IDs (802.1AB: 1-255 bytes).
	maxIDLen = 255
	// maxOIDLen bounds a management address's OID (802.1AB: 0-128).
	maxOIDLen = 128
	// maxPDU is the Ethernet payload.
	maxPDU   = 1500
	minFrame = 60
)

// AppendFrame appends m to b as a complete Ethernet frame from m.Source to
// MulticastAddr, padded to the Ethernet minimum, and returns the extended
// slice. It fails if a field cannot be encoded or m does not fit a frame;
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
		return nil, fmt.Errorf("lldp: source address %q is not 6 bytes", m.Source)
	}
	for _, id := range []struct {
		name string
		n    int
	}{{"chassis ID", len(m.ChassisID.ID)}, {"port ID", len(m.PortID.ID)}} {
		if id.n < 1 || id.n > maxIDLen {
			return nil, fmt.Errorf("lldp: %s of %d bytes (1-%d)", id.name, id.n, maxIDLen)
		}
	}
	start := len(b)
	b = append(b, MulticastAddr...)
	b = append(b, m.Source...)
	b = binary.BigEndian.AppendUint16(b, EtherType)

	w := writer{b: b}
	w.header(tlvChassisID, 1+len(m.ChassisID.ID))
	w.b = append(w.b, byte(m.ChassisID.Subtype))
	w.b = append(w.b, m.ChassisID.ID...)
	w.header(tlvPortID, 1+len(m.PortID.ID))
	w.b = append(w.b, byte(m.PortID.Subtype))
	w.b = append(w.b, m.PortID.ID...)
	w.header(tlvTTL, 2)
	w.b = binary.BigEndian.AppendUint16(w.b, m.TTL)
	w.str(tlvPortDescription, m.PortDescription)
	w.str(tlvSystemName, m.SystemName)
	w.str(tlvSystemDescription, m.SystemDescription)
	if c := m.Capabilities; c != nil {
		w.header(tlvSystemCapabilities, 4)
		w.b = binary.BigEndian.AppendUint16(w.b, uint16(c.System))
		w.b = binary.BigEndian.AppendUint16(w.b, uint16(c.Enabled))
	}
	for _, ma := range m.ManagementAddresses {
		w.managementAddress(ma)
	}
	if med := m.MED; med != nil {
		w.tia(medCapabilities, 3)
		w.b = binary.BigEndian.AppendUint16(w.b, uint16(med.Capabilities))
		w.b = append(w.b, byte(med.Class))
	}
	for _, p := range m.NetworkPolicies {
		w.networkPolicy(p)
	}
	if p := m.ExtendedPower; p != nil {
		if p.Type > 3 || p.Source > 3 || p.Priority > 15 {
			w.fail("extended power type %d, source %d, priority %d: too wide", p.Type, p.Source, p.Priority)
		}
		w.tia(medExtendedPower, 3)
		w.b = append(w.b, byte(p.Type)<<6|p.Source<<4|byte(p.Priority))
		w.b = binary.BigEndian.AppendUint16(w.b, p.DeciWatts)
	}
	for i, s := range m.Inventory.fields() {
		if s != "" {
			w.tia(medHardwareRevision+byte(i), len(s))
			w.b = append(w.b, s...)
		}
	}
	w.header(tlvEnd, 0)
	if w.err != nil {
		return nil, w.err
	}
	b = w.b
	if n := len(b) - start - ethHeaderLen; n > maxPDU {
		return nil, fmt.Errorf("lldp: LLDPDU of %d bytes does not fit a frame (at most %d)", n, maxPDU)
	}
	for len(b)-start < minFrame {
		b = append(b, 0)
	}
	return b, nil
}

// fields lists the inventory in subtype order (5 to 11).
func (inv *Inventory) fields() [7]string {
	return [7]string{inv.HardwareRevision, inv.FirmwareRevision, inv.SoftwareRevision,
		inv.SerialNumber, inv.Manufacturer, inv.Model, inv.AssetID}
}

// field is the inventory field of subtype st (5 to 11).
func (inv *Inventory) field(st byte) *string {
	return [7]*string{&inv.HardwareRevision, &inv.FirmwareRevision, &inv.SoftwareRevision,
		&inv.SerialNumber, &inv.Manufacturer, &inv.Model, &inv.AssetID}[st-medHardwareRevision]
}

// writer appends TLVs and keeps the first error.
type writer struct {
	b   []byte
	err error
}

func (w *writer) fail(format string, args ...any) {
	if w.err == nil {
		w.err = fmt.Errorf("lldp: "+format, args...)
	}
}

// header appends a TLV header for an information string of n bytes.
func (w *writer) header(t tlvType, n int) {
	if n > maxTLVLen {
		w.fail("%v of %d bytes (at most %d)", t, n, maxTLVLen)
		n = 0
	}
	w.b = binary.BigEndian.AppendUint16(w.b, uint16(t)<<9|uint16(n))
}

// tia appends the header of an LLDP-MED TLV with n bytes after its subtype.
func (w *writer) tia(subtype byte, n int) {
	w.header(tlvOrgSpecific, 4+n)
	w.b = append(w.b, ouiTIA[:]...)
	w.b = append(w.b, subtype)
}

func (w *writer) str(t tlvType, s string) {
	if s != "" {
		w.header(t, len(s))
		w.b = append(w.b, s...)
	}
}

func (w *writer) managementAddress(ma ManagementAddress) {
	var family byte
	switch {
	case ma.Addr.Is4():
		family = familyIPv4
	case ma.Addr.Is6() && ma.Addr.Zone() == "":
		family = familyIPv6
	default:
		w.fail("cannot encode management address %v", ma.Addr)
		return
	}
	if len(ma.OID) > maxOIDLen {
		w.fail("management address OID of %d bytes (at most %d)", len(ma.OID), maxOIDLen)
		return
	}
	raw := ma.Addr.AsSlice()
	w.header(tlvManagementAddress, 1+1+len(raw)+1+4+1+len(ma.OID))
	w.b = append(w.b, byte(1+len(raw)), family)
	w.b = append(w.b, raw...)
	w.b = append(w.b, ma.InterfaceSubtype)
	w.b = binary.BigEndian.AppendUint32(w.b, ma.Interface)
	w.b = append(w.b, byte(len(ma.OID)))
	w.b = append(w.b, ma.OID...)
}

func (w *writer) networkPolicy(p NetworkPolicy) {
	if p.VLAN > 0xfff || p.Priority > 7 || p.DSCP > 63 {
		w.fail("network policy VLAN %d, priority %d, DSCP %d: too wide", p.VLAN, p.Priority, p.DSCP)
		return
	}
	// Application, then U, T, X (reserved), 12 bits of VLAN, 3 of
	// priority, 6 of DSCP.
	v := uint32(p.Application)<<24 | uint32(p.VLAN)<<9 | uint32(p.Priority)<<6 | uint32(p.DSCP)
	if p.Unknown {
		v |= 1 << 23
	}
	if p.Tagged {
		v |= 1 << 22
	}
	w.tia(medNetworkPolicy, 4)
	w.b = binary.BigEndian.AppendUint32(w.b, v)
}

// Decode parses an LLDP frame as a packet socket delivers it (from the
// Ethernet header on, without FCS; whatever follows the End TLV, such as
// padding, is ignored). Errors match ErrNotLLDP or ErrMalformed. What
// Decode allocates is bounded by a small multiple of the frame's length.
//
// As 802.1AB requires, the first three TLVs must be Chassis ID, Port ID
// and Time To Live, and none of them may appear again. Reserved TLV types
// and organizationally specific TLVs other than LLDP-MED's Capabilities,
// Network Policy, Extended Power-via-MDI and inventory are checked for
// length and skipped.
func Decode(frame []byte) (*Message, error) {
	if len(frame) < ethHeaderLen {
		return nil, fmt.Errorf("%w: %d bytes, short of an Ethernet header", ErrNotLLDP, len(frame))
	}
	if et := binary.BigEndian.Uint16(frame[12:]); et != EtherType {
		return nil, fmt.Errorf("%w: EtherType %#04x", ErrNotLLDP, et)
	}
	m := &Message{Source: net.HardwareAddr(bytes.Clone(frame[6:12]))}
	rest := frame[ethHeaderLen:]
	for i := 0; ; i++ {
		if len(rest) == 0 {
			// No End TLV: 802.1AB-2016 made it optional.
			if i < 3 {
				return nil, fmt.Errorf("%w: ends after %d TLVs", ErrMalformed, i)
			}
			return m, nil
		}
		if len(rest) < 2 {
			return nil, fmt.Errorf("%w: 1 byte after the last TLV", ErrMalformed)
		}
		h := binary.BigEndian.Uint16(rest)
		t, n := tlvType(h>>9), int(h&maxTLVLen)
		if n > len(rest)-2 {
			return nil, fmt.Errorf("%w: %v of %d bytes, %d left", ErrMalformed, t, n, len(rest)-2)
		}
		v := rest[2 : 2+n]
		rest = rest[2+n:]
		// The mandatory TLVs come first, in order, and only there.
		mandatory := t == tlvChassisID || t == tlvPortID || t == tlvTTL
		if i < 3 && t != tlvType(i+1) || i >= 3 && mandatory {
			return nil, fmt.Errorf("%w: %v as TLV %d", ErrMalformed, t, i+1)
		}
		if t == tlvEnd {
			if n != 0 {
				return nil, fmt.Errorf("%w: End of LLDPDU of length %d", ErrMalformed, n)
			}
			return m, nil
		}
		if err := m.decodeTLV(t, v); err != nil {
			return nil, fmt.Errorf("%w: %v: %v", ErrMalformed, t, err)
		}
	}
}

func (m *Message) decodeTLV(t tlvType, v []byte) error {
	switch t {
	case tlvChassisID, tlvPortID:
		if len(v) < 2 || len(v) > 1+maxIDLen {
			return fmt.Errorf("%d bytes, want 2-%d", len(v), 1+maxIDLen)
		}
		if t == tlvChassisID {
			m.ChassisID = ChassisID{Subtype: ChassisIDSubtype(v[0]), ID: bytes.Clone(v[1:])}
		} else {
			m.PortID = PortID{Subtype: PortIDSubtype(v[0]), ID: bytes.Clone(v[1:])}
		}
	case tlvTTL:
		if err := size(v, 2); err != nil {
			return err
		}
		m.TTL = binary.BigEndian.Uint16(v)
	case tlvPortDescription:
		m.PortDescription = string(v)
	case tlvSystemName:
		m.SystemName = string(v)
	case tlvSystemDescription:
		m.SystemDescription = string(v)
	case tlvSystemCapabilities:
		if err := size(v, 4); err != nil {
			return err
		}
		m.Capabilities = &SystemCapabilities{
			System:  Capabilities(binary.BigEndian.Uint16(v)),
			Enabled: Capabilities(binary.BigEndian.Uint16(v[2:])),
		}
	case tlvManagementAddress:
		return m.decodeManagementAddress(v)
	case tlvOrgSpecific:
		if len(v) < 4 {
			return fmt.Errorf("%d bytes, short of OUI and subtype", len(v))
		}
		if [3]byte(v) == ouiTIA {
			return m.decodeMED(v[3], v[4:])
		}
	}
	return nil
}

func size(v []byte, want int) error {
	if len(v) != want {
		return fmt.Errorf("%d bytes, want %d", len(v), want)
	}
	return nil
}

// decodeManagementAddress reads address string length (1 + address),
// family, address, interface subtype and number, OID length and OID,
// which must fill the TLV exactly.
func (m *Message) decodeManagementAddress(v []byte) error {
	if len(v) < 1 {
		return fmt.Errorf("empty")
	}
	alen := int(v[0])
	if alen < 2 || alen > 32 {
		return fmt.Errorf("address string of %d bytes, want 2-32", alen)
	}
	if len(v) < 1+alen+5+1 {
		return fmt.Errorf("%d bytes, short of an address of %d", len(v), alen-1)
	}
	family, raw := v[1], v[2:1+alen]
	tail := v[1+alen:]
	ma := ManagementAddress{InterfaceSubtype: tail[0], Interface: binary.BigEndian.Uint32(tail[1:])}
	olen := int(tail[5])
	if olen > maxOIDLen || len(tail) != 6+olen {
		return fmt.Errorf("OID of %d bytes with %d left", olen, len(tail)-6)
	}
	if olen > 0 {
		ma.OID = bytes.Clone(tail[6:])
	}
	switch {
	case family == familyIPv4 && len(raw) == 4, family == familyIPv6 && len(raw) == 16:
		ma.Addr, _ = netip.AddrFromSlice(raw)
		m.ManagementAddresses = append(m.ManagementAddresses, ma)
	}
	return nil
}

func (m *Message) decodeMED(subtype byte, v []byte) error {
	switch {
	case subtype == medCapabilities:
		if err := size(v, 3); err != nil {
			return err
		}
		m.MED = &MED{Capabilities: MEDCapabilities(binary.BigEndian.Uint16(v)), Class: DeviceClass(v[2])}
	case subtype == medNetworkPolicy:
		if err := size(v, 4); err != nil {
			return err
		}
		x := binary.BigEndian.Uint32(v)
		m.NetworkPolicies = append(m.NetworkPolicies, NetworkPolicy{
			Application: Application(x >> 24),
			Unknown:     x&(1<<23) != 0,
			Tagged:      x&(1<<22) != 0,
			VLAN:        uint16(x>>9) & 0xfff,
			Priority:    uint8(x>>6) & 7,
			DSCP:        uint8(x) & 0x3f,
		})
	case subtype == medExtendedPower:
		if err := size(v, 3); err != nil {
			return err
		}
		m.ExtendedPower = &ExtendedPower{
			Type:      PowerType(v[0] >> 6),
			Source:    v[0] >> 4 & 3,
			Priority:  PowerPriority(v[0] & 0xf),
			DeciWatts: binary.BigEndian.Uint16(v[1:]),
		}
	case subtype >= medHardwareRevision && subtype <= medAssetID:
		*m.Inventory.field(subtype) = string(v)
	}
	return nil
}
