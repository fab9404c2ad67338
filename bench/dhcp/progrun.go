package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/phoneboot/phoneboot/userspace/dhcp"
	"github.com/phoneboot/phoneboot/userspace/fastpath"
)

// The fast path's cost per request inside the kernel, by BPF_PROG_RUN:
// the real program with its DHCP tables filled through fastpath's API,
// one run per call (Repeat 1: the program rewrites the frame into the
// reply, so repeating one input would time a different path), the state
// reset between calls so every run answers (verdict XDP_TX), and the
// kernel's own per-run time. An empty XDP_PASS program timed the same
// way gives the measurement's own overhead.

type progStats struct {
	Mean, P50, P99 float64 // ns
}

type fastpathCost struct {
	Offer, Ack, Empty progStats
	// Pass is a REQUEST from a client the kernel has no binding for:
	// parsed and looked up, then left to the Go server (XDP_PASS). The
	// difference to Ack is the cost of answering (event, binding update,
	// building the reply).
	Pass progStats
	Runs int
	JIT  string
}

const (
	xdpTX = 3
	// drainEvery bounds the events left in the ring buffer between
	// drains: half of what it holds (40 bytes an event).
	drainEvery = fastpath.DHCPEventRingSize / 40 / 2
)

func timeStats(d []time.Duration) progStats {
	slices.Sort(d)
	var sum time.Duration
	for _, v := range d {
		sum += v
	}
	return progStats{
		Mean: float64(sum) / float64(len(d)),
		P50:  float64(d[len(d)/2]),
		P99:  float64(d[len(d)*99/100]),
	}
}

