package lldp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/net/bpf"
)

var (
	testMAC    = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	chassisMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x99}
)

func TestDecodeCaptures(t *testing.T) {
	m, err := Decode(nortel)
	if err != nil {
		t.Fatal(err)
	}
	want := &Message{
		Source:    net.HardwareAddr{0x00, 0x17, 0xd1, 0xa8, 0x35, 0xbe},
		ChassisID: ChassisID{Subtype: ChassisMAC, ID: []byte{0x00, 0x17, 0xd1, 0xa8, 0x35, 0xbf}},
		PortID:    PortID{Subtype: PortMAC, ID: []byte{0x00, 0x17, 0xd1, 0xa8, 0x36, 0x02}},
		TTL:       120,
	}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("Nortel: decoded\n%+v\nwant\n%+v", m, want)
	}
	if got := m.ChassisID.String(); got != "00:17:d1:a8:35:bf" {
		t.Errorf("chassis ID string %q", got)
	}

	m, err = Decode(lldpdMED)
	if err != nil {
		t.Fatal(err)
	}
	mac := net.HardwareAddr{0x00, 0x16, 0x17, 0x2f, 0xa1, 0xb6}
	want = &Message{
		Source:            mac,
		ChassisID:         ChassisID{Subtype: ChassisMAC, ID: mac},
		PortID:            PortID{Subtype: PortMAC, ID: mac},
		TTL:               120,
		SystemName:        "naruto.XXXXXXXXXXXXXXXXXXX",
		SystemDescription: "Linux 2.6.29-2-amd64 #1 SMP Sun May 17 17:15:47 UTC 2009 x86_64",
		Capabilities:      &SystemCapabilities{System: CapBridge | CapWLANAccessPoint | CapRouter, Enabled: CapBridge | CapRouter},
		ManagementAddresses: []ManagementAddress{{
			Addr: netip.MustParseAddr("10.238.80.75"), InterfaceSubtype: InterfaceIfIndex, Interface: 3,
		}},
		PortDescription: "eth0",
		MED:             &MED{Capabilities: 0, Class: ClassNotDefined},
		Inventory: Inventory{
			HardwareRevision: "ND991789702",
			FirmwareRevision: "080012 ",
			SoftwareRevision: "2.6.29-2-amd64",
			SerialNumber:     "105820850009",
			Manufacturer:     "NEC Computers SAS",
			Model:            "POWERMATE VL350",
			AssetID:          "100207120",
		},
	}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("lldpd: decoded\n%+v\nwant\n%+v", m, want)
	}
}

func TestIDString(t *testing.T) {
	for _, tc := range []struct {
		id   ChassisID
		want string
	}{
		{ChassisID{ChassisMAC, []byte{0, 0x1b, 0x54, 1, 2, 3}}, "00:1b:54:01:02:03"},
		{ChassisID{ChassisNetworkAddress, []byte{1, 10, 0, 0, 1}}, "10.0.0.1"},
		{ChassisID{ChassisNetworkAddress, append([]byte{2}, netip.MustParseAddr("2001:db8::1").AsSlice()...)}, "2001:db8::1"},
		{ChassisID{ChassisLocal, []byte("SEP001B54010203")}, "SEP001B54010203"},
		{ChassisID{ChassisMAC, []byte("short")}, "short"},
	} {
		if got := tc.id.String(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.id, got, tc.want)
		}
	}
	if got := (PortID{PortMAC, []byte{0, 0x1b, 0x54, 1, 2, 3}}).String(); got != "00:1b:54:01:02:03" {
		t.Errorf("port MAC: %q", got)
	}
}

func TestAppendFrameLayout(t *testing.T) {
	m := &Message{Source: testMAC, ChassisID: ChassisID{ChassisLocal, []byte("c")}, PortID: PortID{PortLocal, []byte("p")}, TTL: 120}
	f, err := m.AppendFrame([]byte("keep"))
	if err != nil {
		t.Fatal(err)
	}
	if string(f[:4]) != "keep" {
		t.Fatal("AppendFrame overwrote what was in the buffer")
	}
	f = f[4:]
	want := []byte{
		0x01, 0x80, 0xc2, 0, 0, 0x0e, 2, 0, 0, 0, 0, 1, 0x88, 0xcc,
		0x02, 0x02, 7, 'c', // Chassis ID: type 1, length 2
		0x04, 0x02, 7, 'p', // Port ID
		0x06, 0x02, 0, 120, // TTL
		0, 0, // End
	}
	if !bytes.Equal(f[:len(want)], want) || len(f) != minFrame || !bytes.Equal(f[len(want):], make([]byte, minFrame-len(want))) {
		t.Errorf("frame\n% x\nwant\n% x and zero padding to %d", f, want, minFrame)
	}
}

