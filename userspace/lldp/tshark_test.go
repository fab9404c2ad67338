package lldp

import (
	"fmt"
	"net/netip"
	"reflect"
	"testing"

	"github.com/phoneboot/phoneboot/userspace/internal/wiretest"
)

// everything is a message with every TLV Message covers.
func everything() *Message {
	return &Message{
		Source:            testMAC,
		ChassisID:         ChassisID{Subtype: ChassisNetworkAddress, ID: []byte{1, 10, 99, 0, 10}},
		PortID:            PortID{Subtype: PortMAC, ID: []byte{0x00, 0x1b, 0x54, 1, 2, 3}},
		TTL:               180,
		PortDescription:   "SW PORT",
		SystemName:        "SEP001B54010203",
		SystemDescription: "Cisco IP Phone CP-8845",
		Capabilities:      &SystemCapabilities{System: CapBridge | CapTelephone, Enabled: CapTelephone},
		ManagementAddresses: []ManagementAddress{
			{Addr: netip.MustParseAddr("10.99.0.10"), InterfaceSubtype: InterfaceIfIndex, Interface: 3, OID: []byte{0x2b, 0x06, 0x01, 0x04, 0x01, 0x09}},
			{Addr: netip.MustParseAddr("2001:db8::10"), InterfaceSubtype: InterfaceSystemPort, Interface: 1},
		},
		MED: &MED{Capabilities: MEDCapCapabilities | MEDCapNetworkPolicy | MEDCapPowerPD | MEDCapInventory, Class: ClassEndpoint3},
		NetworkPolicies: []NetworkPolicy{
			VoicePolicy(77),
			{Application: AppVoiceSignaling, Tagged: true, VLAN: 77, Priority: 3, DSCP: 24},
			{Application: AppVideoConferencing, Unknown: true},
		},
		ExtendedPower: &ExtendedPower{Type: PowerPD, Source: PowerSourcePSE, Priority: PriorityLow, DeciWatts: 129},
		Inventory: Inventory{
			HardwareRevision: "3", FirmwareRevision: "sboot88.1-0-1", SoftwareRevision: "sip88xx.14-2-1",
			SerialNumber: "FCH1234ABCD", Manufacturer: "Cisco Systems, Inc.", Model: "CP-8845", AssetID: "asset 42",
		},
	}
}

var tsharkFields = []string{
	"lldp.tlv.type", "lldp.chassis.subtype", "lldp.chassis.id.mac", "lldp.chassis.id.ip4", "lldp.chassis.id",
	"lldp.port.subtype", "lldp.port.id", "lldp.port.id.mac", "lldp.time_to_live",
	"lldp.port.desc", "lldp.tlv.system.name", "lldp.tlv.system.desc",
	"lldp.tlv.system_cap", "lldp.tlv.enable_system_cap",
	"lldp.mgn.addr.ip4", "lldp.mgn.addr.ip6", "lldp.mgn.interface.subtype", "lldp.mgn.interface.number", "lldp.mgn.obj.id",
	"lldp.media.subtype", "lldp.media.subtype.caps", "lldp.media.subtype.class",
	"lldp.media.app_type", "lldp.media.policy_flag", "lldp.media.tag_flag", "lldp.media.vlan_id", "lldp.media.l2_prio", "lldp.media.dscp",
	"lldp.media.power.type", "lldp.media.power.source", "lldp.media.power.prio", "lldp.media.power.value",
	"lldp.media.hardware", "lldp.media.firmware", "lldp.media.software", "lldp.media.sn",
	"lldp.media.manufacturer", "lldp.media.model", "lldp.media.asset",
}

