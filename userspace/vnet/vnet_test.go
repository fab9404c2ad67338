package vnet_test

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/offload"
	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

const netnsDir = "/run/netns"

// create makes a namespace that is deleted when the test ends.
func create(t *testing.T) *vnet.NS {
	t.Helper()
	privtest.Require(t)
	ns, err := vnet.Create(vnet.UniqueName("pbvn"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Errorf("Close %s: %v", ns.Name, err)
		}
	})
	return ns
}

// threadNetns is the network namespace of the calling thread, as
// "net:[inode]".
func threadNetns(t *testing.T) string {
	t.Helper()
	s, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// inodeOf is the "net:[inode]" name of the namespace behind an open handle
// or a /run/netns path.
func inodeOf(t *testing.T, fdOrPath any) string {
	t.Helper()
	var st unix.Stat_t
	var err error
	switch v := fdOrPath.(type) {
	case int:
		err = unix.Fstat(v, &st)
	case string:
		err = unix.Stat(v, &st)
	}
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("net:[%d]", st.Ino)
}

// linkFlags returns the link's flags in ns, or an error if it is not there.
func linkFlags(ns *vnet.NS, name string) (net.Flags, error) {
	l, err := ns.Netlink().LinkByName(name)
	if err != nil {
		return 0, err
	}
	return l.Attrs().Flags, nil
}

func operState(t *testing.T, ns *vnet.NS, name string) netlink.LinkOperState {
	t.Helper()
	l, err := ns.Netlink().LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().OperState
}

func TestUniqueName(t *testing.T) {
	for _, prefix := range []string{"", "pb", "pbvnet"} {
		t.Run(fmt.Sprintf("prefix %q", prefix), func(t *testing.T) {
			seen := map[string]bool{}
			for range 1000 {
				n := vnet.UniqueName(prefix)
				suffix, ok := strings.CutPrefix(n, prefix)
				if !ok {
					t.Fatalf("%q lacks the prefix %q", n, prefix)
				}
				if _, err := hex.DecodeString(suffix); err != nil || len(suffix) == 0 {
					t.Fatalf("%q: suffix %q is not hex", n, suffix)
				}
				if len(prefix) <= 6 && len(n) > 15 {
					t.Fatalf("%q is %d bytes, longer than an interface name may be", n, len(n))
				}
				if seen[n] {
					t.Fatalf("%q given twice", n)
				}
				seen[n] = true
			}
		})
	}
}

func TestCreateRefusesBadNames(t *testing.T) {
	// The name is checked first, so this needs no privilege.
	for _, name := range []string{"", ".", "..", "a/b", "/abs", "../escape", "nul\x00byte"} {
		t.Run(fmt.Sprintf("%q", name), func(t *testing.T) {
			ns, err := vnet.Create(name)
			if err == nil {
				ns.Close()
				t.Fatalf("Create(%q) succeeded", name)
			}
			if !strings.Contains(err.Error(), "bad namespace name") {
				t.Errorf("error %q does not call the name bad", err)
			}
		})
	}
}

func TestCreate(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	outside := threadNetns(t)

	ns := create(t)
	if got := threadNetns(t); got != outside {
		t.Errorf("the caller's thread moved from %s to %s", outside, got)
	}
	path := filepath.Join(netnsDir, ns.Name)
	inside := inodeOf(t, path) // fails unless /run/netns/<name> is there
	if inside == outside {
		t.Errorf("%s is the caller's namespace %s", path, outside)
	}
	if got := inodeOf(t, int(ns.Handle())); got != inside {
		t.Errorf("handle is %s, %s is %s", got, path, inside)
	}
	flags, err := linkFlags(ns, "lo")
	if err != nil {
		t.Fatal(err)
	}
	if flags&net.FlagUp == 0 {
		t.Error("lo is down in the new namespace")
	}
	// The netlink handle works inside: lo is the only link.
	links, err := ns.Netlink().LinkList()
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].Attrs().Name != "lo" {
		var names []string
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		t.Errorf("new namespace has links %v, want only lo", names)
	}
}

