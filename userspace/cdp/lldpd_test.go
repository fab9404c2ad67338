package cdp

import (
	"encoding/binary"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/internal/wiretest"
)

// lldpdPhone configures lldpd as a powered device with CDP names like a
// phone's. The lengths are chosen so that lldpd's CDP PDU has an odd
// length: Device ID 19 bytes, Addresses 17, Port ID ("eth0") 8,
// Capabilities 8, Software Version 26, Platform 23, Power Consumption 6
// and Power Requested 12, after the 4-byte header: 123.
const lldpdPhone = `configure lldp tx-interval 1
configure system hostname SEP001B54ABCDEF
configure system description "Cisco IP Phone CP-8845"
configure system platform "Cisco IP Phone 8845"
configure dot3 power pd supported enabled powerpairs signal class class-2 type 2 source pse priority low requested 12900 allocated 12900
`

// TestLldpd puts lldpd (CDPv2 enabled: -cccc, so it speaks CDP once it
// hears a CDP neighbour), in a namespace of its own, on the other end of
// a veth pair from our encoder. lldpd must list our port with what we
// advertise; it must then answer in CDPv2, and our decoder must read that
// frame, odd length and all, with its checksum right and the values tshark
// reads from it.
func TestLldpd(t *testing.T) {
	peer := wiretest.NewPeer(t, "swp1", "eth0", "10.99.0.2/24")
	conn := peer.Listen(t, Filter())
	cfg := testPortConfig()
	cfg.MAC = conn.HardwareAddr()
	port, err := NewPort(cfg)
	if err != nil {
		t.Fatal(err)
	}
	adv, err := port.Advertisement().AppendFrame(nil)
	if err != nil {
		t.Fatal(err)
	}
	lldpd := peer.StartLldpd(t, lldpdPhone, "-cccc")
	wiretest.Repeat(t, conn, 500*time.Millisecond, adv)

	t.Run("lldpd reads ours", func(t *testing.T) {
		n := lldpd.WaitNeighbor(t, "CDPv2", 20*time.Second, func(wiretest.LldpdNeighbor) bool { return true })
		if n.Interface != "eth0" || len(n.Chassis) != 1 || len(n.Port) != 1 {
			t.Fatalf("neighbour %+v", n)
		}
		c, p := n.Chassis[0], n.Port[0]
		check := func(what, got, want string) {
			t.Helper()
			if got != want {
				t.Errorf("%s: lldpd has %q, we sent %q", what, got, want)
			}
		}
		// lldpd maps CDP onto its LLDP model: Device ID to a locally
		// assigned chassis ID and the name, Platform and Software Version
		// to the description, Switch to Bridge.
		check("chassis ID", c.ID[0].Type+" "+c.ID[0].Value, "local "+cfg.DeviceID)
		check("name", wiretest.First(c.Name), cfg.DeviceID)
		check("description", wiretest.First(c.Descr), cfg.Platform+" running on\n"+cfg.SoftwareVersion)
		check("address", wiretest.First(c.MgmtIP), cfg.Addresses[0].String())
		check("port ID", p.ID[0].Type+" "+p.ID[0].Value, "ifname "+cfg.PortID)
		check("TTL", wiretest.First(p.TTL), "180")
		var caps []string
		for _, cp := range c.Capability {
			if cp.Enabled {
				caps = append(caps, cp.Type)
			}
		}
		check("enabled capabilities", strings.Join(caps, ","), "Bridge")
		if len(n.VLAN) != 1 || n.VLAN[0].ID != "10" || !n.VLAN[0].PVID {
			t.Errorf("native VLAN: lldpd has %+v, we sent 10", n.VLAN)
		}
	})

	t.Run("we read lldpd's", func(t *testing.T) {
		f := wiretest.NextFrom(t, conn, peer.FarMAC, 10*time.Second, func([]byte) bool { return true })
		m, err := Decode(f)
		if err != nil {
			t.Fatalf("%v\n% x", err, f)
		}
		pduLen := int(binary.BigEndian.Uint16(f[12:])) - snapLen
		if pduLen%2 != 1 {
			t.Errorf("lldpd's PDU has %d bytes: the odd-length checksum went untested", pduLen)
		}
		t.Logf("lldpd's PDU: %d bytes, last %#02x", pduLen, f[ethHeaderLen+snapLen+pduLen-1])
		want := &Message{
			Source: peer.FarMAC, Version: 2, TTL: 4,
			DeviceID:        "SEP001B54ABCDEF",
			Addresses:       []netip.Addr{netip.MustParseAddr("10.99.0.2")},
			PortID:          "eth0",
			Capabilities:    m.Capabilities,
			SoftwareVersion: "Cisco IP Phone CP-8845",
			Platform:        "Cisco IP Phone 8845",
			// lldpd's own figures, checked against tshark below.
			PowerConsumption: m.PowerConsumption,
			PowerRequested:   m.PowerRequested,
		}
		if !reflect.DeepEqual(m, want) {
			t.Errorf("decoded\n%+v\nwant\n%+v", m, want)
		}
		if m.PowerConsumption == 0 || m.PowerRequested == nil || len(m.PowerRequested.MilliWatts) != 1 {
			t.Errorf("power consumption %d, requested %+v", m.PowerConsumption, m.PowerRequested)
		}

		got := wiretest.Tshark(t, [][]byte{f}, tsharkFields...)[0]
		if p := got.Problems(); len(p) > 0 {
			t.Errorf("tshark: %q", p)
		}
		expected := expectedFields(m)
		for _, field := range tsharkFields {
			if !reflect.DeepEqual(got[field], expected[field]) {
				t.Errorf("%s: tshark %q, we %q", field, got[field], expected[field])
			}
		}

		// lldpd's power request calls for an answer.
		if !port.Receive(m) {
			t.Error("lldpd's power request got no immediate answer")
		}
		if pa := port.Advertisement().PowerAvailable; pa.RequestID != m.PowerRequested.RequestID {
			t.Errorf("Power Available echoes request %d, lldpd sent %d", pa.RequestID, m.PowerRequested.RequestID)
		}
	})
}
