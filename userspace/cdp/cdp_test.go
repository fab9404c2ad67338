package cdp

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

func ptr[T any](v T) *T { return &v }

var (
	testMAC   = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	phoneMAC  = net.HardwareAddr{0x00, 0x1b, 0x54, 0x01, 0x02, 0x03}
	deviceSrc = [6]byte{0x00, 0x0b, 0xbe, 0x18, 0x9a, 0x41}
)

func TestDecodeCaptures(t *testing.T) {
	for _, tc := range []struct {
		name      string
		frame     []byte
		want      Message
		badSum    *ChecksumError
		software  string // prefix of SoftwareVersion
		helloData int
	}{{
		name:  "Catalyst 2950",
		frame: snapFrame(deviceSrc, catalyst2950),
		want: Message{
			Version: 2, TTL: 180,
			DeviceID:            "myswitch",
			Addresses:           []netip.Addr{netip.MustParseAddr("192.168.0.253")},
			PortID:              "FastEthernet0/1",
			Capabilities:        CapSwitch | CapIGMP,
			Platform:            "cisco WS-C2950-12",
			ProtocolHello:       &ProtocolHello{OUI: [3]byte{0, 0, 0x0c}, ProtocolID: 0x0112},
			VTPDomain:           "MYDOMAIN",
			NativeVLAN:          1,
			Duplex:              ptr(FullDuplex),
			VoIPVLANReply:       &ApplianceVLAN{ID: 1, VLAN: 10},
			TrustBitmap:         ptr[uint8](0),
			UntrustedCoS:        ptr[uint8](0),
			ManagementAddresses: []netip.Addr{netip.MustParseAddr("192.168.0.253")},
		},
		software:  "Cisco Internetwork Operating System Software \nIOS (tm) C2950 Software",
		helloData: 27,
	}, {
		name:  "IP Phone 7960",
		frame: snapFrame(deviceSrc, phone7960),
		want: Message{
			Version: 2, TTL: 180,
			DeviceID:         "SIP001122334455",
			Addresses:        []netip.Addr{netip.MustParseAddr("192.168.1.33")},
			PortID:           "Port 1",
			Capabilities:     CapHost,
			Platform:         "Cisco IP Phone 7960",
			VoIPVLANQuery:    &ApplianceVLAN{ID: 0x20, VLAN: 0x0200},
			Duplex:           ptr(FullDuplex),
			PowerConsumption: 6300,
		},
		badSum:   &ChecksumError{Got: 0xd7db, Want: 0xf3f1},
		software: "P003-08-2-00",
	}, {
		name:  "Cisco 1601 CDPv1",
		frame: cisco1601,
		want: Message{
			Version: 1, TTL: 180,
			DeviceID:     "R1",
			Addresses:    []netip.Addr{netip.MustParseAddr("192.168.10.1")},
			PortID:       "Ethernet0",
			Capabilities: CapRouter | CapHost,
			Platform:     "cisco 1601",
		},
		// Wireshark 4.0 agrees (TestTsharkCaptures); lldpd's test says
		// 0xdff0 is correct, but lldpd never checks.
		badSum:   &ChecksumError{Got: 0xdff0, Want: 0xdfe0},
		software: "Cisco Internetwork Operating System Software \nIOS (tm) 1600 Software (C1600-NY-L), Version 11.2(12)P",
	}, {
		name:  "Cisco 7206VXR",
		frame: cisco7206,
		want: Message{
			Version: 2, TTL: 180,
			DeviceID:  "rtbg6test01",
			Platform:  "cisco 7206VXR",
			Addresses: []netip.Addr{netip.MustParseAddr("172.66.55.3")},
			PortID:    "FastEthernet0/0",
			Duplex:    ptr(HalfDuplex),
		},
		software: "Cisco Internetwork Operating System Software \nIOS (tm) 7200 Software (C7200-P-M), Version 12.2(46)",
	}, {
		name:  "lldpd",
		frame: lldpdCDPv2,
		want: Message{
			Version: 2, TTL: 180,
			DeviceID: "Second chassis",
			Addresses: []netip.Addr{
				netip.MustParseAddr("172.17.142.36"),
				netip.MustParseAddr("172.17.142.38"),
			},
			PortID:       "Gigabit Ethernet 5/8",
			Capabilities: CapRouter | CapSwitch | CapHost,
			Platform:     "Linux",
		},
		software: "Chassis description",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Decode(tc.frame)
			if tc.badSum != nil {
				var ce *ChecksumError
				if !errors.As(err, &ce) || !errors.Is(err, ErrChecksum) || *ce != *tc.badSum {
					t.Fatalf("err = %v, want %v", err, tc.badSum)
				}
				if m == nil {
					t.Fatal("no message with the checksum error")
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(m.SoftwareVersion, tc.software) {
				t.Errorf("software version %q, want it to start %q", m.SoftwareVersion, tc.software)
			}
			if h := m.ProtocolHello; h != nil {
				if len(h.Data) != tc.helloData {
					t.Errorf("protocol hello data: %d bytes, want %d", len(h.Data), tc.helloData)
				}
				h.Data = nil
			}
			if !bytes.Equal(m.Source, tc.frame[6:12]) {
				t.Errorf("source %v, want %v", m.Source, net.HardwareAddr(tc.frame[6:12]))
			}
			got := *m
			got.Source, got.SoftwareVersion = nil, ""
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("decoded\n%+v\nwant\n%+v", got, tc.want)
			}
		})
	}
}

