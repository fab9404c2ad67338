package fastpath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/phoneboot/phoneboot/userspace/privtest"
)

// xdpPass is XDP_PASS from the kernel's enum xdp_action.
const xdpPass = 2

func testLogger(tb testing.TB) *slog.Logger { return privtest.Logger(tb) }

// loadTestObjects loads the program and unpinned maps for BPF_PROG_RUN.
func loadTestObjects(tb testing.TB) *Objects {
	tb.Helper()
	privtest.Require(tb)
	o, err := LoadObjects("", testLogger(tb))
	if err != nil {
		tb.Fatalf("LoadObjects: %v", err)
	}
	tb.Cleanup(func() {
		if err := o.Close(); err != nil {
			tb.Errorf("close objects: %v", err)
		}
	})
	return o
}

// setConfigVersion overwrites the version in the program's config map.
func setConfigVersion(tb testing.TB, o *Objects, v uint32) {
	tb.Helper()
	if err := o.objs.PbConfigMap.Put(uint32(0), phonePortPbConfig{Version: v}); err != nil {
		tb.Fatalf("write config map: %v", err)
	}
}

// runResult is one BPF_PROG_RUN: the verdict, the frame after the program
// and how much every counter moved (indexed like counterNames).
type runResult struct {
	verdict uint32
	out     []byte
	delta   []Counter
}

func runXDP(tb testing.TB, o *Objects, in []byte) runResult {
	tb.Helper()
	before, err := o.ReadCounters()
	if err != nil {
		tb.Fatalf("read counters: %v", err)
	}
	opts := &ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256)}
	verdict, err := o.Program().Run(opts)
	if err != nil {
		tb.Fatalf("BPF_PROG_RUN with a %d-byte frame: %v", len(in), err)
	}
	after, err := o.ReadCounters()
	if err != nil {
		tb.Fatalf("read counters: %v", err)
	}
	delta := make([]Counter, len(after))
	for i := range after {
		if after[i].Name != before[i].Name || after[i].Name != counterNames[i] {
			tb.Fatalf("counter %d is %q then %q, want %q", i, before[i].Name, after[i].Name, counterNames[i])
		}
		delta[i] = Counter{
			Name:    after[i].Name,
			Packets: after[i].Packets - before[i].Packets,
			Bytes:   after[i].Bytes - before[i].Bytes,
		}
	}
	return runResult{verdict: verdict, out: opts.DataOut, delta: delta}
}

// counts builds an expected delta: one packet for each name given.
func counts(names ...string) map[string]uint64 {
	m := map[string]uint64{}
	for _, n := range names {
		m[n]++
	}
	return m
}

// checkDelta compares the delta of every counter with want (packets per
// counter name; bytes are packets times frameLen). Counters absent from
// want must not have moved.
func checkDelta(tb testing.TB, delta []Counter, want map[string]uint64, frameLen int) {
	tb.Helper()
	for name := range want {
		if !slices.Contains(counterNames[:], name) {
			tb.Fatalf("test expects counter %q, which does not exist", name)
		}
	}
	for _, d := range delta {
		wp := want[d.Name]
		if wb := wp * uint64(frameLen); d.Packets != wp || d.Bytes != wb {
			tb.Errorf("counter %s moved by %d packets %d bytes, want %d packets %d bytes",
				d.Name, d.Packets, d.Bytes, wp, wb)
		}
	}
}

// progCase is one frame through the program and what must come out.
type progCase struct {
	name        string
	in          []byte
	wantVerdict uint32
	wantOut     []byte
	// wantCounts is packets per counter; bytes are packets*len(in).
	// Counters not named must stay unchanged.
	wantCounts map[string]uint64
}

func (c progCase) check(tb testing.TB, o *Objects) {
	tb.Helper()
	r := runXDP(tb, o, c.in)
	if r.verdict != c.wantVerdict {
		tb.Errorf("verdict %d, want %d", r.verdict, c.wantVerdict)
	}
	if !bytes.Equal(r.out, c.wantOut) {
		tb.Errorf("frame out (%d bytes) differs from the expected frame (%d bytes)\n got: % x\nwant: % x",
			len(r.out), len(c.wantOut), r.out, c.wantOut)
	}
	checkDelta(tb, r.delta, c.wantCounts, len(c.in))
}

