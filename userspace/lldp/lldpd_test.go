package lldp

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/internal/wiretest"
)

// lldpdPhone configures lldpd as an LLDP-MED phone (class III, with -M 3):
// the voice policy and the power it wants.
const lldpdPhone = `configure lldp tx-interval 1
configure system hostname SEP001B54ABCDEF
configure system description "Cisco IP Phone CP-8845"
configure med policy application voice tagged vlan 77 priority voice dscp 46
configure med power pd source pse priority low value 12900
`

// TestLldpd puts lldpd, in a namespace of its own, on the other end of a
// veth pair from our encoder. lldpd must list our port with the chassis,
// port, voice policy and power we advertise; our decoder must read
// lldpd's own LLDP-MED frames as lldpd says it sent them and as tshark
// reads them; and our shutdown LLDPDU must make lldpd drop us.
func TestLldpd(t *testing.T) {
	peer := wiretest.NewPeer(t, "swp1", "eth0", "")
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
	lldpd := peer.StartLldpd(t, lldpdPhone, "-M", "3")
	stop := wiretest.Repeat(t, conn, 500*time.Millisecond, adv)

	t.Run("lldpd reads ours", func(t *testing.T) {
		n := lldpd.WaitNeighbor(t, "LLDP", 20*time.Second, func(wiretest.LldpdNeighbor) bool { return true })
		if n.Interface != "eth0" || len(n.Chassis) != 1 || len(n.Port) != 1 || len(n.MED) != 1 {
			t.Fatalf("neighbour %+v", n)
		}
		c, p, med := n.Chassis[0], n.Port[0], n.MED[0]
		check := func(what, got, want string) {
			t.Helper()
			if got != want {
				t.Errorf("%s: lldpd has %q, we sent %q", what, got, want)
			}
		}
		check("chassis ID", c.ID[0].Type+" "+c.ID[0].Value, "mac "+chassisMAC.String())
		check("system name", wiretest.First(c.Name), cfg.SystemName)
		check("system description", wiretest.First(c.Descr), cfg.SystemDescription)
		check("management address", wiretest.First(c.MgmtIP), "10.99.0.1")
		check("port ID", p.ID[0].Type+" "+p.ID[0].Value, "ifname swp1")
		check("port description", wiretest.First(p.Descr), cfg.PortDescription)
		check("TTL", wiretest.First(p.TTL), "120")
		var caps []string
		for _, cp := range c.Capability {
			if cp.Enabled {
				caps = append(caps, cp.Type)
			}
		}
		check("enabled capabilities", strings.Join(caps, ","), "Bridge")
		check("MED device type", wiretest.First(med.DeviceType), "Network Connectivity Device")
		if len(med.Policy) != 1 {
			t.Fatalf("MED policies %+v, want the voice policy", med.Policy)
		}
		pol := med.Policy[0]
		check("policy application", pol.AppType, "Voice")
		if !pol.Defined || len(pol.VLAN) != 1 {
			t.Errorf("policy %+v: not defined or no VLAN", pol)
		} else {
			check("voice VLAN", pol.VLAN[0].VID, "77")
		}
		check("802.1p priority", wiretest.First(pol.PCP), "5")
		check("DSCP", wiretest.First(pol.DSCP), "46")
		if len(med.PoE) != 1 {
			t.Fatalf("MED power %+v", med.PoE)
		}
		poe := med.PoE[0]
		check("power device type", wiretest.First(poe.DeviceType), "PSE")
		check("power source", wiretest.First(poe.Source), "Primary Power Source")
		check("power priority", wiretest.First(poe.Priority), "high")
		check("power", wiretest.First(poe.Power), "15400")
	})

	t.Run("we read lldpd's", func(t *testing.T) {
		f := wiretest.NextFrom(t, conn, peer.FarMAC, 10*time.Second, func(f []byte) bool {
			m, err := Decode(f)
			return err == nil && m.TTL > 0
		})
		m, err := Decode(f)
		if err != nil {
			t.Fatal(err)
		}
		if m.ChassisID.Subtype != ChassisMAC || m.ChassisID.String() != peer.FarMAC.String() {
			t.Errorf("chassis ID %v %q, want the far end's MAC %s", m.ChassisID.Subtype, m.ChassisID, peer.FarMAC)
		}
		if m.PortID.String() != peer.FarMAC.String() || m.PortDescription != "eth0" {
			t.Errorf("port ID %q, description %q", m.PortID, m.PortDescription)
		}
		if m.TTL != 4 || m.SystemName != "SEP001B54ABCDEF" || m.SystemDescription != "Cisco IP Phone CP-8845" {
			t.Errorf("TTL %d, name %q, description %q", m.TTL, m.SystemName, m.SystemDescription)
		}
		if m.MED == nil || m.MED.Class != ClassEndpoint3 {
			t.Errorf("MED %+v, want class III", m.MED)
		}
		if v, ok := m.Policy(AppVoice); !ok || v != VoicePolicy(77) {
			t.Errorf("voice policy %+v, want %+v", v, VoicePolicy(77))
		}
		want := ExtendedPower{Type: PowerPD, Source: PowerSourcePSE, Priority: PriorityLow, DeciWatts: 129}
		if m.ExtendedPower == nil || *m.ExtendedPower != want {
			t.Errorf("extended power %+v, want %+v", m.ExtendedPower, want)
		}
		if m.Inventory.SoftwareRevision == "" {
			t.Error("no inventory software revision")
		}
		n := m.Neighbor("swp1")
		if n.DeviceID != "SEP001B54ABCDEF" || n.PowerRequestedMW != 12900 || n.TTL != 4*time.Second {
			t.Errorf("neighbour %+v", n)
		}

		// tshark reads the same values from the same frame. lldpd adds
		// IEEE 802.1 and 802.3 TLVs that Message leaves out, so the TLV
		// types are not compared, and orders its LLDP-MED TLVs otherwise
		// than we would re-encode them, so their subtypes are compared as
		// sets. tshark warns about one of the 802.3 TLVs (Link Aggregation
		// is deprecated).
		got := wiretest.Tshark(t, [][]byte{f}, tsharkFields...)[0]
		expected := expectedFields(m)
		slices.Sort(got["lldp.media.subtype"])
		slices.Sort(expected["lldp.media.subtype"])
		for _, field := range tsharkFields {
			if field == "lldp.tlv.type" {
				continue
			}
			if !reflect.DeepEqual(got[field], expected[field]) {
				t.Errorf("%s: tshark %q, we %q", field, got[field], expected[field])
			}
		}
		for _, p := range got.Problems() {
			if p != "TLV has been deprecated" {
				t.Errorf("tshark: %s", p)
			}
		}
	})

	t.Run("lldpd forgets us on shutdown", func(t *testing.T) {
		lldpd.WaitNeighbor(t, "LLDP", 5*time.Second, func(wiretest.LldpdNeighbor) bool { return true })
		stop()
		bye, err := port.Withdrawal().AppendFrame(nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := conn.Write(bye); err != nil {
			t.Fatal(err)
		}
		// Well before our 120 s TTL would run out.
		deadline := time.Now().Add(5 * time.Second)
		for {
			ns, raw := lldpd.Neighbors(t)
			if len(ns) == 0 && strings.Contains(raw, `"lldp"`) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("lldpd still lists us after the shutdown LLDPDU:\n%s", raw)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}