func TestAppendFrameRejects(t *testing.T) {
	base := func() *Message {
		return &Message{Source: testMAC, ChassisID: ChassisID{ChassisLocal, []byte("c")}, PortID: PortID{PortLocal, []byte("p")}}
	}
	for name, mod := range map[string]func(*Message){
		"no source":      func(m *Message) { m.Source = nil },
		"no chassis ID":  func(m *Message) { m.ChassisID.ID = nil },
		"long port ID":   func(m *Message) { m.PortID.ID = make([]byte, 256) },
		"long name":      func(m *Message) { m.SystemName = strings.Repeat("n", 512) },
		"long inventory": func(m *Message) { m.Inventory.Model = strings.Repeat("n", 508) },
		"too big": func(m *Message) {
			m.SystemName, m.SystemDescription, m.PortDescription = strings.Repeat("n", 500), strings.Repeat("d", 500), strings.Repeat("p", 500)
		},
		"scoped address": func(m *Message) {
			m.ManagementAddresses = []ManagementAddress{{Addr: netip.MustParseAddr("fe80::1%eth0")}}
		},
		"no address": func(m *Message) { m.ManagementAddresses = []ManagementAddress{{}} },
		"long OID": func(m *Message) {
			m.ManagementAddresses = []ManagementAddress{{Addr: netip.MustParseAddr("10.0.0.1"), OID: make([]byte, 129)}}
		},
		"VLAN 4096":      func(m *Message) { m.NetworkPolicies = []NetworkPolicy{{VLAN: 4096}} },
		"priority 8":     func(m *Message) { m.NetworkPolicies = []NetworkPolicy{{Priority: 8}} },
		"DSCP 64":        func(m *Message) { m.NetworkPolicies = []NetworkPolicy{{DSCP: 64}} },
		"power type 4":   func(m *Message) { m.ExtendedPower = &ExtendedPower{Type: 4} },
		"power source 4": func(m *Message) { m.ExtendedPower = &ExtendedPower{Source: 4} },
		"power priority": func(m *Message) { m.ExtendedPower = &ExtendedPower{Priority: 16} },
	} {
		t.Run(name, func(t *testing.T) {
			m := base()
			mod(m)
			buf := []byte("keep")
			out, err := m.AppendFrame(buf)
			if err == nil {
				t.Fatal("no error")
			}
			if !bytes.Equal(out, buf) {
				t.Errorf("buffer changed to %q", out)
			}
		})
	}
}

// frame builds an LLDP frame from raw TLVs, for frames AppendFrame would
// never make.
func frame(tlvs ...[]byte) []byte {
	f := append(append(bytes.Clone(MulticastAddr), testMAC...), 0x88, 0xcc)
	for _, t := range tlvs {
		f = append(f, t...)
	}
	return f
}

func tlv(t tlvType, v ...byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(t)<<9|uint16(len(v))), v...)
}

func tia(subtype byte, v ...byte) []byte {
	return tlv(tlvOrgSpecific, append([]byte{0x00, 0x12, 0xbb, subtype}, v...)...)
}

var (
	chassis = tlv(tlvChassisID, 7, 'c')
	port    = tlv(tlvPortID, 7, 'p')
	ttl     = tlv(tlvTTL, 0, 120)
	end     = tlv(tlvEnd)
)

