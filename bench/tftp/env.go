package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// Addresses of the bench network: a /24 on one veth pair.
const (
	serverIP   = "10.201.0.1"
	serverAddr = serverIP + "/24" // swp1 in the server namespace
	clientAddr = "10.201.0.2/24"  // eth0 in the client namespace
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

// topo is the bench's network: a server namespace with swp1 and a client
// namespace with its peer eth0, both MTU 1500 as on a phone's Ethernet.
type topo struct {
	server, client *vnet.NS
}

func newTopo(cl *cleanups) (_ *topo, err error) {
	t := &topo{}
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	if t.server, err = vnet.Create(vnet.UniqueName("pbbt")); err != nil {
		return nil, err
	}
	if t.client, err = vnet.Create(vnet.UniqueName("pbbt")); err != nil {
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
	}
	cl.add(t.close)
	return t, nil
}

func (t *topo) close() {
	var errs []error
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

// cgroup accounts the CPU time of a process and everything it forks
// (tftpd-hpa forks a process per transfer, atftpd starts a thread).
type cgroup struct {
	dir   string
	usage func() (time.Duration, error)
}

// newCgroup makes a cgroup for CPU accounting: cgroup v2 if the machine
// has the unified hierarchy, else v1's cpuacct controller.
func newCgroup(cl *cleanups, name string) (*cgroup, error) {
	var cg cgroup
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		cg.dir = filepath.Join("/sys/fs/cgroup", name)
		cg.usage = func() (time.Duration, error) {
			data, err := os.ReadFile(filepath.Join(cg.dir, "cpu.stat"))
			if err != nil {
				return 0, err
			}
			for _, line := range strings.Split(string(data), "\n") {
				if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
					us, err := strconv.ParseInt(v, 10, 64)
					return time.Duration(us) * time.Microsecond, err
				}
			}
			return 0, errors.New("no usage_usec in cpu.stat")
		}
	} else {
		cg.dir = filepath.Join("/sys/fs/cgroup/cpuacct", name)
		cg.usage = func() (time.Duration, error) {
			data, err := os.ReadFile(filepath.Join(cg.dir, "cpuacct.usage"))
			if err != nil {
				return 0, err
			}
			ns, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
			return time.Duration(ns), err
		}
	}
	if err := os.Mkdir(cg.dir, 0o755); err != nil {
		return nil, fmt.Errorf("cgroup for CPU accounting: %w", err)
	}
	cl.add(func() {
		cg.killAll()
		for range 50 {
			if err := os.Remove(cg.dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		slog.Warn("remove cgroup", "dir", cg.dir)
	})
	return &cg, nil
}

// pids in the cgroup.
func (cg *cgroup) pids() []int {
	f, err := os.Open(filepath.Join(cg.dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if pid, err := strconv.Atoi(sc.Text()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// killAll ends the processes the bench started in this cgroup (a server
// and what it forked), each by its id.
func (cg *cgroup) killAll() {
	for range 50 {
		pids := cg.pids()
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startIn starts argv inside namespace ns and cgroup cg: a shell moves
// itself into the cgroup and then execs `ip netns exec`, so nothing the
// command does escapes the accounting. The process dies with the bench
// (PDEATHSIG).
func startIn(ns *vnet.NS, cg *cgroup, stdout, stderr io.Writer, argv ...string) (*exec.Cmd, error) {
	script := `echo $$ > "$0" && exec ip netns exec "$@"`
	args := append([]string{"-c", script, filepath.Join(cg.dir, "cgroup.procs"), ns.Name}, argv...)
	cmd := exec.Command("/bin/sh", args...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}

// udpErrors is the namespace's count of UDP datagrams dropped on receipt
// (RcvbufErrors: a socket's buffer was full) from its /proc/net/snmp.
func udpErrors(ns *vnet.NS) int64 {
	var n int64
	ns.Do(func() error {
		// thread-self: the namespace of this (locked) thread, not the
		// process's.
		data, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var names []string
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != "Udp:" {
				continue
			}
			if names == nil {
				names = f
				continue
			}
			for i, name := range names {
				if name == "RcvbufErrors" && i < len(f) {
					n, _ = strconv.ParseInt(f[i], 10, 64)
				}
			}
		}
		return nil
	})
	return n
}
