package lab

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/vishvananda/netlink"

	"github.com/phoneboot/phoneboot/userspace/offload"
	"github.com/phoneboot/phoneboot/userspace/phonetag"
	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/rawsock"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// phoneNICFixture is one lab port without the agent: the appliance's end
// ("a0", with the appliance's address and a raw socket to see the wire)
// and the phones' namespace with the phone tagger on its link and a
// macvlan per phone, built by the lab's own code.
type phoneNICFixture struct {
	app    *vnet.NS
	port   *Port
	side   *applianceSide
	tagger *phonetag.Tagger
	phones []*Phone
	wire   *rawsock.Conn // on a0
}

var udpOnly = []bpf.Instruction{
	// IPv4/UDP, tagged or not: the kernel's removed tag is not in the
	// frame the filter sees.
	bpf.LoadAbsolute{Off: 12, Size: 2},
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0x0800, SkipTrue: 3},
	bpf.LoadAbsolute{Off: 23, Size: 1},
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 17, SkipTrue: 1},
	bpf.RetConstant{Val: 0xffff},
	bpf.RetConstant{Val: 0},
}

func newPhoneNICFixture(t *testing.T, phones int) *phoneNICFixture {
	t.Helper()
	app, pns := privtest.VethPair(t, "a0", phoneLink)
	fx := &phoneNICFixture{app: app, port: &Port{Name: "p1", NS: pns, Link: phoneLink}}
	for _, ns := range []*vnet.NS{app, pns} {
		link := map[*vnet.NS]string{app: "a0", pns: phoneLink}[ns]
		if err := ns.Do(func() error { return offload.SetVLAN(link, false) }); err != nil {
			t.Fatal(err)
		}
	}
	if err := pns.SetUp(phoneLink); err != nil {
		t.Fatal(err)
	}
	var err error
	if fx.port.thread, err = pns.StartThread(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fx.port.thread.Stop)
	if err := fx.port.thread.Do(func() error { return writeNetSysctls(portSysctls) }); err != nil {
		t.Fatal(err)
	}
	if fx.port.rt, err = openRTNL(pns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fx.port.rt.close)

	a0, err := app.Netlink().LinkByName("a0")
	if err != nil {
		t.Fatal(err)
	}
	appRT, err := openRTNL(app)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(appRT.close)
	server := netip.MustParseAddr("10.64.0.1")
	if err := appRT.do(addrRequest(a0.Attrs().Index, netip.MustParsePrefix("10.64.0.1/13"))); err != nil {
		t.Fatal(err)
	}
	fx.side = &applianceSide{mac: a0.Attrs().HardwareAddr, index: a0.Attrs().Index, rt: appRT,
		server: func(p netip.Prefix) netip.Addr {
			if p == netip.MustParsePrefix("10.64.0.0/13") {
				return server
			}
			return netip.Addr{}
		}}

	if fx.tagger, err = phonetag.Load(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fx.tagger.Close() })
	err = pns.Do(func() error {
		ifi, err := net.InterfaceByName(phoneLink)
		if err != nil {
			return err
		}
		a, err := fx.tagger.Attach(ifi.Index)
		if err == nil {
			t.Cleanup(func() { a.Close() })
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range phones {
		ph := newPhone(i, modelsForTest[0], fx.port, 1)
		ph.nicIndex = phoneIndexBase + i
		ph.listen = ph.listenUDP
		ph.IP = netip.AddrFrom4([4]byte{10, 64, 0, byte(20 + i)})
		ph.Subnet = netip.MustParsePrefix("10.64.0.0/13")
		fx.phones = append(fx.phones, ph)
	}
	if err := createPhoneNICs(fx.port, fx.phones); err != nil {
		t.Fatal(err)
	}
	err = app.Do(func() error {
		var err error
		fx.wire, err = rawsock.Listen("a0", rawsock.Options{Filter: udpOnly})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fx.wire.Close() })
	return fx
}

// TestPhoneNIC: a phone's macvlan, brought up with its lease, sends
// through the port's link, and the phone tagger (XDP and TC on that link)
// tags what it sends and untags what it receives, as for the raw sockets.
func TestPhoneNIC(t *testing.T) {
	privtest.Require(t)
	fx := newPhoneNICFixture(t, 2)
	tagged, untagged := fx.phones[0], fx.phones[1]
	for _, ph := range fx.phones {
		if err := ph.bringUpNIC(fx.side); err != nil {
			t.Fatal(err)
		}
	}
	if err := fx.tagger.SetVLAN(tagged.MAC, 101, voicePriority); err != nil {
		t.Fatal(err)
	}
	// The sysctls are the port namespace's, not the machine's.
	var arpIgnore []byte
	if err := fx.port.thread.Do(func() (err error) {
		arpIgnore, err = os.ReadFile("/proc/sys/net/ipv4/conf/all/arp_ignore")
		return err
	}); err != nil || strings.TrimSpace(string(arpIgnore)) != "1" {
		t.Errorf("arp_ignore in the port namespace: %q, %v", arpIgnore, err)
	}

	// Out: from the phone's socket to the appliance, with the tag its
	// voice VLAN gives it (the neighbour entry spares an ARP exchange).
	for _, c := range []struct {
		ph     *Phone
		tagged bool
	}{{tagged, true}, {untagged, false}} {
		conn, err := c.ph.listen("udp4", &net.UDPAddr{IP: c.ph.IP.AsSlice()})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		payload := []byte("from " + c.ph.Name)
		if _, err := conn.WriteTo(payload, &net.UDPAddr{IP: net.IPv4(10, 64, 0, 1), Port: 9999}); err != nil {
			t.Fatal(err)
		}
		fr := readUntil(t, fx.wire, func(fr rawsock.Frame) bool { return bytes.Contains(fr.Data, payload) })
		if !bytes.Equal(fr.Data[6:12], c.ph.MAC) || fr.Tagged != c.tagged || c.tagged && fr.VLAN != 101 {
			t.Errorf("%s: frame from %x, tagged %v VLAN %d; want from its MAC, tagged %v (VLAN 101)", c.ph.Name, fr.Data[6:12], fr.Tagged, fr.VLAN, c.tagged)
		}
	}

	// In: a frame tagged with the voice VLAN reaches the phone's socket
	// (the tagger's XDP removes the tag; without that the kernel, which
	// has no VLAN device here, would drop it), and only that phone's.
	conn, err := tagged.listen("udp4", &net.UDPAddr{IP: tagged.IP.AsSlice(), Port: 4000})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	other, err := untagged.listen("udp4", &net.UDPAddr{Port: 4000})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	payload := []byte("to the tagged phone")
	frame := udpFrame(t, fx.side.mac, tagged.MAC, 101, netip.MustParseAddr("10.64.0.1"), tagged.IP, 9999, 4000, payload)
	if err := fx.wire.Write(frame); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, from, err := conn.ReadFrom(buf)
	if err != nil || !bytes.Equal(buf[:n], payload) || from.String() != "10.64.0.1:9999" {
		t.Fatalf("phone read %q from %v, %v", buf[:n], from, err)
	}
	other.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _, err := other.ReadFrom(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("another phone's socket on the port got %q, %v", buf[:n], err)
	}
}

// TestRTNLErrors: the kernel's answer to each request reaches the job
// that made it.
func TestRTNLErrors(t *testing.T) {
	privtest.Require(t)
	fx := newPhoneNICFixture(t, 1)
	ph := fx.phones[0]
	// Its macvlan exists: creating it again fails, and only that job.
	link, err := fx.port.NS.Netlink().LinkByName(phoneLink)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 2)
	go func() { errc <- fx.port.rt.do(macvlanRequest(ph.nicName(), ph.nicIndex, link.Attrs().Index, ph.MAC)) }()
	go func() { errc <- fx.port.rt.do(linkUpRequest(ph.nicIndex)) }()
	var failed []error
	for range 2 {
		if err := <-errc; err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) != 1 || !(errors.Is(failed[0], unix.EEXIST) || errors.Is(failed[0], unix.EBUSY)) {
		t.Errorf("errors %v, want one: the macvlan exists", failed)
	}
	// The first failure of a job is its error.
	err = fx.port.rt.do(linkUpRequest(ph.nicIndex), linkUpRequest(phoneIndexBase+77), linkUpRequest(ph.nicIndex))
	if !errors.Is(err, unix.ENODEV) {
		t.Errorf("a job with a request for no link: %v, want ENODEV", err)
	}
	if err := ph.bringUpNIC(&applianceSide{mac: fx.side.mac, rt: fx.side.rt, index: fx.side.index,
		server: func(netip.Prefix) netip.Addr { return netip.Addr{} }}); err == nil || !strings.Contains(err.Error(), "no appliance address") {
		t.Errorf("a phone outside the appliance's subnets: %v", err)
	}
}

func readUntil(t *testing.T, c *rawsock.Conn, match func(rawsock.Frame) bool) rawsock.Frame {
	t.Helper()
	buf := make([]byte, 2048)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c.SetReadDeadline(deadline)
		fr, err := c.Read(buf)
		if err != nil {
			t.Fatalf("read the wire: %v", err)
		}
		if match(fr) {
			fr.Data = append([]byte(nil), fr.Data...)
			return fr
		}
	}
	t.Fatal("the frame never came")
	return rawsock.Frame{}
}

