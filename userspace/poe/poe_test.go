package poe_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/poe"
)

// testLogger sends log records to the test log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

type enableCall struct {
	port string
	at   time.Time
}

// fakeController records Enable calls and fails the ports it is told to.
type fakeController struct {
	ports      []string
	failEnable map[string]bool
	failStatus map[string]bool

	mu      sync.Mutex
	enables []enableCall
	closed  int
	calls   chan enableCall // every Enable call, for waiting without sleeps
}

func newFake(ports ...string) *fakeController {
	return &fakeController{
		ports:      ports,
		failEnable: map[string]bool{},
		failStatus: map[string]bool{},
		calls:      make(chan enableCall, 100),
	}
}

func (f *fakeController) Ports() []string { return slices.Clone(f.ports) }

func (f *fakeController) Enable(_ context.Context, port string) error {
	c := enableCall{port, time.Now()}
	f.mu.Lock()
	f.enables = append(f.enables, c)
	f.mu.Unlock()
	f.calls <- c
	if f.failEnable[port] {
		return fmt.Errorf("fake: cannot enable %s", port)
	}
	return nil
}

func (f *fakeController) Disable(context.Context, string) error { return errors.New("not used") }

func (f *fakeController) Status(_ context.Context, port string) (poe.PortStatus, error) {
	if f.failStatus[port] {
		return poe.PortStatus{}, fmt.Errorf("fake: %s does not answer", port)
	}
	return poe.PortStatus{Port: port, State: poe.StateDelivering, Class: 3, PowerMW: poe.ClassPowerMW[3]}, nil
}

func (f *fakeController) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed++
	return nil
}

func (f *fakeController) enabled() []enableCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.enables)
}

// waitEnables waits for n Enable calls and returns them in call order.
func (f *fakeController) waitEnables(t *testing.T, n int) []enableCall {
	t.Helper()
	deadline := time.After(10 * time.Second)
	var got []enableCall
	for len(got) < n {
		select {
		case c := <-f.calls:
			got = append(got, c)
		case <-deadline:
			t.Fatalf("%d of %d ports enabled before the deadline: %v", len(got), n, got)
		}
	}
	return got
}

func portsOf(calls []enableCall) []string {
	var ports []string
	for _, c := range calls {
		ports = append(ports, c.port)
	}
	return ports
}

// run starts m.Run and returns its start time, a cancel, and a wait that
// cancels and checks that Run returns nil.
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

