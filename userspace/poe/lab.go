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
	// DrawMW is what the phone draws once powered; 0: the most its class
	// allows (ClassDrawMW).
	DrawMW int
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
	cfg     LabPort
	status  PortStatus
	limitMW int
	cancel  context.CancelFunc // pending power-up, if any
}

// NewLab makes the simulated PSE for the given ports.
func NewLab(ports map[string]LabPort, detectDelay time.Duration, log *slog.Logger) (*Lab, error) {
	l := &Lab{log: log, detectDelay: detectDelay, ports: map[string]*labPort{}}
	for name, p := range ports {
		if p.Class < 0 || p.Class >= len(ClassPowerMW) {
			return nil, fmt.Errorf("lab port %s: class %d is not 0-4", name, p.Class)
		}
		if p.DrawMW < 0 || p.DrawMW > ClassPowerMW[p.Class] {
			return nil, fmt.Errorf("lab port %s: draw %d mW is outside 0 to the %d mW class %d allows", name, p.DrawMW, ClassPowerMW[p.Class], p.Class)
		}
		if p.DrawMW == 0 {
			p.DrawMW = ClassDrawMW[p.Class]
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
	p.status = PortStatus{Port: port, State: StateSearching, Class: -1, LimitMW: p.limitMW}
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
		l.mu.Lock()
		if limit := p.limitMW; limit > 0 && p.cfg.DrawMW > limit {
			// A PSE cuts a port whose device draws past its limit.
			p.cancel = nil
			p.status = PortStatus{Port: port, State: StateFault, Class: p.cfg.Class, LimitMW: limit,
				Fault: fmt.Sprintf("overload: the device draws %d mW, over the %d mW limit", p.cfg.DrawMW, limit)}
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
		began := time.Now()
		err := setLink(p.cfg, true)
		l.mu.Lock()
		defer l.mu.Unlock()
		if pctx.Err() != nil {
			return // disabled meanwhile
		}
		p.cancel = nil
		if err != nil {
			p.status = PortStatus{Port: port, State: StateFault, Class: -1, LimitMW: p.limitMW, Fault: err.Error()}
			l.log.Warn("lab PSE could not power port", "port", port, "error", err)
			return
		}
		p.status = PortStatus{Port: port, State: StateDelivering, Class: p.cfg.Class, PowerMW: p.cfg.DrawMW, LimitMW: p.limitMW}
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
	p.status = PortStatus{Port: port, State: StateDisabled, Class: -1, LimitMW: p.limitMW}
	cfg := p.cfg
	l.mu.Unlock()
	return setLink(cfg, false)
}

// PowerCycle takes the port's power away for off, then gives it back.
func (l *Lab) PowerCycle(ctx context.Context, port string, off time.Duration) error {
	return cycle(ctx, l, port, off)
}

// SetLimit sets the port's power limit; a phone drawing more than it is
// cut off, now or when it is next powered.
func (l *Lab) SetLimit(ctx context.Context, port string, mw int) error {
	if mw < 0 || mw > maxPortMW {
		return fmt.Errorf("lab port %s: limit %d mW out of range", port, mw)
	}
	l.mu.Lock()
	p, ok := l.ports[port]
	if !ok {
		l.mu.Unlock()
		return fmt.Errorf("%w %q", ErrUnknownPort, port)
	}
	p.limitMW = mw
	p.status.LimitMW = mw
	over := p.status.State == StateDelivering && mw > 0 && p.cfg.DrawMW > mw
	if over {
		p.status = PortStatus{Port: port, State: StateFault, Class: p.cfg.Class, LimitMW: mw,
			Fault: fmt.Sprintf("overload: the device draws %d mW, over the %d mW limit", p.cfg.DrawMW, mw)}
	}
	cfg := p.cfg
	l.mu.Unlock()
	if over {
		return setLink(cfg, false)
	}
	return nil
}

// SetPriority accepts any priority for a known port: the lab PSE has no
// power management of its own, so the Manager's is the only one.
func (l *Lab) SetPriority(ctx context.Context, port string, prio Priority) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.ports[port]; !ok {
		return fmt.Errorf("%w %q", ErrUnknownPort, port)
	}
	return nil
}

// Budget is 0: the lab PSE has no supply limit of its own; the Manager's
// configured budget applies.
func (l *Lab) Budget(context.Context) (int, error) { return 0, nil }

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
