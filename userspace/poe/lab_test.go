package poe_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/poe"
	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

const detectDelay = 50 * time.Millisecond

// phoneNet makes an appliance namespace and a phone namespace joined by n
// veth pairs swpI <-> ethI, both ends down, and returns the phone side.
func phoneNet(t *testing.T, n int) *vnet.NS {
	t.Helper()
	privtest.Require(t)
	var nss [2]*vnet.NS
	for i := range nss {
		ns, err := vnet.Create(vnet.UniqueName("pbpoe"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := ns.Close(); err != nil {
				t.Errorf("remove netns: %v", err)
			}
		})
		nss[i] = ns
	}
	for i := range n {
		if err := vnet.Veth(nss[0], fmt.Sprintf("swp%d", i), nss[1], fmt.Sprintf("eth%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	return nss[1]
}

func newLab(t *testing.T, ports map[string]poe.LabPort, delay time.Duration) *poe.Lab {
	t.Helper()
	l, err := poe.NewLab(ports, delay, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return l
}

func isUp(t *testing.T, ns *vnet.NS, link string) bool {
	t.Helper()
	l, err := ns.Netlink().LinkByName(link)
	if err != nil {
		t.Fatalf("%s in %s: %v", link, ns.Name, err)
	}
	return l.Attrs().Flags&net.FlagUp != 0
}

func status(t *testing.T, l *poe.Lab, port string) poe.PortStatus {
	t.Helper()
	st, err := l.Status(context.Background(), port)
	if err != nil {
		t.Fatalf("Status(%s): %v", port, err)
	}
	return st
}

// waitState polls until the port reaches state and returns its status.
func waitState(t *testing.T, l *poe.Lab, port string, state poe.State) poe.PortStatus {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := status(t, l, port)
		if st.State == state {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still %+v, want state %s", port, st, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// holdsFor checks cond repeatedly for d; it is for asserting that something
// does not happen (a cancelled power-up), not for synchronising.
func holdsFor(t *testing.T, d time.Duration, cond func() error) {
	t.Helper()
	end := time.Now().Add(d)
	for {
		if err := cond(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(end) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func disabled(port string) poe.PortStatus {
	return poe.PortStatus{Port: port, State: poe.StateDisabled, Class: -1}
}

func TestNewLab(t *testing.T) {
	for _, tc := range []struct {
		class int
		ok    bool
	}{
		{-1, false}, {0, true}, {1, true}, {2, true}, {3, true}, {4, true}, {5, false}, {100, false},
	} {
		t.Run(fmt.Sprint("class ", tc.class), func(t *testing.T) {
			l, err := poe.NewLab(map[string]poe.LabPort{
				"swp1": {Netns: "x", Link: "eth0", Class: 0},
				"swp2": {Netns: "x", Link: "eth1", Class: tc.class},
			}, detectDelay, testLogger(t))
			if !tc.ok {
				if err == nil {
					l.Close()
					t.Fatalf("NewLab accepted class %d", tc.class)
				}
				if !strings.Contains(err.Error(), "swp2") {
					t.Errorf("error %q does not name the port", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if got, want := l.Ports(), []string{"swp1", "swp2"}; !reflect.DeepEqual(got, want) {
				t.Errorf("Ports = %v, want %v", got, want)
			}
			if got := status(t, l, "swp2"); got != disabled("swp2") {
				t.Errorf("initial status %+v, want %+v", got, disabled("swp2"))
			}
		})
	}
}

func TestNewLabDraw(t *testing.T) {
	for _, tc := range []struct {
		draw int
		ok   bool
	}{{-1, false}, {0, true}, {7000, true}, {7001, false}} {
		l, err := poe.NewLab(map[string]poe.LabPort{"swp1": {Netns: "x", Link: "eth0", Class: 2, DrawMW: tc.draw}}, 0, testLogger(t))
		if (err == nil) != tc.ok {
			t.Errorf("class 2 drawing %d mW: %v, want ok=%v", tc.draw, err, tc.ok)
		}
		if err == nil {
			l.Close()
		}
	}
}

// TestLabLimitAndCycle: a phone drawing past its port's limit is cut, as a
// PSE does; a power cycle takes the link down and brings it back.
func TestLabLimitAndCycle(t *testing.T) {
	phone := phoneNet(t, 1)
	l := newLab(t, map[string]poe.LabPort{"swp0": {Netns: phone.Name, Link: "eth0", Class: 3, DrawMW: 9000}}, 0)
	ctx := context.Background()
	if err := l.Enable(ctx, "swp0"); err != nil {
		t.Fatal(err)
	}
	waitState(t, l, "swp0", poe.StateDelivering)
	if err := l.SetLimit(ctx, "swp0", 8000); err != nil {
		t.Fatal(err)
	}
	st := status(t, l, "swp0")
	if st.State != poe.StateFault || !strings.Contains(st.Fault, "overload") || st.LimitMW != 8000 {
		t.Errorf("over its limit: %+v, want an overload fault", st)
	}
	if isUp(t, phone, "eth0") {
		t.Error("eth0 still up after the port was cut")
	}
	if err := l.SetLimit(ctx, "swp0", 10000); err != nil {
		t.Fatal(err)
	}
	if err := l.PowerCycle(ctx, "swp0", time.Millisecond); err != nil {
		t.Fatal(err)
	}
	st = waitState(t, l, "swp0", poe.StateDelivering)
	if st.PowerMW != 9000 || st.LimitMW != 10000 || !isUp(t, phone, "eth0") {
		t.Errorf("after a power cycle within the limit: %+v, eth0 up %v", st, isUp(t, phone, "eth0"))
	}
	if err := l.SetPriority(ctx, "swp0", poe.PriorityHigh); err != nil {
		t.Errorf("SetPriority: %v", err)
	}
	if err := l.SetPriority(ctx, "swp9", poe.PriorityHigh); !errors.Is(err, poe.ErrUnknownPort) {
		t.Errorf("SetPriority(swp9) = %v", err)
	}
	if err := l.SetLimit(ctx, "swp9", 1); !errors.Is(err, poe.ErrUnknownPort) {
		t.Errorf("SetLimit(swp9) = %v", err)
	}
	if b, err := l.Budget(ctx); b != 0 || err != nil {
		t.Errorf("Budget = %d, %v; want 0 (none of its own)", b, err)
	}
}

func TestLabPortsSorted(t *testing.T) {
	ports := map[string]poe.LabPort{}
	for _, n := range []string{"swp10", "swp2", "swp1", "a"} {
		ports[n] = poe.LabPort{Netns: "x", Link: "eth0"}
	}
	l := newLab(t, ports, detectDelay)
	if got, want := l.Ports(), []string{"a", "swp1", "swp10", "swp2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Ports = %v, want %v", got, want)
	}
}

func TestLabUnknownPort(t *testing.T) {
	l := newLab(t, map[string]poe.LabPort{"swp1": {Netns: "x", Link: "eth0"}}, detectDelay)
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"Enable":  func() error { return l.Enable(ctx, "swp9") },
		"Disable": func() error { return l.Disable(ctx, "swp9") },
		"Status":  func() error { _, err := l.Status(ctx, "swp9"); return err },
	} {
		t.Run(name, func(t *testing.T) {
			err := call()
			if !errors.Is(err, poe.ErrUnknownPort) {
				t.Errorf("%s(swp9) = %v, want ErrUnknownPort", name, err)
			}
			if err != nil && !strings.Contains(err.Error(), "swp9") {
				t.Errorf("error %q does not name the port", err)
			}
		})
	}
	if got := status(t, l, "swp1"); got != disabled("swp1") {
		t.Errorf("known port touched: %+v", got)
	}
}

func TestLabMissingNetnsFaults(t *testing.T) {
	// The namespace name is never created, so powering the port fails.
	ns := vnet.UniqueName("pbpoe")
	l := newLab(t, map[string]poe.LabPort{"swp1": {Netns: ns, Link: "eth0", Class: 2}}, 0)
	ctx := context.Background()
	for round := range 2 { // a faulted port can be enabled again, and faults again
		if err := l.Enable(ctx, "swp1"); err != nil {
			t.Fatalf("round %d: Enable: %v", round, err)
		}
		st := waitState(t, l, "swp1", poe.StateFault)
		if st.Fault == "" || !strings.Contains(st.Fault, ns) {
			t.Errorf("round %d: fault %q does not name the namespace %s", round, st.Fault, ns)
		}
		if st.Class != -1 || st.PowerMW != 0 {
			t.Errorf("round %d: faulted port reports class %d, %d mW", round, st.Class, st.PowerMW)
		}
	}
	// Disable cannot reach the link either, but the port is off.
	if err := l.Disable(ctx, "swp1"); err == nil {
		t.Error("Disable of a port whose namespace is missing reported no error")
	}
	if got := status(t, l, "swp1"); got != disabled("swp1") {
		t.Errorf("after Disable: %+v, want %+v", got, disabled("swp1"))
	}
}

func TestLabPowerCycle(t *testing.T) {
	phone := phoneNet(t, len(poe.ClassPowerMW))
	ports := map[string]poe.LabPort{}
	for class := range poe.ClassPowerMW {
		ports[fmt.Sprintf("swp%d", class)] = poe.LabPort{Netns: phone.Name, Link: fmt.Sprintf("eth%d", class), Class: class}
	}
	l := newLab(t, ports, detectDelay)
	for class, mw := range poe.ClassDrawMW { // each phone draws the most its class allows
		port, link := fmt.Sprintf("swp%d", class), fmt.Sprintf("eth%d", class)
		t.Run(fmt.Sprint("class ", class), func(t *testing.T) {
			ctx := context.Background()
			if got := status(t, l, port); got != disabled(port) {
				t.Errorf("before Enable: %+v, want %+v", got, disabled(port))
			}
			if isUp(t, phone, link) {
				t.Fatalf("%s up before power", link)
			}

			start := time.Now()
			if err := l.Enable(ctx, port); err != nil {
				t.Fatal(err)
			}
			st := status(t, l, port)
			linkUp := isUp(t, phone, link)
			// Before the detection delay has passed, power cannot be on.
			if time.Since(start) < detectDelay {
				if want := (poe.PortStatus{Port: port, State: poe.StateSearching, Class: -1}); st != want {
					t.Errorf("right after Enable: %+v, want %+v", st, want)
				}
				if linkUp {
					t.Errorf("%s up right after Enable, before the detection delay", link)
				}
			} else {
				t.Logf("slow machine: %v passed before the first look", time.Since(start))
			}

			st = waitState(t, l, port, poe.StateDelivering)
			if took := time.Since(start); took < detectDelay {
				t.Errorf("delivering after %v, before the detection delay %v", took, detectDelay)
			}
			if want := (poe.PortStatus{Port: port, State: poe.StateDelivering, Class: class, PowerMW: mw}); st != want {
				t.Errorf("powered: %+v, want %+v", st, want)
			}
			if !isUp(t, phone, link) {
				t.Errorf("%s delivering but the phone's %s is down", port, link)
			}

			// Enabling a powered port changes nothing.
			if err := l.Enable(ctx, port); err != nil {
				t.Errorf("Enable of a powered port: %v", err)
			}
			if got := status(t, l, port); got != st {
				t.Errorf("after a second Enable: %+v, want %+v", got, st)
			}

			if err := l.Disable(ctx, port); err != nil {
				t.Fatal(err)
			}
			if got := status(t, l, port); got != disabled(port) {
				t.Errorf("after Disable: %+v, want %+v", got, disabled(port))
			}
			if isUp(t, phone, link) {
				t.Errorf("%s still up after Disable", link)
			}
		})
	}
}

func TestLabDisableDuringDetection(t *testing.T) {
	phone := phoneNet(t, 1)
	// Longer than detectDelay, so that the Disable below comes well within it.
	const delay = 300 * time.Millisecond
	l := newLab(t, map[string]poe.LabPort{"swp0": {Netns: phone.Name, Link: "eth0", Class: 1}}, delay)
	ctx := context.Background()
	start := time.Now()
	if err := l.Enable(ctx, "swp0"); err != nil {
		t.Fatal(err)
	}
	if err := l.Disable(ctx, "swp0"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took >= delay {
		t.Logf("slow machine: Disable came %v after Enable, past the delay", took)
	}
	// Past the delay, the cancelled power-up must not have happened.
	holdsFor(t, time.Until(start.Add(delay+200*time.Millisecond)), func() error {
		if st := status(t, l, "swp0"); st != disabled("swp0") {
			return fmt.Errorf("status %+v after Disable during detection, want %+v", st, disabled("swp0"))
		}
		if isUp(t, phone, "eth0") {
			return errors.New("eth0 came up although the port was disabled during detection")
		}
		return nil
	})
	// The port still powers up normally afterwards.
	if err := l.Enable(ctx, "swp0"); err != nil {
		t.Fatal(err)
	}
	waitState(t, l, "swp0", poe.StateDelivering)
	if !isUp(t, phone, "eth0") {
		t.Error("eth0 down after the port was enabled again")
	}
}

func TestLabCloseCancelsPending(t *testing.T) {
	phone := phoneNet(t, 2)
	l, err := poe.NewLab(map[string]poe.LabPort{
		"swp0": {Netns: phone.Name, Link: "eth0", Class: 2},
		"swp1": {Netns: phone.Name, Link: "eth1", Class: 3},
	}, detectDelay, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() }) // in case the test stops before its Close
	ctx := context.Background()
	// swp1 is powered before Close and keeps its power, as a hardware PSE
	// does when its driver exits.
	if err := l.Enable(ctx, "swp1"); err != nil {
		t.Fatal(err)
	}
	powered := waitState(t, l, "swp1", poe.StateDelivering)
	start := time.Now()
	if err := l.Enable(ctx, "swp0"); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Enable(ctx, "swp0"); err == nil {
		t.Error("Enable after Close succeeded")
	}
	holdsFor(t, time.Until(start.Add(detectDelay+200*time.Millisecond)), func() error {
		if st := status(t, l, "swp0"); st.State == poe.StateDelivering {
			return fmt.Errorf("swp0 powered after Close: %+v", st)
		}
		if isUp(t, phone, "eth0") {
			return errors.New("eth0 came up after Close cancelled its power-up")
		}
		if st := status(t, l, "swp1"); st != powered {
			return fmt.Errorf("swp1 %+v after Close, want %+v", st, powered)
		}
		if !isUp(t, phone, "eth1") {
			return errors.New("eth1 lost power on Close")
		}
		return nil
	})
}

// TestLabCloseWaitsForPowerUp holds a power-up inside setLink (its netns
// "file" is a FIFO, whose open blocks until a writer comes) and checks that
// Close does not return before that power-up has finished. For the moment
// the FIFO is held, anything else opening it (`ip netns list`) waits too.
func TestLabCloseWaitsForPowerUp(t *testing.T) {
	privtest.Require(t)
	name := vnet.UniqueName("pbpoe")
	fifo := filepath.Join("/run/netns", name)
	if err := os.MkdirAll(filepath.Dir(fifo), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := poe.NewLab(map[string]poe.LabPort{"swp0": {Netns: name, Link: "eth0"}}, 0, testLogger(t))
	if err != nil {
		os.Remove(fifo)
		t.Fatal(err)
	}
	// release lets a blocked open of the FIFO go on; it reports whether a
	// reader was there to release.
	release := func() bool {
		fd, err := unix.Open(fifo, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return false // ENXIO: no reader yet
		}
		unix.Close(fd)
		return true
	}
	t.Cleanup(func() {
		// Holding the FIFO open read-write releases every opener (this
		// test's power-up, or an `ip netns list` that ran meanwhile) and
		// keeps new ones from blocking until the path is gone.
		fd, err := unix.Open(fifo, unix.O_RDWR|unix.O_CLOEXEC, 0)
		os.Remove(fifo)
		if err == nil {
			unix.Close(fd)
		}
		l.Close()
	})

	if err := l.Enable(context.Background(), "swp0"); err != nil {
		t.Fatal(err)
	}
	// Wait until the power-up goroutine is in setLink, where it stays.
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 1<<20)
	for !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "poe.setLink(") {
		if time.Now().After(deadline) {
			t.Fatal("the power-up never reached setLink")
		}
		time.Sleep(time.Millisecond)
	}

	closed := make(chan error, 1)
	go func() { closed <- l.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a power-up was still setting the link", err)
	case <-time.After(200 * time.Millisecond):
	}

	// Let the power-up finish: its open of the FIFO succeeds, entering the
	// "namespace" fails, and the goroutine ends.
	for !release() {
		if time.Now().After(deadline) {
			t.Fatal("the power-up never opened the netns path")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return after the power-up finished")
	}
	if st := status(t, l, "swp0"); st.State == poe.StateDelivering {
		t.Errorf("cancelled power-up delivered: %+v", st)
	}
	if err := l.Enable(context.Background(), "swp0"); err == nil {
		t.Error("Enable after Close succeeded")
	}
}
