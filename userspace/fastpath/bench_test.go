package fastpath

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/insomniacslk/dhcp/dhcpv4"
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

const phoneVendorClass = "Cisco Systems, Inc. IP Phone CP-8845"

// phoneOptions are the options a Cisco phone puts in its DISCOVER and
// REQUEST (bench/dhcp's generator sends the same): client ID, maximum
// size, host name, vendor class and a parameter list, besides 53 (and 50
// and 54 in a REQUEST) — options the fast path walks and accepts.
func phoneOptions(mac net.HardwareAddr) []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClientIdentifier(append([]byte{1}, mac...))),
		dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(1500)),
		dhcpv4.WithOption(dhcpv4.OptHostName(fmt.Sprintf("SEP%X", []byte(mac)))),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(phoneVendorClass)),
		dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter,
			dhcpv4.OptionDomainNameServer, dhcpv4.OptionDomainName, dhcpv4.OptionNTPServers,
			dhcpv4.OptionTFTPServerName, dhcpv4.GenericOptionCode(150)),
	}
}

// BenchmarkDHCPFastPath times the DHCP fast path per request inside the
// kernel, the way bench/dhcp's fastpath_ns_offer and fastpath_ns_ack do
// (bench/dhcp/README.md, "Fast path cost"): one BPF_PROG_RUN per op with
// Repeat 1, since the program rewrites the frame into its reply and a
// repeated run would take another path; the tables are reset between runs
// so that every run answers; the event ring buffer is drained in batches,
// not after every run, so that no reader wakeup is timed with the program.
// bpf_ns/op is the kernel's mean time per run, p50_ns and p99_ns its
// percentiles; ns/op is wall time per op, resets and syscalls included.
//
// Like bench/dhcp's, the pool has no vendor classes; "ack, vendor class"
// adds one for the phone's option 60, which the kernel then looks up. The
// other cases split the cost: "pass" parses a REQUEST and looks its client
// up but answers nothing, "offer type only" is a DISCOVER whose only option
// is 53, and "empty program" is the measurement's own floor.
func BenchmarkDHCPFastPath(b *testing.B) {
	f := newDHCPFixture(b)
	events, err := f.t.Events()
	if err != nil {
		b.Fatal(err)
	}
	defer events.Close()
	// Read the events in batches of half what the ring buffer holds (40
	// bytes an event): a full ring makes the kernel pass every request.
	const drainEvery = DHCPEventRingSize / 40 / 2
	pending := 0
	drain := func(b *testing.B) {
		for ; pending > 0; pending-- {
			events.SetDeadline(time.Now().Add(time.Second))
			if _, err := events.Read(); err != nil {
				b.Fatalf("read fast path event: %v", err)
			}
		}
	}
	defer drain(b)

	bcast := netip.MustParseAddr("255.255.255.255")
	addr := netip.MustParseAddr("10.0.0.50")
	disc := discover(b, phoneOptions(testPhoneMAC)...)
	sel, err := dhcpv4.New(append(phoneOptions(testPhoneMAC),
		dhcpv4.WithHwAddr(testPhoneMAC), dhcpv4.WithBroadcast(true),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP(addr.AsSlice()))),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(testServer.AsSlice()))))...)
	if err != nil {
		b.Fatal(err)
	}
	bare := discover(b)
	bare.Options = dhcpv4.OptionsFromList(dhcpv4.OptMessageType(dhcpv4.MessageTypeDiscover))
	stranger := net.HardwareAddr{0x00, 0x1e, 0x7a, 0x00, 0x00, 0x43}
	unknown, err := dhcpv4.New(append(phoneOptions(stranger),
		dhcpv4.WithHwAddr(stranger), dhcpv4.WithBroadcast(true),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP(addr.AsSlice()))),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(testServer.AsSlice()))))...)
	if err != nil {
		b.Fatal(err)
	}

	resetOffer := func() error {
		if err := f.t.DeleteBinding(0, testPhoneMAC); err != nil {
			return err
		}
		if n, err := f.t.PushFree(1, []netip.Addr{addr}); err != nil || n != 1 {
			return fmt.Errorf("push a free address: %d, %v", n, err)
		}
		return nil
	}
	resetAck := func() error {
		return f.t.PutBinding(DHCPBinding{MAC: testPhoneMAC, IP: addr, Expires: time.Now().Add(time.Minute), Ifindex: 1})
	}
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		b.Fatal(err)
	}
	defer empty.Close()

	for _, c := range []struct {
		name    string
		prog    *ebpf.Program
		frame   []byte
		reset   func() error
		want    dhcpv4.MessageType // none: XDP_PASS
		classes bool
	}{
		{"offer", f.o.Program(), request(b, 0, bcast, disc), resetOffer, dhcpv4.MessageTypeOffer, false},
		{"ack", f.o.Program(), request(b, 0, bcast, sel), resetAck, dhcpv4.MessageTypeAck, false},
		{"ack, vendor class", f.o.Program(), request(b, 0, bcast, sel), resetAck, dhcpv4.MessageTypeAck, true},
		{"offer type only", f.o.Program(), request(b, 0, bcast, bare), resetOffer, dhcpv4.MessageTypeOffer, false},
		{"pass", f.o.Program(), request(b, 0, bcast, unknown), nil, dhcpv4.MessageTypeNone, false},
		{"empty program", empty, request(b, 0, bcast, disc), nil, dhcpv4.MessageTypeNone, false},
	} {
		b.Run(c.name, func(b *testing.B) {
			if err := f.t.ClearClasses(); err != nil {
				b.Fatal(err)
			}
			if c.classes {
				if err := f.t.SetClass(1, phoneVendorClass, 3); err != nil {
					b.Fatal(err)
				}
			}
			wantVerdict := uint32(xdpPass)
			if c.want != dhcpv4.MessageTypeNone {
				wantVerdict = 3 // XDP_TX
			}
			// The first run must take the intended path and answer
			// right, or the number times some other path.
			if c.reset != nil {
				if err := c.reset(); err != nil {
					b.Fatal(err)
				}
			}
			if c.prog == f.o.Program() {
				ret, out := f.run(b, c.frame)
				if ret != wantVerdict {
					b.Fatalf("verdict %d, want %d", ret, wantVerdict)
				}
				if c.want != dhcpv4.MessageTypeNone {
					pending++
					if _, _, m := checkReply(b, out, 0); m.MessageType() != c.want || !m.YourIPAddr.Equal(net.IP(addr.AsSlice())) {
						b.Fatalf("reply %s", m.Summary())
					}
				}
			}
			runs := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				if pending >= drainEvery {
					drain(b)
				}
				if c.reset != nil {
					if err := c.reset(); err != nil {
						b.Fatal(err)
					}
				}
				verdict, d, err := c.prog.Benchmark(c.frame, 1, nil)
				if err != nil {
					b.Fatalf("BPF_PROG_RUN: %v", err)
				}
				if verdict != wantVerdict {
					b.Fatalf("run %d: verdict %d, want %d", len(runs), verdict, wantVerdict)
				}
				if wantVerdict != xdpPass {
					pending++
				}
				runs = append(runs, d)
			}
			b.StopTimer()
			var sum time.Duration
			for _, d := range runs {
				sum += d
			}
			slices.Sort(runs)
			b.ReportMetric(float64(sum.Nanoseconds())/float64(len(runs)), "bpf_ns/op")
			b.ReportMetric(float64(runs[len(runs)/2].Nanoseconds()), "p50_ns")
			b.ReportMetric(float64(runs[len(runs)*99/100].Nanoseconds()), "p99_ns")
		})
	}
}
