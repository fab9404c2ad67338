package cdp

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/neighbor"
)

func testPortConfig() PortConfig {
	return PortConfig{
		MAC:              testMAC,
		DeviceID:         "phoneboot1",
		PortID:           "swp1",
		SoftwareVersion:  "phoneboot 1.0",
		Platform:         "phoneboot",
		Addresses:        []netip.Addr{netip.MustParseAddr("10.99.0.1")},
		NativeVLAN:       10,
		VoiceVLAN:        77,
		UntrustedCoS:     0,
		PoE:              true,
		PowerAvailableMW: 15400,
	}
}

func testPhone() PhoneConfig {
	return PhoneConfig{
		MAC:                phoneMAC,
		DeviceID:           "SEP001B54010203",
		PortID:             "Port 1",
		SoftwareVersion:    "SCCP41.9-4-2SR3-1S",
		Platform:           "Cisco IP Phone 7941",
		Addresses:          []netip.Addr{netip.MustParseAddr("10.99.0.10")},
		PowerConsumptionMW: 6300,
		PowerRequested:     &PowerRequest{RequestID: 1, ManagementID: 1, MilliWatts: []uint32{12000, 6300}},
	}
}

// overWire sends m through the codec, as the other end would see it.
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
		Source: testMAC, Version: 2, TTL: DefaultTTL,
		DeviceID: "phoneboot1", PortID: "swp1", SoftwareVersion: "phoneboot 1.0", Platform: "phoneboot",
		Addresses:     []netip.Addr{netip.MustParseAddr("10.99.0.1")},
		Capabilities:  CapSwitch,
		NativeVLAN:    10,
		Duplex:        ptr(FullDuplex),
		VoIPVLANReply: &ApplianceVLAN{ID: VoiceApplianceID, VLAN: 77},
		TrustBitmap:   ptr[uint8](0),
		UntrustedCoS:  ptr[uint8](0),
		PowerAvailable: &PowerAvailable{
			RequestID: 0, ManagementID: 1, MilliWatts: 15400, ManagementLevel: NoPreference,
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("advertisement\n%+v\nwant\n%+v", got, want)
	}
	if w := overWire(t, p.Withdrawal()); w.TTL != 0 || w.DeviceID != "phoneboot1" {
		t.Errorf("withdrawal: TTL %d, device %q", w.TTL, w.DeviceID)
	}

	// No voice VLAN: no reply, trust or CoS; no PoE: no power.
	cfg := testPortConfig()
	cfg.VoiceVLAN, cfg.PoE, cfg.HalfDuplex, cfg.TTL = 0, false, true, 120
	p, err = NewPort(cfg)
	if err != nil {
		t.Fatal(err)
	}
	got = overWire(t, p.Advertisement())
	if got.VoIPVLANReply != nil || got.TrustBitmap != nil || got.UntrustedCoS != nil || got.PowerAvailable != nil {
		t.Errorf("data-only port advertises %+v", got)
	}
	if *got.Duplex != HalfDuplex || got.TTL != 120 {
		t.Errorf("duplex %v, TTL %d", *got.Duplex, got.TTL)
	}
}

