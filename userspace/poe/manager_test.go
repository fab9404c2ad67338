package poe_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/poe"
)

type call struct {
	op, port string
	at       time.Time
}

// fakePort is a port of the fake controller: enabling it delivers power
// at once if a device (class >= 0) is plugged in.
type fakePort struct {
	enabled    bool
	class      int // -1: nothing plugged in
	drawMW     int
	statusErr  error
	enableErr  error
	disableErr error
}

// fakeController is a PoE controller in memory that records every call.
type fakeController struct {
	mu     sync.Mutex
	names  []string
	ports  map[string]*fakePort
	budget int
	calls  []call
	closed int
	events chan call // every Enable and Disable, for waiting without sleeps
}

func newFake(names ...string) *fakeController {
	f := &fakeController{names: names, ports: map[string]*fakePort{}, events: make(chan call, 1000)}
	for _, n := range names {
		f.ports[n] = &fakePort{class: 2, drawMW: 6000}
	}
	return f
}

func (f *fakeController) record(op, port string) {
	c := call{op, port, time.Now()}
	f.calls = append(f.calls, c)
	if op == "enable" || op == "disable" {
		f.events <- c
	}
}

func (f *fakeController) Ports() []string { return slices.Clone(f.names) }

func (f *fakeController) Enable(_ context.Context, port string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("enable", port)
	p := f.ports[port]
	if p.enableErr != nil {
		return p.enableErr
	}
	p.enabled = true
	return nil
}

func (f *fakeController) Disable(_ context.Context, port string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("disable", port)
	p := f.ports[port]
	if p.disableErr != nil {
		return p.disableErr
	}
	p.enabled = false
	return nil
}

func (f *fakeController) PowerCycle(ctx context.Context, port string, off time.Duration) error {
	f.mu.Lock()
	f.record("cycle", port)
	f.mu.Unlock()
	return nil
}

func (f *fakeController) Status(_ context.Context, port string) (poe.PortStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.ports[port]
	switch {
	case p.statusErr != nil:
		return poe.PortStatus{}, p.statusErr
	case !p.enabled:
		return poe.PortStatus{Port: port, State: poe.StateDisabled, Class: -1}, nil
	case p.class < 0:
		return poe.PortStatus{Port: port, State: poe.StateSearching, Class: -1}, nil
	}
	return poe.PortStatus{Port: port, State: poe.StateDelivering, Class: p.class, PowerMW: p.drawMW}, nil
}

func (f *fakeController) SetLimit(_ context.Context, port string, mw int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(fmt.Sprintf("limit=%d", mw), port)
	return nil
}

func (f *fakeController) SetPriority(_ context.Context, port string, p poe.Priority) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("priority="+p.String(), port)
	return nil
}

func (f *fakeController) Budget(context.Context) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.budget, nil
}

func (f *fakeController) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed++
	return nil
}

func (f *fakeController) set(port string, change func(*fakePort)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f.ports[port])
}

// opsOn lists the calls of one kind, in order.
func (f *fakeController) opsOn(op string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if c.op == op {
			out = append(out, c.port)
		}
	}
	return out
}

// waitEnables waits for n Enable calls and returns them in call order.
func (f *fakeController) waitEnables(t *testing.T, n int) []call {
	t.Helper()
	deadline := time.After(10 * time.Second)
	var got []call
	for len(got) < n {
		select {
		case c := <-f.events:
			if c.op == "enable" {
				got = append(got, c)
			}
		case <-deadline:
			t.Fatalf("%d of %d ports enabled before the deadline: %v", len(got), n, got)
		}
	}
	return got
}

func portsOf(calls []call) []string {
	var ports []string
	for _, c := range calls {
		ports = append(ports, c.port)
	}
	return ports
}

// eventually polls cond until it holds; it fails the test after 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never happened: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func ports(names ...string) []poe.PortConfig {
	var out []poe.PortConfig
	for _, n := range names {
		out = append(out, poe.PortConfig{Name: n, Enabled: true, Priority: poe.PriorityLow})
	}
	return out
}

func newManager(t *testing.T, ctrl poe.Controller, cfg poe.ManagerConfig) *poe.Manager {
	t.Helper()
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 5 * time.Millisecond
	}
	m, err := poe.NewManager(context.Background(), ctrl, cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// run starts m.Run and returns its start time and a stop that cancels and
// checks that Run returns nil.
func run(t *testing.T, m *poe.Manager) (time.Time, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run = %v, want nil", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Run did not return after ctx was cancelled")
			}
		})
	}
	t.Cleanup(stop)
	return start, stop
}