// pass is a case where the program passes the frame on unmodified.
func pass(name string, in []byte, counters ...string) progCase {
	return progCase{
		name:        name,
		in:          in,
		wantVerdict: xdpPass,
		wantOut:     bytes.Clone(in),
		wantCounts:  counts(counters...),
	}
}

// with returns f changed by fn, for one-off variants of the base frames
// (which are fresh values, so nothing is shared).
func with(f frame, fn func(*frame)) frame {
	fn(&f)
	return f
}

// withIP returns f with its IPv4 header changed by fn.
func withIP(f frame, fn func(*ipv4Hdr)) frame {
	ip := *f.ip
	fn(&ip)
	f.ip = &ip
	return f
}

// tcpHeader is a 20-byte TCP SYN header to port dport.
func tcpHeader(dport uint16) []byte {
	b := binary.BigEndian.AppendUint16(nil, 49152)
	b = binary.BigEndian.AppendUint16(b, dport)
	b = append(b, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0)
	return b
}

// tcpFrame is an untagged IPv4/TCP frame (the TCP header is payload to the
// builder, so headerLen stops after the IPv4 header).
func tcpFrame(dport uint16) frame {
	return frame{
		dst:     macSwitch,
		src:     macPhone,
		ip:      &ipv4Hdr{proto: ipProtoTCP, src: [4]byte{10, 0, 0, 2}, dst: [4]byte{10, 0, 0, 1}},
		payload: tcpHeader(dport),
	}
}

