package fastpath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/ringbuf"
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
	backlog := eventBacklog{events: events}
	defer backlog.drain(b)

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
					backlog.pending++
					if _, _, m := checkReply(b, out, 0); m.MessageType() != c.want || !m.YourIPAddr.Equal(net.IP(addr.AsSlice())) {
						b.Fatalf("reply %s", m.Summary())
					}
				}
			}
			runs := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				backlog.drainIfHalfFull(b)
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
					backlog.pending++
				}
				runs = append(runs, d)
			}
			b.StopTimer()
			reportRuns(b, runs)
		})
	}
}

// eventBacklog reads the fast path's events in batches of half what the
// ring buffer holds (40 bytes an event): a full ring makes the kernel pass
// every request.
type eventBacklog struct {
	events  *DHCPEvents
	pending int // events written and not read
}

func (q *eventBacklog) drainIfHalfFull(b *testing.B) {
	if q.pending >= DHCPEventRingSize/40/2 {
		q.drain(b)
	}
}

func (q *eventBacklog) drain(b *testing.B) {
	for ; q.pending > 0; q.pending-- {
		q.read(b)
	}
}

func (q *eventBacklog) read(b *testing.B) DHCPEvent {
	q.events.SetDeadline(time.Now().Add(time.Second))
	ev, err := q.events.Read()
	if err != nil {
		b.Fatalf("read fast path event: %v", err)
	}
	return ev
}

// reportRuns reports the kernel's per-run times: bpf_ns/op the mean,
// p50_ns and p99_ns the percentiles.
func reportRuns(b *testing.B, runs []time.Duration) {
	var sum time.Duration
	for _, d := range runs {
		sum += d
	}
	slices.Sort(runs)
	b.ReportMetric(float64(sum.Nanoseconds())/float64(len(runs)), "bpf_ns/op")
	b.ReportMetric(float64(runs[len(runs)/2].Nanoseconds()), "p50_ns")
	b.ReportMetric(float64(runs[len(runs)*99/100].Nanoseconds()), "p99_ns")
}

