package fastpath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/phonetag"
)

// TestVLANLive runs the VLAN policy on a veth trunk: three phones behind it
// (macvlans in the peer namespace, tagged by the phone-side tagger), two
// voice VLANs with the appliance's addresses on the one interface, and the
// appliance's real UDP and TCP stack answering. It checks, on the wire:
// replies go back tagged with each phone's VLAN at priority 5 (a, d), a
// foreign VLAN and a double tag are dropped (b), and an untagged phone is
// put in the voice VLAN and answered priority-tagged (c). In native and
// generic XDP mode (a whitebox's front-panel ports often offer only generic).
func TestVLANLive(t *testing.T) {
	for _, mode := range []Mode{ModeNative, ModeGeneric} {
		t.Run(string(mode), func(t *testing.T) { testVLANLive(t, mode) })
	}
}

func testVLANLive(t *testing.T, mode Mode) {
	n := newTestNet(t, 1)
	port, peer := portName(0), peerName(0)
	for _, s := range []struct {
		ns   interface{ SetVLANOffload(string, bool) error }
		link string
	}{{n.ports, port}, {n.peers, peer}} {
		if err := s.ns.SetVLANOffload(s.link, false); err != nil {
			t.Fatal(err)
		}
	}
	f := n.mustStart(t, Config{Ports: []string{port}, Mode: mode})
	ifindex := f.attachments[0].Ifindex
	vt := f.objs.VLAN()
	must(t, vt.SetPort(ifindex, PortVLANs{
		Native:    1,
		Tagged:    []TaggedVLAN{{ID: 100, Priority: 5}, {ID: 101, Priority: 5}},
		AutoVoice: 100,
	}))
	must(t, vt.SetSubnets(map[netip.Prefix]uint16{
		netip.MustParsePrefix("10.100.0.0/24"): 100,
		netip.MustParsePrefix("10.101.0.0/24"): 101,
	}))
	must(t, vt.SetPhoneOUIs([][3]byte{{0x00, 0x1b, 0x54}}))
	for _, a := range []string{"10.100.0.1/24", "10.101.0.1/24"} {
		addAddr(t, n.ports.Netlink(), port, a)
	}

	// The phones: two tag with their voice VLANs, one does not tag at all.
	tagger, err := phonetag.Load()
	must(t, err)
	t.Cleanup(func() { tagger.Close() })
	var att *phonetag.Attachment
	must(t, n.peers.Do(func() error {
		l, err := net.InterfaceByName(peer)
		if err != nil {
			return err
		}
		att, err = tagger.Attach(l.Index)
		return err
	}))
	t.Cleanup(func() { att.Close() })
	phones := []struct {
		name string
		mac  net.HardwareAddr
		addr string
		vlan uint16 // 0: sends untagged
		// what its replies must carry on the wire
		wantVID uint16
	}{
		{"pbph100", net.HardwareAddr{0x00, 0x1b, 0x54, 0, 1, 0}, "10.100.0.50/24", 100, 100},
		{"pbph101", net.HardwareAddr{0x00, 0x1b, 0x54, 0, 1, 1}, "10.101.0.50/24", 101, 101},
		{"pbphauto", net.HardwareAddr{0x00, 0x1b, 0x54, 0, 1, 2}, "10.100.0.60/24", 0, 0},
	}
	must(t, n.peers.Do(func() error {
		// Two phones share a subnet in this one namespace: each answers
		// ARP only for its own address, as separate phones would.
		for _, k := range []string{"all/arp_ignore", "all/arp_announce"} {
			v := map[string]string{"all/arp_ignore": "1", "all/arp_announce": "2"}[k]
			if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+k, []byte(v), 0); err != nil {
				return err
			}
		}
		return nil
	}))
	parent, err := n.peers.Netlink().LinkByName(peer)
	must(t, err)
	for _, p := range phones {
		mv := &netlink.Macvlan{
			LinkAttrs: netlink.LinkAttrs{Name: p.name, ParentIndex: parent.Attrs().Index, HardwareAddr: p.mac},
			Mode:      netlink.MACVLAN_MODE_BRIDGE,
		}
		must(t, n.peers.Netlink().LinkAdd(mv))
		addAddr(t, n.peers.Netlink(), p.name, p.addr)
		must(t, n.peers.SetUp(p.name))
		if p.vlan != 0 {
			must(t, tagger.SetVLAN(p.mac, p.vlan, 5))
		}
	}

	wire := captureOutgoing(t, n, port)
	echo := startEcho(t, n)

	for _, p := range phones {
		server := "10.100.0.1"
		if p.vlan == 101 {
			server = "10.101.0.1"
		}
		t.Run("udp from "+p.name, func(t *testing.T) {
			got := phoneUDP(t, n, p.name, server, []byte("hello from "+p.name))
			if got != "hello from "+p.name {
				t.Errorf("echo %q", got)
			}
		})
		t.Run("tcp from "+p.name, func(t *testing.T) {
			payload := bytes.Repeat([]byte(p.name), 40000) // many segments
			if got := phoneTCP(t, n, p.name, server, payload); !bytes.Equal(got, payload) {
				t.Errorf("tcp echo: %d bytes back of %d", len(got), len(payload))
			}
		})
	}

	// What the appliance sent, as it left the port.
	frames := wire.stop(t)
	for _, p := range phones {
		var seen int
		for _, fr := range frames {
			if !bytes.Equal(fr[0:6], p.mac) {
				continue
			}
			seen++
			tpid := binary.BigEndian.Uint16(fr[12:14])
			tci := binary.BigEndian.Uint16(fr[14:16])
			if tpid != tpid8021Q || tci&0x0fff != p.wantVID || tci>>13 != 5 {
				t.Errorf("frame to %s (%s) left with TPID %#04x VID %d PCP %d, want 802.1Q VID %d PCP 5",
					p.name, p.mac, tpid, tci&0x0fff, tci>>13, p.wantVID)
				break
			}
		}
		if seen == 0 {
			t.Errorf("no frame to %s seen leaving the port", p.name)
		}
	}

	// (b) VLAN hopping: a foreign VLAN and a double tag carrying the voice
	// VLAN are dropped before the stack; the echo server hears nothing.
	before := echo.count()
	hop := counterSnapshot(t, f.Counters)["vlan_hop_drop"].Packets
	foreign := tftpLikeUDP(phones[0].mac, vlanTag{tpid: tpid8021Q, vid: 300})
	double := tftpLikeUDP(phones[0].mac, vlanTag{tpid: tpid8021AD, vid: 300}, vlanTag{tpid: tpid8021Q, vid: 100})
	n.send(t, 0, foreign, double)
	waitFor(t, "vlan_hop_drop to count both frames", func() (bool, string) {
		got := counterSnapshot(t, f.Counters)["vlan_hop_drop"].Packets - hop
		return got == 2, fmt.Sprintf("%d dropped", got)
	})
	time.Sleep(100 * time.Millisecond)
	if got := echo.count(); got != before {
		t.Errorf("echo server got %d datagrams from hopping frames", got-before)
	}

	c := counterSnapshot(t, f.Counters)
	for _, name := range []string{"vlan_untagged", "vlan_auto_voice", "vlan_egress_tagged", "vlan_egress_priority"} {
		if c[name].Packets == 0 {
			t.Errorf("counter %s did not move", name)
		}
	}
	if c["vlan_egress_drop"].Packets != 0 {
		t.Errorf("vlan_egress_drop = %d", c["vlan_egress_drop"].Packets)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func addAddr(t *testing.T, h *netlink.Handle, link, cidr string) {
	t.Helper()
	l, err := h.LinkByName(link)
	must(t, err)
	a, err := netlink.ParseAddr(cidr)
	must(t, err)
	must(t, h.AddrAdd(l, a))
}

// tftpLikeUDP is a UDP datagram from the first phone to the echo port,
// with the given tags.
func tftpLikeUDP(src net.HardwareAddr, tags ...vlanTag) []byte {
	return frame{
		dst: macBroadcast, src: [6]byte(src), tags: tags,
		ip:      &ipv4Hdr{proto: ipProtoUDP, src: [4]byte{10, 100, 0, 50}, dst: [4]byte{10, 100, 0, 1}},
		udp:     &udpHdr{src: 40000, dst: echoPort},
		payload: []byte("hop"),
	}.bytes()
}

const echoPort = 7777

type echoServer struct {
	mu sync.Mutex
	n  int
}

func (e *echoServer) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n
}

