package fastpath

import (
	"bytes"
	"encoding/binary"
	"os"
	"slices"
	"sync"
	"testing"
)

// The reference classifier: the rules of bpf/xdp_phone_port.c written
// again, independently, as plain Go over a byte slice. The fuzz test
// runs random frames through both and fails where they disagree.

// classNames are the counters of which every frame lands in exactly one.
var classNames = []string{"cdp", "lldp", "dhcp", "other", "truncated", "malformed", "unconfigured"}

// oracleResult is the class of a frame and its VLAN attributes.
type oracleResult struct {
	class   string
	tags    int // tags looked through, at most 2
	tooDeep bool
}

// counters lists the counters the frame increments.
func (r oracleResult) counters() []string {
	c := []string{r.class}
	if r.tags >= 1 {
		c = append(c, "vlan_tagged")
	}
	if r.tags >= 2 {
		c = append(c, "vlan_double_tagged")
	}
	if r.tooDeep {
		c = append(c, "vlan_too_deep")
	}
	return c
}

func isVLANTPID(t uint16) bool { return t == tpid8021Q || t == tpid8021AD }

// oracleClassify classifies a frame the way the XDP program must.
func oracleClassify(b []byte, configured bool) oracleResult {
	if !configured {
		return oracleResult{class: "unconfigured"}
	}
	var r oracleResult
	if len(b) < 14 {
		r.class = "truncated"
		return r
	}
	typ := binary.BigEndian.Uint16(b[12:14])
	off := 14
	for r.tags < 2 && isVLANTPID(typ) {
		if len(b) < off+4 {
			r.class = "truncated"
			return r
		}
		typ = binary.BigEndian.Uint16(b[off+2 : off+4])
		off += 4
		r.tags++
	}
	rest := b[off:]
	switch {
	case isVLANTPID(typ):
		r.tooDeep = true
		r.class = "other"
	case typ < 0x0600: // an 802.3 length: LLC follows
		switch {
		case !bytes.Equal(b[:6], macCDP[:]):
			r.class = "other"
		case len(rest) < len(snapCDP):
			r.class = "truncated"
		case bytes.Equal(rest[:len(snapCDP)], snapCDP):
			r.class = "cdp"
		default:
			r.class = "other"
		}
	case typ == etherTypeLLDP:
		r.class = "lldp"
	case typ == etherTypeIPv4:
		r.class = oracleIPv4(rest)
	default:
		r.class = "other"
	}
	return r
}

func oracleIPv4(p []byte) string {
	if len(p) < 20 {
		return "truncated"
	}
	version, ihl := p[0]>>4, int(p[0]&0x0f)
	if version != 4 || ihl < 5 {
		return "malformed"
	}
	if len(p) < 4*ihl {
		return "truncated"
	}
	if p[9] != ipProtoUDP {
		return "other"
	}
	if binary.BigEndian.Uint16(p[6:8])&0x1fff != 0 { // fragment offset
		return "other"
	}
	udp := p[4*ihl:]
	if len(udp) < 8 {
		return "truncated"
	}
	switch binary.BigEndian.Uint16(udp[2:4]) {
	case 67, 68:
		return "dhcp"
	}
	return "other"
}

// TestOracleMatchesTable checks the reference classifier against the
// hand-written expectations, without the kernel, so that the oracle the
// fuzz test trusts is itself pinned down.
func TestOracleMatchesTable(t *testing.T) {
	for _, c := range tableCases() {
		configured := oracleClassify(c.in, true)
		got := counts(configured.counters()...)
		if !mapsEqual(got, c.wantCounts) {
			t.Errorf("%s: oracle says %v, table says %v", c.name, got, c.wantCounts)
		}
		if u := oracleClassify(c.in, false); !slices.Equal(u.counters(), []string{"unconfigured"}) {
			t.Errorf("%s: unconfigured oracle says %v", c.name, u.counters())
		}
	}
}