// tableCases are whole frames, each with its classification.
func tableCases() []progCase {
	const (
		tagged = "vlan_tagged"
		double = "vlan_double_tagged"
		deep   = "vlan_too_deep"
	)
	cs := []progCase{
		pass("dhcp/untagged to 67", dhcpFrame(67).bytes(), "dhcp"),
		pass("dhcp/untagged to 68", dhcpFrame(68).bytes(), "dhcp"),
		pass("dhcp/headers only", with(dhcpFrame(67), func(f *frame) { f.payload = nil }).bytes(), "dhcp"),
		pass("udp/other port", dhcpFrame(5060).bytes(), "other"),
		pass("udp/from 67 to other port", with(dhcpFrame(1067), func(f *frame) { f.udp = &udpHdr{src: 67, dst: 1067} }).bytes(), "other"),
		pass("udp/to 67 little-endian", dhcpFrame(67<<8).bytes(), "other"),
		pass("tcp/to 67", tcpFrame(67).bytes(), "other"),
		pass("tcp/ip header only", with(tcpFrame(67), func(f *frame) { f.payload = nil }).bytes(), "other"),

		pass("vlan/802.1q dhcp", dhcpFrame(67, tagVoice).bytes(), "dhcp", tagged),
		pass("vlan/802.1ad dhcp", dhcpFrame(67, tagOuter).bytes(), "dhcp", tagged),
		pass("vlan/802.1ad+802.1q dhcp", dhcpFrame(67, tagOuter, tagVoice).bytes(), "dhcp", tagged, double),
		pass("vlan/802.1q+802.1q dhcp", dhcpFrame(68, tagVoice, tagVoice).bytes(), "dhcp", tagged, double),
		pass("vlan/802.1q other udp", dhcpFrame(5060, tagVoice).bytes(), "other", tagged),
		pass("vlan/triple tagged dhcp", dhcpFrame(67, tagOuter, tagVoice, tagVoice).bytes(), "other", tagged, double, deep),
		pass("vlan/triple tagged lldp", lldpFrame(tagOuter, tagOuter, tagVoice).bytes(), "other", tagged, double, deep),
		// The third tag is never read: its TPID after two tags decides.
		pass("vlan/third tpid then end of frame", with(lldpFrame(tagOuter, tagVoice), func(f *frame) {
			f.etherType, f.payload = tpid8021Q, nil
		}).bytes(), "other", tagged, double, deep),
		pass("vlan/tagged arp", with(lldpFrame(tagVoice), func(f *frame) { f.etherType = etherTypeARP }).bytes(), "other", tagged),

		pass("cdp/untagged", cdpFrame().bytes(), "cdp"),
		pass("cdp/tagged", cdpFrame(tagVoice).bytes(), "cdp", tagged),
		pass("cdp/double tagged", cdpFrame(tagOuter, tagVoice).bytes(), "cdp", tagged, double),
		pass("cdp/snap header only", with(cdpFrame(), func(f *frame) { f.payload = nil }).bytes(), "cdp"),
		pass("cdp/wrong snap pid (dtp)", with(cdpFrame(), func(f *frame) {
			f.llc = []byte{0xaa, 0xaa, 0x03, 0x00, 0x00, 0x0c, 0x20, 0x04}
		}).bytes(), "other"),
		pass("cdp/pid byte-swapped", with(cdpFrame(), func(f *frame) {
			f.llc = []byte{0xaa, 0xaa, 0x03, 0x00, 0x00, 0x0c, 0x00, 0x20}
		}).bytes(), "other"),
		pass("cdp/wrong oui", with(cdpFrame(), func(f *frame) {
			f.llc = []byte{0xaa, 0xaa, 0x03, 0x00, 0x00, 0x00, 0x20, 0x00}
		}).bytes(), "other"),
		pass("cdp/wrong control", with(cdpFrame(), func(f *frame) {
			f.llc = []byte{0xaa, 0xaa, 0x13, 0x00, 0x00, 0x0c, 0x20, 0x00}
		}).bytes(), "other"),
		pass("cdp/wrong dsap", with(cdpFrame(), func(f *frame) {
			f.llc = []byte{0x42, 0xaa, 0x03, 0x00, 0x00, 0x0c, 0x20, 0x00}
		}).bytes(), "other"),
		pass("cdp/wrong ssap", with(cdpFrame(), func(f *frame) {
			f.llc = []byte{0xaa, 0x42, 0x03, 0x00, 0x00, 0x0c, 0x20, 0x00}
		}).bytes(), "other"),
		pass("cdp/unicast destination", with(cdpFrame(), func(f *frame) { f.dst = macSwitch }).bytes(), "other"),
		pass("cdp/destination differs in last byte", with(cdpFrame(), func(f *frame) {
			f.dst = [6]byte{0x01, 0x00, 0x0c, 0xcc, 0xcc, 0xcd}
		}).bytes(), "other"),
		pass("cdp/destination differs in first byte", with(cdpFrame(), func(f *frame) {
			f.dst = [6]byte{0x03, 0x00, 0x0c, 0xcc, 0xcc, 0xcc}
		}).bytes(), "other"),
		// 0x05ff is still below 0x0600, where EtherTypes start.
		pass("cdp/length field 0x05ff", with(cdpFrame(), func(f *frame) {
			f.llc, f.etherType, f.payload = nil, 0x05ff, append(bytes.Clone(snapCDP), cdpBody...)
		}).bytes(), "cdp"),
		pass("cdp/ethertype 0x0600", with(cdpFrame(), func(f *frame) {
			f.llc, f.etherType, f.payload = nil, 0x0600, append(bytes.Clone(snapCDP), cdpBody...)
		}).bytes(), "other"),

		pass("lldp/untagged", lldpFrame().bytes(), "lldp"),
		pass("lldp/tagged", lldpFrame(tagVoice).bytes(), "lldp", tagged),
		pass("lldp/double tagged", lldpFrame(tagOuter, tagVoice).bytes(), "lldp", tagged, double),
		pass("lldp/ethernet header only", with(lldpFrame(), func(f *frame) { f.payload = nil }).bytes(), "lldp"),
		pass("lldp/tag then end of frame", with(lldpFrame(tagVoice), func(f *frame) { f.payload = nil }).bytes(), "lldp", tagged),

		pass("ipv4/fragment first with MF", withIP(dhcpFrame(67), func(h *ipv4Hdr) { h.fragOff = ipFlagMF }).bytes(), "dhcp"),
		pass("ipv4/DF set", withIP(dhcpFrame(67), func(h *ipv4Hdr) { h.fragOff = 0x4000 }).bytes(), "dhcp"),
		pass("ipv4/evil bit set", withIP(dhcpFrame(67), func(h *ipv4Hdr) { h.fragOff = 0x8000 }).bytes(), "dhcp"),
		pass("ipv4/fragment non-first to 67", withIP(dhcpFrame(67), func(h *ipv4Hdr) { h.fragOff = 1480 / 8 }).bytes(), "other"),
		pass("ipv4/fragment non-first with MF to 67", withIP(dhcpFrame(67), func(h *ipv4Hdr) { h.fragOff = ipFlagMF | 1480/8 }).bytes(), "other"),
		pass("ipv4/fragment offset 8 bytes", withIP(dhcpFrame(67), func(h *ipv4Hdr) { h.fragOff = 1 }).bytes(), "other"),
		pass("ipv4/fragment offset high bit", withIP(dhcpFrame(67), func(h *ipv4Hdr) { h.fragOff = 0x1000 }).bytes(), "other"),
		pass("ipv4/fragment non-first tagged", withIP(dhcpFrame(67, tagVoice), func(h *ipv4Hdr) { h.fragOff = 185 }).bytes(), "other", tagged),
		pass("ipv4/options tcp", withIP(tcpFrame(67), func(h *ipv4Hdr) { h.options = ipOptions(3) }).bytes(), "other"),
		pass("ipv4/options udp other port", withIP(dhcpFrame(5060), func(h *ipv4Hdr) { h.options = ipOptions(10) }).bytes(), "other"),
		pass("ipv4/options tagged dhcp", withIP(dhcpFrame(67, tagOuter, tagVoice), func(h *ipv4Hdr) { h.options = ipOptions(10) }).bytes(), "dhcp", tagged, double),
		pass("ipv4/version 6 in ipv4 ethertype", withIP(dhcpFrame(67), func(h *ipv4Hdr) { h.version = 6 }).bytes(), "malformed"),
		pass("ipv4/version 15", withIP(dhcpFrame(67), func(h *ipv4Hdr) { h.version = 15 }).bytes(), "malformed"),
		pass("ipv4/version 0", withIP(dhcpFrame(67), func(h *ipv4Hdr) { h.version, h.ihl, h.raw = 0, 5, true }).bytes(), "malformed"),
		pass("ipv4/version 6 tagged", withIP(dhcpFrame(67, tagVoice), func(h *ipv4Hdr) { h.version = 6 }).bytes(), "malformed", tagged),
		// 20 bytes of IPv4 header are needed before the IHL is looked at.
		pass("ipv4/ihl 3 header only", with(withIP(dhcpFrame(67), func(h *ipv4Hdr) { h.ihl = 3 }), func(f *frame) {
			f.udp, f.payload = nil, nil
		}).bytes(), "malformed"),

		pass("other/arp", with(lldpFrame(), func(f *frame) { f.dst, f.etherType = macBroadcast, etherTypeARP }).bytes(), "other"),
		pass("other/ipv6", with(dhcpFrame(547), func(f *frame) { f.etherType = etherTypeIPv6 }).bytes(), "other"),
		pass("other/ipv6 tagged", with(dhcpFrame(547, tagVoice), func(f *frame) { f.etherType = etherTypeIPv6 }).bytes(), "other", tagged),
		pass("other/802.3 non-cdp llc", with(cdpFrame(), func(f *frame) {
			f.dst, f.llc = [6]byte{0x01, 0x80, 0xc2, 0, 0, 0}, []byte{0x42, 0x42, 0x03}
		}).bytes(), "other"),
		pass("other/ethernet header only arp", with(lldpFrame(), func(f *frame) { f.etherType, f.payload = etherTypeARP, nil }).bytes(), "other"),
		pass("other/802.3 non-cdp destination header only", with(cdpFrame(), func(f *frame) { f.dst, f.llc, f.payload = macSwitch, []byte{}, nil }).bytes(), "other"),
	}
	for words := 1; words <= 10; words++ {
		f := withIP(dhcpFrame(67), func(h *ipv4Hdr) { h.options = ipOptions(words) })
		cs = append(cs, pass(fmt.Sprintf("ipv4/ihl %d dhcp", 5+words), f.bytes(), "dhcp"))
	}
	for ihl := uint8(0); ihl < 5; ihl++ {
		f := withIP(dhcpFrame(67), func(h *ipv4Hdr) { h.ihl, h.raw = ihl, true })
		cs = append(cs, pass(fmt.Sprintf("ipv4/ihl %d malformed", ihl), f.bytes(), "malformed"))
	}
	return append(cs, truncatedCases()...)
}