func TestCreateExisting(t *testing.T) {
	ns := create(t)
	path := filepath.Join(netnsDir, ns.Name)
	before := inodeOf(t, path)
	dup, err := vnet.Create(ns.Name)
	if err == nil {
		dup.CloseHandles() // the name is the first one's: do not delete it
		t.Fatalf("Create of the existing %s succeeded", ns.Name)
	}
	if !strings.Contains(err.Error(), ns.Name) {
		t.Errorf("error %q does not name the namespace", err)
	}
	// The failed Create left the existing namespace alone.
	if after := inodeOf(t, path); after != before {
		t.Errorf("%s now %s, was %s", path, after, before)
	}
	if err := ns.SetUp("lo"); err != nil {
		t.Errorf("existing namespace unusable after the failed Create: %v", err)
	}
}

func TestDo(t *testing.T) {
	ns := create(t)
	nsInode := inodeOf(t, int(ns.Handle()))
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	outside := threadNetns(t)
	errFn := errors.New("fn failed")
	for _, tc := range []struct {
		name string
		ret  error
	}{
		{"fn succeeds", nil},
		{"fn fails", errFn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var inside string
			var readErr error
			err := ns.Do(func() error {
				inside, readErr = os.Readlink("/proc/thread-self/ns/net")
				return tc.ret
			})
			if !errors.Is(err, tc.ret) || (tc.ret == nil && err != nil) {
				t.Errorf("Do = %v, want %v", err, tc.ret)
			}
			if readErr != nil {
				t.Fatal(readErr)
			}
			if inside != nsInode {
				t.Errorf("fn ran in %s, want %s", inside, nsInode)
			}
			if got := threadNetns(t); got != outside {
				t.Errorf("caller moved from %s to %s", outside, got)
			}
		})
	}
}

