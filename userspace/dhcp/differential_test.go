package dhcp

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/phoneboot/phoneboot/userspace/fastpath"
	"github.com/phoneboot/phoneboot/userspace/lease"
	"github.com/phoneboot/phoneboot/userspace/privtest"
)

// The differential test: the XDP fast path (under BPF_PROG_RUN) and the Go
// handler get the same requests from the same state, and wherever the
// kernel answers, its frame must be byte-for-byte the Go server's.

var diffPortMAC = net.HardwareAddr{0x02, 0x50, 0x42, 0x00, 0x00, 0x01}

// diffKernelQueue is the kernel's free queue here: a few clients per run
// need no more, and every reset refills it.
const diffKernelQueue = 64

type diffEnv struct {
	objs *fastpath.Objects
	srv  *Server  // the kernel side: its handler fills the kernel's tables
	ref  *Handler // the Go reference, with a store of its own
}

func newDiffEnv(t testing.TB, cfg Config) *diffEnv {
	privtest.Require(t)
	log := testLogger(t)
	objs, err := fastpath.LoadObjects("", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	hk, err := NewHandler(cfg, lease.NewMemory(), log)
	if err != nil {
		t.Fatal(err)
	}
	// ifindex 1 is lo, which exists in every namespace BPF_PROG_RUN may
	// name as the ingress device.
	p := &phonePort{name: "p1", ifindex: 1, mac: diffPortMAC}
	srv := &Server{h: hk, cfg: ServerConfig{FastPath: objs.DHCP(), KernelQueue: diffKernelQueue}, log: log,
		ports: []*phonePort{p}, byIdx: map[int]*phonePort{1: p}, queued: map[*Pool]*atomic.Int64{}, poolID: map[*Pool]uint32{}}
	if err := srv.loadKernel(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.events.Close() })
	ref, err := NewHandler(cfg, lease.NewMemory(), log)
	if err != nil {
		t.Fatal(err)
	}
	return &diffEnv{objs: objs, srv: srv, ref: ref}
}

// reset brings both sides back to the state newDiffEnv made: empty
// stores, the kernel's queues refilled from a fresh allocator.
func (e *diffEnv) reset(t testing.TB) {
	t.Helper()
	log := testLogger(t)
	var err error
	if e.ref, err = NewHandler(testConfig(), lease.NewMemory(), log); err != nil {
		t.Fatal(err)
	}
	if e.srv.h, err = NewHandler(testConfig(), lease.NewMemory(), log); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Empty the event ring, or once full the kernel stops answering.
	for {
		e.srv.events.SetDeadline(time.Now())
		if _, err := e.srv.events.Read(); err != nil {
			break
		}
	}
	e.srv.events.SetDeadline(time.Time{})
	e.srv.log = log
	// Forget the last run's clients in the kernel too, or loadBindings
	// adopts the bound ones into the fresh store, which the reference's
	// lacks.
	if _, err := e.srv.cfg.FastPath.PruneBindings(func(uint16, [6]byte) bool { return false }); err != nil {
		t.Fatal(err)
	}
	for id := uint32(1); id < fastpath.DHCPPoolMax; id++ {
		if _, err := e.srv.cfg.FastPath.DrainFree(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.srv.loadBindings(ctx); err != nil {
		t.Fatal(err)
	}
	for i, p := range e.srv.h.Pools() {
		e.srv.queued[p] = &atomic.Int64{}
		e.srv.poolID[p] = uint32(i + 1) // as loadKernel numbers them
		if err := e.srv.refill(p); err != nil {
			t.Fatal(err)
		}
	}
}

// frameFor puts a client message in a frame as a phone sends it.
func frameFor(t testing.TB, vlan uint16, src net.IP, dst netip.Addr, m *dhcpv4.DHCPv4) []byte {
	eth := &layers.Ethernet{SrcMAC: m.ClientHWAddr, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeIPv4}
	ipl := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src, DstIP: net.IP(dst.AsSlice())}
	udp := &layers.UDP{SrcPort: 68, DstPort: 67}
	udp.SetNetworkLayerForChecksum(ipl)
	ls := []gopacket.SerializableLayer{eth}
	if vlan != 0 {
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: vlan, Priority: 5, Type: layers.EthernetTypeIPv4})
	}
	ls = append(ls, ipl, udp, gopacket.Payload(m.ToBytes()))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// untag removes the first 802.1Q tag, as the kernel does before a packet