// truncatedCases cuts multi-header frames at every length from 14 (the
// least BPF_PROG_RUN takes for XDP) to the end of their headers. Each
// source says, from the C code, what a frame of n bytes is.
func truncatedCases() []progCase {
	const (
		tagged = "vlan_tagged"
		double = "vlan_double_tagged"
		deep   = "vlan_too_deep"
	)
	trunc := func(extra ...string) []string { return append([]string{"truncated"}, extra...) }
	// byTags(k) is for a frame with k tags cut inside its headers: it is
	// truncated, and counts the tags that are wholly inside the cut.
	byTags := func(k int) func(n int) []string {
		return func(n int) []string {
			in := min(k, (n-14)/4)
			switch {
			case in <= 0:
				return trunc()
			case in == 1:
				return trunc(tagged)
			default:
				return trunc(tagged, double)
			}
		}
	}
	sources := []struct {
		name string
		f    frame
		// want gives the counters for the first n bytes, n < headerLen.
		want func(n int) []string
		// full is the classification with all the headers present.
		full []string
	}{
		{"tagged dhcp", dhcpFrame(67, tagVoice), byTags(1), []string{"dhcp", tagged}},
		{"double tagged dhcp", dhcpFrame(67, tagOuter, tagVoice), byTags(2), []string{"dhcp", tagged, double}},
		{"ipv4 options dhcp", withIP(dhcpFrame(67), func(h *ipv4Hdr) { h.options = ipOptions(2) }), byTags(0), []string{"dhcp"}},
		{"ipv4 ihl 15 tagged dhcp", withIP(dhcpFrame(68, tagVoice), func(h *ipv4Hdr) { h.options = ipOptions(10) }), byTags(1), []string{"dhcp", tagged}},
		{"cdp", cdpFrame(), byTags(0), []string{"cdp"}},
		{"tagged cdp", cdpFrame(tagVoice), byTags(1), []string{"cdp", tagged}},
		{"tagged lldp", lldpFrame(tagVoice), byTags(1), []string{"lldp", tagged}},
		{"untagged tcp", tcpFrame(67), byTags(0), []string{"other"}},
		// Options must be complete even when the protocol is not UDP.
		{"tcp with options", withIP(tcpFrame(67), func(h *ipv4Hdr) { h.options = ipOptions(4) }), byTags(0), []string{"other"}},
		// Two tags are read; a third TPID then decides, whatever follows.
		{"triple tagged dhcp", dhcpFrame(67, tagOuter, tagVoice, tagVoice), func(n int) []string {
			if n < 22 {
				return byTags(2)(n)
			}
			return []string{"other", tagged, double, deep}
		}, []string{"other", tagged, double, deep}},
		// A non-first fragment is decided before the UDP header is read.
		{"non-first fragment", withIP(dhcpFrame(67), func(h *ipv4Hdr) { h.fragOff = 185 }), func(n int) []string {
			if n < 14+20 {
				return trunc()
			}
			return []string{"other"}
		}, []string{"other"}},
		// IHL is only read once 20 header bytes are there.
		{"ihl 4", withIP(dhcpFrame(67), func(h *ipv4Hdr) { h.ihl = 4 }), func(n int) []string {
			if n < 14+20 {
				return trunc()
			}
			return []string{"malformed"}
		}, []string{"malformed"}},
	}
	var cs []progCase
	for _, s := range sources {
		full := s.f.bytes()
		hl := s.f.headerLen()
		for n := 14; n < hl; n++ {
			cs = append(cs, pass(fmt.Sprintf("truncated/%s/%d of %d", s.name, n, hl), bytes.Clone(full[:n]), s.want(n)...))
		}
		cs = append(cs, pass(fmt.Sprintf("truncated/%s/%d of %d", s.name, hl, hl), bytes.Clone(full[:hl]), s.full...))
	}
	return cs
}

