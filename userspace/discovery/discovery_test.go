package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/phoneboot/phoneboot/userspace/cdp"
	"github.com/phoneboot/phoneboot/userspace/lldp"
	"github.com/phoneboot/phoneboot/userspace/neighbor"
	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/rawsock"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

const wait = 5 * time.Second

// phoneSide is the phone's end of the port: raw sockets for both protocols.
type phoneSide struct {
	ns        *vnet.NS
	cdp, lldp *rawsock.Conn
	mac       net.HardwareAddr
}

func newPhoneSide(t *testing.T, ns *vnet.NS) *phoneSide {
	t.Helper()
	ph := &phoneSide{ns: ns}
	err := ns.Do(func() (err error) {
		if ph.cdp, err = rawsock.Listen("eth0", rawsock.Options{Filter: cdp.Filter()}); err != nil {
			return err
		}
		ph.lldp, err = rawsock.Listen("eth0", rawsock.Options{Filter: lldp.Filter()})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ph.cdp.Close(); ph.lldp.Close() })
	ph.mac = ph.cdp.HardwareAddr()
	return ph
}

// next reads the next frame of one protocol within wait.
func next[M any](t *testing.T, c *rawsock.Conn, decode func([]byte) (*M, error)) *M {
	t.Helper()
	buf := make([]byte, 9216)
	if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	f, err := c.Read(buf)
	if errors.Is(err, syscall.ENETDOWN) {
		// A packet socket reports its link going down once; read on.
		f, err = c.Read(buf)
	}
	if err != nil {
		t.Fatalf("no frame within %s: %v", wait, err)
	}
	m, err := decode(f.Data)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return m
}

// quiet checks that no frame arrives for d.
func quiet(t *testing.T, c *rawsock.Conn, d time.Duration) {
	t.Helper()
	buf := make([]byte, 9216)
	c.SetReadDeadline(time.Now().Add(d))
	if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a frame arrived (or %v) when none should", err)
	}
}

