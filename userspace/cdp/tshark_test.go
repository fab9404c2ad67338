package cdp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/phoneboot/phoneboot/userspace/internal/wiretest"
)

// everything is a message with every TLV Message covers, with values a
// dissector can tell apart.
func everything() *Message {
	energyWise := make([]byte, 72) // header with an empty TLV table
	copy(energyWise[28:], "CP-8845")
	return &Message{
		Source: testMAC, Version: 2, TTL: 170,
		DeviceID: "SEP001B54010203",
		Addresses: []netip.Addr{
			netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("2001:db8::1"),
		},
		PortID:              "Port 1",
		Capabilities:        CapHost | CapPhone | CapRemotelyManaged,
		SoftwareVersion:     "SIP88xx.14-2-1-0001-14",
		Platform:            "Cisco IP Phone 8845",
		IPPrefixes:          []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.0/24")},
		ODRGateway:          netip.MustParseAddr("10.0.0.254"),
		ProtocolHello:       &ProtocolHello{OUI: [3]byte{0, 0, 0x0c}, ProtocolID: 0x0112, Data: make([]byte, 27)},
		VTPDomain:           "VOICE",
		NativeVLAN:          10,
		Duplex:              ptr(FullDuplex),
		VoIPVLANReply:       &ApplianceVLAN{ID: 1, VLAN: 77},
		VoIPVLANQuery:       &ApplianceVLAN{ID: 2, VLAN: 3},
		PowerConsumption:    6300,
		MTU:                 1500,
		TrustBitmap:         ptr[uint8](0x01),
		UntrustedCoS:        ptr[uint8](5),
		SystemName:          "phone-8845",
		SystemOID:           []byte{0x2b, 0x06, 0x01},
		ManagementAddresses: []netip.Addr{netip.MustParseAddr("10.9.9.9")},
		Location:            &Location{Kind: 1, Text: "Building 4, room 12"},
		ExternalPortID:      []byte("ext"),
		PowerRequested:      &PowerRequest{RequestID: 7, ManagementID: 8, MilliWatts: []uint32{15400, 12950}},
		PowerAvailable:      &PowerAvailable{RequestID: 9, ManagementID: 10, MilliWatts: 15400, ManagementLevel: NoPreference},
		PortUnidirectional:  []byte{0x01},
		EnergyWise:          energyWise,
		SparePairPoE:        ptr(PSEFourWire | PSESparePairOn),
	}
}

// tsharkFields are the CDP fields of tshark 4.0 the test compares.
var tsharkFields = []string{
	"cdp.version", "cdp.ttl", "cdp.checksum.status", "cdp.tlv.type",
	"cdp.deviceid", "cdp.number_of_addresses", "cdp.nrgyz.ip_address", "cdp.nrgyz.ipv6_address",
	"cdp.portid", "cdp.capabilities", "cdp.software_version", "cdp.platform",
	"cdp.odr_default_gateway", "cdp.oui", "cdp.protocol_id", "cdp.vtp_management_domain",
	"cdp.native_vlan", "cdp.duplex", "cdp.voice_vlan", "cdp.data", "cdp.power_consumption",
	"cdp.mtu", "cdp.trust_bitmap", "cdp.untrusted_port_cos", "cdp.system_name",
	"cdp.system_object_identifier", "cdp.location.unknown", "cdp.location",
	"cdp.request_id", "cdp.management_id", "cdp.power_requested", "cdp.power_available",
	"cdp.model_number", "cdp.spare_poe_tlv",
}