func udpFrame(t *testing.T, src, dst net.HardwareAddr, vlan uint16, srcIP, dstIP netip.Addr, sport, dport uint16, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: srcIP.AsSlice(), DstIP: dstIP.AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: layers.EthernetTypeDot1Q},
		&layers.Dot1Q{VLANIdentifier: vlan, Priority: voicePriority, Type: layers.EthernetTypeIPv4},
		ip, udp, gopacket.Payload(payload))
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestBridgeWithoutNetfilter: in a fresh namespace, where br_netfilter (if
// the host has it loaded) sets its sysctls to 1, the lab's switch turns
// them off, and without the module it has nothing to do.
func TestBridgeWithoutNetfilter(t *testing.T) {
	app, _ := privtest.VethPair(t, "a0", phoneLink)
	read := func() map[string]string {
		got := map[string]string{}
		err := app.Do(func() error {
			for _, k := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"} {
				v, err := os.ReadFile("/proc/sys/net/bridge/" + k)
				if errors.Is(err, os.ErrNotExist) {
					continue
				}
				if err != nil {
					return err
				}
				got[k] = strings.TrimSpace(string(v))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	before := read()
	if err := app.Do(bridgeWithoutNetfilter); err != nil {
		t.Fatal(err)
	}
	after := read()
	if len(after) != len(before) {
		t.Fatalf("sysctls before %v, after %v", before, after)
	}
	for k, v := range after {
		if v != "0" {
			t.Errorf("net.bridge.%s = %s after, want 0 (before: %s)", k, v, before[k])
		}
	}
	t.Logf("br_netfilter sysctls before %v, after %v", before, after)
}

// TestPortQueue: a switch port gets a pfifo_fast queue in place of the
// veth's noqueue.
func TestPortQueue(t *testing.T) {
	app, _ := privtest.VethPair(t, "a0", phoneLink)
	h := app.Netlink()
	link, err := h.LinkByName("a0")
	if err != nil {
		t.Fatal(err)
	}
	kinds := func() []string {
		qs, err := h.QdiscList(link)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, q := range qs {
			if q.Attrs().Parent == netlink.HANDLE_ROOT {
				out = append(out, q.Type())
			}
		}
		return out
	}
	if err := app.SetUp("a0"); err != nil {
		t.Fatal(err)
	}
	before := kinds()
	if err := givePortQueue(h, link); err != nil {
		t.Fatal(err)
	}
	if got := kinds(); len(got) != 1 || got[0] != "pfifo_fast" {
		t.Errorf("root qdisc %v after (before %v), want [pfifo_fast]", got, before)
	}
}
