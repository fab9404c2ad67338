package wiretest

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/bpf"

	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/rawsock"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// Peer is the far end of a veth pair, in a namespace of its own, where a
// test runs lldpd; Near is the test's end.
type Peer struct {
	Near, Far       *vnet.NS
	NearIf, FarIf   string
	NearMAC, FarMAC net.HardwareAddr
}

// NewPeer makes two namespaces joined by a veth pair, both ends up, the
// far end with address farAddr (CIDR, or "" for none). Everything goes
// when the test ends.
func NewPeer(tb testing.TB, nearIf, farIf, farAddr string) *Peer {
	tb.Helper()
	privtest.Require(tb)
	p := &Peer{NearIf: nearIf, FarIf: farIf}
	p.Near, p.Far = privtest.VethPair(tb, nearIf, farIf)
	if err := p.Far.SetUp(farIf); err != nil {
		tb.Fatal(err)
	}
	far, err := p.Far.Netlink().LinkByName(farIf)
	if err != nil {
		tb.Fatal(err)
	}
	if farAddr != "" {
		a, err := netlink.ParseAddr(farAddr)
		if err != nil {
			tb.Fatal(err)
		}
		if err := p.Far.Netlink().AddrAdd(far, a); err != nil {
			tb.Fatal(err)
		}
	}
	near, err := p.Near.Netlink().LinkByName(nearIf)
	if err != nil {
		tb.Fatal(err)
	}
	p.NearMAC, p.FarMAC = near.Attrs().HardwareAddr, far.Attrs().HardwareAddr
	return p
}

// Lldpd is lldpd running on the peer's far end, with a control socket and
// configuration of its own (nothing of the machine's /etc/lldpd.d).
type Lldpd struct {
	socket string
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// StartLldpd runs lldpd in the foreground on p.FarIf only, applying config
// (lldpcli commands, one a line) at start, with extra flags (-c..., -M
// N). It runs in a process group of its own, killed with its
// privilege-separated child when the test ends, also if it fails.
func (p *Peer) StartLldpd(tb testing.TB, config string, flags ...string) *Lldpd {
	tb.Helper()
	NeedTool(tb, "lldpd")
	NeedTool(tb, "lldpcli")
	// lldpd runs lldpcli for the configuration as its unprivileged user,
	// which must reach the socket: not in t.TempDir, whose parent is 0700.
	dir, err := os.MkdirTemp("", "pb-lldpd-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	conf := filepath.Join(dir, "lldpd.conf")
	if err := os.WriteFile(conf, []byte(config), 0o644); err != nil {
		tb.Fatal(err)
	}
	l := &Lldpd{socket: filepath.Join(dir, "lldpd.socket"), out: &syncBuffer{}, exited: make(chan struct{})}
	args := append([]string{"-d", "-u", l.socket, "-O", conf, "-I", p.FarIf}, flags...)
	l.cmd = exec.Command("lldpd", args...)
	l.cmd.Stdout, l.cmd.Stderr = l.out, l.out
	l.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.Far.Do(l.cmd.Start); err != nil {
		tb.Fatalf("start lldpd: %v", err)
	}
	go func() { l.cmd.Wait(); close(l.exited) }()
	tb.Cleanup(func() {
		syscall.Kill(-l.cmd.Process.Pid, syscall.SIGKILL)
		<-l.exited
		if tb.Failed() {
			tb.Logf("lldpd %q output:\n%s", args, l.out.String())
		}
	})
	return l
}

// LldpdNeighbor is one neighbour in `lldpcli show neighbors details -f
// json0`, which puts every value in an array.
type LldpdNeighbor struct {
	Interface string `json:"name"`
	Via       string `json:"via"`
	Chassis   []struct {
		ID         []TypedValue `json:"id"`
		Name       []Value      `json:"name"`
		Descr      []Value      `json:"descr"`
		MgmtIP     []Value      `json:"mgmt-ip"`
		Capability []struct {
			Type    string `json:"type"`
			Enabled bool   `json:"enabled"`
		} `json:"capability"`
	} `json:"chassis"`
	Port []struct {
		ID    []TypedValue `json:"id"`
		Descr []Value      `json:"descr"`
		TTL   []Value      `json:"ttl"`
	} `json:"port"`
	VLAN []struct {
		ID   string `json:"vlan-id"`
		PVID bool   `json:"pvid"`
	} `json:"vlan"`
	MED []struct {
		DeviceType []Value `json:"device-type"`
		Policy     []struct {
			AppType string `json:"apptype"`
			Defined bool   `json:"defined"`
			VLAN    []struct {
				VID string `json:"vid"`
			} `json:"vlan"`
			Priority []Value `json:"priority"`
			PCP      []Value `json:"pcp"`
			DSCP     []Value `json:"dscp"`
		} `json:"policy"`
		PoE []struct {
			DeviceType []Value `json:"device-type"`
			Source     []Value `json:"source"`
			Priority   []Value `json:"priority"`
			Power      []Value `json:"power"`
		} `json:"poe"`
	} `json:"lldp-med"`
}

// Value is a json0 leaf.
type Value struct {
	Value string `json:"value"`
}

// TypedValue is a json0 leaf with a type, such as an ID's subtype.
type TypedValue struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// First is the first value, or "".
func First(vs []Value) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0].Value
}