// TestChecksumOddLength pins the rule for an odd final byte v at the
// values where the readings differ: RFC 1071 would add v<<8, Cisco adds v
// below 0x80 and 0xff00+v-1 from 0x80 on (scapy wrongly only above 0x80).
// The sums are worked by hand from a 5-byte PDU 02 b4 00 00 v (0x02b4
// plus the last word); TestTshark has Wireshark confirm the rule.
func TestChecksumOddLength(t *testing.T) {
	for _, tc := range []struct {
		last byte
		want uint16
	}{
		{0x00, ^uint16(0x02b4)},
		{0x7f, ^uint16(0x02b4 + 0x7f)},
		{0x80, ^uint16(0x02b4 + 0xff7f - 0xffff)}, // 0x1_0233 folds to 0x0234
		{0xff, ^uint16(0x02b4 + 0xfffe - 0xffff)},
	} {
		if got := checksum([]byte{0x02, 0xb4, 0, 0, tc.last}); got != tc.want {
			t.Errorf("last byte %#02x: checksum %#04x, want %#04x", tc.last, got, tc.want)
		}
	}
	// An even PDU is plain RFC 1071.
	if got, want := checksum([]byte{0x02, 0xb4, 0xff, 0xff, 0x12, 0x80}), ^uint16(0x02b4+0x1280); got != want {
		t.Errorf("even PDU: checksum %#04x, want %#04x", got, want)
	}
}

func TestAppendFrameLayout(t *testing.T) {
	m := &Message{Source: testMAC, TTL: 180, DeviceID: "a"}
	prefix := []byte("keep")
	f, err := m.AppendFrame(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f[:4], prefix) {
		t.Fatal("AppendFrame overwrote what was in the buffer")
	}
	f = f[4:]
	if len(f) != minFrame {
		t.Errorf("frame of %d bytes, want padding to %d", len(f), minFrame)
	}
	// 802.3 length: SNAP 8 + header 4 + one TLV of 5, padding excluded.
	if got := binary.BigEndian.Uint16(f[12:]); got != 8+4+5 {
		t.Errorf("802.3 length %d, want 17", got)
	}
	want := []byte{0x01, 0x00, 0x0c, 0xcc, 0xcc, 0xcc, 2, 0, 0, 0, 0, 1, 0, 17, 0xaa, 0xaa, 0x03, 0x00, 0x00, 0x0c, 0x20, 0x00, 2, 180}
	if !bytes.Equal(f[:len(want)], want) {
		t.Errorf("headers\n% x\nwant\n% x", f[:len(want)], want)
	}
	if _, err := Decode(f); err != nil {
		t.Errorf("decode own frame: %v", err)
	}
}