// TestXDPClassify runs every table frame through the program with
// BPF_PROG_RUN and checks the verdict, the frame and all the counters.
func TestXDPClassify(t *testing.T) {
	o := loadTestObjects(t)
	cases := tableCases()
	seen := map[string]bool{}
	for _, c := range cases {
		if seen[c.name] {
			t.Fatalf("duplicate case name %q", c.name)
		}
		seen[c.name] = true
		t.Run(c.name, func(t *testing.T) { c.check(t, o) })
	}
	// Every class and attribute counter except unconfigured, the DHCP fast
	// path's (dhcp_test.go reaches those) and the VLAN policy's
	// (vlan_test.go) is reached by some case, so
	// a class the program can no longer produce shows up.
	reached := map[string]bool{}
	for _, c := range cases {
		for name := range c.wantCounts {
			reached[name] = true
		}
	}
	for _, name := range counterNames {
		if !reached[name] && name != "unconfigured" && !strings.HasPrefix(name, "dhcp_fast_") &&
			!slices.Contains(vlanPolicyCounters, name) {
			t.Errorf("no case expects counter %s", name)
		}
	}
}

// TestXDPUnconfigured checks that without a config of the program's
// version every frame is passed and counted as unconfigured, nothing else.
func TestXDPUnconfigured(t *testing.T) {
	o := loadTestObjects(t)
	cases := tableCases()
	for _, v := range []uint32{0, uint32(phonePortPbConfigVersionPB_CONFIG_VERSION) + 1} {
		t.Run(fmt.Sprintf("version %d", v), func(t *testing.T) {
			if v == 0 {
				// What a map nobody wrote holds.
				if err := o.objs.PbConfigMap.Put(uint32(0), phonePortPbConfig{}); err != nil {
					t.Fatalf("write config map: %v", err)
				}
			} else {
				setConfigVersion(t, o, v)
			}
			for _, c := range cases {
				c.wantCounts = counts("unconfigured")
				t.Run(c.name, func(t *testing.T) { c.check(t, o) })
			}
		})
	}
	// The config is read per frame: writing it back takes effect at once.
	setConfigVersion(t, o, uint32(phonePortPbConfigVersionPB_CONFIG_VERSION))
	pass("configured again", dhcpFrame(67, tagVoice).bytes(), "dhcp", "vlan_tagged").check(t, o)
}