// expectedFields is what tshark should show for m, in frame order.
func expectedFields(m *Message) wiretest.Fields {
	f := wiretest.Fields{}
	add := func(name, format string, args ...any) { f[name] = append(f[name], fmt.Sprintf(format, args...)) }
	bit := func(b bool) string {
		if b {
			return "1"
		}
		return "0"
	}
	types := func(ts ...tlvType) {
		for _, t := range ts {
			add("lldp.tlv.type", "%d", t)
		}
	}
	types(tlvChassisID, tlvPortID, tlvTTL)
	add("lldp.chassis.subtype", "%d", m.ChassisID.Subtype)
	switch m.ChassisID.Subtype {
	case ChassisMAC:
		add("lldp.chassis.id.mac", "%s", m.ChassisID)
	case ChassisNetworkAddress:
		add("lldp.chassis.id.ip4", "%s", m.ChassisID)
	default:
		add("lldp.chassis.id", "%x", m.ChassisID.ID)
	}
	add("lldp.port.subtype", "%d", m.PortID.Subtype)
	if m.PortID.Subtype == PortMAC {
		add("lldp.port.id.mac", "%s", m.PortID)
	} else {
		add("lldp.port.id", "%s", m.PortID)
	}
	add("lldp.time_to_live", "%d", m.TTL)
	if m.PortDescription != "" {
		types(tlvPortDescription)
		add("lldp.port.desc", "%s", m.PortDescription)
	}
	if m.SystemName != "" {
		types(tlvSystemName)
		add("lldp.tlv.system.name", "%s", m.SystemName)
	}
	if m.SystemDescription != "" {
		types(tlvSystemDescription)
		add("lldp.tlv.system.desc", "%s", m.SystemDescription)
	}
	if c := m.Capabilities; c != nil {
		types(tlvSystemCapabilities)
		add("lldp.tlv.system_cap", "0x%04x", uint16(c.System))
		add("lldp.tlv.enable_system_cap", "0x%04x", uint16(c.Enabled))
	}
	for _, ma := range m.ManagementAddresses {
		types(tlvManagementAddress)
		if ma.Addr.Is4() {
			add("lldp.mgn.addr.ip4", "%s", ma.Addr)
		} else {
			add("lldp.mgn.addr.ip6", "%s", ma.Addr)
		}
		add("lldp.mgn.interface.subtype", "%d", ma.InterfaceSubtype)
		add("lldp.mgn.interface.number", "%d", ma.Interface)
		if ma.OID != nil {
			add("lldp.mgn.obj.id", "%s", oidString(ma.OID))
		}
	}
	if med := m.MED; med != nil {
		types(tlvOrgSpecific)
		add("lldp.media.subtype", "0x%02x", medCapabilities)
		add("lldp.media.subtype.caps", "0x%04x", uint16(med.Capabilities))
		add("lldp.media.subtype.class", "%d", med.Class)
	}
	for _, p := range m.NetworkPolicies {
		types(tlvOrgSpecific)
		add("lldp.media.subtype", "0x%02x", medNetworkPolicy)
		add("lldp.media.app_type", "%d", p.Application)
		add("lldp.media.policy_flag", "%s", bit(p.Unknown))
		add("lldp.media.tag_flag", "%s", bit(p.Tagged))
		add("lldp.media.vlan_id", "%d", p.VLAN)
		add("lldp.media.l2_prio", "%d", p.Priority)
		add("lldp.media.dscp", "%d", p.DSCP)
	}
	if p := m.ExtendedPower; p != nil {
		types(tlvOrgSpecific)
		add("lldp.media.subtype", "0x%02x", medExtendedPower)
		add("lldp.media.power.type", "%d", p.Type)
		add("lldp.media.power.source", "%d", p.Source)
		add("lldp.media.power.prio", "%d", p.Priority)
		add("lldp.media.power.value", "%d", p.DeciWatts)
	}
	inv := m.Inventory.fields()
	for i, name := range []string{"hardware", "firmware", "software", "sn", "manufacturer", "model", "asset"} {
		if inv[i] != "" {
			types(tlvOrgSpecific)
			add("lldp.media.subtype", "0x%02x", medHardwareRevision+i)
			add("lldp.media."+name, "%s", inv[i])
		}
	}
	types(tlvEnd)
	return f
}

// oidString renders a BER-encoded OID (first byte 40*a+b, then base-128
// arcs) in dotted form.
func oidString(b []byte) string {
	s := fmt.Sprintf("%d.%d", b[0]/40, b[0]%40)
	var arc uint64
	for _, c := range b[1:] {
		arc = arc<<7 | uint64(c&0x7f)
		if c&0x80 == 0 {
			s += fmt.Sprintf(".%d", arc)
			arc = 0
		}
	}
	return s
}

// TestTshark has Wireshark's LLDP dissector read what we send: every value
// we encode comes back as we put it, and it finds nothing wrong.
func TestTshark(t *testing.T) {
	port, err := NewPort(testPortConfig())
	if err != nil {
		t.Fatal(err)
	}
	msgs := map[string]*Message{
		"switch port": port.Advertisement(),
		"withdrawal":  port.Withdrawal(),
		"every TLV":   everything(),
	}
	var names []string
	var frames [][]byte
	for name, m := range msgs {
		f, err := m.AppendFrame(nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		names, frames = append(names, name), append(frames, f)
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
}

// TestTsharkCaptures: tshark sees nothing wrong with lldpd's captures
// either, so that TestDecodeCaptures decodes sound frames. (tshark warns
// that the IEEE 802.3 Link Aggregation TLV in lldpdMED is deprecated.)
func TestTsharkCaptures(t *testing.T) {
	got := wiretest.Tshark(t, [][]byte{nortel, lldpdMED}, "lldp.tlv.system.name")
	if p := got[0].Problems(); len(p) > 0 {
		t.Errorf("Nortel: %q", p)
	}
	if p := got[1].Problems(); !reflect.DeepEqual(p, []string{"TLV has been deprecated"}) {
		t.Errorf("lldpd: %q", p)
	}
}