func TestAppendFrameRejects(t *testing.T) {
	long := strings.Repeat("x", 1480)
	for name, m := range map[string]*Message{
		"no source":      {DeviceID: "a"},
		"version 3":      {Source: testMAC, Version: 3},
		"too big":        {Source: testMAC, DeviceID: long, PortID: long},
		"scoped address": {Source: testMAC, Addresses: []netip.Addr{netip.MustParseAddr("fe80::1%eth0")}},
		"zero address":   {Source: testMAC, ManagementAddresses: []netip.Addr{{}}},
		"IPv6 prefix":    {Source: testMAC, IPPrefixes: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}},
		"IPv6 gateway":   {Source: testMAC, ODRGateway: netip.MustParseAddr("2001:db8::1")},
	} {
		t.Run(name, func(t *testing.T) {
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

// pdu builds a CDP frame from TLVs given as raw bytes, with a correct
// checksum, for tests that need frames AppendFrame would never make.
func pdu(tlvs ...[]byte) []byte {
	p := []byte{2, 180, 0, 0}
	for _, t := range tlvs {
		p = append(p, t...)
	}
	binary.BigEndian.PutUint16(p[2:], checksum(p))
	return snapFrame(deviceSrc, p)
}

func tlv(t Type, v ...byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(t))
	b = binary.BigEndian.AppendUint16(b, uint16(4+len(v)))
	return append(b, v...)
}

func TestDecodeRejects(t *testing.T) {
	good := pdu(tlv(TypeDeviceID, 'a'))
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	ipv4 := []byte{1, 1, 0xcc, 0, 4, 10, 0, 0, 1}
	for _, tc := range []struct {
		name  string
		frame []byte
		want  error
	}{
		{"short", good[:13], ErrNotCDP},
		{"other destination", mutate(func(b []byte) []byte { b[5] = 0xcd; return b }), ErrNotCDP},
		{"EtherType", mutate(func(b []byte) []byte { b[12], b[13] = 0x08, 0x00; return b }), ErrNotCDP},
		{"not SNAP", mutate(func(b []byte) []byte { b[14] = 0x42; return b }), ErrNotCDP},
		{"other OUI", mutate(func(b []byte) []byte { b[19] = 0x0d; return b }), ErrNotCDP},
		{"DTP", mutate(func(b []byte) []byte { b[21] = 0x04; return b }), ErrNotCDP},
		{"length past the frame", mutate(func(b []byte) []byte { b[13]++; return b }), ErrMalformed},
		{"length short of the header", mutate(func(b []byte) []byte { b[12], b[13] = 0, 11; return b }), ErrMalformed},
		{"version 3", mutate(func(b []byte) []byte { b[22] = 3; return b }), ErrMalformed},
		{"TLV length 3", pdu([]byte{0, 1, 0, 3, 'a'}), ErrMalformed},
		{"TLV past the end", pdu([]byte{0, 1, 0, 9, 'a'}), ErrMalformed},
		{"half a TLV header", pdu(tlv(TypeDeviceID, 'a'), []byte{0, 1}), ErrMalformed},
		{"address count beyond the bytes", pdu(tlv(TypeAddresses, append([]byte{0xff, 0xff, 0xff, 0xff}, ipv4...)...)), ErrMalformed},
		{"address count too high", pdu(tlv(TypeAddresses, append([]byte{0, 0, 0, 2}, ipv4...)...)), ErrMalformed},
		{"address count too low", pdu(tlv(TypeAddresses, append(append([]byte{0, 0, 0, 1}, ipv4...), ipv4...)...)), ErrMalformed},
		{"address truncated", pdu(tlv(TypeAddresses, append([]byte{0, 0, 0, 1}, ipv4[:7]...)...)), ErrMalformed},
		{"address protocol truncated", pdu(tlv(TypeManagementAddress, 0, 0, 0, 1, 2, 8, 0xaa, 0xaa)), ErrMalformed},
		{"addresses without count", pdu(tlv(TypeAddresses, 0, 0)), ErrMalformed},
		{"prefix of 33 bits", pdu(tlv(TypeIPPrefix, 10, 0, 0, 0, 33)), ErrMalformed},
		{"prefix of 6 bytes", pdu(tlv(TypeIPPrefix, 10, 0, 0, 0, 8, 0)), ErrMalformed},
		{"capabilities of 2 bytes", pdu(tlv(TypeCapabilities, 0, 8)), ErrMalformed},
		{"native VLAN of 4 bytes", pdu(tlv(TypeNativeVLAN, 0, 0, 0, 1)), ErrMalformed},
		{"empty duplex", pdu(tlv(TypeDuplex)), ErrMalformed},
		{"VoIP VLAN reply of 2 bytes", pdu(tlv(TypeVoIPVLANReply, 1, 0)), ErrMalformed},
		{"power of 4 bytes", pdu(tlv(TypePower, 0, 0, 0x18, 0x9c)), ErrMalformed},
		{"MTU of 2 bytes", pdu(tlv(TypeMTU, 5, 0xdc)), ErrMalformed},
		{"trust of 2 bytes", pdu(tlv(TypeTrustBitmap, 0, 0)), ErrMalformed},
		{"CoS of 0 bytes", pdu(tlv(TypeUntrustedCoS)), ErrMalformed},
		{"empty location", pdu(tlv(TypeLocation)), ErrMalformed},
		{"short protocol hello", pdu(tlv(TypeProtocolHello, 0, 0, 0x0c, 1)), ErrMalformed},
		{"power requested of 6 bytes", pdu(tlv(TypePowerRequested, 0, 1, 0, 1, 0, 0)), ErrMalformed},
		{"power requested of 2 bytes", pdu(tlv(TypePowerRequested, 0, 1)), ErrMalformed},
		{"power available of 8 bytes", pdu(tlv(TypePowerAvailable, 0, 1, 0, 1, 0, 0, 0x3c, 0x28)), ErrMalformed},
		{"spare pair PoE of 2 bytes", pdu(tlv(TypeSparePairPoE, 1, 0)), ErrMalformed},
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

// TestDecodeLenient covers what Decode accepts although it is odd.
func TestDecodeLenient(t *testing.T) {
	// A query of any length (a 7960's has 4 bytes; its meaning is unknown).
	for _, v := range [][]byte{nil, {0x20}, {0x20, 0x02, 0x00, 0x01}} {
		m, err := Decode(pdu(tlv(TypeVoIPVLANQuery, v...)))
		if err != nil || m.VoIPVLANQuery == nil {
			t.Errorf("query % x: %+v, %v", v, m, err)
		}
	}
	// Records of other protocols are skipped, not refused.
	clns := []byte{1, 1, 0x81, 0, 3, 0x49, 0x00, 0x01}
	m, err := Decode(pdu(tlv(TypeAddresses, append([]byte{0, 0, 0, 2}, append(clns, 1, 1, 0xcc, 0, 4, 10, 0, 0, 1)...)...)))
	if err != nil || !reflect.DeepEqual(m.Addresses, []netip.Addr{netip.MustParseAddr("10.0.0.1")}) {
		t.Errorf("CLNS and IPv4: %v, %v", m, err)
	}
	// Unknown TLVs are skipped; a repeated TLV's last copy wins; padding
	// after the 802.3 length is ignored.
	f := pdu(tlv(0x1000, 'h', 'p'), tlv(TypeDeviceID, 'a'), tlv(TypeDeviceID, 'b'))
	f = append(f, 0, 0, 0, 0, 0, 0)
	m, err = Decode(f)
	if err != nil || m.DeviceID != "b" {
		t.Errorf("unknown, repeated, padded: %+v, %v", m, err)
	}
}

// randomMessage makes a message that uses every field with values the
// wire can carry, some fields left out at random.
func randomMessage(r *rand.Rand) *Message {
	some := func() bool { return r.IntN(4) != 0 }
	str := func() string {
		b := make([]byte, 1+r.IntN(20))
		for i := range b {
			b[i] = byte(r.UintN(256))
		}
		return string(b)
	}
	raw := func() []byte {
		b := make([]byte, r.IntN(6))
		for i := range b {
			b[i] = byte(r.UintN(256))
		}
		return b
	}
	addrs := func() []netip.Addr {
		var as []netip.Addr
		for range r.IntN(4) {
			if r.IntN(2) == 0 {
				as = append(as, netip.AddrFrom4([4]byte{10, byte(r.UintN(256)), 0, byte(r.UintN(256))}))
			} else {
				var a [16]byte
				a[0], a[1], a[15] = 0x20, 0x01, byte(r.UintN(256))
				as = append(as, netip.AddrFrom16(a))
			}
		}
		return as
	}
	m := &Message{
		Source:  net.HardwareAddr{0x02, byte(r.UintN(256)), 0, 0, 0, byte(r.UintN(256))},
		Version: uint8(1 + r.IntN(2)),
		TTL:     uint8(r.UintN(256)),
	}
	if some() {
		m.DeviceID = str()
	}
	m.Addresses = addrs()
	if some() {
		m.PortID = str()
	}
	m.Capabilities = Capabilities(r.Uint32())
	if some() {
		m.SoftwareVersion = str()
	}
	if some() {
		m.Platform = str()
	}
	for range r.IntN(3) {
		m.IPPrefixes = append(m.IPPrefixes, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(r.UintN(256)), 0, 0}), r.IntN(33)))
	}
	if some() {
		m.ODRGateway = netip.AddrFrom4([4]byte{10, 0, 0, byte(r.UintN(256))})
	}
	if some() {
		m.ProtocolHello = &ProtocolHello{OUI: [3]byte{0, 0, 0x0c}, ProtocolID: uint16(r.UintN(1 << 16)), Data: raw()}
	}
	if some() {
		m.VTPDomain = str()
	}
	m.NativeVLAN = uint16(r.UintN(4095))
	if some() {
		m.Duplex = ptr(Duplex(r.UintN(256)))
	}
	if some() {
		m.VoIPVLANReply = &ApplianceVLAN{ID: uint8(r.UintN(256)), VLAN: uint16(r.UintN(1 << 16))}
	}
	if some() {
		m.VoIPVLANQuery = &ApplianceVLAN{ID: uint8(r.UintN(256)), VLAN: uint16(r.UintN(1 << 16))}
	}
	m.PowerConsumption = uint16(r.UintN(1 << 16))
	m.MTU = r.Uint32()
	if some() {
		m.TrustBitmap = ptr(uint8(r.UintN(256)))
	}
	if some() {
		m.UntrustedCoS = ptr(uint8(r.UintN(8)))
	}
	if some() {
		m.SystemName = str()
	}
	if some() {
		m.SystemOID = raw()
	}
	m.ManagementAddresses = addrs()
	if some() {
		m.Location = &Location{Kind: uint8(r.UintN(256)), Text: str()}
	}
	if some() {
		m.ExternalPortID = raw()
	}
	if some() {
		req := &PowerRequest{RequestID: uint16(r.UintN(1 << 16)), ManagementID: uint16(r.UintN(1 << 16))}
		for range r.IntN(3) {
			req.MilliWatts = append(req.MilliWatts, r.Uint32())
		}
		m.PowerRequested = req
	}
	if some() {
		m.PowerAvailable = &PowerAvailable{uint16(r.UintN(1 << 16)), uint16(r.UintN(1 << 16)), r.Uint32(), r.Uint32()}
	}
	if some() {
		m.PortUnidirectional = raw()
	}
	if some() {
		m.EnergyWise = raw()
	}
	if some() {
		m.SparePairPoE = ptr(SparePairPoE(r.UintN(256)))
	}
	return m
}

// TestRoundTrip: whatever AppendFrame encodes, Decode gives back, with
// a valid checksum, for messages using every TLV.
func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var buf []byte
	odd := 0
	for i := range 3000 {
		m := randomMessage(r)
		var err error
		buf, err = m.AppendFrame(buf[:0])
		if err != nil {
			t.Fatalf("message %d: %v\n%+v", i, err, m)
		}
		odd += int(binary.BigEndian.Uint16(buf[12:]) & 1)
		got, err := Decode(buf)
		if err != nil {
			t.Fatalf("message %d: %v\n% x", i, err, buf)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("message %d: decoded\n%+v\nencoded\n%+v", i, got, m)
		}
	}
	if odd < 1000 {
		t.Errorf("only %d of 3000 frames had an odd length", odd)
	}
}