func TestNewManager(t *testing.T) {
	ctrl := newFake("swp1", "swp2", "swp3")
	for _, tc := range []struct {
		name    string
		cfg     poe.ManagerConfig
		wantErr string // "" for success
		unknown bool   // errors.Is ErrUnknownPort
	}{
		{"all", poe.ManagerConfig{Ports: []string{"swp1", "swp3"}, Policy: poe.PolicyAll}, "", false},
		{"no ports", poe.ManagerConfig{Policy: poe.PolicyAll}, "", false},
		{"stagger", poe.ManagerConfig{Ports: []string{"swp2"}, Policy: poe.PolicyStagger, StaggerPorts: 1, StaggerInterval: time.Second}, "", false},
		{"stagger without interval", poe.ManagerConfig{Ports: []string{"swp2"}, Policy: poe.PolicyStagger, StaggerPorts: 3}, "", false},
		{"unknown port", poe.ManagerConfig{Ports: []string{"swp1", "swp9"}, Policy: poe.PolicyAll}, "swp9", true},
		{"unknown port, stagger", poe.ManagerConfig{Ports: []string{"eth0"}, Policy: poe.PolicyStagger, StaggerPorts: 1}, "eth0", true},
		{"empty policy", poe.ManagerConfig{Ports: []string{"swp1"}}, "policy", false},
		{"bad policy", poe.ManagerConfig{Ports: []string{"swp1"}, Policy: "sometimes"}, `"sometimes"`, false},
		{"policy case", poe.ManagerConfig{Ports: []string{"swp1"}, Policy: "ALL"}, `"ALL"`, false},
		{"stagger 0 ports", poe.ManagerConfig{Ports: []string{"swp1"}, Policy: poe.PolicyStagger, StaggerInterval: time.Second}, "at least 1 port", false},
		{"stagger negative ports", poe.ManagerConfig{Ports: []string{"swp1"}, Policy: poe.PolicyStagger, StaggerPorts: -2, StaggerInterval: time.Second}, "at least 1 port", false},
		{"stagger negative interval", poe.ManagerConfig{Ports: []string{"swp1"}, Policy: poe.PolicyStagger, StaggerPorts: 1, StaggerInterval: -time.Second}, "non-negative interval", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := poe.NewManager(ctrl, tc.cfg, testLogger(t))
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
	// Config order differs from the controller's, and not every port of
	// the controller is managed.
	order := []string{"swp4", "swp1", "swp3", "swp2"}
	for _, tc := range []struct {
		name string
		cfg  poe.ManagerConfig
	}{
		{"all", poe.ManagerConfig{Policy: poe.PolicyAll}},
		{"stagger one step", poe.ManagerConfig{Policy: poe.PolicyStagger, StaggerPorts: 10, StaggerInterval: time.Hour}},
		{"stagger no interval", poe.ManagerConfig{Policy: poe.PolicyStagger, StaggerPorts: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctrl := newFake("swp1", "swp2", "swp3", "swp4", "swp5")
			cfg := tc.cfg
			cfg.Ports = order
			m, err := poe.NewManager(ctrl, cfg, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			_, stop := run(t, m)
			got := portsOf(ctrl.waitEnables(t, len(order)))
			if !reflect.DeepEqual(got, order) {
				t.Errorf("enabled %v, want %v", got, order)
			}
			stop()
			// Nothing more once Run has returned: no port twice, swp5 never.
			if got := portsOf(ctrl.enabled()); !reflect.DeepEqual(got, order) {
				t.Errorf("all Enable calls %v, want %v", got, order)
			}
		})
	}
}

func TestRunStaggers(t *testing.T) {
	const interval = 50 * time.Millisecond
	order := []string{"swp5", "swp3", "swp1", "swp2", "swp4"}
	ctrl := newFake("swp1", "swp2", "swp3", "swp4", "swp5")
	m, err := poe.NewManager(ctrl, poe.ManagerConfig{
		Ports: order, Policy: poe.PolicyStagger, StaggerPorts: 2, StaggerInterval: interval,
	}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	start, stop := run(t, m)
	calls := ctrl.waitEnables(t, len(order))
	if got := portsOf(calls); !reflect.DeepEqual(got, order) {
		t.Errorf("enabled %v, want %v", got, order)
	}
	for i, c := range calls {
		step := i / 2
		// Only a lower bound: a loaded machine may run late, never early.
		earliest := time.Duration(step) * interval
		if took := c.at.Sub(start); took < earliest {
			t.Errorf("%s (step %d) enabled %v after Run started, before %v", c.port, step, took, earliest)
		}
	}
	stop()
	if n := len(ctrl.enabled()); n != len(order) {
		t.Errorf("%d Enable calls, want %d", n, len(order))
	}
}

func TestRunEnableErrorDoesNotStopOthers(t *testing.T) {
	order := []string{"swp1", "swp2", "swp3", "swp4"}
	for _, tc := range []struct {
		name string
		cfg  poe.ManagerConfig
		fail []string
	}{
		{"all, first fails", poe.ManagerConfig{Policy: poe.PolicyAll}, []string{"swp1"}},
		{"all, middle fails", poe.ManagerConfig{Policy: poe.PolicyAll}, []string{"swp2", "swp3"}},
		{"stagger, step fails", poe.ManagerConfig{Policy: poe.PolicyStagger, StaggerPorts: 2, StaggerInterval: time.Millisecond}, []string{"swp1", "swp2"}},
		{"stagger, every port fails", poe.ManagerConfig{Policy: poe.PolicyStagger, StaggerPorts: 1}, order},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctrl := newFake(order...)
			for _, p := range tc.fail {
				ctrl.failEnable[p] = true
			}
			cfg := tc.cfg
			cfg.Ports = order
			m, err := poe.NewManager(ctrl, cfg, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			_, stop := run(t, m)
			if got := portsOf(ctrl.waitEnables(t, len(order))); !reflect.DeepEqual(got, order) {
				t.Errorf("enabled %v, want %v", got, order)
			}
			stop()
		})
	}
}

func TestRunStopsMidStagger(t *testing.T) {
	order := []string{"swp1", "swp2", "swp3"}
	ctrl := newFake(order...)
	m, err := poe.NewManager(ctrl, poe.ManagerConfig{
		Ports: order, Policy: poe.PolicyStagger, StaggerPorts: 1, StaggerInterval: time.Hour,
	}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	_, stop := run(t, m)
	if got := portsOf(ctrl.waitEnables(t, 1)); !reflect.DeepEqual(got, order[:1]) {
		t.Errorf("first step enabled %v, want %v", got, order[:1])
	}
	stop() // fails the test if Run does not return
	if got := portsOf(ctrl.enabled()); !reflect.DeepEqual(got, order[:1]) {
		t.Errorf("after cancel: enabled %v, want only %v", got, order[:1])
	}
}

func TestManagerStatus(t *testing.T) {
	ctrl := newFake("swp1", "swp2", "swp3")
	ctrl.failStatus["swp2"] = true
	m, err := poe.NewManager(ctrl, poe.ManagerConfig{Ports: []string{"swp3", "swp2", "swp1"}, Policy: poe.PolicyAll}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ok := func(port string) poe.PortStatus {
		return poe.PortStatus{Port: port, State: poe.StateDelivering, Class: 3, PowerMW: 15400}
	}
	want := []poe.PortStatus{
		ok("swp3"),
		{Port: "swp2", State: poe.StateFault, Class: -1, Fault: "fake: swp2 does not answer"},
		ok("swp1"),
	}
	if got := m.Status(context.Background()); !reflect.DeepEqual(got, want) {
		t.Errorf("Status:\n got  %+v\n want %+v", got, want)
	}
}

func TestManagerStatusNoPorts(t *testing.T) {
	m, err := poe.NewManager(newFake("swp1"), poe.ManagerConfig{Policy: poe.PolicyAll}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Status(context.Background()); got == nil || len(got) != 0 {
		t.Errorf("Status with no ports = %#v, want an empty, non-nil list", got)
	}
}

func TestManagerCloseClosesController(t *testing.T) {
	ctrl := newFake("swp1")
	m, err := poe.NewManager(ctrl, poe.ManagerConfig{Ports: []string{"swp1"}, Policy: poe.PolicyAll}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	ctrl.mu.Lock()
	defer ctrl.mu.Unlock()
	if ctrl.closed != 1 {
		t.Errorf("controller closed %d times, want 1", ctrl.closed)
	}
}

func TestClassPowerMW(t *testing.T) {
	// IEEE 802.3af/at PSE output power per class.
	want := [5]int{15400, 4000, 7000, 15400, 30000}
	if poe.ClassPowerMW != want {
		t.Errorf("ClassPowerMW = %v, want %v", poe.ClassPowerMW, want)
	}
}