func mapsEqual(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// maxFuzzFrame caps fuzz inputs at a jumbo frame.
const maxFuzzFrame = 9000

var (
	accountingOnce sync.Once
	linearBytes    int // 0: the program counts whole frames
)

// countedBytes is what the byte counters must add for an n-byte frame.
//
// BPF_PROG_RUN puts at most PAGE_SIZE less headroom and skb_shared_info
// (3520 bytes with 4 KiB pages on x86-64) in the XDP buffer's linear part
// and the rest in fragments. A program that counts data_end - data sees
// only the linear part of a longer frame; one that counts
// bpf_xdp_get_buff_len sees all of it. A maxFuzzFrame probe tells which
// this build does; either way the count must then be exact. (On a real
// port frames that long never reach a program without BPF_F_XDP_HAS_FRAGS:
// generic XDP linearises the skb and native XDP refuses such an MTU.)
func countedBytes(tb testing.TB, o *Objects, n int) uint64 {
	tb.Helper()
	accountingOnce.Do(func() {
		in := dhcpFrame(67).bytes()
		in = append(in, make([]byte, maxFuzzFrame-len(in))...)
		var got uint64
		for _, d := range runXDP(tb, o, in).delta {
			if d.Packets == 1 {
				got = d.Bytes
			}
		}
		switch {
		case got == maxFuzzFrame:
			linearBytes = 0
		case got >= 1500 && got < uint64(os.Getpagesize()):
			linearBytes = int(got)
		default:
			linearBytes = -1
		}
		tb.Logf("a %d-byte frame counts %d bytes under BPF_PROG_RUN", maxFuzzFrame, got)
	})
	switch {
	case linearBytes < 0:
		tb.Fatalf("the byte counters count neither whole frames nor the linear buffer")
	case linearBytes > 0:
		return uint64(min(n, linearBytes))
	}
	return uint64(n)
}

// checkAgainstOracle runs in through the program and checks the verdict,
// the frame, and that the counters moved exactly as the oracle says:
// one class counter, the VLAN attributes, nothing else.
func checkAgainstOracle(tb testing.TB, o *Objects, in []byte, configured bool) {
	tb.Helper()
	r := runXDP(tb, o, in)
	if r.verdict != xdpPass {
		tb.Errorf("verdict %d, want XDP_PASS", r.verdict)
	}
	if !bytes.Equal(r.out, in) {
		tb.Errorf("frame modified: %d bytes in, %d out", len(in), len(r.out))
	}
	var classes []string
	got := map[string]uint64{}
	for _, d := range r.delta {
		if d.Packets == 0 && d.Bytes == 0 {
			continue
		}
		got[d.Name] = d.Packets
		if wb := countedBytes(tb, o, len(in)); d.Packets != 1 || d.Bytes != wb {
			tb.Errorf("counter %s moved by %d packets %d bytes, want 1 packet %d bytes", d.Name, d.Packets, d.Bytes, wb)
		}
		if slices.Contains(classNames, d.Name) {
			classes = append(classes, d.Name)
		}
	}
	if len(classes) != 1 {
		tb.Errorf("frame counted in classes %v, want exactly one", classes)
	}
	want := oracleClassify(in, configured)
	if wantCounts := counts(want.counters()...); !mapsEqual(got, wantCounts) {
		tb.Errorf("program counted %v, reference classifier says %v\nframe: % x", got, wantCounts, in[:min(len(in), 80)])
	}
}

// TestClassifierMatchesOracle runs the table frames through the program
// and the reference classifier, configured and not.
func TestClassifierMatchesOracle(t *testing.T) {
	o := loadTestObjects(t)
	cases := tableCases()
	for _, c := range cases {
		checkAgainstOracle(t, o, c.in, true)
	}
	setConfigVersion(t, o, 0)
	for _, c := range cases {
		checkAgainstOracle(t, o, c.in, false)
	}
	setConfigVersion(t, o, uint32(phonePortPbConfigVersionPB_CONFIG_VERSION))
	// Frames longer than BPF_PROG_RUN's linear buffer: still one class
	// each, the headers being in the linear part (see countedBytes).
	for _, n := range []int{1514, 4000, maxFuzzFrame} {
		for _, f := range []frame{dhcpFrame(67, tagOuter, tagVoice), lldpFrame(), cdpFrame()} {
			in := f.bytes()
			in = append(in, bytes.Repeat([]byte{0xa5}, n-len(in))...)
			checkAgainstOracle(t, o, in, true)
		}
	}
}

// FuzzXDPClassifier is a differential test of the XDP program against the
// reference classifier, seeded with the table frames.
func FuzzXDPClassifier(f *testing.F) {
	for _, c := range tableCases() {
		f.Add(c.in)
	}
	o := loadTestObjects(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 {
			t.Skip("BPF_PROG_RUN needs an Ethernet header")
		}
		if len(in) > maxFuzzFrame {
			in = in[:maxFuzzFrame]
		}
		checkAgainstOracle(t, o, in, true)
	})
}