func TestDecodeRejects(t *testing.T) {
	mgmt := func(v ...byte) []byte { return tlv(tlvManagementAddress, v...) }
	for _, tc := range []struct {
		name  string
		frame []byte
		want  error
	}{
		{"short", frame()[:13], ErrNotLLDP},
		{"IPv4", append(append(bytes.Clone(MulticastAddr), testMAC...), 0x08, 0x00), ErrNotLLDP},
		{"empty", frame(), ErrMalformed},
		{"only chassis", frame(chassis), ErrMalformed},
		{"port first", frame(port, chassis, ttl, end), ErrMalformed},
		{"no TTL", frame(chassis, port, end), ErrMalformed},
		{"second chassis", frame(chassis, port, ttl, chassis, end), ErrMalformed},
		{"second TTL", frame(chassis, port, ttl, ttl, end), ErrMalformed},
		{"chassis ID empty", frame(tlv(tlvChassisID, 7), port, ttl, end), ErrMalformed},
		{"chassis ID of 256", frame(tlv(tlvChassisID, append([]byte{7}, make([]byte, 256)...)...), port, ttl, end), ErrMalformed},
		{"TTL of 3 bytes", frame(chassis, port, tlv(tlvTTL, 0, 0, 120), end), ErrMalformed},
		{"TLV past the end", frame(chassis, port, ttl, []byte{0x0a, 0x10, 'x'}), ErrMalformed},
		{"half a header", frame(chassis, port, ttl, []byte{0x0a}), ErrMalformed},
		{"End with a length", frame(chassis, port, ttl, tlv(tlvEnd, 0)), ErrMalformed},
		{"capabilities of 2", frame(chassis, port, ttl, tlv(tlvSystemCapabilities, 0, 4), end), ErrMalformed},
		{"management empty", frame(chassis, port, ttl, mgmt(), end), ErrMalformed},
		{"management string of 1", frame(chassis, port, ttl, mgmt(1, 1, 2, 0, 0, 0, 0, 0), end), ErrMalformed},
		{"management address truncated", frame(chassis, port, ttl, mgmt(5, 1, 10, 0), end), ErrMalformed},
		{"management OID past the end", frame(chassis, port, ttl, mgmt(5, 1, 10, 0, 0, 1, 2, 0, 0, 0, 0, 4, 0x2b), end), ErrMalformed},
		{"management trailing bytes", frame(chassis, port, ttl, mgmt(5, 1, 10, 0, 0, 1, 2, 0, 0, 0, 0, 0, 9), end), ErrMalformed},
		{"org TLV of 3", frame(chassis, port, ttl, tlv(tlvOrgSpecific, 0, 0x12, 0xbb), end), ErrMalformed},
		{"MED capabilities of 2", frame(chassis, port, ttl, tia(medCapabilities, 0, 0x33), end), ErrMalformed},
		{"policy of 3", frame(chassis, port, ttl, tia(medNetworkPolicy, 1, 0x40, 0x9b), end), ErrMalformed},
		{"power of 4", frame(chassis, port, ttl, tia(medExtendedPower, 0x12, 0, 0x9a, 0), end), ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Decode(tc.frame)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if m != nil {
				t.Errorf("message %+v returned with %v", m, err)
			}
		})
	}
}

// TestDecodeLenient covers what Decode accepts although it is unusual.
func TestDecodeLenient(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
		check func(*Message) bool
	}{
		{"no End (802.1AB-2016)", frame(chassis, port, ttl), func(m *Message) bool { return m.TTL == 120 }},
		{"junk after End", frame(chassis, port, ttl, end, []byte{1, 2, 3}), func(m *Message) bool { return true }},
		{"reserved type", frame(chassis, port, ttl, tlv(9, 1, 2, 3), end), func(m *Message) bool { return true }},
		{"other OUI", frame(chassis, port, ttl, tlv(tlvOrgSpecific, 0x00, 0x80, 0xc2, 1, 0, 10), end), func(m *Message) bool { return true }},
		{"MED location", frame(chassis, port, ttl, tia(3, 3, 'x'), end), func(m *Message) bool { return true }},
		{"non-IP management address", frame(chassis, port, ttl, tlv(tlvManagementAddress, 7, 6, 2, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0), end),
			func(m *Message) bool { return m.ManagementAddresses == nil }},
		{"two policies", frame(chassis, port, ttl, tia(medNetworkPolicy, 1, 0x40, 0x9b, 0x6e), tia(medNetworkPolicy, 2, 0x40, 0x9b, 0x5a), end),
			func(m *Message) bool {
				v, ok := m.Policy(AppVoiceSignaling)
				return len(m.NetworkPolicies) == 2 && ok && v.VLAN == 77 && v.Priority == 5 && v.DSCP == 26 && v.Tagged
			}},
		{"repeated name", frame(chassis, port, ttl, tlv(tlvSystemName, 'a'), tlv(tlvSystemName, 'b'), end), func(m *Message) bool { return m.SystemName == "b" }},
	} {
		m, err := Decode(tc.frame)
		if err != nil || !tc.check(m) {
			t.Errorf("%s: %+v, %v", tc.name, m, err)
		}
	}
}

func TestNetworkPolicyBits(t *testing.T) {
	// Voice, tagged, VLAN 77, priority 5, DSCP 46, worked by hand:
	// 0x01, then 0 1 0 | 0000 0100 1101 | 101 | 101110.
	m := &Message{Source: testMAC, ChassisID: ChassisID{ChassisLocal, []byte("c")}, PortID: PortID{PortLocal, []byte("p")},
		NetworkPolicies: []NetworkPolicy{VoicePolicy(77)}}
	f, err := m.AppendFrame(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0xfe, 0x08, 0x00, 0x12, 0xbb, 0x02, 0x01, 0x40, 0x9b, 0x6e}
	if !bytes.Contains(f, want) {
		t.Errorf("frame % x lacks the policy % x", f, want)
	}
}