// socket sees the frame.
func untag(frame []byte) ([]byte, uint16) {
	if len(frame) >= 18 && frame[12] == 0x81 && frame[13] == 0x00 {
		vlan := (uint16(frame[14])<<8 | uint16(frame[15])) & 0x0fff
		return append(append([]byte(nil), frame[:12]...), frame[16:]...), vlan
	}
	return frame, 0
}

// step runs one frame through both. It returns whether the kernel
// answered, after checking that the Go server's answer is the same frame.
func (e *diffEnv) step(t testing.TB, frame []byte) (bool, []byte) {
	t.Helper()
	out := make([]byte, len(frame)+600)
	ctx := struct{ Data, DataEnd, DataMeta, Ingress, RxQueue, Egress uint32 }{DataEnd: uint32(len(frame)), Ingress: 1}
	opts := &ebpf.RunOptions{Data: append([]byte(nil), frame...), DataOut: out, Context: ctx}
	verdict, err := e.objs.Program().Run(opts)
	if err != nil {
		t.Fatal(err)
	}
	plain, vlan := untag(frame)
	req, derr := DecodeFrame(plain, vlan, "p1")
	var rep Reply
	var outcome Outcome
	if derr == nil {
		rep, outcome = e.ref.Handle(context.Background(), req)
	}
	switch verdict {
	case 1: // XDP_DROP: the Go server must not answer it either
		if derr == nil && outcome.Action == Answered {
			t.Fatalf("kernel dropped a frame the Go server answers (%v)", outcome)
		}
		return false, nil
	case 2: // XDP_PASS: the Go server decides; nothing to compare
		return false, nil
	case 3: // XDP_TX
	default:
		t.Fatalf("verdict %d", verdict)
	}
	if derr != nil {
		t.Fatalf("kernel answered a frame the Go server cannot decode: %v", derr)
	}
	if outcome.Action != Answered {
		t.Fatalf("kernel answered, Go server: %v", outcome)
	}
	want := EncodeFrame(diffPortMAC, rep)
	if !bytes.Equal(opts.DataOut, want) {
		t.Fatalf("kernel and Go replies differ (%v)\nkernel: %x\n    go: %x", outcome, opts.DataOut, want)
	}
	return true, opts.DataOut
}

func parseReplyFrame(t testing.TB, frame []byte) *dhcpv4.DHCPv4 {
	t.Helper()
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	udp, _ := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if udp == nil {
		t.Fatalf("reply has no UDP layer")
	}
	m, err := dhcpv4.FromBytes(udp.Payload)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var bcast = netip.MustParseAddr("255.255.255.255")

func phoneDiscover(t testing.TB, hw net.HardwareAddr, broadcast bool, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	m, err := dhcpv4.NewDiscovery(hw, mods...)
	if err != nil {
		t.Fatal(err)
	}
	if broadcast {
		m.SetBroadcast()
	} else {
		m.SetUnicast()
	}
	return m
}

func TestDifferentialDORA(t *testing.T) {
	e := newDiffEnv(t, testConfig())
	vc := dhcpv4.WithOption(dhcpv4.OptClassIdentifier(vcPhone8845))
	host := func(n string) dhcpv4.Modifier { return dhcpv4.WithOption(dhcpv4.OptHostName(n)) }
	tests := []struct {
		name string
		vlan uint16
		mods []dhcpv4.Modifier
		bc   bool
	}{
		{"untagged, broadcast", 0, nil, true},
		{"untagged, unicast", 0, []dhcpv4.Modifier{host("SEP001E7A000001")}, false},
		{"voice VLAN, exact class", 100, []dhcpv4.Modifier{vc, host("SEP001E7A000002")}, true},
		{"voice VLAN, no option 60", 100, nil, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hw := macN(1000 + i)
			disc := phoneDiscover(t, hw, tt.bc, tt.mods...)
			answered, out := e.step(t, frameFor(t, tt.vlan, net.IPv4zero, bcast, disc))
			if !answered {
				t.Fatal("the kernel passed a DISCOVER it should answer")
			}
			offer := parseReplyFrame(t, out)
			req, err := dhcpv4.NewRequestFromOffer(offer, tt.mods...)
			if err != nil {
				t.Fatal(err)
			}
			if tt.bc {
				req.SetBroadcast()
			} else {
				req.SetUnicast()
			}
			if answered, _ = e.step(t, frameFor(t, tt.vlan, net.IPv4zero, bcast, req)); !answered {
				t.Fatal("the kernel passed the REQUEST for its own offer")
			}
			// INIT-REBOOT for the bound address.
			reboot, _ := dhcpv4.New(dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
				dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)))
			reboot.SetBroadcast()
			if answered, _ = e.step(t, frameFor(t, tt.vlan, net.IPv4zero, bcast, reboot)); !answered {
				t.Fatal("the kernel passed an INIT-REBOOT for a bound address")
			}
			// RENEWING: unicast from the bound address to the server.
			server := e.ref.PoolByVLAN(tt.vlan).ServerIP()
			renew, _ := dhcpv4.New(dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
				dhcpv4.WithClientIP(offer.YourIPAddr))
			renew.SetUnicast()
			if answered, _ = e.step(t, frameFor(t, tt.vlan, offer.YourIPAddr, server, renew)); !answered {
				t.Fatal("the kernel passed a RENEW for a bound address")
			}
			// A bound client's DISCOVER is offered its address again.
			if answered, _ = e.step(t, frameFor(t, tt.vlan, net.IPv4zero, bcast, phoneDiscover(t, hw, true, tt.mods...))); !answered {
				t.Fatal("the kernel passed a bound client's DISCOVER")
			}
		})
	}
}

