package fastpath

import (
	"testing"
)

// BenchmarkClassify times the program per frame inside the kernel with
// BPF_PROG_RUN's Repeat. The program does not rewrite frames, so
// repeating one input measures what a port would see. bpf_ns/op is the
// kernel's own mean time per run; ns/op also includes the syscall and the
// counter check, spread over the b.N runs.
func BenchmarkClassify(b *testing.B) {
	o := loadTestObjects(b)
	for _, c := range []struct {
		name string
		in   []byte
		want []string
	}{
		{"untagged dhcp", dhcpFrame(67).bytes(), []string{"dhcp"}},
		{"double tagged dhcp", dhcpFrame(67, tagOuter, tagVoice).bytes(), []string{"dhcp", "vlan_tagged", "vlan_double_tagged"}},
	} {
		b.Run(c.name, func(b *testing.B) {
			// The frame must be classified as intended, or the number
			// measures some other path through the program.
			pass(c.name, c.in, c.want...).check(b, o)
			if b.Failed() {
				b.FailNow()
			}

			// One op is one frame: a single BPF_PROG_RUN repeats it b.N
			// times, and the kernel reports the mean time per run.
			b.ResetTimer()
			verdict, perRun, err := o.Program().Benchmark(c.in, b.N, b.ResetTimer)
			b.StopTimer()
			if err != nil {
				b.Fatalf("BPF_PROG_RUN: %v", err)
			}
			if verdict != xdpPass {
				b.Fatalf("verdict %d", verdict)
			}
			b.ReportMetric(float64(perRun.Nanoseconds()), "bpf_ns/op")
		})
	}
}
