package lldp

import (
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/neighbor"
)

func testPortConfig() PortConfig {
	return PortConfig{
		MAC:               testMAC,
		ChassisMAC:        chassisMAC,
		PortName:          "swp1",
		PortDescription:   "phone port 1",
		SystemName:        "phoneboot1",
		SystemDescription: "phoneboot 1.0",
		Addresses:         []netip.Addr{netip.MustParseAddr("10.99.0.1")},
		Policies:          []NetworkPolicy{VoicePolicy(77)},
		PoE:               true,
		PowerAvailableMW:  15400,
		PowerPriority:     PriorityHigh,
	}
}

func overWire(t *testing.T, m *Message) *Message {
	t.Helper()
	f, err := m.AppendFrame(nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestPortAdvertisement(t *testing.T) {
	p, err := NewPort(testPortConfig())
	if err != nil {
		t.Fatal(err)
	}
	got := overWire(t, p.Advertisement())
	want := &Message{
		Source:              testMAC,
		ChassisID:           ChassisID{Subtype: ChassisMAC, ID: chassisMAC},
		PortID:              PortID{Subtype: PortInterfaceName, ID: []byte("swp1")},
		TTL:                 DefaultTTL,
		PortDescription:     "phone port 1",
		SystemName:          "phoneboot1",
		SystemDescription:   "phoneboot 1.0",
		Capabilities:        &SystemCapabilities{System: CapBridge, Enabled: CapBridge},
		ManagementAddresses: []ManagementAddress{{Addr: netip.MustParseAddr("10.99.0.1"), InterfaceSubtype: InterfaceUnknown}},
		MED:                 &MED{Capabilities: MEDCapCapabilities | MEDCapNetworkPolicy | MEDCapPowerPSE, Class: ClassNetworkConnectivity},
		NetworkPolicies:     []NetworkPolicy{{Application: AppVoice, Tagged: true, VLAN: 77, Priority: 5, DSCP: 46}},
		ExtendedPower:       &ExtendedPower{Type: PowerPSE, Source: PowerSourcePrimary, Priority: PriorityHigh, DeciWatts: 154},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("advertisement\n%+v\nwant\n%+v", got, want)
	}

	w := overWire(t, p.Withdrawal())
	if w.TTL != 0 || w.SystemName != "" || w.MED != nil || w.PortID.String() != "swp1" {
		t.Errorf("withdrawal is not a shutdown LLDPDU: %+v", w)
	}

	cfg := testPortConfig()
	cfg.Policies, cfg.PoE, cfg.TTL = nil, false, 20
	p, err = NewPort(cfg)
	if err != nil {
		t.Fatal(err)
	}
	got = overWire(t, p.Advertisement())
	if got.NetworkPolicies != nil || got.ExtendedPower != nil || got.MED.Capabilities != MEDCapCapabilities || got.TTL != 20 {
		t.Errorf("data-only port advertises %+v", got)
	}
}

func TestPortPower(t *testing.T) {
	p, err := NewPort(testPortConfig())
	if err != nil {
		t.Fatal(err)
	}
	if p.SetPowerAvailable(15450) {
		t.Error("a change within 0.1 W was reported")
	}
	if !p.SetPowerAvailable(30000) {
		t.Error("15.4 W to 30 W: no change reported")
	}
	if got := p.Advertisement().ExtendedPower.MilliWatts(); got != 30000 {
		t.Errorf("advertises %d mW, want 30000", got)
	}
	p.SetPowerAvailable(1 << 31)
	if got := p.Advertisement().ExtendedPower.DeciWatts; got != 0xffff {
		t.Errorf("2 MW advertised as %d dW, want the cap", got)
	}
}

func TestNewPortRejects(t *testing.T) {
	for name, mod := range map[string]func(*PortConfig){
		"no MAC":         func(c *PortConfig) { c.MAC = nil },
		"no chassis":     func(c *PortConfig) { c.ChassisMAC = net.HardwareAddr{1} },
		"no port name":   func(c *PortConfig) { c.PortName = "" },
		"VLAN 4095":      func(c *PortConfig) { c.Policies = []NetworkPolicy{VoicePolicy(4095)} },
		"priority 8":     func(c *PortConfig) { c.Policies[0].Priority = 8 },
		"DSCP 64":        func(c *PortConfig) { c.Policies[0].DSCP = 64 },
		"power":          func(c *PortConfig) { c.PowerAvailableMW = 7_000_000 },
		"power priority": func(c *PortConfig) { c.PowerPriority = 4 },
		"too big":        func(c *PortConfig) { c.SystemDescription = strings.Repeat("d", 600) },
	} {
		c := testPortConfig()
		mod(&c)
		if _, err := NewPort(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestNeighbor(t *testing.T) {
	phone := &Message{
		Source:            net.HardwareAddr{0x00, 0x1b, 0x54, 1, 2, 3},
		ChassisID:         ChassisID{Subtype: ChassisNetworkAddress, ID: []byte{1, 10, 99, 0, 10}},
		PortID:            PortID{Subtype: PortMAC, ID: []byte{0x00, 0x1b, 0x54, 1, 2, 3}},
		TTL:               180,
		SystemName:        "SEP001B54010203",
		SystemDescription: "Cisco IP Phone CP-8845, V3, sip88xx.14-2-1",
		ManagementAddresses: []ManagementAddress{
			{Addr: netip.MustParseAddr("10.99.0.10")}, {Addr: netip.MustParseAddr("10.99.0.10")},
		},
		ExtendedPower: &ExtendedPower{Type: PowerPD, Source: PowerSourcePSE, Priority: PriorityUnknown, DeciWatts: 129},
		Inventory:     Inventory{SoftwareRevision: "sip88xx.14-2-1", Model: "CP-8845"},
	}
	want := neighbor.Neighbor{
		Protocol:         neighbor.LLDP,
		LocalPort:        "swp2",
		MAC:              phone.Source,
		DeviceID:         "SEP001B54010203",
		Platform:         "CP-8845",
		PortID:           "00:1b:54:01:02:03",
		Addresses:        []netip.Addr{netip.MustParseAddr("10.99.0.10")},
		SoftwareVersion:  "sip88xx.14-2-1",
		PowerRequestedMW: 12900,
		TTL:              180 * time.Second,
	}
	if got := phone.Neighbor("swp2"); !reflect.DeepEqual(got, want) {
		t.Errorf("neighbor\n%+v\nwant\n%+v", got, want)
	}
	// Without name, model or PD power: the fallbacks.
	phone.SystemName, phone.Inventory.Model, phone.ExtendedPower.Type = "", "", PowerPSE
	got := phone.Neighbor("swp2")
	if got.DeviceID != "10.99.0.10" || got.Platform != phone.SystemDescription || got.PowerRequestedMW != 0 {
		t.Errorf("fallbacks: %+v", got)
	}
}
