package fastpath

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
)

// The VLAN policy's BPF_PROG_RUN tables: the XDP side (ingress) and the
// TC side (egress) of bpf/lib/vlan.h. Without a context BPF_PROG_RUN runs
// both as if on the loopback device, so the policy is written for ifindex 1.

const (
	testIfindex = 1
	tcActOK     = 0
	tcActShot   = 2
	xdpDrop     = 1

	vlanVoice  = 100
	vlanNative = 1
	vlanOther  = 200 // not on the port
)

// vlanPolicyCounters are reached by these tables, not by TestXDPClassify's.
var vlanPolicyCounters = []string{
	"vlan_hop_drop", "vlan_untagged", "vlan_auto_voice",
	"vlan_egress_tagged", "vlan_egress_priority", "vlan_egress_drop",
}

// checkReached fails unless some case of a table expects each counter, so
// a counter the program can no longer produce shows up.
func checkReached(t *testing.T, reached map[string]bool, names ...string) {
	for _, n := range names {
		if !reached[n] {
			t.Errorf("no case expects counter %s", n)
		}
	}
}

var (
	macOtherPC = [6]byte{0x00, 0x50, 0x56, 0x01, 0x02, 0x03} // not a phone OUI
	ipPhone    = [4]byte{10, 100, 0, 50}
	ipServer   = [4]byte{10, 100, 0, 1}
)

// testPolicy is a phone port: native VLAN 1, voice VLAN 100 at priority 5.
func testPolicy(autoVoice bool) PortVLANs {
	p := PortVLANs{Native: vlanNative, Tagged: []TaggedVLAN{{ID: vlanVoice, Priority: DefaultVoicePriority}}}
	if autoVoice {
		p.AutoVoice = vlanVoice
	}
	return p
}

func setPolicy(tb testing.TB, o *Objects, p *PortVLANs) {
	tb.Helper()
	v := o.VLAN()
	var err error
	if p == nil {
		err = v.DeletePort(testIfindex)
	} else {
		err = v.SetPort(testIfindex, *p)
	}
	if err != nil {
		tb.Fatalf("write VLAN policy: %v", err)
	}
}

// withTCI rewrites the outer tag's TCI (the builder writes VID only).
func withTCI(b []byte, vid uint16, pcp uint8) []byte {
	b = bytes.Clone(b)
	binary.BigEndian.PutUint16(b[14:16], uint16(pcp)<<13|vid)
	return b
}

// untag removes the outer tag, as the program's pop does.
func untag(b []byte) []byte {
	return append(bytes.Clone(b[:12]), b[16:]...)
}

// tftpFrame is a phone's UDP request to the appliance's TFTP server.
func tftpFrame(src [6]byte, tags ...vlanTag) frame {
	return frame{
		dst: macSwitch, src: src, tags: tags,
		ip:      &ipv4Hdr{proto: ipProtoUDP, src: ipPhone, dst: ipServer},
		udp:     &udpHdr{src: 50000, dst: 69},
		payload: []byte("\x00\x01SEP001B54123456.cnf.xml\x00octet\x00"),
	}
}

func station(tb testing.TB, o *Objects, mac [6]byte) (Station, bool) {
	tb.Helper()
	all, err := o.VLAN().Stations()
	if err != nil {
		tb.Fatal(err)
	}
	for _, s := range all {
		if s.Ifindex == testIfindex && bytes.Equal(s.MAC, mac[:]) {
			return s, true
		}
	}
	return Station{}, false
}

func clearStations(tb testing.TB, o *Objects) {
	tb.Helper()
	var k phonePortPbVlanStationKey
	var v phonePortPbVlanStation
	var keys []phonePortPbVlanStationKey
	it := o.objs.PbVlanStations.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		tb.Fatal(err)
	}
	for _, k := range keys {
		if err := o.objs.PbVlanStations.Delete(k); err != nil {
			tb.Fatal(err)
		}
	}
}

