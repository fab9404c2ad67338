package poe

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Policy is how the manager powers ports after the appliance starts.
type Policy string

const (
	// PolicyAll powers every port at once.
	PolicyAll Policy = "all"
	// PolicyStagger powers StaggerPorts ports every StaggerInterval.
	PolicyStagger Policy = "stagger"
)

// ManagerConfig says which ports to power and how.
type ManagerConfig struct {
	Ports           []string // in power-up order
	Policy          Policy
	StaggerPorts    int
	StaggerInterval time.Duration
}

// Manager sequences power-up of the configured ports.
type Manager struct {
	ctrl Controller
	cfg  ManagerConfig
	log  *slog.Logger
}

// NewManager checks the config against the controller's ports.
func NewManager(ctrl Controller, cfg ManagerConfig, log *slog.Logger) (*Manager, error) {
	switch cfg.Policy {
	case PolicyAll:
	case PolicyStagger:
		if cfg.StaggerPorts < 1 || cfg.StaggerInterval < 0 {
			return nil, fmt.Errorf("stagger needs at least 1 port per step and a non-negative interval")
		}
	default:
		return nil, fmt.Errorf("power policy %q is not one of all, stagger", cfg.Policy)
	}
	known := map[string]bool{}
	for _, p := range ctrl.Ports() {
		known[p] = true
	}
	for _, p := range cfg.Ports {
		if !known[p] {
			return nil, fmt.Errorf("port %s: %w", p, ErrUnknownPort)
		}
	}
	return &Manager{ctrl: ctrl, cfg: cfg, log: log}, nil
}

// Run powers the ports per the policy, then waits for ctx.
func (m *Manager) Run(ctx context.Context) error {
	step := len(m.cfg.Ports)
	if m.cfg.Policy == PolicyStagger {
		step = m.cfg.StaggerPorts
	}
	m.log.Info("powering ports", "ports", len(m.cfg.Ports), "policy", string(m.cfg.Policy), "perStep", step, "interval", m.cfg.StaggerInterval)
	t := time.NewTicker(max(m.cfg.StaggerInterval, time.Millisecond))
	defer t.Stop()
	for i := 0; i < len(m.cfg.Ports); i += step {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
		for _, port := range m.cfg.Ports[i:min(i+step, len(m.cfg.Ports))] {
			// A controller that refuses one port must not keep the others
			// dark: log it, the port's status shows the fault.
			if err := m.ctrl.Enable(ctx, port); err != nil {
				m.log.Error("enable PoE port", "port", port, "error", err)
			}
		}
	}
	<-ctx.Done()
	return nil
}

// Status reports every managed port.
func (m *Manager) Status(ctx context.Context) []PortStatus {
	out := make([]PortStatus, 0, len(m.cfg.Ports))
	for _, p := range m.cfg.Ports {
		st, err := m.ctrl.Status(ctx, p)
		if err != nil {
			st = PortStatus{Port: p, State: StateFault, Class: -1, Fault: err.Error()}
		}
		out = append(out, st)
	}
	return out
}

// Close releases the controller.
func (m *Manager) Close() error { return m.ctrl.Close() }