func measureFastpath(runs int) (fastpathCost, error) {
	res := fastpathCost{Runs: runs}
	if b, err := os.ReadFile("/proc/sys/net/core/bpf_jit_enable"); err == nil {
		res.JIT = strings.TrimSpace(string(b))
	}
	objs, err := fastpath.LoadObjects("", slog.New(slog.DiscardHandler))
	if err != nil {
		return res, err
	}
	defer objs.Close()
	t := objs.DHCP()
	srv := netip.MustParseAddr(serverIP)
	pools, err := dhcp.NewPools(dhcp.Config{Pools: []dhcp.PoolConfig{{
		Name: "bench", Subnet: netip.MustParsePrefix("10.200.0.0/16"),
		RangeStart: netip.MustParseAddr(rangeStart), RangeEnd: netip.MustParseAddr(rangeEnd),
		ServerIP: srv, Routers: []netip.Addr{srv}, TFTPServers: []netip.Addr{srv}, LeaseTime: time.Hour,
	}}})
	if err != nil {
		return res, err
	}
	blk := pools[0].OptionBlock(0, dhcpv4.MessageTypeOffer)
	// Ifindex 1: BPF_PROG_RUN without a context runs as if the frame came
	// in on the loopback device, which is ifindex 1 in every namespace.
	portMAC := net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	if err := errors.Join(
		t.SetPort(1, portMAC, true),
		t.SetBlock(1, blk, dhcp.TypeOffset(blk)),
		t.SetPool(fastpath.DHCPPool{ID: 1, ServerIP: srv, DefaultBlock: 1, LeaseTime: time.Hour, OfferTime: time.Minute, Allocate: true}),
	); err != nil {
		return res, err
	}
	// Every answer writes an event to the ring buffer, which must be
	// read or it fills and the program falls back to XDP_PASS. It is
	// drained in batches between runs (drainEvery): a reader that has
	// caught up makes the kernel wake it from the next submit (irq_work,
	// a self-IPI, a VM exit here), which would be timed with the program.
	events, err := t.Events()
	if err != nil {
		return res, err
	}
	defer events.Close()
	pending := 0
	drain := func() error {
		for ; pending > 0; pending-- {
			events.SetDeadline(time.Now().Add(time.Second))
			if _, err := events.Read(); err != nil {
				return fmt.Errorf("read fast path event: %w", err)
			}
		}
		return nil
	}

	mac := clientMAC(1)
	ip := netip.MustParseAddr("10.200.0.50")
	ip4, srv4 := ip.As4(), srv.As4()
	disc := buildRequest(make([]byte, frameLen()), dhcpDiscover, mac, 0x11223344, [4]byte{}, [4]byte{})
	req := buildRequest(make([]byte, frameLen()), dhcpRequest, mac, 0x11223344, ip4, srv4)
	prog := objs.Program()

	resetOffer := func() error {
		if err := t.DeleteBinding(0, mac); err != nil {
			return err
		}
		n, err := t.PushFree(1, []netip.Addr{ip})
		if err == nil && n != 1 {
			err = errors.New("free queue full")
		}
		return err
	}
	resetAck := func() error {
		return t.PutBinding(fastpath.DHCPBinding{MAC: mac, IP: ip, Expires: time.Now().Add(time.Minute), Ifindex: 1})
	}
	// Check once, with a context as the port would give it, that each
	// frame is answered, and with what.
	check := func(frame []byte, want dhcpv4.MessageType) error {
		out := make([]byte, len(frame)+512)
		opts := &ebpf.RunOptions{Data: frame, DataOut: out, Context: xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: 1}, Repeat: 1}
		v, err := prog.Run(opts)
		if err != nil {
			return err
		}
		if v != xdpTX {
			return fmt.Errorf("%s: verdict %d, want XDP_TX", want, v)
		}
		o := opts.DataOut
		if len(o) < bootpOff {
			return fmt.Errorf("%s: reply of %d bytes", want, len(o))
		}
		m, err := dhcpv4.FromBytes(o[bootpOff:])
		if err != nil {
			return fmt.Errorf("%s: reply does not parse: %w", want, err)
		}
		if m.MessageType() != want || !m.YourIPAddr.Equal(net.IP(ip.AsSlice())) ||
			len(dhcpv4.GetIPs(dhcpv4.GenericOptionCode(150), m.Options)) != 1 {
			return fmt.Errorf("unexpected reply %s", m.Summary())
		}
		return nil
	}
	if err := resetOffer(); err != nil {
		return res, err
	}
	if err := check(disc, dhcpv4.MessageTypeOffer); err != nil {
		return res, err
	}
	if err := resetAck(); err != nil {
		return res, err
	}
	if err := check(req, dhcpv4.MessageTypeAck); err != nil {
		return res, err
	}
	pending = 2

	timeRuns := func(p *ebpf.Program, frame []byte, reset func() error, want uint32) (progStats, error) {
		answers := p == prog && want == xdpTX
		d := make([]time.Duration, 0, runs)
		for range runs {
			if pending >= drainEvery {
				if err := drain(); err != nil {
					return progStats{}, err
				}
			}
			if reset != nil {
				if err := reset(); err != nil {
					return progStats{}, err
				}
			}
			v, dur, err := p.Benchmark(frame, 1, nil)
			if err != nil {
				return progStats{}, err
			}
			if v != want {
				return progStats{}, fmt.Errorf("run %d: verdict %d, want %d: the time would be of another path", len(d), v, want)
			}
			d = append(d, dur)
			if answers {
				pending++
			}
		}
		return timeStats(d), nil
	}
	if res.Offer, err = timeRuns(prog, disc, resetOffer, xdpTX); err != nil {
		return res, fmt.Errorf("DISCOVER: %w", err)
	}
	if res.Ack, err = timeRuns(prog, req, resetAck, xdpTX); err != nil {
		return res, fmt.Errorf("REQUEST: %w", err)
	}
	other := clientMAC(2)
	unknown := buildRequest(make([]byte, frameLen()), dhcpRequest, other, 0x11223345, ip4, srv4)
	if res.Pass, err = timeRuns(prog, unknown, nil, 2); err != nil {
		return res, fmt.Errorf("REQUEST without binding: %w", err)
	}
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		return res, err
	}
	defer empty.Close()
	if res.Empty, err = timeRuns(empty, disc, nil, 2); err != nil {
		return res, fmt.Errorf("empty program: %w", err)
	}
	return res, nil
}

// xdpMD is struct xdp_md as BPF_PROG_RUN takes it.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}