func TestServiceOnAPort(t *testing.T) {
	app, phoneNS := privtest.VethPair(t, "swp1", "eth0")
	if err := phoneNS.SetUp("eth0"); err != nil {
		t.Fatal(err)
	}
	ph := newPhoneSide(t, phoneNS)
	table := neighbor.NewTable(nil, 0)
	heard := make(chan neighbor.Neighbor, 16)
	cfg := Config{
		Ports: []PortConfig{{
			Name: "swp1",
			CDP:  &cdp.PortConfig{DeviceID: "phoneboot", PortID: "swp1", Platform: "phoneboot", NativeVLAN: 1, VoiceVLAN: 100, PoE: true, PowerAvailableMW: 15400},
			LLDP: &lldp.PortConfig{ChassisMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, PortName: "swp1", SystemName: "phoneboot", Policies: []lldp.NetworkPolicy{lldp.VoicePolicy(100)}},
		}},
		// Long: every advertisement this test sees is one the service
		// sends at once, not a periodic one.
		Interval:   time.Hour,
		Neighbors:  table,
		OnNeighbor: func(n neighbor.Neighbor) { heard <- n },
	}
	var s *Service
	if err := app.Do(func() (err error) { s, err = New(cfg, privtest.Logger(t)); return err }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; s.Close() })

	// At start, with the link up, the port advertises on both protocols.
	first := next(t, ph.cdp, cdp.Decode)
	if first.VoIPVLANReply == nil || first.VoIPVLANReply.VLAN != 100 || first.NativeVLAN != 1 {
		t.Errorf("start advertisement: voice %+v native %v, want voice VLAN 100 native 1", first.VoIPVLANReply, first.NativeVLAN)
	}
	if m := next(t, ph.lldp, lldp.Decode); func() bool { p, ok := m.Policy(lldp.AppVoice); return !ok || p.VLAN != 100 }() {
		t.Errorf("start LLDP advertisement has no voice policy for VLAN 100: %+v", m.NetworkPolicies)
	}

	// A phone asks for its voice VLAN: the answer comes at once.
	query := cdp.PhoneAdvertisement(cdp.PhoneConfig{
		MAC: ph.mac, DeviceID: "SEP" + macHex(ph.mac), PortID: "Port 1", Platform: "Cisco IP Phone 8845",
		Addresses: []netip.Addr{netip.MustParseAddr("10.100.0.50")}, PowerConsumptionMW: 6300,
	})
	frame, err := query.AppendFrame(nil)
	if err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	if err := ph.cdp.Write(frame); err != nil {
		t.Fatal(err)
	}
	reply := next(t, ph.cdp, cdp.Decode)
	if reply.VoIPVLANReply == nil || reply.VoIPVLANReply.VLAN != 100 {
		t.Errorf("reply to the query: %+v, want voice VLAN 100", reply.VoIPVLANReply)
	}
	t.Logf("VoIP VLAN Query answered in %s", time.Since(sent))
	n := <-heard
	if n.Protocol != neighbor.CDP || n.DeviceID != "SEP"+macHex(ph.mac) || !n.VoiceVLANQuery || n.LocalPort != "swp1" {
		t.Errorf("neighbour heard: %+v", n)
	}
	if l := table.Port("swp1"); len(l) != 1 || l[0].Platform != "Cisco IP Phone 8845" {
		t.Errorf("table: %+v", l)
	}
	// An advertisement without a query or power request gets no answer.
	plain := *query
	plain.VoIPVLANQuery = nil
	frame, _ = plain.AppendFrame(nil)
	if err := ph.cdp.Write(frame); err != nil {
		t.Fatal(err)
	}
	<-heard
	quiet(t, ph.cdp, 300*time.Millisecond)

	// The phone's LLDP-MED reaches the table too.
	lm := &lldp.Message{
		Source:    ph.mac,
		ChassisID: lldp.ChassisID{Subtype: lldp.ChassisMAC, ID: ph.mac},
		PortID:    lldp.PortID{Subtype: lldp.PortMAC, ID: ph.mac},
		TTL:       180, SystemName: "SEP" + macHex(ph.mac),
	}
	frame, err = lm.AppendFrame(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ph.lldp.Write(frame); err != nil {
		t.Fatal(err)
	}
	if n := <-heard; n.Protocol != neighbor.LLDP || n.DeviceID != "SEP"+macHex(ph.mac) {
		t.Errorf("LLDP neighbour: %+v", n)
	}

	// Link down and up again, as a phone that reboots: advertised at once.
	if err := phoneNS.SetDown("eth0"); err != nil {
		t.Fatal(err)
	}
	// The kernel reports carrier changes in batches (linkwatch); wait until
	// the port has seen its link go down, as it would for a rebooting phone.
	deadline := time.Now().Add(wait)
	for {
		l, err := app.Netlink().LinkByName("swp1")
		if err != nil {
			t.Fatal(err)
		}
		if l.Attrs().OperState != netlink.OperUp {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("swp1 never saw its link go down")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if err := phoneNS.SetUp("eth0"); err != nil {
		t.Fatal(err)
	}
	if m := next(t, ph.cdp, cdp.Decode); m.TTL == 0 {
		t.Errorf("link-up advertisement has TTL 0")
	}
	next(t, ph.lldp, lldp.Decode)

	// Stopping withdraws both.
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	done <- nil // for the cleanup
	if m := next(t, ph.cdp, cdp.Decode); m.TTL != 0 {
		t.Errorf("CDP at stop has TTL %d, want 0", m.TTL)
	}
	if m := next(t, ph.lldp, lldp.Decode); m.TTL != 0 {
		t.Errorf("LLDP at stop has TTL %d, want 0", m.TTL)
	}
	st := s.Stats()
	if st.CDPReceived != 2 || st.LLDPReceived != 1 || st.ImmediateReplies != 1 || st.SendErrors != 0 {
		t.Errorf("stats %+v", st)
	}
}

func macHex(m net.HardwareAddr) string {
	const hexd = "0123456789ABCDEF"
	b := make([]byte, 0, 12)
	for _, x := range m {
		b = append(b, hexd[x>>4], hexd[x&15])
	}
	return string(b)
}

func TestNewFailsAsAWhole(t *testing.T) {
	app, _ := privtest.VethPair(t, "swp1", "eth0")
	err := app.Do(func() error {
		_, err := New(Config{Ports: []PortConfig{{Name: "swp1"}, {Name: "nosuch0"}}, Neighbors: neighbor.NewTable(nil, 0)}, privtest.Logger(t))
		return err
	})
	if err == nil {
		t.Fatal("New with a missing port succeeded")
	}
	if _, err := New(Config{}, privtest.Logger(t)); err == nil {
		t.Error("New without a neighbour table succeeded")
	}
}

// TestPowerRequests: a phone's power request, over CDP and over LLDP-MED,
// is decided by Config.PowerRequest once per request, and the answer is
// advertised at once.
func TestPowerRequests(t *testing.T) {
	app, phoneNS := privtest.VethPair(t, "swp1", "eth0")
	if err := phoneNS.SetUp("eth0"); err != nil {
		t.Fatal(err)
	}
	ph := newPhoneSide(t, phoneNS)
	type ask struct {
		port   string
		levels []uint32
	}
	asked := make(chan ask, 16)
	cfg := Config{
		Ports: []PortConfig{{
			Name: "swp1",
			CDP:  &cdp.PortConfig{DeviceID: "phoneboot", PortID: "swp1", PoE: true, PowerAvailableMW: 15400},
			LLDP: &lldp.PortConfig{ChassisMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, PortName: "swp1", PoE: true, PowerAvailableMW: 15400},
		}},
		Interval:  time.Hour,
		Neighbors: neighbor.NewTable(nil, 0),
		// The budget grants the second level asked for, or the one level.
		PowerRequest: func(port string, levels []uint32) uint32 {
			asked <- ask{port, levels}
			return levels[len(levels)-1]
		},
	}
	var s *Service
	if err := app.Do(func() (err error) { s, err = New(cfg, privtest.Logger(t)); return err }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; s.Close() })
	next(t, ph.cdp, cdp.Decode)
	next(t, ph.lldp, lldp.Decode)

	req := &cdp.Message{Source: ph.mac, Version: cdp.Version, TTL: 180, DeviceID: "SEP" + macHex(ph.mac), PortID: "Port 1",
		PowerRequested: &cdp.PowerRequest{RequestID: 7, ManagementID: 1, MilliWatts: []uint32{25500, 12950}}}
	frame, err := req.AppendFrame(nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the same request twice: decided once, acknowledged once
		if err := ph.cdp.Write(frame); err != nil {
			t.Fatal(err)
		}
	}
	if a := <-asked; a.port != "swp1" || fmt.Sprint(a.levels) != "[25500 12950]" {
		t.Errorf("CDP request asked as %+v", a)
	}
	ans := next(t, ph.cdp, cdp.Decode)
	if pa := ans.PowerAvailable; pa == nil || pa.RequestID != 7 || pa.MilliWatts != 12950 {
		t.Errorf("Power Available %+v, want request 7 granted 12950 mW", ans.PowerAvailable)
	}
	quiet(t, ph.cdp, 300*time.Millisecond)

	lm := &lldp.Message{
		Source: ph.mac, ChassisID: lldp.ChassisID{Subtype: lldp.ChassisMAC, ID: ph.mac},
		PortID: lldp.PortID{Subtype: lldp.PortMAC, ID: ph.mac}, TTL: 180,
		ExtendedPower: &lldp.ExtendedPower{Type: lldp.PowerPD, Source: lldp.PowerSourcePSE, Priority: lldp.PriorityHigh, DeciWatts: 64},
	}
	if frame, err = lm.AppendFrame(nil); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := ph.lldp.Write(frame); err != nil {
			t.Fatal(err)
		}
	}
	if a := <-asked; fmt.Sprint(a.levels) != "[6400]" {
		t.Errorf("LLDP request asked as %+v", a)
	}
	if m := next(t, ph.lldp, lldp.Decode); m.ExtendedPower == nil || m.ExtendedPower.MilliWatts() != 6400 || m.ExtendedPower.Type != lldp.PowerPSE {
		t.Errorf("LLDP answer %+v, want a PSE offering 6.4 W", m.ExtendedPower)
	}
	quiet(t, ph.lldp, 300*time.Millisecond)
	select {
	case a := <-asked:
		t.Errorf("a repeated request was decided again: %+v", a)
	default:
	}
}