func TestVLANIngress(t *testing.T) {
	o := loadTestObjects(t)
	if err := o.VLAN().SetPhoneOUIs([][3]byte{{0x00, 0x1b, 0x54}}); err != nil {
		t.Fatal(err)
	}
	voice := vlanTag{tpid: tpid8021Q, vid: vlanVoice}
	prio := vlanTag{tpid: tpid8021Q, vid: 0}
	reached := map[string]bool{}
	defer checkReached(t, reached, "vlan_hop_drop", "vlan_untagged", "vlan_auto_voice")
	tftpVoice := withTCI(tftpFrame(macPhone, voice).bytes(), vlanVoice, 5)
	dhcpVoice := dhcpFrame(67, voice).bytes()
	dhcpUntagged := dhcpFrame(67).bytes()
	dhcpPushed := append(append(bytes.Clone(dhcpUntagged[:12]), 0x81, 0x00, 0xa0, vlanVoice), dhcpUntagged[12:]...)

	for _, c := range []struct {
		policy      *PortVLANs
		name        string
		in          []byte
		wantVerdict uint32
		wantOut     []byte
		counters    []string
		wantStation *Station // nil: the source MAC is not learned
	}{
		{
			name: "no policy: a tag the port would not carry passes as before",
			in:   tftpFrame(macPhone, vlanTag{tpid: tpid8021Q, vid: vlanOther}).bytes(), wantVerdict: xdpPass,
			counters: []string{"other", "vlan_tagged"},
		},
		{
			policy: ptr(testPolicy(false)),
			name:   "voice-tagged TFTP loses its tag for the stack",
			in:     tftpVoice, wantVerdict: xdpPass, wantOut: untag(tftpVoice),
			counters:    []string{"other", "vlan_tagged", "vlan_untagged"},
			wantStation: &Station{VLAN: vlanVoice, Mode: StationTagged},
		},
		{
			policy: ptr(testPolicy(false)),
			name:   "native-VLAN-tagged frame is accepted and untagged",
			in:     tftpFrame(macPhone, vlanTag{tpid: tpid8021Q, vid: vlanNative}).bytes(), wantVerdict: xdpPass,
			wantOut:     untag(tftpFrame(macPhone, vlanTag{tpid: tpid8021Q, vid: vlanNative}).bytes()),
			counters:    []string{"other", "vlan_tagged", "vlan_untagged"},
			wantStation: &Station{VLAN: vlanNative, Mode: StationTagged},
		},
		{
			policy: ptr(testPolicy(false)),
			name:   "priority-tagged frame is untagged and taken as untagged",
			in:     withTCI(tftpFrame(macPhone, prio).bytes(), 0, 5), wantVerdict: xdpPass,
			wantOut:     untag(tftpFrame(macPhone, prio).bytes()),
			counters:    []string{"other", "vlan_tagged", "vlan_untagged"},
			wantStation: &Station{Mode: StationUntagged},
		},
		{
			policy: ptr(testPolicy(false)),
			name:   "a VLAN the port does not carry is dropped",
			in:     tftpFrame(macPhone, vlanTag{tpid: tpid8021Q, vid: vlanOther}).bytes(), wantVerdict: xdpDrop,
			counters: []string{"other", "vlan_tagged", "vlan_hop_drop"},
		},
		{
			policy: ptr(testPolicy(false)),
			name:   "double tag (VLAN hopping) is dropped even with the voice VLAN inside",
			in:     tftpFrame(macPhone, vlanTag{tpid: tpid8021Q, vid: vlanVoice}, voice).bytes(), wantVerdict: xdpDrop,
			counters: []string{"other", "vlan_tagged", "vlan_double_tagged", "vlan_hop_drop"},
		},
		{
			policy: ptr(testPolicy(false)),
			name:   "voice-tagged DHCP keeps its tag, with the voice priority",
			in:     dhcpVoice, wantVerdict: xdpPass, wantOut: withTCI(dhcpVoice, vlanVoice, 5),
			counters:    []string{"dhcp", "vlan_tagged"},
			wantStation: &Station{VLAN: vlanVoice, Mode: StationTagged},
		},
		{
			policy: ptr(testPolicy(false)),
			name:   "voice-tagged CDP keeps its tag",
			in:     cdpFrame(voice).bytes(), wantVerdict: xdpPass,
			counters:    []string{"cdp", "vlan_tagged"},
			wantStation: &Station{VLAN: vlanVoice, Mode: StationTagged},
		},
		{
			policy: ptr(testPolicy(false)),
			name:   "untagged frame passes untouched",
			in:     tftpFrame(macPhone).bytes(), wantVerdict: xdpPass,
			counters:    []string{"other"},
			wantStation: &Station{Mode: StationUntagged},
		},
		{
			policy: ptr(testPolicy(true)),
			name:   "auto voice: a phone's untagged DHCP is tagged into the voice VLAN",
			in:     dhcpUntagged, wantVerdict: xdpPass, wantOut: dhcpPushed,
			counters:    []string{"dhcp", "vlan_auto_voice"},
			wantStation: &Station{VLAN: vlanVoice, Mode: StationPriority},
		},
		{
			policy: ptr(testPolicy(true)),
			name:   "auto voice: a phone's priority-tagged DHCP gets the voice VLAN",
			in:     withTCI(dhcpFrame(67, prio).bytes(), 0, 5), wantVerdict: xdpPass,
			wantOut:     withTCI(dhcpFrame(67, prio).bytes(), vlanVoice, 5),
			counters:    []string{"dhcp", "vlan_tagged", "vlan_auto_voice"},
			wantStation: &Station{VLAN: vlanVoice, Mode: StationPriority},
		},
		{
			policy: ptr(testPolicy(true)),
			name:   "auto voice: a phone's other traffic stays untagged for the stack",
			in:     tftpFrame(macPhone).bytes(), wantVerdict: xdpPass,
			counters:    []string{"other", "vlan_auto_voice"},
			wantStation: &Station{VLAN: vlanVoice, Mode: StationPriority},
		},
		{
			policy: ptr(testPolicy(true)),
			name:   "auto voice: a PC is left in the native VLAN",
			in:     with(dhcpFrame(67), func(f *frame) { f.src = macOtherPC }).bytes(), wantVerdict: xdpPass,
			counters: []string{"dhcp"},
		},
	} {
		for _, n := range c.counters {
			reached[n] = true
		}
		t.Run(c.name, func(t *testing.T) {
			setPolicy(t, o, c.policy)
			clearStations(t, o)
			want := c.wantOut
			if want == nil {
				want = c.in
			}
			progCase{name: c.name, in: c.in, wantVerdict: c.wantVerdict, wantOut: want, wantCounts: counts(c.counters...)}.check(t, o)
			src := [6]byte(c.in[6:12])
			got, ok := station(t, o, src)
			switch {
			case c.wantStation == nil && ok && c.policy != nil && src != macOtherPC:
				t.Errorf("station %v learned from a frame that was dropped", got)
			case c.wantStation != nil && !ok:
				t.Errorf("station %x not learned", src)
			case c.wantStation != nil && (got.VLAN != c.wantStation.VLAN || got.Mode != c.wantStation.Mode):
				t.Errorf("station learned as VLAN %d %s, want VLAN %d %s", got.VLAN, got.Mode, c.wantStation.VLAN, c.wantStation.Mode)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// runTC runs the egress program once and returns the verdict, the frame
// after it and the counters that moved.
func runTC(tb testing.TB, o *Objects, in []byte) runResult {
	tb.Helper()
	before, err := o.ReadCounters()
	if err != nil {
		tb.Fatal(err)
	}
	opts := &ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256)}
	verdict, err := o.EgressProgram().Run(opts)
	if err != nil {
		tb.Fatalf("BPF_PROG_RUN (tc): %v", err)
	}
	after, err := o.ReadCounters()
	if err != nil {
		tb.Fatal(err)
	}
	delta := make([]Counter, len(after))
	for i := range after {
		delta[i] = Counter{Name: after[i].Name, Packets: after[i].Packets - before[i].Packets, Bytes: after[i].Bytes - before[i].Bytes}
	}
	return runResult{verdict: verdict, out: opts.DataOut, delta: delta}
}

// replyFrame is a frame the appliance sends to the phone.
func replyFrame(dst [6]byte, ipDst [4]byte, tags ...vlanTag) frame {
	return frame{
		dst: dst, src: macSwitch, tags: tags,
		ip:      &ipv4Hdr{proto: ipProtoUDP, src: ipServer, dst: ipDst},
		udp:     &udpHdr{src: 69, dst: 50000},
		payload: []byte("\x00\x03\x00\x01<device/>"),
	}
}

// arpRequest is the appliance asking for tpa.
func arpRequest(tpa [4]byte) []byte {
	b := append(bytes.Clone(macBroadcast[:]), macSwitch[:]...)
	b = binary.BigEndian.AppendUint16(b, etherTypeARP)
	b = append(b, 0, 1, 8, 0, 6, 4, 0, 1)
	b = append(b, macSwitch[:]...)
	b = append(b, ipServer[:]...)
	b = append(b, make([]byte, 6)...)
	return append(b, tpa[:]...)
}

// dhcpBroadcastReply is the DHCP server's broadcast OFFER for macPhone.
func dhcpBroadcastReply(tags ...vlanTag) []byte {
	payload := bytes.Clone(dhcpDiscover)
	payload[0] = 2 // BOOTREPLY
	return frame{
		dst: macBroadcast, src: macSwitch, tags: tags,
		ip:      &ipv4Hdr{proto: ipProtoUDP, src: ipServer, dst: [4]byte{255, 255, 255, 255}},
		udp:     &udpHdr{src: 67, dst: 68},
		payload: payload,
	}.bytes()
}

func TestVLANEgress(t *testing.T) {
	o := loadTestObjects(t)
	v := o.VLAN()
	if err := v.SetSubnets(map[netip.Prefix]uint16{
		netip.MustParsePrefix("10.100.0.0/16"): vlanVoice,
		netip.MustParsePrefix("10.200.0.0/16"): vlanOther,
	}); err != nil {
		t.Fatal(err)
	}
	voice := vlanTag{tpid: tpid8021Q, vid: vlanVoice}
	reached := map[string]bool{}
	defer checkReached(t, reached, "vlan_egress_tagged", "vlan_egress_priority", "vlan_egress_drop")
	learn := func(t *testing.T, mac [6]byte, vlan uint16, mode phonePortPbVlanStationMode) {
		k := phonePortPbVlanStationKey{Ifindex: testIfindex, Mac: mac}
		if err := o.objs.PbVlanStations.Put(k, phonePortPbVlanStation{Vlan: vlan, Mode: uint8(mode)}); err != nil {
			t.Fatal(err)
		}
	}
	tagged := phonePortPbVlanStationModePB_STATION_TAGGED
	untagged := phonePortPbVlanStationModePB_STATION_UNTAGGED
	priority := phonePortPbVlanStationModePB_STATION_PRIORITY
	unknownMAC := [6]byte{0x00, 0x1b, 0x54, 0x99, 0x99, 0x99}

	for _, c := range []struct {
		name        string
		policy      *PortVLANs
		station     phonePortPbVlanStationMode // 0: macPhone not learned
		stationVLAN uint16
		in          []byte
		wantVerdict uint32
		wantOut     []byte // nil: unchanged (a pushed tag is in the skb, not the data)
		counters    []string
	}{
		{
			name: "no policy: untouched",
			in:   replyFrame(macPhone, ipPhone).bytes(), wantVerdict: tcActOK,
		},
		{
			name: "to a tagged station: tag pushed", policy: ptr(testPolicy(false)),
			station: tagged, stationVLAN: vlanVoice,
			in: replyFrame(macPhone, ipPhone).bytes(), wantVerdict: tcActOK,
			counters: []string{"vlan_egress_tagged"},
		},
		{
			name: "to an untagged station: untouched", policy: ptr(testPolicy(false)),
			station: untagged,
			in:      replyFrame(macPhone, ipPhone).bytes(), wantVerdict: tcActOK,
		},
		{
			name: "to an auto-voice phone: priority tag pushed", policy: ptr(testPolicy(true)),
			station: priority, stationVLAN: vlanVoice,
			in: replyFrame(macPhone, ipPhone).bytes(), wantVerdict: tcActOK,
			counters: []string{"vlan_egress_priority"},
		},
		{
			name: "unknown station in a voice subnet: tag pushed", policy: ptr(testPolicy(false)),
			in: replyFrame(unknownMAC, ipPhone).bytes(), wantVerdict: tcActOK,
			counters: []string{"vlan_egress_tagged"},
		},
		{
			name: "ARP request for a voice address: tag pushed", policy: ptr(testPolicy(false)),
			in: arpRequest(ipPhone), wantVerdict: tcActOK,
			counters: []string{"vlan_egress_tagged"},
		},
		{
			name: "unknown station outside the voice subnets: untouched", policy: ptr(testPolicy(false)),
			in: replyFrame(unknownMAC, [4]byte{192, 0, 2, 7}).bytes(), wantVerdict: tcActOK,
		},
		{
			name: "subnet of a VLAN the port does not carry: dropped", policy: ptr(testPolicy(false)),
			in: replyFrame(unknownMAC, [4]byte{10, 200, 0, 9}).bytes(), wantVerdict: tcActShot,
			counters: []string{"vlan_egress_drop"},
		},
		{
			name: "tagged by the DHCP server: the voice priority is set", policy: ptr(testPolicy(false)),
			in: dhcpBroadcastReply(voice), wantVerdict: tcActOK,
			wantOut: withTCI(dhcpBroadcastReply(voice), vlanVoice, 5),
		},
		{
			name: "tagged broadcast DHCP reply to an auto-voice phone: VID 0 by chaddr", policy: ptr(testPolicy(true)),
			station: priority, stationVLAN: vlanVoice,
			in: dhcpBroadcastReply(voice), wantVerdict: tcActOK,
			wantOut:  withTCI(dhcpBroadcastReply(voice), 0, 5),
			counters: []string{"vlan_egress_priority"},
		},
		{
			name: "tagged with a VLAN the port does not carry: dropped", policy: ptr(testPolicy(false)),
			in: dhcpBroadcastReply(vlanTag{tpid: tpid8021Q, vid: vlanOther}), wantVerdict: tcActShot,
			counters: []string{"vlan_egress_drop"},
		},
	} {
		for _, n := range c.counters {
			reached[n] = true
		}
		t.Run(c.name, func(t *testing.T) {
			setPolicy(t, o, c.policy)
			clearStations(t, o)
			if c.station != 0 {
				learn(t, macPhone, c.stationVLAN, c.station)
			}
			r := runTC(t, o, c.in)
			if r.verdict != c.wantVerdict {
				t.Errorf("verdict %d, want %d", r.verdict, c.wantVerdict)
			}
			want := c.wantOut
			if want == nil {
				want = c.in
			}
			if c.wantVerdict == tcActOK && !bytes.Equal(r.out, want) {
				t.Errorf("frame out differs\n got: % x\nwant: % x", r.out, want)
			}
			checkDelta(t, r.delta, counts(c.counters...), len(c.in))
		})
	}
}

func TestPortVLANsValidate(t *testing.T) {
	for _, c := range []struct {
		p  PortVLANs
		ok bool
	}{
		{testPolicy(true), true},
		{PortVLANs{Tagged: []TaggedVLAN{{ID: 0}}}, false},
		{PortVLANs{Tagged: []TaggedVLAN{{ID: 4095}}}, false},
		{PortVLANs{Tagged: []TaggedVLAN{{ID: 10, Priority: 8}}}, false},
		{PortVLANs{Native: 10, Tagged: []TaggedVLAN{{ID: 10}}}, false},
		{PortVLANs{Tagged: []TaggedVLAN{{ID: 10}, {ID: 10}}}, false},
		{PortVLANs{Tagged: []TaggedVLAN{{ID: 10}}, AutoVoice: 11}, false},
		{PortVLANs{Native: 4095}, false},
	} {
		if err := c.p.Validate(); (err == nil) != c.ok {
			t.Errorf("%+v: Validate() = %v, want ok=%v", c.p, err, c.ok)
		}
	}
}

// TestVLANTablesReplace checks that SetPort, SetSubnets and SetPhoneOUIs
// replace what pinned maps held from an earlier run.
func TestVLANTablesReplace(t *testing.T) {
	o := loadTestObjects(t)
	v := o.VLAN()
	if err := v.SetPort(7, PortVLANs{Tagged: []TaggedVLAN{{ID: 10}, {ID: 11}}}); err != nil {
		t.Fatal(err)
	}
	if err := v.SetPort(7, PortVLANs{Tagged: []TaggedVLAN{{ID: 11, Priority: 3}}}); err != nil {
		t.Fatal(err)
	}
	var got []uint16
	var k phonePortPbVlanMemberKey
	var m phonePortPbVlanMember
	it := o.objs.PbVlanMembers.Iterate()
	for it.Next(&k, &m) {
		if k.Ifindex == 7 {
			got = append(got, k.Vlan)
		}
	}
	if !slices.Equal(got, []uint16{11}) {
		t.Errorf("members after replace: %v, want [11]", got)
	}
	if err := v.DeletePort(7); err != nil {
		t.Fatal(err)
	}
	if n := countEntries(t, o.objs.PbVlanMembers) + countEntries(t, o.objs.PbVlanPorts); n != 0 {
		t.Errorf("%d entries left after DeletePort", n)
	}

	if err := v.SetSubnets(map[netip.Prefix]uint16{netip.MustParsePrefix("10.1.0.0/16"): 10}); err != nil {
		t.Fatal(err)
	}
	if err := v.SetSubnets(map[netip.Prefix]uint16{netip.MustParsePrefix("10.2.0.9/16"): 20}); err != nil {
		t.Fatal(err)
	}
	var sk phonePortPbVlanSubnetKey
	var sv phonePortPbVlanSubnet
	if err := o.objs.PbVlanSubnets.Lookup(subnetKey(netip.MustParsePrefix("10.2.0.0/16")), &sv); err != nil || sv.Vlan != 20 {
		t.Errorf("10.2.0.0/16: %v %+v", err, sv)
	}
	if n := countEntries(t, o.objs.PbVlanSubnets); n != 1 {
		t.Errorf("%d subnets, want 1 (%+v)", n, sk)
	}
	if err := v.SetSubnets(map[netip.Prefix]uint16{netip.MustParsePrefix("2001:db8::/32"): 20}); err == nil {
		t.Error("an IPv6 subnet was accepted")
	}

	if err := v.SetPhoneOUIs([][3]byte{{1, 2, 3}, {4, 5, 6}}); err != nil {
		t.Fatal(err)
	}
	if err := v.SetPhoneOUIs([][3]byte{{4, 5, 6}}); err != nil {
		t.Fatal(err)
	}
	if n := countEntries(t, o.objs.PbPhoneOuis); n != 1 {
		t.Errorf("%d OUIs, want 1", n)
	}
	mac := net.HardwareAddr{0, 0x1b, 0x54, 1, 2, 3}
	if err := v.SetPhoneMAC(mac); err != nil {
		t.Fatal(err)
	}
	if err := v.DeletePhoneMAC(mac); err != nil {
		t.Fatal(err)
	}
	if n := countEntries(t, o.objs.PbPhoneMacs); n != 0 {
		t.Errorf("%d phone MACs after delete", n)
	}
}

func countEntries(tb testing.TB, m *ebpf.Map) int {
	tb.Helper()
	n := 0
	it := m.Iterate()
	var k, v []byte
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		tb.Fatal(err)
	}
	return n
}