// TestDifferentialPasses lists requests the kernel must leave to Go.
func TestDifferentialPasses(t *testing.T) {
	e := newDiffEnv(t, testConfig())
	prefixClass := phoneDiscover(t, macN(1), true, dhcpv4.WithOption(dhcpv4.OptClassIdentifier(vcPhone7841)))
	reserved := phoneDiscover(t, resvInMAC, true)
	relayed := phoneDiscover(t, macN(2), true)
	relayed.GatewayIPAddr = net.IPv4(172, 16, 5, 1)
	tests := []struct {
		name  string
		vlan  uint16
		frame []byte
	}{
		{"prefix class (only Go matches prefixes)", 100, frameFor(t, 100, net.IPv4zero, bcast, prefixClass)},
		{"reserved client", 100, frameFor(t, 100, net.IPv4zero, bcast, reserved)},
		{"relayed", 0, frameFor(t, 0, net.IPv4zero, bcast, relayed)},
		{"VLAN without a pool", 200, frameFor(t, 200, net.IPv4zero, bcast, phoneDiscover(t, macN(3), true))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if answered, _ := e.step(t, tt.frame); answered {
				t.Fatal("the kernel answered a request only the Go server can")
			}
		})
	}
}

// FuzzDifferential mutates a phone's DISCOVER; whenever the kernel answers
// one, the Go server must answer it with the same bytes.
func FuzzDifferential(f *testing.F) {
	seed := func(mods ...dhcpv4.Modifier) []byte {
		m, _ := dhcpv4.NewDiscovery(net.HardwareAddr{0x00, 0x1e, 0x7a, 1, 2, 3}, mods...)
		m.SetBroadcast()
		return m.ToBytes()
	}
	f.Add(seed(), uint16(0))
	f.Add(seed(dhcpv4.WithOption(dhcpv4.OptClassIdentifier(vcPhone8845))), uint16(100))
	f.Add(seed(dhcpv4.WithOption(dhcpv4.OptHostName("SEP001E7A010203"))), uint16(100))
	e := newDiffEnv(f, testConfig())
	f.Fuzz(func(t *testing.T, payload []byte, vlan uint16) {
		if len(payload) < 240 || len(payload) > 1400 {
			return
		}
		e.reset(t)
		m, err := dhcpv4.FromBytes(payload)
		if err != nil || len(m.ClientHWAddr) != 6 {
			return
		}
		// Send the fuzzed bytes themselves, not a re-encoding.
		frame := frameFor(t, vlan%4095, net.IPv4zero, bcast, m)
		hdr := len(frame) - len(m.ToBytes())
		frame = append(frame[:hdr:hdr], payload...)
		fixLengths(frame, hdr)
		e.step(t, frame)
	})
}

// fixLengths sets the IPv4 and UDP lengths and checksums after the payload
// starting at off was replaced.
func fixLengths(frame []byte, off int) {
	l2 := 14
	if frame[12] == 0x81 {
		l2 = 18
	}
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	ipl, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	udp, _ := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if ipl == nil || udp == nil {
		return
	}
	udp.SetNetworkLayerForChecksum(ipl)
	buf := gopacket.NewSerializeBuffer()
	gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ipl, udp, gopacket.Payload(frame[off:]))
	copy(frame[l2:], buf.Bytes())
}