// TestDoLeavesNoThreadBehind runs Do many times, then looks at many other
// threads: Do must hand back its thread only after leaving the namespace.
func TestDoLeavesNoThreadBehind(t *testing.T) {
	ns := create(t)
	nsInode := inodeOf(t, int(ns.Handle()))
	for range 50 {
		if err := ns.Do(func() error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var stray []string
	for range 50 {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			s, err := os.Readlink("/proc/thread-self/ns/net")
			if err != nil || s == nsInode {
				mu.Lock()
				stray = append(stray, fmt.Sprint(s, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(stray) > 0 {
		t.Errorf("threads left in %s (or unreadable): %v", nsInode, stray)
	}
}

func TestDoOnClosedHandle(t *testing.T) {
	ns := create(t)
	other, err := vnet.Open(ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := other.CloseHandles(); err != nil {
		t.Fatal(err)
	}
	ran := false
	if err := other.Do(func() error { ran = true; return nil }); err == nil {
		t.Error("Do with closed handles succeeded")
	}
	if ran {
		t.Error("fn ran although the namespace could not be entered")
	}
}

func TestDoSocketStaysInNamespace(t *testing.T) {
	ns := create(t)
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	tl := ln.(*net.TCPListener)
	addr := ln.Addr().String()

	// From outside: 127.0.0.1 here is another loopback. Whatever answers
	// (most likely nothing), it is not our listener.
	if c, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
		t.Logf("something outside the namespace listens on %s too", addr)
		c.Close()
	}
	if err := tl.SetDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if c, err := tl.Accept(); err == nil {
		c.Close()
		t.Fatalf("a connection from outside the namespace reached the listener (from %s)", c.RemoteAddr())
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Accept: %v", err)
	}

	// From inside another Do: reaches it.
	var local string
	if err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		local = c.LocalAddr().String()
		// The connection, too, outlives Do; closing it here keeps the test tidy.
		return c.Close()
	}); err != nil {
		t.Fatalf("dial from inside the namespace: %v", err)
	}
	if err := tl.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	c, err := tl.Accept()
	if err != nil {
		t.Fatalf("the connection from inside did not arrive: %v", err)
	}
	defer c.Close()
	if c.RemoteAddr().String() != local {
		t.Errorf("accepted a connection from %s, want %s", c.RemoteAddr(), local)
	}
}

func TestVeth(t *testing.T) {
	a, b := create(t), create(t)
	if err := vnet.Veth(a, "pbva", b, "pbvb"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ns          *vnet.NS
		have, avoid string
	}{
		{a, "pbva", "pbvb"},
		{b, "pbvb", "pbva"},
	} {
		l, err := tc.ns.Netlink().LinkByName(tc.have)
		if err != nil {
			t.Fatalf("%s not in %s: %v", tc.have, tc.ns.Name, err)
		}
		if l.Type() != "veth" {
			t.Errorf("%s is a %s, want veth", tc.have, l.Type())
		}
		if l.Attrs().Flags&net.FlagUp != 0 {
			t.Errorf("%s in %s is up, want down", tc.have, tc.ns.Name)
		}
		if _, err := tc.ns.Netlink().LinkByName(tc.avoid); err == nil {
			t.Errorf("%s is in %s too", tc.avoid, tc.ns.Name)
		}
	}
	// Neither end is in the caller's namespace.
	for _, name := range []string{"pbva", "pbvb"} {
		if _, err := netlink.LinkByName(name); err == nil {
			t.Errorf("%s leaked into the caller's namespace", name)
		}
	}
	// The ends are joined: pbva gets a carrier once both ends are up.
	if err := a.SetUp("pbva"); err != nil {
		t.Fatal(err)
	}
	if st := operState(t, a, "pbva"); st == netlink.OperUp {
		t.Errorf("pbva operationally up while its peer is down")
	}
	if err := b.SetUp("pbvb"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for operState(t, a, "pbva") != netlink.OperUp {
		if time.Now().After(deadline) {
			t.Fatalf("pbva is %v with both ends up", operState(t, a, "pbva"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A second pair with a taken name fails.
	if err := vnet.Veth(a, "pbva", b, "pbvc"); err == nil {
		t.Error("Veth with a name already taken succeeded")
	}
}

func TestVethSameNamespace(t *testing.T) {
	ns := create(t)
	if err := vnet.Veth(ns, "pbv0", ns, "pbv1"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pbv0", "pbv1"} {
		flags, err := linkFlags(ns, name)
		if err != nil {
			t.Fatal(err)
		}
		if flags&net.FlagUp != 0 {
			t.Errorf("%s is up, want down", name)
		}
	}
}

func TestSetUpSetDown(t *testing.T) {
	a, b := create(t), create(t)
	if err := vnet.Veth(a, "pbva", b, "pbvb"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		op     func(string) error
		link   string
		wantUp bool
	}{
		{"up", a.SetUp, "pbva", true},
		{"up again", a.SetUp, "pbva", true},
		{"down", a.SetDown, "pbva", false},
		{"down again", a.SetDown, "pbva", false},
		{"up other end", b.SetUp, "pbvb", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.op(tc.link); err != nil {
				t.Fatal(err)
			}
			ns := a
			if tc.link == "pbvb" {
				ns = b
			}
			flags, err := linkFlags(ns, tc.link)
			if err != nil {
				t.Fatal(err)
			}
			if up := flags&net.FlagUp != 0; up != tc.wantUp {
				t.Errorf("%s up = %v, want %v", tc.link, up, tc.wantUp)
			}
		})
	}
	t.Run("missing link", func(t *testing.T) {
		for _, op := range []func(string) error{a.SetUp, a.SetDown} {
			// pbvb exists, but in b, not a.
			err := op("pbvb")
			if err == nil {
				t.Fatal("set state of a link that is not in the namespace succeeded")
			}
			if !strings.Contains(err.Error(), a.Name) {
				t.Errorf("error %q does not name the namespace", err)
			}
		}
		if flags, err := linkFlags(b, "pbvb"); err != nil || flags&net.FlagUp == 0 {
			t.Errorf("pbvb in the other namespace changed: %v, %v", flags, err)
		}
	})
}

func TestOpen(t *testing.T) {
	ns := create(t)
	path := filepath.Join(netnsDir, ns.Name)
	for i := range 2 { // opening again after CloseHandles works
		o, err := vnet.Open(ns.Name)
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		if o.Name != ns.Name {
			t.Errorf("Name = %q, want %q", o.Name, ns.Name)
		}
		if got, want := inodeOf(t, int(o.Handle())), inodeOf(t, path); got != want {
			t.Errorf("opened %s, %s is %s", got, path, want)
		}
		flags, err := linkFlags(o, "lo")
		if err != nil {
			t.Fatalf("netlink of the opened namespace: %v", err)
		}
		if flags&net.FlagUp == 0 {
			t.Error("lo seen down through the opened handle")
		}
		if err := o.CloseHandles(); err != nil {
			t.Fatalf("CloseHandles: %v", err)
		}
		if err := o.CloseHandles(); err != nil {
			t.Errorf("second CloseHandles: %v", err)
		}
		if _, err := os.Lstat(path); err != nil {
			t.Fatalf("namespace gone after CloseHandles: %v", err)
		}
	}
	// The creator's handles still work.
	if _, err := linkFlags(ns, "lo"); err != nil {
		t.Errorf("creator's handle after another's CloseHandles: %v", err)
	}
}

func TestOpenMissing(t *testing.T) {
	name := vnet.UniqueName("pbvn")
	_, err := vnet.Open(name)
	if err == nil {
		t.Fatalf("Open of the missing %s succeeded", name)
	}
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), name) {
		t.Errorf("error %q: want a not-exist error naming %s", err, name)
	}
}

func TestClose(t *testing.T) {
	a, b := create(t), create(t)
	if err := vnet.Veth(a, "pbva", b, "pbvb"); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(netnsDir, a.Name)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there after Close: %v", path, err)
	}
	if _, err := vnet.Open(a.Name); err == nil {
		t.Errorf("Open of the closed %s succeeded", a.Name)
	}
	// The kernel tears the namespace down asynchronously; its veth end goes
	// with it, and so does the peer in b.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := b.Netlink().LinkByName("pbvb")
		if err != nil {
			var notFound netlink.LinkNotFoundError
			if !errors.As(err, &notFound) {
				t.Fatalf("looking for pbvb: %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pbvb still in the other namespace after its peer's namespace was closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Closing again is harmless.
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestSetVLANOffload turns VLAN offload off and on, and reads it back with
// ethtool(8), which parses the kernel's feature strings on its own.
func TestSetVLANOffload(t *testing.T) {
	a, b := create(t), create(t)
	if err := vnet.Veth(a, "pbva", b, "pbvb"); err != nil {
		t.Fatal(err)
	}
	ethtool, err := exec.LookPath("ethtool")
	if err != nil {
		t.Fatal("ethtool is needed to check the offload flags (apt install ethtool)")
	}
	read := func() string {
		out, err := exec.Command("ip", "netns", "exec", a.Name, ethtool, "-k", "pbva").CombinedOutput()
		if err != nil {
			t.Fatalf("ethtool -k: %v: %s", err, out)
		}
		var got []string
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "rx-vlan-offload:") || strings.HasPrefix(line, "tx-vlan-offload:") {
				got = append(got, strings.Fields(line)[1])
			}
		}
		return strings.Join(got, ",")
	}
	for _, on := range []bool{false, true, false} {
		if err := a.SetVLANOffload("pbva", on); err != nil {
			t.Fatal(err)
		}
		want := "off,off"
		if on {
			want = "on,on"
		}
		if got := read(); got != want {
			t.Errorf("after SetVLANOffload(%v): rx,tx = %s, want %s", on, got, want)
		}
		var rx, tx bool
		if err := a.Do(func() (err error) { rx, tx, err = offload.VLAN("pbva"); return err }); err != nil {
			t.Fatal(err)
		}
		if rx != on || tx != on {
			t.Errorf("offload.VLAN after SetVLANOffload(%v) = %v, %v", on, rx, tx)
		}
	}
	if err := a.SetVLANOffload("nosuchdev", false); err == nil {
		t.Error("no error for a missing interface")
	}
}
