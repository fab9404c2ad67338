package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/bootfiles"
	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/tftp"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// ip6FragCreates is the test namespace's count of IPv6 fragments made.
func ip6FragCreates(t *testing.T) int {
	t.Helper()
	f, err := os.Open("/proc/net/snmp6")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "Ip6FragCreates" {
			n, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Ip6FragCreates in /proc/net/snmp6")
	return 0
}

// TestTFTPBlocksFitMTU: the daemon's TFTP server, on a veth at MTU 1500
// from the test's namespace to a phone's, agrees to 1468-byte blocks
// over IPv4 and 1448 over IPv6, when the phone asks for 1468: each DATA
// packet fills the frame, a window goes out as one GSO send, and nothing
// is fragmented. The IPv4 limit over IPv6 (a server configured so, the
// daemon before this cap) makes 1520-byte packets, which the kernel
// refuses to send as GSO and fragments: that is what is checked.
func TestTFTPBlocksFitMTU(t *testing.T) {
	privtest.RequireNetNS(t)
	phone, err := vnet.Create(vnet.UniqueName("pbtf"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { phone.Close() })
	const srvLink, phoneLink = "pbtfs", "pbtfp"
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: srvLink, MTU: 1500}, PeerName: phoneLink,
		PeerNamespace: netlink.NsFd(int(phone.Handle()))}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(srvLink); err == nil {
			netlink.LinkDel(l)
		}
	})
	srv4, phone4 := netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("10.77.0.2")
	srv6, phone6 := netip.MustParseAddr("fd00:77::1"), netip.MustParseAddr("fd00:77::2")
	for _, side := range []struct {
		h    *netlink.Handle
		link string
		ips  []netip.Addr
	}{{&netlink.Handle{}, srvLink, []netip.Addr{srv4, srv6}}, {phone.Netlink(), phoneLink, []netip.Addr{phone4, phone6}}} {
		l, err := side.h.LinkByName(side.link)
		if err != nil {
			t.Fatal(err)
		}
		if l.Attrs().MTU != 1500 {
			t.Fatalf("%s: MTU %d", side.link, l.Attrs().MTU)
		}
		for _, ip := range side.ips {
			bits := 24
			if ip.Is6() {
				bits = 64
			}
			a := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(bits, ip.BitLen())}, Flags: unix.IFA_F_NODAD}
			if err := side.h.AddrAdd(l, a); err != nil {
				t.Fatal(err)
			}
		}
		if err := side.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	// Until the kernel's link watch has seen the carrier on both ends
	// (operationally up), a veth drops what it sends; on a busy machine
	// that takes seconds.
	for _, side := range []struct {
		h    *netlink.Handle
		link string
	}{{&netlink.Handle{}, srvLink}, {phone.Netlink(), phoneLink}} {
		deadline := time.Now().Add(30 * time.Second)
		for {
			l, err := side.h.LinkByName(side.link)
			if err != nil {
				t.Fatal(err)
			}
			if l.Attrs().OperState == netlink.OperUp {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s is %v 30 s after both ends came up", side.link, l.Attrs().OperState)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	file := make([]byte, 1448*64+100)
	rand.Read(file)
	if err := os.WriteFile(filepath.Join(root, "ringlist.bin"), file, 0o644); err != nil {
		t.Fatal(err)
	}
	// The phone's sockets, in its namespace.
	listen := func(network string, laddr *net.UDPAddr) (c *net.UDPConn, err error) {
		if derr := phone.Do(func() error { c, err = net.ListenUDP(network, laddr); return nil }); derr != nil {
			return nil, derr
		}
		return c, err
	}
	fetch := func(t *testing.T, server netip.AddrPort) tftp.FetchResult {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var buf bytes.Buffer
		// Retried generously, for a loaded machine.
		res, err := tftp.Fetch(ctx, server, "ringlist.bin", tftp.FetchOptions{BlockSize: 1468, WindowSize: 8, Timeout: time.Second,
			Retries: 10, Listen: listen}, &buf)
		if err != nil || !bytes.Equal(buf.Bytes(), file) {
			t.Fatalf("fetch from %s: %d bytes, %v", server, buf.Len(), err)
		}
		return res
	}

	t.Run("daemon", func(t *testing.T) {
		cfg, err := ParseConfig("test.yaml", []byte(fmt.Sprintf(`
control: {socket: %s/control.sock}
metrics: {listen: "127.0.0.1:0"}
fastpath: {enabled: false}
provision:
  enabled: true
  root: %s
  callmanager_groups: [{name: main, members: [{host: 10.0.0.10}]}]
tftp: {listen: ["%s:69", "[%s]:69"]}
http: {listen: ""}
`, runDir(t), root, srv4, srv6)))
		if err != nil {
			t.Fatal(err)
		}
		a, stop := startAgent(t, cfg, func(f func() error) error { return f() })
		defer stop()
		for _, tc := range []struct {
			server netip.Addr
			want   int
		}{{srv4, 1468}, {srv6, 1448}} {
			frags := ip6FragCreates(t)
			res := fetch(t, netip.AddrPortFrom(tc.server, 69))
			made := ip6FragCreates(t) - frags
			t.Logf("over %s: blksize %d, %d blocks; GSO fallbacks so far %d, IPv6 fragments made %d",
				tc.server, res.BlockSize, res.Blocks, a.tftp.Stats().GSOFallbacks, made)
			if res.BlockSize != tc.want || made != 0 {
				t.Errorf("over %s: blksize %d and %d IPv6 fragments, want %d and none", tc.server, res.BlockSize, made, tc.want)
			}
		}
		if n := a.tftp.Stats().GSOFallbacks; n != 0 {
			t.Errorf("%d transfers fell back from GSO, want none", n)
		}
	})

	t.Run("IPv4 limit over IPv6", func(t *testing.T) {
		src, err := bootfiles.OpenDir(root)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		s, err := tftp.New(tftp.Config{Addrs: []netip.AddrPort{netip.AddrPortFrom(srv6, 0)}, Source: src, MaxBlockSize: tftpMaxBlockSize,
			MaxBlockSizeV6: tftpMaxBlockSize}, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		defer func() { cancel(); <-done; s.Close() }()
		frags := ip6FragCreates(t)
		res := fetch(t, s.Addrs()[0])
		made := ip6FragCreates(t) - frags
		t.Logf("blksize %d, %d blocks; GSO fallbacks %d, IPv6 fragments made %d", res.BlockSize, res.Blocks, s.Stats().GSOFallbacks, made)
		if res.BlockSize != 1468 || made == 0 || s.Stats().GSOFallbacks != 1 {
			t.Errorf("blksize %d, %d fragments, %d GSO fallbacks: want 1468 blocks fragmented, GSO refused", res.BlockSize, made, s.Stats().GSOFallbacks)
		}
	})
}