// diffClient is the client the stateful fuzz targets bring to a stage
// before the fuzzed frame.
var diffClient = net.HardwareAddr{0x00, 0x1e, 0x7a, 9, 8, 7}

// toStage runs diffClient's exchange on vlan up to stage (0: unknown, 1:
// offered, 2: bound) through both sides, every step answered by the kernel;
// it returns the address offered (zero at stage 0).
func (e *diffEnv) toStage(t testing.TB, vlan uint16, stage uint8) net.IP {
	t.Helper()
	if stage == 0 {
		return nil
	}
	answered, out := e.step(t, frameFor(t, vlan, net.IPv4zero, bcast, phoneDiscover(t, diffClient, true)))
	if !answered {
		t.Fatal("the kernel passed the stage's DISCOVER")
	}
	offer := parseReplyFrame(t, out)
	if stage >= 2 {
		req, err := dhcpv4.NewRequestFromOffer(offer)
		if err != nil {
			t.Fatal(err)
		}
		req.SetBroadcast()
		if answered, _ := e.step(t, frameFor(t, vlan, net.IPv4zero, bcast, req)); !answered {
			t.Fatal("the kernel passed the stage's REQUEST")
		}
	}
	return offer.YourIPAddr
}

// FuzzDifferentialRequest mutates the next message of a client the kernel
// knows nothing of, has offered an address or has bound: REQUESTs in every
// state (SELECTING, INIT-REBOOT, RENEWING) and DISCOVERs of a known client
// reach binding paths of the kernel that a fresh state never does. A
// message with a ciaddr comes unicast from it to the server, as a renewal
// does; the rest broadcast from 0.0.0.0.
func FuzzDifferentialRequest(f *testing.F) {
	e := newDiffEnv(f, testConfig())
	for _, vlan := range []uint16{0, 100} {
		e.reset(f)
		ip := e.toStage(f, vlan, 1)
		server := e.ref.PoolByVLAN(vlan).ServerIP()
		selecting, _ := dhcpv4.New(dhcpv4.WithHwAddr(diffClient), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(server.AsSlice()))),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip)),
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier(vcPhone8845)))
		selecting.SetBroadcast()
		reboot, _ := dhcpv4.New(dhcpv4.WithHwAddr(diffClient), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip)))
		reboot.SetBroadcast()
		renew, _ := dhcpv4.New(dhcpv4.WithHwAddr(diffClient), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithClientIP(ip))
		again := phoneDiscover(f, diffClient, true)
		for stage := range uint8(3) {
			for _, m := range []*dhcpv4.DHCPv4{selecting, reboot, renew, again} {
				f.Add(m.ToBytes(), vlan == 100, stage)
			}
		}
	}
	f.Fuzz(func(t *testing.T, payload []byte, tagged bool, stage uint8) {
		if len(payload) < 240 || len(payload) > 1400 {
			return
		}
		m, err := dhcpv4.FromBytes(payload)
		if err != nil || len(m.ClientHWAddr) != 6 {
			return
		}
		vlan := uint16(0)
		if tagged {
			vlan = 100
		}
		e.reset(t)
		e.toStage(t, vlan, stage%3)
		src, dst := net.IPv4zero, bcast
		if ci := m.ClientIPAddr.To4(); ci != nil && !ci.IsUnspecified() {
			src, dst = ci, e.ref.PoolByVLAN(vlan).ServerIP()
		}
		frame := frameFor(t, vlan, src, dst, m)
		hdr := len(frame) - len(m.ToBytes())
		frame = append(frame[:hdr:hdr], payload...)
		fixLengths(frame, hdr)
		e.step(t, frame)
	})
}

// FuzzDifferentialFrame mutates whole frames, the Ethernet, VLAN, IPv4 and
// UDP headers too: whatever the kernel answers, the Go server answers with
// the same bytes; whatever it drops, the Go server does not answer.
func FuzzDifferentialFrame(f *testing.F) {
	e := newDiffEnv(f, testConfig())
	for _, vlan := range []uint16{0, 100} {
		f.Add(frameFor(f, vlan, net.IPv4zero, bcast, phoneDiscover(f, diffClient, true)))
		f.Add(frameFor(f, vlan, net.IPv4zero, bcast,
			phoneDiscover(f, diffClient, false, dhcpv4.WithOption(dhcpv4.OptClassIdentifier(vcPhone8845)))))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		// BPF_PROG_RUN refuses a frame shorter than an Ethernet header.
		if len(frame) < 14 || len(frame) > 1600 {
			return
		}
		e.reset(t)
		e.step(t, frame)
	})
}
