package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// Addresses of the bench network: one /16 for every server.
const (
	serverAddr = "10.200.0.1/16"     // swp1 in the server namespace
	clientAddr = "10.200.255.254/16" // eth0 in the client namespace (perfdhcp binds here)
	serverIP   = "10.200.0.1"
	rangeStart = "10.200.0.10"
	rangeEnd   = "10.200.254.254"
	// clientCap is how many distinct clients a run uses at most: below
	// the range's 65,013 addresses, so no server runs out.
	clientCap = 60000
)

// cleanups runs registered undo steps in reverse order, once, also from
// the signal handler.
type cleanups struct {
	mu    sync.Mutex
	steps []func()
	done  bool
}

func (c *cleanups) add(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.steps = append(c.steps, f)
}

func (c *cleanups) run() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return
	}
	c.done = true
	for i := len(c.steps) - 1; i >= 0; i-- {
		c.steps[i]()
	}
}

// runDir is the bench's tmpfs under /run (lease files, configs, sockets)
// with its own bpffs for the daemon's pins.
type runDir struct {
	path  string
	bpffs string
}

func newRunDir(cl *cleanups) (*runDir, error) {
	dir, err := os.MkdirTemp("/run", "pbbench-")
	if err != nil {
		return nil, err
	}
	cl.add(func() {
		if err := os.Remove(dir); err != nil {
			slog.Warn("remove run dir", "dir", dir, "error", err)
		}
	})
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700,size=1g"); err != nil {
		return nil, fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	cl.add(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			slog.Warn("unmount tmpfs", "dir", dir, "error", err)
		}
	})
	bpffs := filepath.Join(dir, "bpf")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		return nil, err
	}
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		return nil, fmt.Errorf("mount bpffs on %s: %w", bpffs, err)
	}
	cl.add(func() {
		if err := unix.Unmount(bpffs, unix.MNT_DETACH); err != nil {
			slog.Warn("unmount bpffs", "dir", bpffs, "error", err)
		}
	})
	return &runDir{path: dir, bpffs: bpffs}, nil
}

// topo is one server's network: a server namespace with swp1 and a
// client namespace with its peer eth0.
type topo struct {
	server, client *vnet.NS
	clientMAC      net.HardwareAddr
	clientIfindex  int
	passLink       link.Link // XDP_PASS on eth0, for XDP_TX replies to arrive
	passProg       *ebpf.Program
}

func newTopo(cl *cleanups, xdpPass bool) (_ *topo, err error) {
	t := &topo{}
	// Undo what was built if a later step fails; on success the caller's
	// cleanups own it via t.close.
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	if t.server, err = vnet.Create(vnet.UniqueName("pbbn")); err != nil {
		return nil, err
	}
	if t.client, err = vnet.Create(vnet.UniqueName("pbbn")); err != nil {
		return nil, err
	}
	if err := vnet.Veth(t.server, "swp1", t.client, "eth0"); err != nil {
		return nil, err
	}
	for _, s := range []struct {
		ns   *vnet.NS
		dev  string
		addr string
	}{{t.server, "swp1", serverAddr}, {t.client, "eth0", clientAddr}} {
		l, err := s.ns.Netlink().LinkByName(s.dev)
		if err != nil {
			return nil, err
		}
		a, err := netlink.ParseAddr(s.addr)
		if err != nil {
			return nil, err
		}
		if err := s.ns.Netlink().AddrAdd(l, a); err != nil {
			return nil, fmt.Errorf("%s: add %s: %w", s.dev, s.addr, err)
		}
		if err := s.ns.SetUp(s.dev); err != nil {
			return nil, err
		}
		if s.dev == "eth0" {
			t.clientMAC = l.Attrs().HardwareAddr
			t.clientIfindex = l.Attrs().Index
		}
	}
	if xdpPass {
		if err := t.attachPass(); err != nil {
			return nil, err
		}
	}
	cl.add(t.close) // also on Ctrl-C; close is idempotent
	return t, nil
}

// attachPass puts an XDP_PASS program on eth0: a veth only delivers
// XDP_TX frames from its peer when it has an XDP program itself.
func (t *topo) attachPass() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "pbbench_pass",
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 2), // XDP_PASS
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		return fmt.Errorf("load XDP_PASS program: %w", err)
	}
	t.passProg = prog
	return t.client.Do(func() error {
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: t.clientIfindex, Flags: link.XDPDriverMode})
		if err != nil {
			return fmt.Errorf("attach XDP_PASS to eth0: %w", err)
		}
		t.passLink = l
		return nil
	})
}

func (t *topo) close() {
	var errs []error
	if t.passLink != nil {
		errs = append(errs, t.passLink.Close())
		t.passLink = nil
	}
	if t.passProg != nil {
		errs = append(errs, t.passProg.Close())
		t.passProg = nil
	}
	// Deleting the namespaces removes the veth pair with them.
	for _, ns := range []**vnet.NS{&t.client, &t.server} {
		if *ns != nil {
			errs = append(errs, (*ns).Close())
			*ns = nil
		}
	}
	if err := errors.Join(errs...); err != nil {
		slog.Warn("tear down namespaces", "error", err)
	}
}