// expectedFields is what tshark should show for m: every value we put in,
// in frame order. IP prefixes are left to the verbose text: tshark 4.0's
// cdp.ip_prefix field holds the address byte-reversed ("0.0.0.10" for
// 10.0.0.0/8) although its text is right.
func expectedFields(m *Message) wiretest.Fields {
	f := wiretest.Fields{}
	add := func(name string, format string, args ...any) {
		f[name] = append(f[name], fmt.Sprintf(format, args...))
	}
	str := func(name, s string) {
		if s != "" {
			add(name, "%s", s)
		}
	}
	types := func(ts ...Type) {
		for _, t := range ts {
			add("cdp.tlv.type", "0x%04x", uint16(t))
		}
	}
	addrs := func(as []netip.Addr) {
		if len(as) == 0 {
			return
		}
		add("cdp.number_of_addresses", "%d", len(as))
		for _, a := range as {
			if a.Is4() {
				add("cdp.nrgyz.ip_address", "%s", a)
			} else {
				add("cdp.nrgyz.ipv6_address", "%s", a)
			}
		}
	}
	add("cdp.version", "%d", m.Version)
	add("cdp.ttl", "%d", m.TTL)
	add("cdp.checksum.status", "1") // good
	if m.DeviceID != "" {
		types(TypeDeviceID)
	}
	str("cdp.deviceid", m.DeviceID)
	if m.Addresses != nil {
		types(TypeAddresses)
	}
	addrs(m.Addresses)
	if m.PortID != "" {
		types(TypePortID)
	}
	str("cdp.portid", m.PortID)
	if m.Capabilities != 0 {
		types(TypeCapabilities)
		add("cdp.capabilities", "0x%08x", uint32(m.Capabilities))
	}
	if m.SoftwareVersion != "" {
		types(TypeSoftwareVersion)
	}
	str("cdp.software_version", m.SoftwareVersion)
	if m.Platform != "" {
		types(TypePlatform)
	}
	str("cdp.platform", m.Platform)
	if m.IPPrefixes != nil {
		types(TypeIPPrefix)
	}
	if m.ODRGateway.IsValid() {
		types(TypeIPPrefix)
		add("cdp.odr_default_gateway", "%s", m.ODRGateway)
	}
	if h := m.ProtocolHello; h != nil {
		types(TypeProtocolHello)
		add("cdp.oui", "%d", uint32(h.OUI[0])<<16|uint32(h.OUI[1])<<8|uint32(h.OUI[2]))
		add("cdp.protocol_id", "0x%04x", h.ProtocolID)
	}
	if m.VTPDomain != "" {
		types(TypeVTPDomain)
	}
	str("cdp.vtp_management_domain", m.VTPDomain)
	if m.NativeVLAN != 0 {
		types(TypeNativeVLAN)
		add("cdp.native_vlan", "%d", m.NativeVLAN)
	}
	if m.Duplex != nil {
		types(TypeDuplex)
		add("cdp.duplex", "%d", *m.Duplex)
	}
	if v := m.VoIPVLANReply; v != nil {
		types(TypeVoIPVLANReply)
		add("cdp.data", "%02x", v.ID)
		add("cdp.voice_vlan", "%d", v.VLAN)
	}
	if v := m.VoIPVLANQuery; v != nil {
		types(TypeVoIPVLANQuery)
		add("cdp.data", "%02x", v.ID)
		add("cdp.voice_vlan", "%d", v.VLAN)
	}
	if m.PowerConsumption != 0 {
		types(TypePower)
		add("cdp.power_consumption", "%d", m.PowerConsumption)
	}
	if m.MTU != 0 {
		types(TypeMTU)
		add("cdp.mtu", "%d", m.MTU)
	}
	if m.TrustBitmap != nil {
		types(TypeTrustBitmap)
		add("cdp.trust_bitmap", "0x%02x", *m.TrustBitmap)
	}
	if m.UntrustedCoS != nil {
		types(TypeUntrustedCoS)
		add("cdp.untrusted_port_cos", "0x%02x", *m.UntrustedCoS)
	}
	if m.SystemName != "" {
		types(TypeSystemName)
	}
	str("cdp.system_name", m.SystemName)
	if m.SystemOID != nil {
		types(TypeSystemOID)
		add("cdp.system_object_identifier", "%x", m.SystemOID)
	}
	if m.ManagementAddresses != nil {
		types(TypeManagementAddress)
	}
	addrs(m.ManagementAddresses)
	if l := m.Location; l != nil {
		types(TypeLocation)
		add("cdp.location.unknown", "0x%02x", l.Kind)
		add("cdp.location", "%s", l.Text)
	}
	if m.ExternalPortID != nil {
		types(TypeExternalPortID)
		add("cdp.data", "%x", m.ExternalPortID)
	}
	if r := m.PowerRequested; r != nil {
		types(TypePowerRequested)
		add("cdp.request_id", "%d", r.RequestID)
		add("cdp.management_id", "%d", r.ManagementID)
		for _, mw := range r.MilliWatts {
			add("cdp.power_requested", "%d", mw)
		}
	}
	if a := m.PowerAvailable; a != nil {
		types(TypePowerAvailable)
		add("cdp.request_id", "%d", a.RequestID)
		add("cdp.management_id", "%d", a.ManagementID)
		add("cdp.power_available", "%d", a.MilliWatts)
		add("cdp.power_available", "%d", a.ManagementLevel)
	}
	if m.PortUnidirectional != nil {
		types(TypePortUnidirectional)
		add("cdp.data", "%x", m.PortUnidirectional)
	}
	if m.EnergyWise != nil {
		types(TypeEnergyWise)
		add("cdp.model_number", "%s", strings.TrimRight(string(m.EnergyWise[28:44]), "\x00"))
	}
	if m.SparePairPoE != nil {
		types(TypeSparePairPoE)
		add("cdp.spare_poe_tlv", "0x%02x", *m.SparePairPoE)
	}
	return f
}