func randomMessage(r *rand.Rand) *Message {
	some := func() bool { return r.IntN(4) != 0 }
	bs := func(min, max int) []byte {
		b := make([]byte, min+r.IntN(max-min+1))
		for i := range b {
			b[i] = byte(r.UintN(256))
		}
		return b
	}
	str := func() string { return string(bs(1, 24)) }
	m := &Message{
		Source:    net.HardwareAddr{0x02, byte(r.UintN(256)), 0, 0, 0, byte(r.UintN(256))},
		ChassisID: ChassisID{Subtype: ChassisIDSubtype(r.UintN(256)), ID: bs(1, 40)},
		PortID:    PortID{Subtype: PortIDSubtype(r.UintN(256)), ID: bs(1, 40)},
		TTL:       uint16(r.UintN(1 << 16)),
	}
	if some() {
		m.PortDescription = str()
	}
	if some() {
		m.SystemName = str()
	}
	if some() {
		m.SystemDescription = str()
	}
	if some() {
		m.Capabilities = &SystemCapabilities{Capabilities(r.UintN(1 << 16)), Capabilities(r.UintN(1 << 16))}
	}
	for range r.IntN(3) {
		ma := ManagementAddress{InterfaceSubtype: uint8(r.UintN(256)), Interface: r.Uint32()}
		if r.IntN(2) == 0 {
			ma.Addr = netip.AddrFrom4([4]byte(bs(4, 4)))
		} else {
			ma.Addr = netip.AddrFrom16([16]byte(bs(16, 16)))
		}
		if some() {
			ma.OID = bs(1, 20)
		}
		m.ManagementAddresses = append(m.ManagementAddresses, ma)
	}
	if some() {
		m.MED = &MED{MEDCapabilities(r.UintN(1 << 16)), DeviceClass(r.UintN(256))}
	}
	for range r.IntN(3) {
		m.NetworkPolicies = append(m.NetworkPolicies, NetworkPolicy{
			Application: Application(r.UintN(256)), Unknown: r.IntN(2) == 0, Tagged: r.IntN(2) == 0,
			VLAN: uint16(r.UintN(4096)), Priority: uint8(r.UintN(8)), DSCP: uint8(r.UintN(64)),
		})
	}
	if some() {
		m.ExtendedPower = &ExtendedPower{PowerType(r.UintN(4)), uint8(r.UintN(4)), PowerPriority(r.UintN(16)), uint16(r.UintN(1 << 16))}
	}
	for st := byte(medHardwareRevision); st <= medAssetID; st++ {
		if some() {
			*m.Inventory.field(st) = str()
		}
	}
	return m
}

// TestRoundTrip: whatever AppendFrame encodes, Decode gives back.
func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var buf []byte
	for i := range 3000 {
		m := randomMessage(r)
		var err error
		buf, err = m.AppendFrame(buf[:0])
		if err != nil {
			t.Fatalf("message %d: %v\n%+v", i, err, m)
		}
		got, err := Decode(buf)
		if err != nil {
			t.Fatalf("message %d: %v\n% x", i, err, buf)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("message %d: decoded\n%+v\nencoded\n%+v", i, got, m)
		}
	}
}

func TestFilter(t *testing.T) {
	vm, err := bpf.NewVM(Filter())
	if err != nil {
		t.Fatal(err)
	}
	cdp := append([]byte{0x01, 0x00, 0x0c, 0xcc, 0xcc, 0xcc, 2, 0, 0, 0, 0, 1, 0, 30, 0xaa, 0xaa, 3, 0, 0, 0x0c, 0x20, 0}, make([]byte, 38)...)
	for _, tc := range []struct {
		name  string
		frame []byte
		pass  bool
	}{{"LLDP", nortel, true}, {"CDP", cdp, false}, {"runt", nortel[:12], false}} {
		n, err := vm.Run(tc.frame)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if (n > 0) != tc.pass {
			t.Errorf("%s: filter returned %d, want pass=%v", tc.name, n, tc.pass)
		}
	}
}

// TestDecodeAllocationBounded: Decode allocates no more than a small
// multiple of the frame, whatever it holds. The worst case is a frame of
// management addresses: 14 wire bytes become a 56-byte struct, in a slice
// that append grows by doubling.
func TestDecodeAllocationBounded(t *testing.T) {
	many := func(t []byte, n int) []byte { return bytes.Repeat(t, n) }
	frames := [][]byte{
		lldpdMED,
		frame(chassis, port, ttl, many(tlv(tlvManagementAddress, 5, 1, 10, 0, 0, 1, 2, 0, 0, 0, 0, 0), 100), end),
		frame(chassis, port, ttl, many(tia(medNetworkPolicy, 1, 0x40, 0x9b, 0x6e), 140), end),
		frame(chassis, port, ttl, many(tlv(tlvSystemName, make([]byte, 400)...), 3), end),
	}
	for i, f := range frames {
		const runs = 50
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range runs {
			if _, err := Decode(f); err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
		}
		runtime.ReadMemStats(&after)
		perRun := (after.TotalAlloc - before.TotalAlloc) / runs
		if limit := uint64(16*len(f) + 1024); perRun > limit {
			t.Errorf("frame %d (%d bytes): %d bytes allocated per decode, limit %d", i, len(f), perRun, limit)
		}
	}
}
