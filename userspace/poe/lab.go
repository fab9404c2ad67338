package poe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// LabPort is a simulated phone on a lab port: power brings Link, the
// phone's end of the veth in namespace Netns, up.
type LabPort struct {
	Netns string
	Link  string
	Class int
}

// Lab is a simulated PSE for `phoneboot lab`. Enabling a port waits the
// detection and classification delay, then brings the phone side of the
// port's link up, as a phone's PHY comes up once it has power; disabling
// takes it down.
type Lab struct {
	log         *slog.Logger
	detectDelay time.Duration

	mu     sync.Mutex
	ports  map[string]*labPort
	closed bool
	wg     sync.WaitGroup
}

type labPort struct {
	cfg    LabPort
	status PortStatus
	cancel context.CancelFunc // pending power-up, if any
}

// NewLab makes the simulated PSE for the given ports.
func NewLab(ports map[string]LabPort, detectDelay time.Duration, log *slog.Logger) (*Lab, error) {
	l := &Lab{log: log, detectDelay: detectDelay, ports: map[string]*labPort{}}
	for name, p := range ports {
		if p.Class < 0 || p.Class >= len(ClassPowerMW) {
			return nil, fmt.Errorf("lab port %s: class %d is not 0-4", name, p.Class)
		}
		l.ports[name] = &labPort{cfg: p, status: PortStatus{Port: name, State: StateDisabled, Class: -1}}
	}
	return l, nil
}

// Ports lists the ports in name order.
func (l *Lab) Ports() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	names := make([]string, 0, len(l.ports))
	for n := range l.ports {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Enable starts detection on the port; power follows after the delay.
func (l *Lab) Enable(ctx context.Context, port string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("lab PSE is closed")
	}
	p, ok := l.ports[port]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownPort, port)
	}
	if p.status.State == StateSearching || p.status.State == StateDelivering {
		return nil
	}
	p.status = PortStatus{Port: port, State: StateSearching, Class: -1}
	pctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		t := time.NewTimer(l.detectDelay)
		defer t.Stop()
		select {
		case <-pctx.Done():
			return
		case <-t.C:
		}
		began := time.Now()
		err := setLink(p.cfg, true)
		l.mu.Lock()
		defer l.mu.Unlock()
		if pctx.Err() != nil {
			return // disabled meanwhile
		}
		p.cancel = nil
		if err != nil {
			p.status = PortStatus{Port: port, State: StateFault, Class: -1, Fault: err.Error()}
			l.log.Warn("lab PSE could not power port", "port", port, "error", err)
			return
		}
		p.status = PortStatus{Port: port, State: StateDelivering, Class: p.cfg.Class, PowerMW: ClassPowerMW[p.cfg.Class]}
		l.log.Info("port powered", "port", port, "class", p.cfg.Class, "linkUpTook", time.Since(began))
	}()
	return nil
}

// Disable removes power: the phone side of the link goes down.
func (l *Lab) Disable(ctx context.Context, port string) error {
	l.mu.Lock()
	p, ok := l.ports[port]
	if !ok {
		l.mu.Unlock()
		return fmt.Errorf("%w %q", ErrUnknownPort, port)
	}
	if p.cancel != nil {
		p.cancel()
		p.cancel = nil
	}
	p.status = PortStatus{Port: port, State: StateDisabled, Class: -1}
	cfg := p.cfg
	l.mu.Unlock()
	return setLink(cfg, false)
}

// Status reports the port's simulated state.
func (l *Lab) Status(ctx context.Context, port string) (PortStatus, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p, ok := l.ports[port]
	if !ok {
		return PortStatus{}, fmt.Errorf("%w %q", ErrUnknownPort, port)
	}
	return p.status, nil
}

// Close cancels pending power-ups. Ports keep their power state, as a
// hardware PSE does when its driver exits.
func (l *Lab) Close() error {
	l.mu.Lock()
	l.closed = true
	for _, p := range l.ports {
		if p.cancel != nil {
			p.cancel()
		}
	}
	l.mu.Unlock()
	l.wg.Wait()
	return nil
}

func setLink(p LabPort, up bool) error {
	ns, err := vnet.Open(p.Netns)
	if err != nil {
		return err
	}
	defer ns.CloseHandles()
	if up {
		return ns.SetUp(p.Link)
	}
	return ns.SetDown(p.Link)
}
