// Package vnet builds throwaway virtual networks: named network namespaces
// and veth pairs between them. The lab, `phoneboot doctor` and the tests use
// it so that nothing they do reaches the machine's own interfaces.
package vnet

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NS is a named network namespace (as `ip netns add` makes: a bind mount
// under /run/netns), so other processes can enter it by name.
type NS struct {
	Name   string
	handle netns.NsHandle
	nl     *netlink.Handle
}

// UniqueName returns prefix followed by a random suffix, short enough for
// an interface name when prefix is at most 6 bytes.
func UniqueName(prefix string) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return prefix + hex.EncodeToString(b[:])
}

// Create makes a new named namespace with its loopback up. The calling
// goroutine's namespace is left as it was.
func Create(name string) (_ *NS, err error) {
	if strings.ContainsAny(name, "/\x00") || name == "" || name == "." || name == ".." {
		return nil, fmt.Errorf("bad namespace name %q", name)
	}
	type result struct {
		h   netns.NsHandle
		err error
	}
	res := make(chan result, 1)
	go func() {
		// NewNamed switches the calling thread into the new namespace, so
		// it runs on a locked thread of its own that is discarded (by
		// exiting while locked) if the original namespace can't be restored.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			res <- result{err: fmt.Errorf("get current netns: %w", err)}
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if serr := netns.Set(orig); serr != nil {
			res <- result{h: h, err: errors.Join(err, serr)}
			return
		}
		runtime.UnlockOSThread()
		res <- result{h: h, err: err}
	}()
	r := <-res
	h := r.h
	if r.err != nil {
		if h.IsOpen() {
			h.Close()
			netns.DeleteNamed(name)
		}
		return nil, fmt.Errorf("create netns %s: %w", name, r.err)
	}
	n := &NS{Name: name, handle: h}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	n.nl, err = netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("netlink in netns %s: %w", name, err)
	}
	lo, err := n.nl.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", name, err)
	}
	if err := n.nl.LinkSetUp(lo); err != nil {
		return nil, fmt.Errorf("netns %s: set lo up: %w", name, err)
	}
	return n, nil
}

// Open returns an existing named namespace.
func Open(name string) (*NS, error) {
	h, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("netlink in netns %s: %w", name, err)
	}
	return &NS{Name: name, handle: h, nl: nl}, nil
}

// Netlink is a netlink handle working inside the namespace.
func (n *NS) Netlink() *netlink.Handle { return n.nl }

// Handle is the namespace's file descriptor.
func (n *NS) Handle() netns.NsHandle { return n.handle }

// Do runs fn on a thread inside the namespace. Sockets fn opens stay in the
// namespace after Do returns.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	// A fresh goroutine, whose thread is discarded afterwards if the
	// namespace cannot be restored.
	go func() { errc <- RunIn(n.handle, n.Name, fn) }()
	return <-errc
}

// RunIn runs fn on the calling goroutine's thread inside the network
// namespace ns (name is for errors), leaving the thread as it found it; a
// thread that cannot be put back stays locked and ends with its goroutine.
// A thread already in ns is not switched at all, which needs no
// CAP_SYS_ADMIN: the daemon, without it, calls this for its own namespace.
func RunIn(ns netns.NsHandle, name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		// Still in its own namespace: the thread goes back to the pool.
		// (Ending it would also end every child process it started with
		// a parent-death signal.)
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if orig.Equal(ns) {
		defer runtime.UnlockOSThread()
		return fn()
	}
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return errors.Join(ferr, fmt.Errorf("leave netns %s: %w", name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// CloseHandles releases this process's handles; the namespace stays.
func (n *NS) CloseHandles() error {
	if n.nl != nil {
		n.nl.Close()
		n.nl = nil
	}
	if n.handle.IsOpen() {
		return n.handle.Close()
	}
	return nil
}

// Close closes the handles and deletes the namespace; links in it go too.
func (n *NS) Close() error {
	var errs []error
	errs = append(errs, n.CloseHandles())
	if err := netns.DeleteNamed(n.Name); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("delete netns %s: %w", n.Name, err))
	}
	return errors.Join(errs...)
}

// Veth creates a veth pair with end aName in a and end bName in b, both
// left down. MACs are left to the kernel unless given.
func Veth(a *NS, aName string, b *NS, bName string) error {
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(int(b.handle)),
	}
	if err := a.nl.LinkAdd(v); err != nil {
		return fmt.Errorf("create veth %s/%s <-> %s/%s: %w", a.Name, aName, b.Name, bName, err)
	}
	return nil
}

// SetUp brings a link in the namespace up.
func (n *NS) SetUp(name string) error {
	l, err := n.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("netns %s: %w", n.Name, err)
	}
	if err := n.nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("netns %s: set %s up: %w", n.Name, name, err)
	}
	return nil
}

// SetDown takes a link in the namespace down.
func (n *NS) SetDown(name string) error {
	l, err := n.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("netns %s: %w", n.Name, err)
	}
	if err := n.nl.LinkSetDown(l); err != nil {
		return fmt.Errorf("netns %s: set %s down: %w", n.Name, name, err)
	}
	return nil
}
