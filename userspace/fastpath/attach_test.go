package fastpath

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// Live tests: the program attached to veth ports in throwaway network
// namespaces, frames sent from the peer namespace, pins on a bpffs
// mounted for the test.

const waitTimeout = 5 * time.Second

// testNet is two namespaces: ports holds the phone-facing ends the
// program attaches to, peers their other ends, where frames come from.
type testNet struct {
	ports, peers *vnet.NS
}

func portName(i int) string { return fmt.Sprintf("pbport%d", i) }
func peerName(i int) string { return fmt.Sprintf("pbpeer%d", i) }

// newTestNet creates the namespaces and pairs veth pairs between them,
// all up, with IPv6 off so the kernel sends nothing of its own.
func newTestNet(t *testing.T, pairs int) *testNet {
	t.Helper()
	privtest.Require(t)
	n := &testNet{}
	for _, ns := range []**vnet.NS{&n.ports, &n.peers} {
		created, err := vnet.Create(vnet.UniqueName("pbt"))
		if err != nil {
			t.Fatalf("create netns: %v", err)
		}
		t.Cleanup(func() {
			if err := created.Close(); err != nil {
				t.Errorf("close netns %s: %v", created.Name, err)
			}
		})
		*ns = created
		err = created.Do(func() error {
			for _, conf := range []string{"all", "default"} {
				if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+conf+"/disable_ipv6", []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("netns %s: disable IPv6: %v", created.Name, err)
		}
	}
	for i := range pairs {
		if err := vnet.Veth(n.ports, portName(i), n.peers, peerName(i)); err != nil {
			t.Fatal(err)
		}
		if err := n.ports.SetUp(portName(i)); err != nil {
			t.Fatal(err)
		}
		if err := n.peers.SetUp(peerName(i)); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// fastPath is a FastPath created in the ports namespace by a test.
type fastPath struct {
	*FastPath
	n      *testNet
	closed bool
}

// start calls New inside the ports namespace. A FastPath the test does not
// close itself is closed at cleanup.
func (n *testNet) start(t *testing.T, cfg Config) (*fastPath, error) {
	t.Helper()
	var f *FastPath
	err := n.ports.Do(func() error {
		var err error
		f, err = New(cfg, testLogger(t))
		return err
	})
	if err != nil {
		if f != nil {
			t.Errorf("New returned a FastPath with error %v", err)
		}
		return nil, err
	}
	fp := &fastPath{FastPath: f, n: n}
	t.Cleanup(func() {
		if !fp.closed {
			fp.close(t)
		}
	})
	return fp, nil
}

func (n *testNet) mustStart(t *testing.T, cfg Config) *fastPath {
	t.Helper()
	f, err := n.start(t, cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	return f
}

// close calls Close inside the ports namespace.
func (f *fastPath) close(t *testing.T) {
	t.Helper()
	f.closed = true
	if err := f.n.ports.Do(f.FastPath.Close); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// progID is the kernel's ID of the program this FastPath loaded.
func (f *fastPath) progID(t *testing.T) uint32 {
	t.Helper()
	info, err := f.objs.Program().Info()
	if err != nil {
		t.Fatalf("program info: %v", err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("kernel reports no program ID")
	}
	return uint32(id)
}

// pinnedLink returns the ID of the XDP link pinned for port and the ID of
// the program in it.
func pinnedLink(t *testing.T, pinDir, port string) (link.ID, ebpf.ProgramID) {
	t.Helper()
	l, err := link.LoadPinnedLink(filepath.Join(pinDir, "link_"+port), nil)
	if err != nil {
		t.Fatalf("load pinned link of %s: %v", port, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatalf("link info: %v", err)
	}
	return info.ID, info.Program
}

// pinnedCounters reads the counters from the map pinned in pinDir.
func pinnedCounters(t *testing.T, pinDir string) func() ([]Counter, error) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "pb_counters"), nil)
	if err != nil {
		t.Fatalf("load pinned counters: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	o := &Objects{}
	o.objs.PbCounters = m
	return o.ReadCounters
}

// xdpState is what netlink says is attached to a port: the mode, or ""
// when nothing is, and the program ID.
func (n *testNet) xdpState(t *testing.T, port string) (Mode, uint32) {
	t.Helper()
	l, err := n.ports.Netlink().LinkByName(port)
	if err != nil {
		t.Fatalf("netns %s: %v", n.ports.Name, err)
	}
	x := l.Attrs().Xdp
	if x == nil || !x.Attached {
		return "", 0
	}
	switch x.AttachMode {
	case nl.XDP_ATTACHED_DRV:
		return ModeNative, x.ProgId
	case nl.XDP_ATTACHED_SKB:
		return ModeGeneric, x.ProgId
	}
	t.Fatalf("%s: XDP attach mode %d", port, x.AttachMode)
	return "", 0
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v still waiting for %s: %s", waitTimeout, what, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitXDP waits until port has the program prog in mode (or, with mode
// "", nothing at all). prog 0 accepts any program.
func (n *testNet) waitXDP(t *testing.T, port string, mode Mode, prog uint32) {
	t.Helper()
	waitFor(t, fmt.Sprintf("xdp on %s to be %q prog %d", port, mode, prog), func() (bool, string) {
		m, id := n.xdpState(t, port)
		return m == mode && (prog == 0 || id == prog), fmt.Sprintf("mode %q prog %d", m, id)
	})
}

// send writes raw frames on a peer port with an AF_PACKET socket.
func (n *testNet) send(t *testing.T, peer int, frames ...[]byte) {
	t.Helper()
	err := n.peers.Do(func() error {
		l, err := netlink.LinkByName(peerName(peer))
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(fd)
		for _, fr := range frames {
			to := &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Halen: 6}
			copy(to.Addr[:], fr[:6])
			if err := unix.Sendto(fd, fr, 0, to); err != nil {
				return fmt.Errorf("send %d-byte frame: %w", len(fr), err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send from %s: %v", peerName(peer), err)
	}
}

// sendUDPBroadcast sends a datagram to 255.255.255.255:port through the
// peer namespace's IP stack, as a DHCP client would.
func (n *testNet) sendUDPBroadcast(t *testing.T, peer int, port int, payload []byte) {
	t.Helper()
	err := n.peers.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1); err != nil {
			return fmt.Errorf("SO_BROADCAST: %w", err)
		}
		if err := unix.BindToDevice(fd, peerName(peer)); err != nil {
			return fmt.Errorf("SO_BINDTODEVICE: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: 68}); err != nil {
			return fmt.Errorf("bind :68: %w", err)
		}
		return unix.Sendto(fd, payload, 0, &unix.SockaddrInet4{Port: port, Addr: [4]byte{255, 255, 255, 255}})
	})
	if err != nil {
		t.Fatalf("send UDP broadcast from %s: %v", peerName(peer), err)
	}
}

// counterSnapshot reads the counters by name.
func counterSnapshot(t *testing.T, read func() ([]Counter, error)) map[string]Counter {
	t.Helper()
	cs, err := read()
	if err != nil {
		t.Fatalf("read counters: %v", err)
	}
	m := map[string]Counter{}
	for _, c := range cs {
		m[c.Name] = c
	}
	if len(m) != len(counterNames) {
		t.Fatalf("read %d counters, want %d", len(m), len(counterNames))
	}
	return m
}

// waitCounters waits until every counter is base plus want (absent names:
// plus nothing) and fails if one goes past it.
func waitCounters(t *testing.T, read func() ([]Counter, error), base map[string]Counter, want map[string]Counter) {
	t.Helper()
	waitFor(t, fmt.Sprintf("counters to move by %v", want), func() (bool, string) {
		now := counterSnapshot(t, read)
		done := true
		var diff []string
		for _, name := range counterNames {
			got := Counter{Name: name, Packets: now[name].Packets - base[name].Packets, Bytes: now[name].Bytes - base[name].Bytes}
			w := want[name]
			w.Name = name
			if got.Packets > w.Packets || got.Bytes > w.Bytes {
				t.Fatalf("counter %s moved by %d packets %d bytes, want %d packets %d bytes",
					name, got.Packets, got.Bytes, w.Packets, w.Bytes)
			}
			if got != w {
				done = false
				diff = append(diff, fmt.Sprintf("%s %d/%d packets", name, got.Packets, w.Packets))
			}
		}
		return done, strings.Join(diff, ", ")
	})
}

// traffic is a mix of frames and the counters they move.
type traffic struct {
	frames [][]byte
	want   map[string]Counter
}

func phoneTraffic() traffic {
	tr := traffic{want: map[string]Counter{}}
	add := func(b []byte, names ...string) {
		tr.frames = append(tr.frames, b)
		for _, n := range names {
			c := tr.want[n]
			c.Packets++
			c.Bytes += uint64(len(b))
			tr.want[n] = c
		}
	}
	add(dhcpFrame(67).bytes(), "dhcp")
	add(dhcpFrame(67).bytes(), "dhcp")
	add(dhcpFrame(68, tagVoice).bytes(), "dhcp", "vlan_tagged")
	add(cdpFrame().bytes(), "cdp")
	add(lldpFrame().bytes(), "lldp")
	add(dhcpFrame(5060).bytes(), "other")
	return tr
}

// attachCheck checks Attachments and netlink agree on what f attached.
func attachCheck(t *testing.T, n *testNet, f *fastPath, want Mode, ports ...string) {
	t.Helper()
	got := f.Attachments()
	if len(got) != len(ports) {
		t.Fatalf("Attachments() = %+v, want %d ports", got, len(ports))
	}
	for i, a := range got {
		l, err := n.ports.Netlink().LinkByName(ports[i])
		if err != nil {
			t.Fatal(err)
		}
		if a.Port != ports[i] || a.Ifindex != l.Attrs().Index || a.Mode != want {
			t.Errorf("Attachments()[%d] = %+v, want port %s ifindex %d mode %s", i, a, ports[i], l.Attrs().Index, want)
		}
		if m, id := n.xdpState(t, ports[i]); m != want || id != f.progID(t) {
			t.Errorf("netlink: %s has %q prog %d, want %s prog %d", ports[i], m, id, want, f.progID(t))
		}
	}
}

// TestAttach attaches in every mode, counts frames sent from the peer,
// and detaches on Close: with DetachOnClose (pins removed) and without a
// pin dir (nothing outlives the process).
func TestAttach(t *testing.T) {
	privtest.Require(t)
	for _, c := range []struct {
		mode, want Mode
	}{
		{ModeNative, ModeNative}, // veth has native XDP
		{ModeGeneric, ModeGeneric},
		{ModeAuto, ModeNative},
	} {
		for _, pinned := range []bool{true, false} {
			name := string(c.mode)
			if !pinned {
				name += " unpinned"
			}
			t.Run(name, func(t *testing.T) {
				n := newTestNet(t, 1)
				cfg := Config{Ports: []string{portName(0)}, Mode: c.mode, DetachOnClose: true}
				if pinned {
					cfg.PinDir = filepath.Join(privtest.TempBPFFS(t), "phoneboot")
				}
				f := n.mustStart(t, cfg)
				attachCheck(t, n, f, c.want, portName(0))
				if pinned {
					for _, pin := range []string{"link_" + portName(0), "pb_counters", "pb_config_map"} {
						if _, err := os.Stat(filepath.Join(cfg.PinDir, pin)); err != nil {
							t.Errorf("pin %s: %v", pin, err)
						}
					}
				}

				base := counterSnapshot(t, f.Counters)
				tr := phoneTraffic()
				n.send(t, 0, tr.frames...)
				waitCounters(t, f.Counters, base, tr.want)

				// A datagram through the peer's own IP stack.
				base = counterSnapshot(t, f.Counters)
				n.sendUDPBroadcast(t, 0, 67, dhcpDiscover)
				frameLen := uint64(14 + 20 + 8 + len(dhcpDiscover))
				waitCounters(t, f.Counters, base, map[string]Counter{"dhcp": {Packets: 1, Bytes: frameLen}})

				f.close(t)
				n.waitXDP(t, portName(0), "", 0)
				if pinned {
					if _, err := os.Stat(cfg.PinDir); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("pin dir after Close with DetachOnClose: %v, want it gone", err)
					}
				}
			})
		}
	}
}

// TestAttachRestart closes without DetachOnClose and starts again: the
// pinned link keeps the program on the port (and counting) in between,
// the next New takes the link over in the same mode and swaps in its own
// program, and the pinned counters carry on.
func TestAttachRestart(t *testing.T) {
	privtest.Require(t)
	for _, mode := range []Mode{ModeNative, ModeGeneric, ModeAuto} {
		t.Run(string(mode), func(t *testing.T) {
			n := newTestNet(t, 1)
			port := portName(0)
			cfg := Config{Ports: []string{port}, Mode: mode, PinDir: filepath.Join(privtest.TempBPFFS(t), "phoneboot")}
			first := n.mustStart(t, cfg)
			inUse := first.Attachments()[0].Mode
			attachCheck(t, n, first, inUse, port)
			firstProg := first.progID(t)
			firstLink, _ := pinnedLink(t, cfg.PinDir, port)

			base := counterSnapshot(t, first.Counters)
			tr := phoneTraffic()
			n.send(t, 0, tr.frames...)
			waitCounters(t, first.Counters, base, tr.want)
			first.close(t)

			// No daemon: the pinned link keeps the first program running,
			// counting into the pinned map.
			if m, id := n.xdpState(t, port); m != inUse || id != firstProg {
				t.Fatalf("after Close: %s has %q prog %d, want %s prog %d still attached", port, m, id, inUse, firstProg)
			}
			between := pinnedCounters(t, cfg.PinDir)
			baseBetween := counterSnapshot(t, between)
			n.send(t, 0, tr.frames...)
			waitCounters(t, between, baseBetween, tr.want)

			cfg.DetachOnClose = true
			second := n.mustStart(t, cfg)
			attachCheck(t, n, second, inUse, port)
			if second.progID(t) == firstProg {
				t.Fatal("second New did not load a program of its own")
			}
			// The same link, now holding the second run's program.
			if l, p := pinnedLink(t, cfg.PinDir, port); l != firstLink || uint32(p) != second.progID(t) {
				t.Errorf("pinned link %d with prog %d, want the first run's link %d with prog %d", l, p, firstLink, second.progID(t))
			}
			twice := map[string]Counter{}
			for name, c := range tr.want {
				twice[name] = Counter{Packets: 2 * c.Packets, Bytes: 2 * c.Bytes}
			}
			// The frames sent between the runs were counted in the pinned
			// map, which the second run reads.
			waitCounters(t, second.Counters, base, twice)

			base = counterSnapshot(t, second.Counters)
			n.send(t, 0, tr.frames...)
			waitCounters(t, second.Counters, base, tr.want)

			second.close(t)
			n.waitXDP(t, port, "", 0)
			if _, err := os.Stat(cfg.PinDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("pin dir after Close with DetachOnClose: %v, want it gone", err)
			}
		})
	}
}

// TestAttachModeChange restarts with another mode: auto takes over a
// pinned link in either mode, an explicit mode replaces a link in the
// other one.
func TestAttachModeChange(t *testing.T) {
	privtest.Require(t)
	n := newTestNet(t, 1)
	port := portName(0)
	pinDir := filepath.Join(privtest.TempBPFFS(t), "phoneboot")
	steps := []struct {
		mode, want Mode
	}{
		{ModeGeneric, ModeGeneric},
		{ModeAuto, ModeGeneric}, // auto keeps the pinned generic link
		{ModeNative, ModeNative},
		{ModeAuto, ModeNative},
		{ModeGeneric, ModeGeneric},
	}
	base := map[string]Counter{}
	var sent uint64
	var prevLink link.ID
	for i, s := range steps {
		f := n.mustStart(t, Config{Ports: []string{port}, Mode: s.mode, PinDir: pinDir})
		attachCheck(t, n, f, s.want, port)
		// A link in the wanted mode is taken over, another one replaced.
		l, _ := pinnedLink(t, pinDir, port)
		if reused := i > 0 && steps[i-1].want == s.want; reused != (l == prevLink) {
			t.Errorf("step %d (%s): pinned link %d, link before %d; want it reused: %v", i, s.mode, l, prevLink, reused)
		}
		prevLink = l
		if i == 0 {
			base = counterSnapshot(t, f.Counters)
		}
		fr := dhcpFrame(67).bytes()
		n.send(t, 0, fr)
		sent++
		waitCounters(t, f.Counters, base, map[string]Counter{"dhcp": {Packets: sent, Bytes: sent * uint64(len(fr))}})
		f.close(t)
		if m, _ := n.xdpState(t, port); m != s.want {
			t.Fatalf("step %d (%s): after Close %s is %q, want %s", i, s.mode, port, m, s.want)
		}
	}
}

// TestAttachDropsUnconfiguredPort restarts with a port taken out of the
// configuration: its pinned link is removed and the program leaves it.
func TestAttachDropsUnconfiguredPort(t *testing.T) {
	privtest.Require(t)
	n := newTestNet(t, 2)
	pinDir := filepath.Join(privtest.TempBPFFS(t), "phoneboot")
	both := n.mustStart(t, Config{Ports: []string{portName(0), portName(1)}, Mode: ModeAuto, PinDir: pinDir})
	attachCheck(t, n, both, ModeNative, portName(0), portName(1))
	both.close(t)
	for i := range 2 {
		if m, _ := n.xdpState(t, portName(i)); m != ModeNative {
			t.Fatalf("after Close %s is %q, want native", portName(i), m)
		}
	}

	one := n.mustStart(t, Config{Ports: []string{portName(0)}, Mode: ModeAuto, PinDir: pinDir})
	attachCheck(t, n, one, ModeNative, portName(0))
	n.waitXDP(t, portName(1), "", 0)
	if _, err := os.Stat(filepath.Join(pinDir, "link_"+portName(1))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin of the dropped port: %v, want it gone", err)
	}
	if _, err := os.Stat(filepath.Join(pinDir, "link_"+portName(0))); err != nil {
		t.Errorf("pin of the kept port: %v", err)
	}
}

// TestAttachNonexistentPort checks New fails as a whole, naming the port,
// when one port does not exist.
func TestAttachNonexistentPort(t *testing.T) {
	privtest.Require(t)
	const missing = "pbnosuch0"
	for _, c := range []struct {
		name   string
		ports  []string
		pinned bool
	}{
		{"missing last", []string{portName(0), missing}, true},
		{"missing first", []string{missing, portName(0)}, true},
		{"missing last unpinned", []string{portName(0), missing}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := newTestNet(t, 1)
			cfg := Config{Ports: c.ports, Mode: ModeAuto}
			if c.pinned {
				cfg.PinDir = filepath.Join(privtest.TempBPFFS(t), "phoneboot")
			}
			f, err := n.start(t, cfg)
			if err == nil {
				t.Fatalf("New with port %s succeeded: %+v", missing, f.Attachments())
			}
			if !strings.Contains(err.Error(), missing) {
				t.Errorf("error %q does not name port %s", err, missing)
			}
			n.waitXDP(t, portName(0), "", 0)
			if c.pinned {
				links, _ := filepath.Glob(filepath.Join(cfg.PinDir, "link_*"))
				if len(links) != 0 {
					t.Errorf("link pins left behind: %v", links)
				}
			}
		})
	}

	// A port an earlier run attached stays attached (and pinned) when a
	// restart fails on another port: the failed run must not take the
	// working data path down with it.
	for _, detach := range []bool{false, true} {
		t.Run(fmt.Sprintf("earlier run kept DetachOnClose=%v", detach), func(t *testing.T) {
			n := newTestNet(t, 1)
			pinDir := filepath.Join(privtest.TempBPFFS(t), "phoneboot")
			first := n.mustStart(t, Config{Ports: []string{portName(0)}, Mode: ModeAuto, PinDir: pinDir})
			base := counterSnapshot(t, first.Counters)
			fr := cdpFrame().bytes()
			n.send(t, 0, fr)
			waitCounters(t, first.Counters, base, map[string]Counter{"cdp": {Packets: 1, Bytes: uint64(len(fr))}})
			first.close(t)

			_, err := n.start(t, Config{Ports: []string{portName(0), missing}, Mode: ModeAuto, PinDir: pinDir, DetachOnClose: detach})
			if err == nil || !strings.Contains(err.Error(), missing) {
				t.Fatalf("New with port %s: error %v, want one naming the port", missing, err)
			}
			if m, _ := n.xdpState(t, portName(0)); m != ModeNative {
				t.Errorf("%s is %q after the failed restart, want still native", portName(0), m)
			}
			if _, err := os.Stat(filepath.Join(pinDir, "link_"+portName(0))); err != nil {
				t.Errorf("pin of the earlier run: %v", err)
			}
			// Frames are still classified, and counted on top of the
			// earlier run's counts in the pinned map.
			third := n.mustStart(t, Config{Ports: []string{portName(0)}, Mode: ModeAuto, PinDir: pinDir})
			n.send(t, 0, fr)
			waitCounters(t, third.Counters, base, map[string]Counter{"cdp": {Packets: 2, Bytes: 2 * uint64(len(fr))}})
		})
	}
}

// bpffsMounts counts the bpf filesystems mounted exactly at dir.
func bpffsMounts(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		// ID parent major:minor root mountpoint options ... - fstype source opts
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if len(f) > 4 && sep > 0 && sep+1 < len(f) && f[4] == dir && f[sep+1] == "bpf" {
			n++
		}
	}
	return n
}

// TestPinDirMountsBPFFS gives a pin dir whose parent is not on bpffs:
// LoadObjects mounts one there, once, and pins the maps in it.
func TestPinDirMountsBPFFS(t *testing.T) {
	privtest.Require(t)
	parent := filepath.Join(t.TempDir(), "bpf")
	t.Cleanup(func() {
		for range 3 {
			if ok, _ := IsBPFFS(parent); !ok {
				return
			}
			if err := unix.Unmount(parent, 0); err != nil {
				t.Errorf("unmount %s: %v", parent, err)
				return
			}
		}
	})
	if ok, err := IsBPFFS(filepath.Dir(parent)); err != nil || ok {
		t.Fatalf("IsBPFFS(%s) = %v, %v; want false, nil", filepath.Dir(parent), ok, err)
	}
	pinDir := filepath.Join(parent, "phoneboot")
	for i := range 2 {
		o, err := LoadObjects(pinDir, testLogger(t))
		if err != nil {
			t.Fatalf("LoadObjects %d: %v", i, err)
		}
		if err := o.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if ok, err := IsBPFFS(parent); err != nil || !ok {
			t.Fatalf("IsBPFFS(%s) = %v, %v after LoadObjects; want true", parent, ok, err)
		}
		if got := bpffsMounts(t, parent); got != 1 {
			t.Errorf("after LoadObjects %d: %d bpffs mounts on %s, want 1", i, got, parent)
		}
		for _, pin := range []string{"pb_counters", "pb_config_map"} {
			if _, err := os.Stat(filepath.Join(pinDir, pin)); err != nil {
				t.Errorf("pin %s: %v", pin, err)
			}
		}
	}
}

// TestLoadObjectsReplacesIncompatiblePins pins a pb_counters map of another
// layout, as an older build might have left: LoadObjects replaces it with
// one the program can use instead of failing.
func TestLoadObjectsReplacesIncompatiblePins(t *testing.T) {
	pinDir := filepath.Join(privtest.TempBPFFS(t), "phoneboot")
	if err := os.Mkdir(pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "pb_counters",
		Type:       ebpf.Array, // not per-CPU, and 8-byte values
		KeySize:    4,
		ValueSize:  8,
		MaxEntries: 4,
	})
	if err != nil {
		t.Fatalf("create old map: %v", err)
	}
	defer old.Close()
	if err := old.Pin(filepath.Join(pinDir, "pb_counters")); err != nil {
		t.Fatalf("pin old map: %v", err)
	}

	o, err := LoadObjects(pinDir, testLogger(t))
	if err != nil {
		t.Fatalf("LoadObjects over an incompatible pin: %v", err)
	}
	defer o.Close()
	pinned, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "pb_counters"), nil)
	if err != nil {
		t.Fatalf("load pinned counters: %v", err)
	}
	defer pinned.Close()
	if pinned.Type() != ebpf.PerCPUArray || pinned.MaxEntries() != uint32(len(counterNames)) {
		t.Errorf("pinned pb_counters is %v with %d entries, want the program's PerCPUArray of %d",
			pinned.Type(), pinned.MaxEntries(), len(counterNames))
	}
	r := runXDP(t, o, dhcpFrame(67).bytes())
	checkDelta(t, r.delta, counts("dhcp"), len(dhcpFrame(67).bytes()))
}

// TestIncompatiblePinKeepsEvents: a daemon's fast path hands out an
// address, and before the event is read the daemon is replaced by a build
// whose counters map has another layout. LoadObjects replaces that map
// and only it: the event (a lease the kernel gave while no daemon read
// the ring) and the binding are still there for the new daemon.
func TestIncompatiblePinKeepsEvents(t *testing.T) {
	pinDir := filepath.Join(privtest.TempBPFFS(t), "phoneboot")
	if err := os.Mkdir(pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	first, err := LoadObjects(pinDir, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	f := &dhcpFixture{o: first, t: first.DHCP()}
	blk, off := testBlock(testServer, netip.MustParseAddr("10.0.0.2"))
	addr := netip.MustParseAddr("10.0.0.50")
	if err := errors.Join(
		f.t.SetPort(1, testPortMAC, true),
		f.t.SetBlock(1, blk, off),
		f.t.SetPool(DHCPPool{ID: 1, ServerIP: testServer, DefaultBlock: 1, LeaseTime: time.Hour, OfferTime: time.Minute, Allocate: true}),
	); err != nil {
		t.Fatal(err)
	}
	if n, err := f.t.PushFree(1, []netip.Addr{addr}); err != nil || n != 1 {
		t.Fatalf("PushFree: %d, %v", n, err)
	}
	if ret, _ := f.run(t, request(t, 0, netip.MustParseAddr("255.255.255.255"), discover(t))); ret != 3 {
		t.Fatalf("DISCOVER: verdict %d, want XDP_TX", ret)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	counters := filepath.Join(pinDir, "pb_counters")
	if err := os.Remove(counters); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "pb_counters", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 16, MaxEntries: 4})
	if err != nil {
		t.Fatalf("create old map: %v", err)
	}
	defer old.Close()
	if err := old.Pin(counters); err != nil {
		t.Fatalf("pin old map: %v", err)
	}

	o, err := LoadObjects(pinDir, testLogger(t))
	if err != nil {
		t.Fatalf("LoadObjects over an incompatible counters pin: %v", err)
	}
	defer o.Close()
	if o.objs.PbCounters.MaxEntries() != uint32(len(counterNames)) {
		t.Errorf("pb_counters has %d entries, want %d: the old pin was kept", o.objs.PbCounters.MaxEntries(), len(counterNames))
	}
	events, err := o.DHCP().Events()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	if e := readEvent(t, events); !e.Allocated || e.IP != addr || !bytes.Equal(e.MAC, testPhoneMAC) {
		t.Errorf("event after the reload: %+v, want the allocation of %v to %v", e, addr, testPhoneMAC)
	}
	if b, ok, err := o.DHCP().Binding(0, testPhoneMAC); err != nil || !ok || b.IP != addr {
		t.Errorf("binding after the reload: %+v, %v, %v; want %v", b, ok, err, addr)
	}
}

// The event ring is DHCPEventRingSize, except that one an earlier run
// pinned is kept with the size it has, and the events in it.
func TestEventRingSize(t *testing.T) {
	fresh := loadTestObjects(t)
	if got := fresh.objs.PbDhcpEvents.MaxEntries(); got != DHCPEventRingSize {
		t.Errorf("event ring of %d bytes, want %d", got, DHCPEventRingSize)
	}

	pinDir := filepath.Join(privtest.TempBPFFS(t), "phoneboot")
	if err := os.Mkdir(pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	const oldSize = 4 * DHCPEventRingSize
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "pb_dhcp_events", Type: ebpf.RingBuf, MaxEntries: oldSize})
	if err != nil {
		t.Fatalf("create old ring: %v", err)
	}
	defer old.Close()
	if err := old.Pin(filepath.Join(pinDir, "pb_dhcp_events")); err != nil {
		t.Fatalf("pin old ring: %v", err)
	}
	oldInfo, err := old.Info()
	if err != nil {
		t.Fatal(err)
	}
	oldID, _ := oldInfo.ID()

	o, err := LoadObjects(pinDir, testLogger(t))
	if err != nil {
		t.Fatalf("LoadObjects over a pinned ring of %d bytes: %v", oldSize, err)
	}
	defer o.Close()
	info, err := o.objs.PbDhcpEvents.Info()
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := info.ID(); id != oldID || o.objs.PbDhcpEvents.MaxEntries() != oldSize {
		t.Errorf("event ring: map %d of %d bytes, want the pinned map %d of %d bytes", id, o.objs.PbDhcpEvents.MaxEntries(), oldID, oldSize)
	}
}

// addBridge adds a bridge to the ports namespace: a netdev without native
// XDP, where only generic mode works.
func (n *testNet) addBridge(t *testing.T, name string) {
	t.Helper()
	if err := n.ports.Netlink().LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		t.Fatalf("add bridge %s: %v", name, err)
	}
	if err := n.ports.SetUp(name); err != nil {
		t.Fatal(err)
	}
}

// TestAttachWithoutNativeXDP uses a port whose driver has no native XDP:
// auto falls back to generic, native fails naming the port.
func TestAttachWithoutNativeXDP(t *testing.T) {
	privtest.Require(t)
	const port = "pbbridge0"

	t.Run("auto falls back to generic", func(t *testing.T) {
		n := newTestNet(t, 0)
		n.addBridge(t, port)
		f := n.mustStart(t, Config{Ports: []string{port}, Mode: ModeAuto, PinDir: filepath.Join(privtest.TempBPFFS(t), "phoneboot")})
		attachCheck(t, n, f, ModeGeneric, port)
	})

	t.Run("native fails", func(t *testing.T) {
		n := newTestNet(t, 0)
		n.addBridge(t, port)
		_, err := n.start(t, Config{Ports: []string{port}, Mode: ModeNative, PinDir: filepath.Join(privtest.TempBPFFS(t), "phoneboot")})
		if err == nil || !strings.Contains(err.Error(), port) {
			t.Fatalf("New in native mode on a bridge: error %v, want one naming %s", err, port)
		}
		n.waitXDP(t, port, "", 0)
	})

	// A restart asking for a mode the port cannot do fails, and must leave
	// the earlier run's attachment serving.
	t.Run("failed mode change keeps the earlier run", func(t *testing.T) {
		n := newTestNet(t, 0)
		n.addBridge(t, port)
		pinDir := filepath.Join(privtest.TempBPFFS(t), "phoneboot")
		first := n.mustStart(t, Config{Ports: []string{port}, Mode: ModeGeneric, PinDir: pinDir})
		first.close(t)
		// The kernel refuses two modes on one device, so the generic link
		// goes before native is tried; on failure the port is re-attached
		// in generic mode (with the failed run's program: same code, same
		// pinned maps).
		if _, err := n.start(t, Config{Ports: []string{port}, Mode: ModeNative, PinDir: pinDir}); err == nil {
			t.Fatal("New in native mode on a bridge succeeded")
		}
		if m, id := n.xdpState(t, port); m != ModeGeneric || id == 0 {
			t.Errorf("after the failed restart %s has %q prog %d, want a generic program", port, m, id)
		}
		if _, err := os.Stat(filepath.Join(pinDir, "link_"+port)); err != nil {
			t.Errorf("pin of the earlier run: %v", err)
		}
	})
}