// startEcho runs UDP and TCP echo servers on echoPort in the ports namespace.
func startEcho(t *testing.T, n *testNet) *echoServer {
	t.Helper()
	e := &echoServer{}
	var uc *net.UDPConn
	var tl *net.TCPListener
	must(t, n.ports.Do(func() error {
		var err error
		if uc, err = net.ListenUDP("udp4", &net.UDPAddr{Port: echoPort}); err != nil {
			return err
		}
		tl, err = net.ListenTCP("tcp4", &net.TCPAddr{Port: echoPort})
		return err
	}))
	t.Cleanup(func() { uc.Close(); tl.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			k, from, err := uc.ReadFromUDP(buf)
			if err != nil {
				return
			}
			e.mu.Lock()
			e.n++
			e.mu.Unlock()
			uc.WriteToUDP(buf[:k], from)
		}
	}()
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return e
}

// phoneUDP sends one datagram from a phone's interface and returns the echo.
func phoneUDP(t *testing.T, n *testNet, dev, server string, msg []byte) string {
	t.Helper()
	var got string
	must(t, n.peers.Do(func() error {
		d := net.Dialer{Timeout: waitTimeout, Control: bindToDevice(dev)}
		c, err := d.Dial("udp4", net.JoinHostPort(server, strconv.Itoa(echoPort)))
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 2048)
		// The first datagram may wait for ARP; retry like a client would.
		for try := 0; try < 5; try++ {
			if _, err := c.Write(msg); err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			k, err := c.Read(buf)
			if err == nil {
				got = string(buf[:k])
				return nil
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return err
			}
		}
		return fmt.Errorf("no echo from %s via %s", server, dev)
	}))
	return got
}