// TestLinkEventBurst: a burst of link changes larger than a default
// socket buffer, arriving while the service is not reading (as when many
// ports come up at once and it is busy advertising), does not end its
// link updates: a later link-up is still advertised at once.
func TestLinkEventBurst(t *testing.T) {
	app, phoneNS := privtest.VethPair(t, "swp1", "eth0")
	ph := newPhoneSide(t, phoneNS)
	cfg := Config{
		Ports:     []PortConfig{{Name: "swp1", CDP: &cdp.PortConfig{DeviceID: "phoneboot", PortID: "swp1", Platform: "phoneboot"}}},
		Interval:  time.Hour,
		Neighbors: neighbor.NewTable(nil, 0),
	}
	var s *Service
	if err := app.Do(func() (err error) { s, err = New(cfg, privtest.Logger(t)); return err }); err != nil {
		t.Fatal(err)
	}
	// About 600 messages of over a kilobyte each, with nobody reading.
	link, err := app.Netlink().LinkByName("swp1")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 600 {
		if err := app.Netlink().LinkSetMTU(link, 1400+i%2); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; s.Close() })
	if err := phoneNS.SetUp("eth0"); err != nil {
		t.Fatal(err)
	}
	next(t, ph.cdp, cdp.Decode) // the link-up advertisement
	select {
	case err := <-done:
		t.Fatalf("Run ended after the burst: %v", err)
	default:
	}
}