// TestTshark has Wireshark's CDP dissector read what we send: every value
// we encode comes back as we put it, with a good checksum and no warnings.
// The odd-length frames end on the bytes where Cisco's checksum rule
// differs from RFC 1071 (and from scapy: 0x80).
func TestTshark(t *testing.T) {
	port, err := NewPort(testPortConfig())
	if err != nil {
		t.Fatal(err)
	}
	msgs := map[string]*Message{
		"switch port":  port.Advertisement(),
		"phone":        PhoneAdvertisement(testPhone()),
		"every TLV":    everything(),
		"CDPv1":        {Source: testMAC, Version: 1, TTL: 180, DeviceID: "v1", Capabilities: CapRouter},
		"withdrawal":   port.Withdrawal(),
		"no voice, v6": {Source: testMAC, TTL: 60, DeviceID: "s", Addresses: []netip.Addr{netip.MustParseAddr("fe80::1")}},
	}
	for _, last := range []byte{0x00, 0x7f, 0x80, 0x81, 0xfe, 0xff} {
		// Header 4 + Device ID 4+2 + Spare Pair PoE 5: 15 bytes, odd.
		msgs[fmt.Sprintf("odd length, last byte %#02x", last)] = &Message{
			Source: testMAC, TTL: 180, DeviceID: "ab", SparePairPoE: ptr(SparePairPoE(last)),
		}
	}
	var names []string
	var frames [][]byte
	for name, m := range msgs {
		if m.Version == 0 {
			m.Version = Version
		}
		f, err := m.AppendFrame(nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if strings.HasPrefix(name, "odd") {
			if n := binary.BigEndian.Uint16(f[12:]) - snapLen; n%2 != 1 || f[ethHeaderLen+int(binary.BigEndian.Uint16(f[12:]))-1] != byte(*m.SparePairPoE) {
				t.Fatalf("%s: PDU of %d bytes does not end on the byte under test", name, n)
			}
		}
		names = append(names, name)
		frames = append(frames, f)
	}
	got := wiretest.Tshark(t, frames, tsharkFields...)
	for i, name := range names {
		t.Run(name, func(t *testing.T) {
			if p := got[i].Problems(); len(p) > 0 {
				t.Errorf("tshark found problems: %q", p)
			}
			want := expectedFields(msgs[name])
			for _, field := range tsharkFields {
				if !reflect.DeepEqual(got[i][field], want[field]) {
					t.Errorf("%s: tshark %q, want %q", field, got[i][field], want[field])
				}
			}
			if t.Failed() {
				t.Log(wiretest.Verbose(t, frames[i:i+1]))
			}
		})
	}
	// The prefixes, from the text (see expectedFields).
	text := wiretest.Verbose(t, [][]byte{frames[slices.Index(names, "every TLV")]})
	for _, p := range everything().IPPrefixes {
		if !strings.Contains(text, "IP Prefix: "+p.String()+"\n") {
			t.Errorf("tshark does not show prefix %v", p)
		}
	}
}

// TestTsharkCaptures: on the real captures tshark and Decode agree on
// the checksum, and tshark sees nothing wrong with them otherwise.
func TestTsharkCaptures(t *testing.T) {
	captures := map[string][]byte{
		"Catalyst 2950": snapFrame(deviceSrc, catalyst2950),
		"IP Phone 7960": snapFrame(deviceSrc, phone7960),
		"Cisco 1601":    cisco1601,
		"Cisco 7206VXR": cisco7206,
		"lldpd CDPv2":   lldpdCDPv2,
	}
	var names []string
	var frames [][]byte
	for n, f := range captures {
		names, frames = append(names, n), append(frames, f)
	}
	got := wiretest.Tshark(t, frames, "cdp.checksum", "cdp.checksum.status", "cdp.deviceid")
	for i, name := range names {
		_, err := Decode(frames[i])
		ours := "1"
		var problems []string
		if err != nil {
			ours = "0"
			problems = []string{fmt.Sprintf("Bad checksum [should be 0x%04x]", err.(*ChecksumError).Want)}
		}
		if s := got[i].One(t, "cdp.checksum.status"); s != ours {
			t.Errorf("%s: tshark checksum status %s, Decode %s (%v)", name, s, ours, err)
		}
		if p := got[i].Problems(); !reflect.DeepEqual(p, problems) {
			t.Errorf("%s: tshark problems %q, want %q", name, p, problems)
		}
	}
}