// phoneTCP sends payload over TCP from a phone's interface and reads it back.
func phoneTCP(t *testing.T, n *testNet, dev, server string, payload []byte) []byte {
	t.Helper()
	var got []byte
	must(t, n.peers.Do(func() error {
		d := net.Dialer{Timeout: waitTimeout, Control: bindToDevice(dev)}
		c, err := d.Dial("tcp4", net.JoinHostPort(server, strconv.Itoa(echoPort)))
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * waitTimeout))
		errc := make(chan error, 1)
		go func() {
			_, err := c.Write(payload)
			errc <- err
		}()
		got = make([]byte, len(payload))
		_, rerr := io.ReadFull(c, got)
		return errors.Join(rerr, <-errc)
	}))
	return got
}

func bindToDevice(dev string) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), dev) })
		return errors.Join(err, serr)
	}
}

// wireCapture records the frames leaving an interface, as they go out:
// after the TC egress program and the kernel's insertion of its tag.
type wireCapture struct {
	fd       int
	mu       sync.Mutex
	frames   [][]byte
	stopOnce sync.Once
	stopCh   chan struct{}
	done     chan struct{}
}

// stop ends the capture and returns what it saw.
func (w *wireCapture) stop(t *testing.T) [][]byte {
	t.Helper()
	w.stopOnce.Do(func() { close(w.stopCh) })
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.frames
}

func captureOutgoing(t *testing.T, n *testNet, dev string) *wireCapture {
	t.Helper()
	w := &wireCapture{stopCh: make(chan struct{}), done: make(chan struct{})}
	must(t, n.ports.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			unix.Close(fd)
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		// Room for everything the test sends and receives (a few MB,
		// TCP in 64 KB segments), so that a reader slowed by a loaded
		// machine drops nothing.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20); err != nil {
			unix.Close(fd)
			return err
		}
		tv := unix.Timeval{Usec: 100000}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		w.fd = fd
		return nil
	}))
	go func() {
		defer close(w.done)
		buf := make([]byte, 65536)
		flags := 0
		for {
			if flags == 0 {
				select {
				case <-w.stopCh:
					// Frames sent before stop are queued on the
					// socket already: read them all, then return.
					flags = unix.MSG_DONTWAIT
				default:
				}
			}
			k, from, err := unix.Recvfrom(w.fd, buf, flags)
			if err != nil {
				if flags != 0 && (err == unix.EAGAIN || err == unix.EWOULDBLOCK) {
					return
				}
				continue // the receive timeout, to look at stop
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				w.mu.Lock()
				w.frames = append(w.frames, bytes.Clone(buf[:k]))
				w.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		w.stop(t)
		unix.Close(w.fd)
	})
	return w
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