func portStatus(m *poe.Manager, name string) poe.ManagedPort {
	for _, p := range m.Status().Ports {
		if p.Port == name {
			return p
		}
	}
	return poe.ManagedPort{}
}

type loadSource struct {
	mu   sync.Mutex
	load poe.Load
}

func (l *loadSource) Load() poe.Load {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.load
}

func (l *loadSource) set(v poe.Load) {
	l.mu.Lock()
	l.load = v
	l.mu.Unlock()
}

func TestNewManager(t *testing.T) {
	ctrl := newFake("swp1", "swp2", "swp3")
	for _, tc := range []struct {
		name    string
		cfg     poe.ManagerConfig
		wantErr string // "" for success
		unknown bool   // errors.Is ErrUnknownPort
	}{
		{"all", poe.ManagerConfig{Ports: ports("swp1", "swp3"), Policy: poe.PolicyAll}, "", false},
		{"no ports", poe.ManagerConfig{Policy: poe.PolicyAll}, "", false},
		{"stagger", poe.ManagerConfig{Ports: ports("swp2"), Policy: poe.PolicyStagger, StaggerPorts: 1, StaggerInterval: time.Second}, "", false},
		{"adaptive", poe.ManagerConfig{Ports: ports("swp2"), Policy: poe.PolicyAdaptive, StaggerPorts: 2, Load: &loadSource{}}, "", false},
		{"measured", poe.ManagerConfig{Ports: ports("swp2"), Policy: poe.PolicyAll, Accounting: poe.AccountMeasured, BudgetMW: 1000}, "", false},
		{"adaptive without load", poe.ManagerConfig{Ports: ports("swp2"), Policy: poe.PolicyAdaptive, StaggerPorts: 1}, "load source", false},
		{"unknown port", poe.ManagerConfig{Ports: ports("swp1", "swp9"), Policy: poe.PolicyAll}, "swp9", true},
		{"port twice", poe.ManagerConfig{Ports: ports("swp1", "swp1"), Policy: poe.PolicyAll}, "twice", false},
		{"bad priority", poe.ManagerConfig{Ports: []poe.PortConfig{{Name: "swp1", Priority: 7}}, Policy: poe.PolicyAll}, "out of range", false},
		{"empty policy", poe.ManagerConfig{Ports: ports("swp1")}, "policy", false},
		{"bad policy", poe.ManagerConfig{Ports: ports("swp1"), Policy: "sometimes"}, `"sometimes"`, false},
		{"bad accounting", poe.ManagerConfig{Policy: poe.PolicyAll, Accounting: "guess"}, `"guess"`, false},
		{"negative budget", poe.ManagerConfig{Policy: poe.PolicyAll, BudgetMW: -1}, "negative", false},
		{"stagger 0 ports", poe.ManagerConfig{Ports: ports("swp1"), Policy: poe.PolicyStagger, StaggerInterval: time.Second}, "at least 1 port", false},
		{"stagger negative interval", poe.ManagerConfig{Ports: ports("swp1"), Policy: poe.PolicyStagger, StaggerPorts: 1, StaggerInterval: -time.Second}, "non-negative interval", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := poe.NewManager(context.Background(), ctrl, tc.cfg, testLogger(t))
			if tc.wantErr == "" {
				if err != nil || m == nil {
					t.Fatalf("NewManager = %v, %v; want a manager", m, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("NewManager accepted %+v", tc.cfg)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
			if got := errors.Is(err, poe.ErrUnknownPort); got != tc.unknown {
				t.Errorf("errors.Is(%v, ErrUnknownPort) = %v, want %v", err, got, tc.unknown)
			}
		})
	}
}

func TestRunPowersEveryPort(t *testing.T) {
	// Config order differs from the controller's; not every port of the
	// controller is managed; critical ports go first.
	cfgPorts := ports("swp4", "swp1", "swp3", "swp2")
	cfgPorts[2].Priority = poe.PriorityCritical // swp3
	cfgPorts[3].Priority = poe.PriorityHigh     // swp2
	want := []string{"swp3", "swp2", "swp4", "swp1"}
	for _, tc := range []struct {
		name string
		cfg  poe.ManagerConfig
	}{
		{"all", poe.ManagerConfig{Policy: poe.PolicyAll}},
		{"stagger one step", poe.ManagerConfig{Policy: poe.PolicyStagger, StaggerPorts: 10, StaggerInterval: time.Hour}},
		{"stagger no interval", poe.ManagerConfig{Policy: poe.PolicyStagger, StaggerPorts: 1}},
		{"adaptive, idle services", poe.ManagerConfig{Policy: poe.PolicyAdaptive, StaggerPorts: 1, Load: &loadSource{},
			Thresholds: poe.Load{DHCPBacklog: 1, TFTPActive: 1, ProxyQueued: 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctrl := newFake("swp1", "swp2", "swp3", "swp4", "swp5")
			cfg := tc.cfg
			cfg.Ports = cfgPorts
			m := newManager(t, ctrl, cfg)
			_, stop := run(t, m)
			if got := portsOf(ctrl.waitEnables(t, len(want))); !reflect.DeepEqual(got, want) {
				t.Errorf("enabled %v, want %v", got, want)
			}
			eventually(t, "every port delivering", func() bool {
				for _, p := range m.Status().Ports {
					if p.State != poe.StateDelivering || p.Held != "" {
						return false
					}
				}
				return true
			})
			stop()
			// Nothing more once Run has returned: no port twice, swp5 never.
			if got := ctrl.opsOn("enable"); !reflect.DeepEqual(got, want) {
				t.Errorf("all Enable calls %v, want %v", got, want)
			}
			// The controller got each port's priority before its power.
			for _, p := range cfgPorts {
				if got := ctrl.opsOn("priority=" + p.Priority.String()); !slices.Contains(got, p.Name) {
					t.Errorf("priority %s never set on %s", p.Priority, p.Name)
				}
			}
		})
	}
}

func TestRunStaggers(t *testing.T) {
	const interval = 50 * time.Millisecond
	order := []string{"swp5", "swp3", "swp1", "swp2", "swp4"}
	ctrl := newFake("swp1", "swp2", "swp3", "swp4", "swp5")
	m := newManager(t, ctrl, poe.ManagerConfig{Ports: ports(order...), Policy: poe.PolicyStagger, StaggerPorts: 2, StaggerInterval: interval})
	start, stop := run(t, m)
	calls := ctrl.waitEnables(t, len(order))
	if got := portsOf(calls); !reflect.DeepEqual(got, order) {
		t.Errorf("enabled %v, want %v", got, order)
	}
	for i, c := range calls {
		// Only a lower bound: a loaded machine may run late, never early.
		if earliest := time.Duration(i/2) * interval; c.at.Sub(start) < earliest {
			t.Errorf("%s (step %d) enabled %v after Run started, before %v", c.port, i/2, c.at.Sub(start), earliest)
		}
	}
	stop()
}

func TestRunEnableErrorDoesNotStopOthers(t *testing.T) {
	order := []string{"swp1", "swp2", "swp3"}
	ctrl := newFake(order...)
	ctrl.set("swp2", func(p *fakePort) { p.enableErr = errors.New("controller says no") })
	m := newManager(t, ctrl, poe.ManagerConfig{Ports: ports(order...), Policy: poe.PolicyAll})
	_, stop := run(t, m)
	ctrl.waitEnables(t, 3)
	eventually(t, "swp2 shown as refused by the controller", func() bool {
		p := portStatus(m, "swp2")
		return strings.Contains(p.Held, "controller says no") && p.AllocatedMW == 0 && p.State != poe.StateDelivering
	})
	// The controller recovers: the next poll powers the port.
	ctrl.set("swp2", func(p *fakePort) { p.enableErr = nil })
	eventually(t, "swp2 delivering after the controller recovered", func() bool {
		p := portStatus(m, "swp2")
		return p.State == poe.StateDelivering && p.Held == ""
	})
	stop()
}

func TestRunStopsMidStagger(t *testing.T) {
	order := []string{"swp1", "swp2", "swp3"}
	ctrl := newFake(order...)
	m := newManager(t, ctrl, poe.ManagerConfig{Ports: ports(order...), Policy: poe.PolicyStagger, StaggerPorts: 1, StaggerInterval: time.Hour})
	_, stop := run(t, m)
	ctrl.waitEnables(t, 1)
	if p := portStatus(m, "swp3"); p.Held == "" || !strings.Contains(p.Held, "sequence") {
		t.Errorf("swp3 waiting for its step shows held %q", p.Held)
	}
	stop()
	if got := ctrl.opsOn("enable"); !reflect.DeepEqual(got, order[:1]) {
		t.Errorf("after cancel: enabled %v, want only %v", got, order[:1])
	}
}

// TestBudgetByClass: with a 40 W budget and 15.4 W reserved per port
// until its class is known, two ports fit at first; once their classes
// (2 and 1: 7 W and 4 W) are read, the third fits, and the fourth once
// the third's class is known. The low-priority ones wait, they do not
// take power from the critical one.
func TestBudgetByClass(t *testing.T) {
	ctrl := newFake("a", "b", "c", "d")
	for _, n := range []string{"a", "b", "c", "d"} {
		ctrl.set(n, func(p *fakePort) { p.class = -1 }) // not classified yet
	}
	cfgPorts := ports("a", "b", "c", "d")
	cfgPorts[0].Priority = poe.PriorityCritical
	m := newManager(t, ctrl, poe.ManagerConfig{Ports: cfgPorts, Policy: poe.PolicyAll, BudgetMW: 40000})
	_, stop := run(t, m)
	ctrl.waitEnables(t, 2)
	// Polls come and go; without classes nothing more fits.
	time.Sleep(30 * time.Millisecond)
	if got := ctrl.opsOn("enable"); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Errorf("enabled %v before any class was known, want [a b]", got)
	}
	if st := m.Status(); st.AllocatedMW != 2*15400 || st.BudgetMW != 40000 {
		t.Errorf("allocated %d of %d mW, want 30800 of 40000", st.AllocatedMW, st.BudgetMW)
	}
	for _, n := range []string{"c", "d"} {
		if p := portStatus(m, n); !strings.Contains(p.Held, "budget") || p.AllocatedMW != 0 {
			t.Errorf("port %s: %+v, want it held for budget", n, p)
		}
	}
	ctrl.set("a", func(p *fakePort) { p.class = 2 })
	ctrl.set("b", func(p *fakePort) { p.class = 1 })
	// 7 W + 4 W leave room for c's 15.4 W reserve, not for d's too.
	if got := portsOf(ctrl.waitEnables(t, 1)); !reflect.DeepEqual(got, []string{"c"}) {
		t.Errorf("after a and b were classified enabled %v, want [c]", got)
	}
	time.Sleep(30 * time.Millisecond)
	if p := portStatus(m, "d"); p.State != poe.StateDisabled {
		t.Errorf("d powered over budget: %+v", p)
	}
	ctrl.set("c", func(p *fakePort) { p.class = 2 })
	if got := portsOf(ctrl.waitEnables(t, 1)); !reflect.DeepEqual(got, []string{"d"}) {
		t.Errorf("after c was classified enabled %v, want [d]", got)
	}
	ctrl.set("d", func(p *fakePort) { p.class = 2 })
	eventually(t, "all counted by class", func() bool {
		st := m.Status()
		return st.AllocatedMW == 7000+4000+7000+7000 && st.DrawnMW == 4*6000
	})
	stop()
}

// runShedSetup runs a manager over three class-3 phones (15.4 W each) in a
// 31 W budget: low-priority x and y powered, critical z off until the
// operator enables it.
func runShedSetup(t *testing.T) (*fakeController, *poe.Manager, func()) {
	t.Helper()
	ctrl := newFake("x", "y", "z")
	for _, n := range []string{"x", "y", "z"} {
		ctrl.set(n, func(p *fakePort) { p.class = 3 })
	}
	cfgPorts := ports("x", "y", "z")
	cfgPorts[2].Priority, cfgPorts[2].Enabled = poe.PriorityCritical, false
	m := newManager(t, ctrl, poe.ManagerConfig{Ports: cfgPorts, Policy: poe.PolicyAll, BudgetMW: 31000})
	_, stop := run(t, m)
	return ctrl, m, stop
}

// TestShedLowerForHigher: the operator enables a critical port while two
// low-priority ports hold the whole budget: the last configured of them is
// shed to make room, and is not given power back while it does not fit.
func TestShedLowerForHigher(t *testing.T) {
	ctrl, m, stop := runShedSetup(t)
	ctrl.waitEnables(t, 2)
	p, err := m.SetEnabled(context.Background(), "z", true)
	if err != nil {
		t.Fatal(err)
	}
	if p.State != poe.StateDelivering {
		t.Errorf("z after enable: %+v", p)
	}
	if y := portStatus(m, "y"); !strings.Contains(y.Held, "budget") || y.AllocatedMW != 0 {
		t.Errorf("y not shed for z: %+v", y)
	}
	eventually(t, "y off", func() bool { return portStatus(m, "y").State == poe.StateDisabled })
	if got := ctrl.opsOn("disable"); !reflect.DeepEqual(got, []string{"z", "y"}) {
		t.Errorf("disabled %v, want z (off at start), then y (shed)", got)
	}
	eventually(t, "x delivering", func() bool { return portStatus(m, "x").State == poe.StateDelivering })
	// Polls come and go; y stays off while z and x use the budget.
	time.Sleep(50 * time.Millisecond)
	if y := portStatus(m, "y"); y.State != poe.StateDisabled || !strings.Contains(y.Held, "budget") {
		t.Errorf("y powered again over budget: %+v", y)
	}
	// z off again: y gets its power back.
	if _, err := m.SetEnabled(context.Background(), "z", false); err != nil {
		t.Fatal(err)
	}
	eventually(t, "y powered again once z is off", func() bool { return portStatus(m, "y").State == poe.StateDelivering })
	stop()
}

// TestOverBudgetShedsMeasured: with measured accounting a phone that
// starts drawing more pushes the total over, and the lowest priority port
// goes.
func TestOverBudgetShedsMeasured(t *testing.T) {
	ctrl := newFake("a", "b", "c")
	cfgPorts := ports("a", "b", "c")
	cfgPorts[0].Priority, cfgPorts[1].Priority = poe.PriorityHigh, poe.PriorityHigh
	m := newManager(t, ctrl, poe.ManagerConfig{Ports: cfgPorts, Policy: poe.PolicyAll, Accounting: poe.AccountMeasured, BudgetMW: 50000})
	_, stop := run(t, m)
	eventually(t, "all three delivering", func() bool {
		st := m.Status()
		return st.AllocatedMW == 18000 && st.Ports[2].State == poe.StateDelivering
	})
	ctrl.set("a", func(p *fakePort) { p.drawMW = 40000 })
	eventually(t, "c shed when a draws 40 W", func() bool {
		c := portStatus(m, "c")
		return c.State == poe.StateDisabled && strings.Contains(c.Held, "budget")
	})
	if b := portStatus(m, "b"); b.State != poe.StateDelivering {
		t.Errorf("b (high) shed instead of c (low): %+v", b)
	}
	stop()
}

func TestAdaptiveHoldsWhileLoaded(t *testing.T) {
	order := []string{"p1", "p2", "p3", "p4"}
	ctrl := newFake(order...)
	load := &loadSource{load: poe.Load{DHCPBacklog: 500}}
	m := newManager(t, ctrl, poe.ManagerConfig{
		Ports: ports(order...), Policy: poe.PolicyAdaptive, StaggerPorts: 1, StaggerInterval: 5 * time.Millisecond,
		Load: load, Thresholds: poe.Load{DHCPBacklog: 100, TFTPActive: 10},
	})
	_, stop := run(t, m)
	ctrl.waitEnables(t, 1) // the first step goes regardless: nothing is powered yet
	eventually(t, "steps held", func() bool { return m.Status().AdaptiveHolds >= 5 })
	if got := ctrl.opsOn("enable"); len(got) != 1 {
		t.Fatalf("enabled %v while the DHCP backlog was over its threshold", got)
	}
	load.set(poe.Load{DHCPBacklog: 99, TFTPActive: 9, ProxyQueued: 1000}) // proxy ignored: no threshold
	if got := portsOf(ctrl.waitEnables(t, 3)); !reflect.DeepEqual(got, order[1:]) {
		t.Errorf("enabled %v once the load dropped, want %v", got, order[1:])
	}
	stop()
}

func TestAdaptiveMaxHold(t *testing.T) {
	order := []string{"p1", "p2", "p3"}
	ctrl := newFake(order...)
	const maxHold = 60 * time.Millisecond
	m := newManager(t, ctrl, poe.ManagerConfig{
		Ports: ports(order...), Policy: poe.PolicyAdaptive, StaggerPorts: 1, StaggerInterval: 5 * time.Millisecond,
		Load: &loadSource{load: poe.Load{TFTPActive: 9999}}, Thresholds: poe.Load{TFTPActive: 1}, MaxHold: maxHold,
	})
	_, stop := run(t, m)
	calls := ctrl.waitEnables(t, 3)
	for i := 1; i < len(calls); i++ {
		if gap := calls[i].at.Sub(calls[i-1].at); gap < maxHold {
			t.Errorf("step %d came %v after the previous one, before the %v max hold", i, gap, maxHold)
		}
	}
	stop()
}

func TestNegotiate(t *testing.T) {
	ctrl := newFake("a", "b", "c", "off")
	cfgPorts := ports("a", "b", "c", "off")
	cfgPorts[2].LimitMW = 15000
	cfgPorts[3].Enabled = false
	m := newManager(t, ctrl, poe.ManagerConfig{Ports: cfgPorts, Policy: poe.PolicyAll, BudgetMW: 45000})
	_, stop := run(t, m)
	ctrl.waitEnables(t, 2)
	eventually(t, "a, b, c delivering at class 2 (7 W each)", func() bool { return m.Status().AllocatedMW == 21000 })
	for _, tc := range []struct {
		port        string
		levels      []uint32
		wantMW      uint32
		wantGranted bool
		allocated   int
	}{
		{"a", []uint32{20000}, 20000, true, 34000},            // 7+7+7 -> 20+7+7
		{"b", []uint32{30000, 12000}, 12000, true, 39000},     // 30 does not fit, 12 does
		{"c", []uint32{20000}, 7000, false, 39000},            // over c's 15 W limit: keeps its 7 W
		{"c", []uint32{14000}, 7000, false, 39000},            // fits the limit, not the budget (39-7+14 > 45)
		{"a", []uint32{6000}, 6000, true, 25000},              // asking for less frees budget
		{"c", []uint32{14000}, 14000, true, 32000},            // which now fits
		{"off", []uint32{5000}, 0, false, 32000},              // not powered: nothing available
		{"nope", []uint32{5000}, 0, false, 32000},             // not managed
		{"b", nil, 0, false, 32000},                           // no levels
		{"b", []uint32{0, 200000, 12000}, 12000, true, 32000}, // nonsense levels skipped
	} {
		mw, ok := m.Negotiate(tc.port, tc.levels)
		if mw != tc.wantMW || ok != tc.wantGranted {
			t.Errorf("Negotiate(%s, %v) = %d, %v; want %d, %v", tc.port, tc.levels, mw, ok, tc.wantMW, tc.wantGranted)
		}
		if got := m.Status().AllocatedMW; got != tc.allocated {
			t.Errorf("after Negotiate(%s, %v): %d mW allocated, want %d", tc.port, tc.levels, got, tc.allocated)
		}
	}
	st := m.Status()
	if st.RequestsGranted != 5 || st.RequestsRefused != 2 {
		t.Errorf("requests granted %d, refused %d; want 5 and 2", st.RequestsGranted, st.RequestsRefused)
	}
	if p := portStatus(m, "a"); p.RequestedMW != 6000 || p.GrantedMW != 6000 {
		t.Errorf("a shows requested %d, granted %d", p.RequestedMW, p.GrantedMW)
	}
	// A power cycle reboots the phone: it negotiates again.
	if _, err := m.Cycle(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	if p := portStatus(m, "a"); p.GrantedMW != 0 || p.AllocatedMW != 7000 {
		t.Errorf("a after a power cycle: granted %d, allocated %d; want 0 and its class's 7000", p.GrantedMW, p.AllocatedMW)
	}
	stop()
}

func TestOperatorActionsAndState(t *testing.T) {
	dir := t.TempDir()
	statePath := filepath.Join(dir, "sub", "poe-state.json")
	ctx := context.Background()
	cfg := poe.ManagerConfig{Ports: ports("a", "b", "c"), Policy: poe.PolicyAll, StatePath: statePath}

	ctrl := newFake("a", "b", "c")
	m := newManager(t, ctrl, cfg)
	_, stop := run(t, m)
	ctrl.waitEnables(t, 3)
	if _, err := m.SetEnabled(ctx, "b", false); err != nil {
		t.Fatal(err)
	}
	if _, err := m.SetPriority(ctx, "c", poe.PriorityCritical); err != nil {
		t.Fatal(err)
	}
	p, err := m.Cycle(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if p.State != poe.StateDelivering {
		t.Errorf("a after cycle: %+v", p)
	}
	if _, err := m.Cycle(ctx, "b"); err == nil || !strings.Contains(err.Error(), "not powered") {
		t.Errorf("Cycle of a port that is off = %v", err)
	}
	for _, call := range []func() error{
		func() error { _, err := m.SetEnabled(ctx, "zz", true); return err },
		func() error { _, err := m.SetPriority(ctx, "zz", poe.PriorityLow); return err },
		func() error { _, err := m.Cycle(ctx, "zz"); return err },
	} {
		if err := call(); !errors.Is(err, poe.ErrUnknownPort) {
			t.Errorf("action on an unmanaged port: %v, want ErrUnknownPort", err)
		}
	}
	stop()
	if got := ctrl.opsOn("cycle"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Errorf("power cycles %v, want [a]", got)
	}
	var saved map[string]map[string]map[string]any
	data, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &saved); err != nil {
		t.Fatal(err)
	}
	if want := map[string]map[string]any{"b": {"enabled": false}, "c": {"priority": "critical"}}; !reflect.DeepEqual(saved["ports"], want) {
		t.Errorf("state file %s, want ports %v", data, want)
	}

	// A restart: b stays off (disabled at start, never enabled), c keeps
	// its priority.
	ctrl2 := newFake("a", "b", "c")
	m2 := newManager(t, ctrl2, cfg)
	_, stop2 := run(t, m2)
	ctrl2.waitEnables(t, 2)
	eventually(t, "b disabled at start", func() bool { return slices.Contains(ctrl2.opsOn("disable"), "b") })
	if got := ctrl2.opsOn("enable"); !reflect.DeepEqual(got, []string{"c", "a"}) {
		t.Errorf("after restart enabled %v, want [c a] (c critical now, b off)", got)
	}
	if p := portStatus(m2, "c"); p.Priority != poe.PriorityCritical || !p.Enabled {
		t.Errorf("c after restart: %+v", p)
	}
	// Back to what the config says: the entry goes.
	if _, err := m2.SetEnabled(ctx, "b", true); err != nil {
		t.Fatal(err)
	}
	stop2()
	data, _ = os.ReadFile(statePath)
	if strings.Contains(string(data), `"b"`) {
		t.Errorf("b set back to its config still in the state file:\n%s", data)
	}
}

func TestDamagedStateFileIsMovedAside(t *testing.T) {
	dir := t.TempDir()
	statePath := filepath.Join(dir, "poe-state.json")
	if err := os.WriteFile(statePath, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctrl := newFake("a")
	m := newManager(t, ctrl, poe.ManagerConfig{Ports: ports("a"), Policy: poe.PolicyAll, StatePath: statePath})
	if p := portStatus(m, "a"); !p.Enabled {
		t.Errorf("a not enabled as configured: %+v", p)
	}
	aside, _ := filepath.Glob(statePath + ".damaged-*")
	if len(aside) != 1 {
		t.Errorf("damaged file not moved aside: %v", aside)
	}
}

// TestStartKeepsDeliveringPorts: after a daemon restart the controller
// still powers the phones; the manager counts them and does not enable
// (or cycle) them again.
func TestStartKeepsDeliveringPorts(t *testing.T) {
	ctrl := newFake("a", "b")
	ctrl.set("a", func(p *fakePort) { p.enabled = true })
	m := newManager(t, ctrl, poe.ManagerConfig{Ports: ports("a", "b"), Policy: poe.PolicyAll, BudgetMW: 100000})
	_, stop := run(t, m)
	if got := portsOf(ctrl.waitEnables(t, 1)); !reflect.DeepEqual(got, []string{"b"}) {
		t.Errorf("enabled %v, want only b", got)
	}
	eventually(t, "both counted", func() bool { return m.Status().AllocatedMW == 14000 })
	stop()
}

func TestStatusErrorIsAFault(t *testing.T) {
	ctrl := newFake("a", "b")
	ctrl.set("b", func(p *fakePort) { p.statusErr = errors.New("bus timeout") })
	m := newManager(t, ctrl, poe.ManagerConfig{Ports: ports("a", "b"), Policy: poe.PolicyAll})
	b := portStatus(m, "b")
	if b.State != poe.StateFault || b.Fault != "bus timeout" || b.Class != -1 {
		t.Errorf("b whose status cannot be read: %+v, want a fault naming the error", b)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if ctrl.closed != 1 {
		t.Errorf("controller closed %d times, want 1", ctrl.closed)
	}
}

// TestUnreadablePortStaysCounted: a powered port whose status cannot be
// read shows as a fault, and keeps counting what it last drew against the
// budget: its phone may still draw it, so the budget it held is not given
// to another port.
func TestUnreadablePortStaysCounted(t *testing.T) {
	ctrl := newFake("a", "b", "c")
	cfgPorts := ports("a", "b", "c")
	cfgPorts[2].Enabled = false
	m := newManager(t, ctrl, poe.ManagerConfig{Ports: cfgPorts, Policy: poe.PolicyAll, BudgetMW: 25000})
	_, stop := run(t, m)
	defer stop()
	eventually(t, "a and b delivering", func() bool { return m.Status().AllocatedMW == 14000 })
	ctrl.set("a", func(p *fakePort) { p.statusErr = errors.New("bus timeout") })
	eventually(t, "a a fault", func() bool { return portStatus(m, "a").State == poe.StateFault })
	if a := portStatus(m, "a"); a.AllocatedMW != 7000 || a.Fault != "bus timeout" {
		t.Errorf("a unreadable: %+v; want a fault naming the error, still counted at 7000 mW", a)
	}
	// c's 15.4 W reserve fits beside b alone, not beside a and b.
	c, err := m.SetEnabled(context.Background(), "c", true)
	if err != nil {
		t.Fatal(err)
	}
	if c.State == poe.StateDelivering || !strings.Contains(c.Held, "budget") {
		t.Errorf("c powered while a may still draw its 7 W: %+v", c)
	}
	if st := m.Status(); st.AllocatedMW != 14000 {
		t.Errorf("allocated %d mW, want 14000", st.AllocatedMW)
	}
	// a readable again, then turned off by the operator: c fits.
	ctrl.set("a", func(p *fakePort) { p.statusErr = nil })
	eventually(t, "a delivering again", func() bool {
		a := portStatus(m, "a")
		return a.State == poe.StateDelivering && a.Fault == "" && a.AllocatedMW == 7000
	})
	if _, err := m.SetEnabled(context.Background(), "a", false); err != nil {
		t.Fatal(err)
	}
	eventually(t, "c powered once a is off", func() bool { return portStatus(m, "c").State == poe.StateDelivering })
}

// TestShedThatFailsStaysCounted: a port shed for a higher-priority one that
// the controller will not turn off keeps counting, so the higher-priority
// port waits instead of taking the budget twice; once the controller obeys,
// the shed goes through.
func TestShedThatFailsStaysCounted(t *testing.T) {
	ctrl, m, stop := runShedSetup(t)
	defer stop()
	ctrl.waitEnables(t, 2)
	eventually(t, "x and y delivering", func() bool { return m.Status().AllocatedMW == 30800 })
	ctrl.set("y", func(p *fakePort) { p.disableErr = errors.New("i2c: no answer") })
	z, err := m.SetEnabled(context.Background(), "z", true)
	if err != nil {
		t.Fatal(err)
	}
	if z.State == poe.StateDelivering || !strings.Contains(z.Held, "budget") {
		t.Errorf("z powered though y would not go off: %+v", z)
	}
	if y := portStatus(m, "y"); y.AllocatedMW != 15400 || !strings.Contains(y.Held, "did not turn it off") {
		t.Errorf("y after a failed shed: %+v; want counted at 15400 mW and held saying why", y)
	}
	if st := m.Status(); st.AllocatedMW > 31000 {
		t.Errorf("allocated %d mW past the 31000 budget", st.AllocatedMW)
	}
	ctrl.set("y", func(p *fakePort) { p.disableErr = nil })
	eventually(t, "z delivering once y goes off", func() bool {
		return portStatus(m, "z").State == poe.StateDelivering && portStatus(m, "y").State == poe.StateDisabled
	})
}

func TestControllerBudgetApplies(t *testing.T) {
	ctrl := newFake("a", "b")
	ctrl.budget = 25000
	m := newManager(t, ctrl, poe.ManagerConfig{Ports: ports("a", "b"), Policy: poe.PolicyAll})
	_, stop := run(t, m)
	ctrl.waitEnables(t, 1)
	if st := m.Status(); st.BudgetMW != 25000 {
		t.Errorf("budget %d, want the controller's 25000", st.BudgetMW)
	}
	// b waits until a's class is read (7 W: room for b's 15.4 W reserve).
	eventually(t, "b powered once a is classified", func() bool { return portStatus(m, "b").State == poe.StateDelivering })
	stop()
}

func TestLoadAtOrAbove(t *testing.T) {
	limit := poe.Load{DHCPBacklog: 10, TFTPActive: 5}
	for _, tc := range []struct {
		load poe.Load
		want bool
	}{
		{poe.Load{}, false},
		{poe.Load{DHCPBacklog: 9, TFTPActive: 4}, false},
		{poe.Load{DHCPBacklog: 10}, true},
		{poe.Load{TFTPActive: 6}, true},
		{poe.Load{ProxyQueued: 1 << 20}, false}, // no threshold
	} {
		if got := tc.load.AtOrAbove(limit); got != tc.want {
			t.Errorf("%+v.AtOrAbove(%+v) = %v, want %v", tc.load, limit, got, tc.want)
		}
	}
}

func TestPriorityText(t *testing.T) {
	for _, s := range []string{"critical", "high", "low"} {
		p, err := poe.ParsePriority(s)
		if err != nil || p.String() != s {
			t.Errorf("ParsePriority(%s) = %v, %v", s, p, err)
		}
	}
	if _, err := poe.ParsePriority("urgent"); err == nil {
		t.Error("ParsePriority(urgent) succeeded")
	}
	if _, err := poe.Priority(5).MarshalText(); err == nil {
		t.Error("MarshalText of priority 5 succeeded")
	}
}

func TestClassPowerMW(t *testing.T) {
	// IEEE 802.3af/at PSE output power per class, and what a PD may draw.
	if want := [5]int{15400, 4000, 7000, 15400, 30000}; poe.ClassPowerMW != want {
		t.Errorf("ClassPowerMW = %v, want %v", poe.ClassPowerMW, want)
	}
	if want := [5]int{12950, 3840, 6490, 12950, 25500}; poe.ClassDrawMW != want {
		t.Errorf("ClassDrawMW = %v, want %v", poe.ClassDrawMW, want)
	}
}