func TestFilter(t *testing.T) {
	vm, err := bpf.NewVM(Filter())
	if err != nil {
		t.Fatal(err)
	}
	lldp := append([]byte{0x01, 0x80, 0xc2, 0, 0, 0x0e, 2, 0, 0, 0, 0, 1, 0x88, 0xcc}, make([]byte, 46)...)
	dtp := bytes.Clone(lldpdCDPv2)
	dtp[21] = 0x04
	for _, tc := range []struct {
		name  string
		frame []byte
		pass  bool
	}{
		{"CDPv2", lldpdCDPv2, true},
		{"CDPv1", cisco1601, true},
		{"DTP", dtp, false},
		{"LLDP", lldp, false},
		{"runt", lldpdCDPv2[:16], false},
	} {
		n, err := vm.Run(tc.frame)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if (n > 0) != tc.pass {
			t.Errorf("%s: filter returned %d, want pass=%v", tc.name, n, tc.pass)
		}
	}
}

// TestDecodeAllocationBounded: whatever a frame claims (address counts of
// four billion, long TLVs), Decode allocates no more than a small multiple
// of its length.
func TestDecodeAllocationBounded(t *testing.T) {
	frames := [][]byte{
		snapFrame(deviceSrc, catalyst2950), cisco7206,
		pdu(tlv(TypeAddresses, append([]byte{0xff, 0xff, 0xff, 0xff}, make([]byte, 1400)...)...)),
		pdu(tlv(TypeAddresses, append([]byte{0, 0, 0, 150}, bytes.Repeat([]byte{1, 1, 0xcc, 0, 4, 10, 0, 0, 1}, 150)...)...)),
		pdu(tlv(TypePowerRequested, make([]byte, 1400)...)),
		pdu(tlv(TypeIPPrefix, make([]byte, 1400)...)),
	}
	for i, f := range frames {
		const runs = 50
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range runs {
			Decode(f)
		}
		runtime.ReadMemStats(&after)
		perRun := (after.TotalAlloc - before.TotalAlloc) / runs
		if limit := uint64(8*len(f) + 1024); perRun > limit {
			t.Errorf("frame %d (%d bytes): %d bytes allocated per decode, limit %d", i, len(f), perRun, limit)
		}
	}
}