// Neighbors is what lldpd has learnt, and lldpcli's JSON for messages.
func (l *Lldpd) Neighbors(tb testing.TB) ([]LldpdNeighbor, string) {
	tb.Helper()
	out, err := exec.Command("lldpcli", "-u", l.socket, "show", "neighbors", "details", "-f", "json0").Output()
	if err != nil {
		select {
		case <-l.exited:
			tb.Fatalf("lldpd exited: %v\n%s", l.cmd.ProcessState, l.out.String())
		default:
		}
		// Not ready yet (the socket appears once lldpd runs).
		return nil, err.Error()
	}
	var doc struct {
		LLDP []struct {
			Interface []LldpdNeighbor `json:"interface"`
		} `json:"lldp"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		tb.Fatalf("lldpcli output: %v\n%s", err, out)
	}
	var ns []LldpdNeighbor
	for _, l := range doc.LLDP {
		ns = append(ns, l.Interface...)
	}
	return ns, string(out)
}

// WaitNeighbor polls lldpd until it lists a neighbour heard via via
// ("LLDP", "CDPv2") for which ok holds, and returns it; it fails the test
// after timeout.
func (l *Lldpd) WaitNeighbor(tb testing.TB, via string, timeout time.Duration, ok func(LldpdNeighbor) bool) LldpdNeighbor {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		ns, raw := l.Neighbors(tb)
		last = raw
		for _, n := range ns {
			if n.Via == via && ok(n) {
				return n
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	tb.Fatalf("lldpd lists no such %s neighbour after %s; lldpcli said:\n%s", via, timeout, last)
	return LldpdNeighbor{}
}

// Listen opens a raw socket on the peer's near end with filter, closed
// when the test ends.
func (p *Peer) Listen(tb testing.TB, filter []bpf.Instruction) *rawsock.Conn {
	tb.Helper()
	var c *rawsock.Conn
	err := p.Near.Do(func() (err error) {
		c, err = rawsock.Listen(p.NearIf, rawsock.Options{Filter: filter})
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// Repeat sends frame out of c every interval until the returned stop is
// called or the test ends.
func Repeat(tb testing.TB, c *rawsock.Conn, interval time.Duration, frame []byte) (stop func()) {
	tb.Helper()
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if err := c.Write(frame); err != nil {
				tb.Errorf("send: %v", err)
				return
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(done); <-finished }) }
	tb.Cleanup(stop)
	return stop
}

// NextFrom returns the next frame c receives from src for which ok holds,
// failing the test after timeout.
func NextFrom(tb testing.TB, c *rawsock.Conn, src net.HardwareAddr, timeout time.Duration, ok func([]byte) bool) []byte {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	if err := c.SetReadDeadline(deadline); err != nil {
		tb.Fatal(err)
	}
	buf := make([]byte, 2048)
	for {
		f, err := c.Read(buf)
		if err != nil {
			tb.Fatalf("no frame from %s within %s: %v", src, timeout, err)
		}
		if bytes.Equal(f.Data[6:12], src) && ok(f.Data) {
			return bytes.Clone(f.Data)
		}
	}
}