// TestXDPCountersAccumulate runs the same frame several times: counters
// add up packets and bytes rather than being overwritten.
func TestXDPCountersAccumulate(t *testing.T) {
	o := loadTestObjects(t)
	frames := [][]byte{dhcpFrame(67).bytes(), dhcpFrame(68, tagVoice).bytes(), cdpFrame().bytes()}
	before, err := o.ReadCounters()
	if err != nil {
		t.Fatal(err)
	}
	const rounds = 5
	for range rounds {
		for _, f := range frames {
			if r := runXDP(t, o, f); r.verdict != xdpPass {
				t.Fatalf("verdict %d", r.verdict)
			}
		}
	}
	after, err := o.ReadCounters()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Counter{
		"dhcp":        {Packets: 2 * rounds, Bytes: rounds * uint64(len(frames[0])+len(frames[1]))},
		"vlan_tagged": {Packets: rounds, Bytes: rounds * uint64(len(frames[1]))},
		"cdp":         {Packets: rounds, Bytes: rounds * uint64(len(frames[2]))},
	}
	for i := range after {
		if after[i].Name != counterNames[i] {
			t.Errorf("ReadCounters()[%d] is %s, want %s (enum order)", i, after[i].Name, counterNames[i])
		}
		got := Counter{Name: after[i].Name, Packets: after[i].Packets - before[i].Packets, Bytes: after[i].Bytes - before[i].Bytes}
		w := want[after[i].Name]
		w.Name = after[i].Name
		if got != w {
			t.Errorf("counter moved by %+v, want %+v", got, w)
		}
	}
}