func TestNewPortRejects(t *testing.T) {
	for name, mod := range map[string]func(*PortConfig){
		"no MAC":          func(c *PortConfig) { c.MAC = nil },
		"no device ID":    func(c *PortConfig) { c.DeviceID = "" },
		"no port ID":      func(c *PortConfig) { c.PortID = "" },
		"native VLAN":     func(c *PortConfig) { c.NativeVLAN = 4095 },
		"voice VLAN":      func(c *PortConfig) { c.VoiceVLAN = 4095 },
		"CoS":             func(c *PortConfig) { c.UntrustedCoS = 8 },
		"too big a frame": func(c *PortConfig) { c.SoftwareVersion = strings.Repeat("v", 1500) },
	} {
		c := testPortConfig()
		mod(&c)
		if _, err := NewPort(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestBootExchange plays a phone booting on a port: its first frame asks
// for the voice VLAN and power, the port answers at once, and the answer
// carries the voice VLAN and acknowledges the request.
func TestBootExchange(t *testing.T) {
	p, err := NewPort(testPortConfig())
	if err != nil {
		t.Fatal(err)
	}
	phone := overWire(t, PhoneAdvertisement(testPhone()))
	if phone.VoIPVLANQuery == nil {
		t.Fatal("phone sent no VoIP VLAN Query")
	}
	if !p.Receive(phone) {
		t.Fatal("query and power request: no immediate reply")
	}
	reply := overWire(t, p.Advertisement())
	if reply.VoIPVLANReply == nil || reply.VoIPVLANReply.VLAN != 77 {
		t.Fatalf("reply has no voice VLAN 77: %+v", reply.VoIPVLANReply)
	}
	pa := reply.PowerAvailable
	if pa.RequestID != 1 || pa.ManagementID != 2 {
		t.Errorf("power available echoes request %d, management ID %d; want 1, 2", pa.RequestID, pa.ManagementID)
	}

	// The same request again changes nothing but is still a query.
	if !p.Receive(phone) {
		t.Error("a repeated query got no immediate reply")
	}
	if pa := p.Advertisement().PowerAvailable; pa.ManagementID != 2 {
		t.Errorf("repeated request moved the management ID to %d", pa.ManagementID)
	}

	// A new request without a query: reply, new management ID.
	phone.VoIPVLANQuery = nil
	phone.PowerRequested.RequestID = 2
	if !p.Receive(phone) {
		t.Error("new power request: no immediate reply")
	}
	if pa := p.Advertisement().PowerAvailable; pa.RequestID != 2 || pa.ManagementID != 3 {
		t.Errorf("after request 2: %+v", pa)
	}
	// Nothing new: nothing to say.
	if p.Receive(phone) {
		t.Error("nothing new, yet an immediate reply")
	}

	// The budget changes; the link goes down.
	if !p.SetPowerAvailable(7000) || p.SetPowerAvailable(7000) {
		t.Error("SetPowerAvailable does not report changes")
	}
	p.LinkDown()
	if pa := p.Advertisement().PowerAvailable; pa.RequestID != 0 || pa.ManagementID != 5 || pa.MilliWatts != 7000 {
		t.Errorf("after budget change and link down: %+v", pa)
	}
}

// TestPortWithoutVoiceVLAN: a query is answered at once, without a VoIP
// VLAN Reply, so the phone goes on untagged; a plain advertisement is not.
func TestPortWithoutVoiceVLAN(t *testing.T) {
	cfg := testPortConfig()
	cfg.VoiceVLAN, cfg.PoE = 0, false
	p, err := NewPort(cfg)
	if err != nil {
		t.Fatal(err)
	}
	phone := PhoneAdvertisement(testPhone())
	if !p.Receive(phone) {
		t.Error("a port without voice VLAN leaves a phone's query unanswered")
	}
	if r := overWire(t, p.Advertisement()); r.VoIPVLANReply != nil {
		t.Errorf("a port without voice VLAN hands out %+v", r.VoIPVLANReply)
	}
	phone.VoIPVLANQuery = nil
	if p.Receive(phone) {
		t.Error("a port without PoE answers a plain advertisement at once")
	}
}

func TestManagementIDSkipsZero(t *testing.T) {
	p, err := NewPort(testPortConfig())
	if err != nil {
		t.Fatal(err)
	}
	p.managementID = 0xffff
	p.LinkDown()
	if p.managementID != 1 {
		t.Errorf("management ID after 0xffff: %d, want 1", p.managementID)
	}
}

func TestNeighbor(t *testing.T) {
	m := overWire(t, PhoneAdvertisement(testPhone()))
	m.ManagementAddresses = []netip.Addr{netip.MustParseAddr("10.99.0.10"), netip.MustParseAddr("10.99.0.11")}
	got := m.Neighbor("swp3")
	want := neighbor.Neighbor{
		Protocol:         neighbor.CDP,
		LocalPort:        "swp3",
		MAC:              phoneMAC,
		DeviceID:         "SEP001B54010203",
		Platform:         "Cisco IP Phone 7941",
		PortID:           "Port 1",
		Addresses:        []netip.Addr{netip.MustParseAddr("10.99.0.10"), netip.MustParseAddr("10.99.0.11")},
		SoftwareVersion:  "SCCP41.9-4-2SR3-1S",
		PowerRequestedMW: 12000,
		VoiceVLANQuery:   true,
		TTL:              180 * time.Second,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("neighbor\n%+v\nwant\n%+v", got, want)
	}
}

func TestNewPowerRequest(t *testing.T) {
	cfg := testPortConfig()
	cfg.PoE = true
	p, err := NewPort(cfg)
	if err != nil {
		t.Fatal(err)
	}
	req := func(id uint16, mw ...uint32) *Message {
		return &Message{PowerRequested: &PowerRequest{RequestID: id, MilliWatts: mw}}
	}
	steps := []struct {
		name string
		m    *Message
		want bool
	}{
		{"no request", &Message{}, false},
		{"no levels", req(2), false},
		{"first request", req(3, 7000), true},
		{"the same, repeated", req(3, 7000), false},
		{"a new one", req(4, 9000), true},
	}
	for _, s := range steps {
		if got := p.NewPowerRequest(s.m); got != s.want {
			t.Errorf("%s: NewPowerRequest = %v, want %v", s.name, got, s.want)
		}
		p.Receive(s.m)
	}
	p.LinkDown()
	if !p.NewPowerRequest(req(4, 9000)) {
		t.Error("after link down the last request is new again")
	}
	cfg.PoE = false
	np, err := NewPort(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if np.NewPowerRequest(req(1, 7000)) {
		t.Error("a port without PoE takes power requests")
	}
}
