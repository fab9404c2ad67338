package discovery

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/cdp"
	"github.com/phoneboot/phoneboot/userspace/internal/wiretest"
	"github.com/phoneboot/phoneboot/userspace/lldp"
	"github.com/phoneboot/phoneboot/userspace/neighbor"
	"github.com/phoneboot/phoneboot/userspace/privtest"
)

// TestLldpdListsUs runs the service on a port whose far end is lldpd,
// speaking CDP and LLDP (-cccc), set up as an LLDP-MED phone, without its
// default filter that keeps one protocol per neighbour: lldpd must
// list us on both protocols with our port and the voice VLAN, and we must
// list lldpd in the neighbour table.
func TestLldpdListsUs(t *testing.T) {
	peer := wiretest.NewPeer(t, "swp1", "eth0", "")
	table := neighbor.NewTable(nil, 0)
	cfg := Config{
		Ports: []PortConfig{{
			Name: "swp1",
			CDP:  &cdp.PortConfig{DeviceID: "phoneboot-test", PortID: "swp1", Platform: "phoneboot", SoftwareVersion: "test", NativeVLAN: 1, VoiceVLAN: 100},
			LLDP: &lldp.PortConfig{ChassisMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, PortName: "swp1", SystemName: "phoneboot-test",
				Policies: []lldp.NetworkPolicy{lldp.VoicePolicy(100)}},
		}},
		Interval:  time.Second,
		Neighbors: table,
	}
	var s *Service
	if err := peer.Near.Do(func() (err error) { s, err = New(cfg, privtest.Logger(t)); return err }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; s.Close() })

	lldpd := peer.StartLldpd(t, `configure lldp tx-interval 1
configure system hostname SEP001B54ABCDEF
configure med policy application voice tagged vlan 100 priority voice dscp 46
`, "-cccc", "-M", "3", "-H", "0") // -H 0: list every protocol a neighbour speaks

	check := func(t *testing.T, what, got, want string) {
		t.Helper()
		if got != want {
			t.Errorf("%s: lldpd has %q, we sent %q", what, got, want)
		}
	}
	t.Run("LLDP", func(t *testing.T) {
		n := lldpd.WaitNeighbor(t, "LLDP", 20*time.Second, func(wiretest.LldpdNeighbor) bool { return true })
		if len(n.Chassis) != 1 || len(n.Port) != 1 || len(n.MED) != 1 || len(n.MED[0].Policy) != 1 {
			t.Fatalf("neighbour %+v", n)
		}
		check(t, "system name", wiretest.First(n.Chassis[0].Name), "phoneboot-test")
		check(t, "port", n.Port[0].ID[0].Type+" "+n.Port[0].ID[0].Value, "ifname swp1")
		pol := n.MED[0].Policy[0]
		check(t, "policy", pol.AppType, "Voice")
		if len(pol.VLAN) != 1 {
			t.Fatalf("policy without VLAN: %+v", pol)
		}
		check(t, "voice VLAN", pol.VLAN[0].VID, "100")
		check(t, "priority", wiretest.First(pol.PCP), "5")
		check(t, "DSCP", wiretest.First(pol.DSCP), "46")
	})
	t.Run("CDP", func(t *testing.T) {
		n := lldpd.WaitNeighbor(t, "CDPv2", 20*time.Second, func(wiretest.LldpdNeighbor) bool { return true })
		if len(n.Chassis) != 1 || len(n.Port) != 1 {
			t.Fatalf("neighbour %+v", n)
		}
		check(t, "name", wiretest.First(n.Chassis[0].Name), "phoneboot-test")
		check(t, "port", n.Port[0].ID[0].Type+" "+n.Port[0].ID[0].Value, "ifname swp1")
		if len(n.VLAN) != 1 || n.VLAN[0].ID != "1" {
			t.Errorf("native VLAN: lldpd has %+v, we sent 1", n.VLAN)
		}
	})
	t.Run("we list lldpd", func(t *testing.T) {
		deadline := time.Now().Add(10 * time.Second)
		for {
			for _, n := range table.Port("swp1") {
				if n.DeviceID == "SEP001B54ABCDEF" {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("lldpd not in the neighbour table: %+v", table.List())
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}
