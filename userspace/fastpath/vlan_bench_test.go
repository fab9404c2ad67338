package fastpath

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// BenchmarkVLAN times the VLAN policy per frame under BPF_PROG_RUN.
//
// Paths that leave the frame as it was are timed with Repeat = b.N in one
// run, warm, as a port under load runs them: bpf_ns/op. Paths that rewrite
// the frame (a tag removed or pushed) cannot be repeated in one run, since
// BPF_PROG_RUN hands the rewritten frame to the next repetition; they run
// once per call. A run that follows a syscall pays for cold caches (about
// 300 ns here, several times the program), so those are reported against
// a reference: a non-rewriting path of the same program, run both ways.
// est_ns/op = reference warm + (this path per call - reference per call):
// the rewriting path's cost at the reference's warmth.
func BenchmarkVLAN(b *testing.B) {
	o := loadTestObjects(b)
	v := o.VLAN()
	if err := v.SetPort(testIfindex, testPolicy(true)); err != nil {
		b.Fatal(err)
	}
	if err := v.SetPhoneOUIs([][3]byte{{0x00, 0x1b, 0x54}}); err != nil {
		b.Fatal(err)
	}
	voice := vlanTag{tpid: tpid8021Q, vid: vlanVoice}
	tagged := phonePortPbVlanStation{Vlan: vlanVoice, Mode: uint8(phonePortPbVlanStationModePB_STATION_TAGGED)}
	if err := o.objs.PbVlanStations.Put(phonePortPbVlanStationKey{Ifindex: testIfindex, Mac: macPhone}, tagged); err != nil {
		b.Fatal(err)
	}
	// The references: a voice-tagged CDP frame keeps its tag (XDP); a
	// DHCP reply the server tagged already carries the right priority (TC).
	xdpRef := cdpFrame(voice).bytes()
	tcRef := withTCI(dhcpBroadcastReply(voice), vlanVoice, 5)

	b.Run("xdp tagged pass-through", func(b *testing.B) {
		b.ReportMetric(float64(warm(b, o.Program(), xdpRef, xdpPass).Nanoseconds()), "bpf_ns/op")
	})
	b.Run("xdp tag removed for the stack", func(b *testing.B) {
		estimate(b, o.Program(), xdpRef, withTCI(tftpFrame(macPhone, voice).bytes(), vlanVoice, 5), xdpPass)
	})
	b.Run("xdp auto voice tag pushed", func(b *testing.B) {
		estimate(b, o.Program(), xdpRef, dhcpFrame(67).bytes(), xdpPass)
	})
	b.Run("tc egress tagged pass-through", func(b *testing.B) {
		b.ReportMetric(float64(warm(b, o.EgressProgram(), tcRef, tcActOK).Nanoseconds()), "bpf_ns/op")
	})
	b.Run("tc egress tag pushed for a station", func(b *testing.B) {
		estimate(b, o.EgressProgram(), tcRef, replyFrame(macPhone, ipPhone).bytes(), tcActOK)
	})
}

// warm is the kernel's mean time per run over b.N repetitions of in.
func warm(b *testing.B, prog *ebpf.Program, in []byte, want uint32) time.Duration {
	b.Helper()
	verdict, perRun, err := prog.Benchmark(in, b.N, b.ResetTimer)
	if err != nil || verdict != want {
		b.Fatalf("verdict %d (want %d), %v", verdict, want, err)
	}
	return perRun
}

// perCall is the kernel's mean time per run over n single-run calls.
func perCall(b *testing.B, prog *ebpf.Program, in []byte, want uint32, n int) time.Duration {
	b.Helper()
	var total time.Duration
	for range n {
		verdict, d, err := prog.Benchmark(in, 1, nil)
		if err != nil || verdict != want {
			b.Fatalf("verdict %d (want %d), %v", verdict, want, err)
		}
		total += d
	}
	return total / time.Duration(n)
}

// estimate reports a rewriting path's per-call time, the reference's, and
// the estimate at the reference's warmth (see BenchmarkVLAN).
func estimate(b *testing.B, prog *ebpf.Program, ref, in []byte, want uint32) {
	b.Helper()
	refWarm := warm(b, prog, ref, want)
	// Interleaved halves, so a change in load hits both alike.
	var cold, refCold time.Duration
	half := max(b.N/2, 1)
	for range 2 {
		cold += perCall(b, prog, in, want, half)
		refCold += perCall(b, prog, ref, want, half)
	}
	cold, refCold = cold/2, refCold/2
	b.ReportMetric(float64(cold.Nanoseconds()), "percall_ns/op")
	b.ReportMetric(float64(refCold.Nanoseconds()), "ref_percall_ns/op")
	b.ReportMetric(float64((refWarm + cold - refCold).Nanoseconds()), "est_ns/op")
}