// BenchmarkDHCPMapOperations times, like BenchmarkDHCPFastPath, programs
// that do only the map operations the fast path cannot do without for a
// reply, and nothing else: no parsing, no reply. For a new client's OFFER:
// look its binding up (a miss), read the clock, pop a free address,
// insert the binding, reserve and submit the event. For an ACK: look the
// binding up (a hit), read the clock, reserve and submit the event, update
// the binding in place. Their maps are made from the fast path's own specs
// (same types, sizes and flags), so their times are what those operations
// cost by themselves: a floor under the fast path's, which does them and
// more for each reply.
func BenchmarkDHCPMapOperations(b *testing.B) {
	spec, err := loadPhonePort()
	if err != nil {
		b.Fatal(err)
	}
	newMap := func(ms *ebpf.MapSpec) *ebpf.Map {
		ms = ms.Copy()
		ms.Pinning = ebpf.PinNone
		m, err := ebpf.NewMap(ms)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { m.Close() })
		return m
	}
	bindings := newMap(spec.Maps["pb_dhcp_bindings"])
	free := newMap(spec.Maps["pb_dhcp_free"].InnerMap)
	ringSpec := spec.Maps["pb_dhcp_events"].Copy()
	ringSpec.MaxEntries = DHCPEventRingSize
	ring := newMap(ringSpec)
	rd, err := ringbuf.NewReader(ring)
	if err != nil {
		b.Fatal(err)
	}
	events := &DHCPEvents{rd: rd}
	defer events.Close()

	const (
		keyOff   = -8  // struct pb_dhcp_binding_key: VLAN 0, the source MAC
		ipOff    = -16 // the address given
		valueOff = -40 // struct pb_dhcp_binding
		xdpTX    = 3
	)
	// Both programs: the key from the frame, the lookup, the clock into R7.
	// R8 is the binding found (ACK), or none (OFFER).
	lookup := func(wantHit bool) asm.Instructions {
		miss := asm.JEq.Imm(asm.R0, 0, "pass")
		if !wantHit {
			miss = asm.JNE.Imm(asm.R0, 0, "pass")
		}
		return asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // data
			asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // data_end
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 14),
			asm.JGT.Reg(asm.R4, asm.R3, "pass"),
			// The 8 bytes from the source MAC, shifted up two bytes:
			// VLAN 0, then the MAC, in the key's little-endian layout.
			asm.LoadMem(asm.R4, asm.R2, 6, asm.DWord),
			asm.LSh.Imm(asm.R4, 16),
			asm.StoreMem(asm.RFP, keyOff, asm.R4, asm.DWord),
			asm.LoadMapPtr(asm.R1, bindings.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, keyOff),
			asm.FnMapLookupElem.Call(),
			miss,
			asm.Mov.Reg(asm.R8, asm.R0),
			asm.FnKtimeGetBootNs.Call(),
			asm.Mov.Reg(asm.R7, asm.R0),
		}
	}
	// The event for the address at ipOff, expiring at R7; R6 its type.
	event := asm.Instructions{
		asm.LoadMapPtr(asm.R1, ring.FD()),
		asm.Mov.Imm(asm.R2, int32(binary.Size(phonePortPbDhcpEvent{}))),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnRingbufReserve.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.StoreMem(asm.R0, 0, asm.R6, asm.Word),
		asm.StoreImm(asm.R0, 4, 0, asm.Word), // ifindex
		asm.StoreImm(asm.R0, 8, 0, asm.Word), // pool
		asm.LoadMem(asm.R4, asm.RFP, ipOff, asm.Word),
		asm.StoreMem(asm.R0, 12, asm.R4, asm.Word),
		asm.StoreMem(asm.R0, 16, asm.R7, asm.DWord),
		asm.LoadMem(asm.R4, asm.RFP, keyOff, asm.DWord),
		asm.StoreMem(asm.R0, 24, asm.R4, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRingbufSubmit.Call(),
	}
	tail := asm.Instructions{
		asm.Mov.Imm(asm.R0, xdpTX),
		asm.Return(),
		asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("pass"),
		asm.Return(),
	}
	offer := slices.Concat(lookup(false), asm.Instructions{
		asm.Mov.Imm(asm.R6, int32(phonePortPbDhcpEventTypePB_DHCP_EV_ALLOCATED)),
		asm.LoadMapPtr(asm.R1, free.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, ipOff),
		asm.FnMapPopElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R4, asm.RFP, ipOff, asm.Word),
		asm.StoreMem(asm.RFP, valueOff, asm.R4, asm.Word),
		asm.StoreImm(asm.RFP, valueOff+4, int64(phonePortPbDhcpStatePB_DHCP_OFFERED), asm.Word),
		asm.StoreMem(asm.RFP, valueOff+8, asm.R7, asm.DWord),
		asm.Mov.Imm(asm.R4, 0),
		asm.StoreMem(asm.RFP, valueOff+16, asm.R4, asm.DWord), // ifindex, pad
		asm.LoadMapPtr(asm.R1, bindings.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, keyOff),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, valueOff),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnMapUpdateElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "pass"),
	}, event, tail)
	ack := slices.Concat(lookup(true), asm.Instructions{
		asm.Mov.Imm(asm.R6, int32(phonePortPbDhcpEventTypePB_DHCP_EV_ACKED)),
		asm.LoadMem(asm.R4, asm.R8, 0, asm.Word),
		asm.StoreMem(asm.RFP, ipOff, asm.R4, asm.Word),
	}, event, asm.Instructions{
		asm.StoreImm(asm.R8, 4, int64(phonePortPbDhcpStatePB_DHCP_BOUND), asm.Word),
		asm.StoreMem(asm.R8, 8, asm.R7, asm.DWord),
	}, tail)

	frame := request(b, 0, netip.MustParseAddr("255.255.255.255"), discover(b, phoneOptions(testPhoneMAC)...))
	addr := netip.MustParseAddr("10.0.0.50")
	var key [8]byte
	copy(key[2:], testPhoneMAC)
	for _, c := range []struct {
		name  string
		insns asm.Instructions
		reset func() error
		acked bool // the event's type: ACKED, or else ALLOCATED
	}{
		{"offer", offer, func() error {
			if err := bindings.Delete(key[:]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return err
			}
			return free.Update(nil, addr.As4(), ebpf.UpdateAny)
		}, false},
		{"ack", ack, func() error {
			ip := addr.As4()
			return bindings.Put(key[:], phonePortPbDhcpBinding{
				Ip:        binary.LittleEndian.Uint32(ip[:]),
				State:     uint32(phonePortPbDhcpStatePB_DHCP_OFFERED),
				ExpiresNs: math.MaxUint64,
			})
		}, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, Instructions: c.insns, License: "GPL"})
			if err != nil {
				b.Fatal(err)
			}
			defer prog.Close()
			run := func() time.Duration {
				if err := c.reset(); err != nil {
					b.Fatal(err)
				}
				verdict, d, err := prog.Benchmark(frame, 1, nil)
				if err != nil || verdict != xdpTX {
					b.Fatalf("BPF_PROG_RUN: verdict %d, %v", verdict, err)
				}
				return d
			}
			backlog := eventBacklog{events: events}
			// The first run must take the whole path and report the address.
			run()
			if ev := backlog.read(b); ev.Acked != c.acked || ev.Allocated == c.acked || ev.IP != addr ||
				!bytes.Equal(ev.MAC, testPhoneMAC) {
				b.Fatalf("event %+v; want acked %v for %v, %s", ev, c.acked, addr, testPhoneMAC)
			}

			runs := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				backlog.drainIfHalfFull(b)
				runs = append(runs, run())
				backlog.pending++
			}
			b.StopTimer()
			backlog.drain(b)
			reportRuns(b, runs)
		})
	}
}
