// Package poe drives Power-over-Ethernet controllers and sequences the
// powering of phone ports so that a boot storm is shaped, not suffered.
//
// Every backend implements Controller: the lab's simulated PSE (Lab), the
// Linux PSE framework over ethtool netlink (Netlink), a Microchip
// PD69200/PD69208 over I2C (PD69200) and vendor drivers' per-port files
// (Sysfs). The Manager works only through that interface: it keeps the
// power budget, the ports' priorities and the operator's wishes, and
// powers ports up by policy.
package poe

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// State is what a port's power sourcing equipment is doing.
type State string

const (
	// StateDisabled: the port is administratively off.
	StateDisabled State = "disabled"
	// StateSearching: enabled, detecting and classifying a powered device
	// (or waiting for one to be plugged in).
	StateSearching State = "searching"
	// StateDelivering: power is on.
	StateDelivering State = "delivering"
	// StateFault: the controller reported a fault on the port, or did not
	// answer sensibly about it; Fault says which.
	StateFault State = "fault"
)

// States lists every state, for metrics that export one series per state.
var States = []State{StateDisabled, StateSearching, StateDelivering, StateFault}

// PortStatus is one port as the controller reports it.
type PortStatus struct {
	Port    string `json:"port"`
	State   State  `json:"state"`
	Class   int    `json:"class"`              // detected IEEE 802.3 class, -1 before classification
	PowerMW int    `json:"power_mw"`           // power drawn now, milliwatts
	LimitMW int    `json:"limit_mw,omitempty"` // the controller's per-port limit; 0: none or unknown
	Fault   string `json:"fault,omitempty"`
}

// faultStatus is the status of a port the controller could not report on:
// never an unknown state, always a fault that says why.
func faultStatus(port string, err error) PortStatus {
	return PortStatus{Port: port, State: StateFault, Class: -1, Fault: err.Error()}
}

// Priority orders ports for power: when the budget is short, ports of a
// lower priority are refused first and shed first. As in the kernel's PSE
// framework, 0 is the highest.
type Priority int

const (
	PriorityCritical Priority = 0
	PriorityHigh     Priority = 1
	PriorityLow      Priority = 2
)

var priorityNames = [...]string{"critical", "high", "low"}

func (p Priority) String() string {
	if p >= 0 && int(p) < len(priorityNames) {
		return priorityNames[p]
	}
	return fmt.Sprintf("priority(%d)", int(p))
}

// ParsePriority reads critical, high or low.
func ParsePriority(s string) (Priority, error) {
	for i, n := range priorityNames {
		if strings.EqualFold(s, n) {
			return Priority(i), nil
		}
	}
	return 0, fmt.Errorf("%q is not a priority (critical, high, low)", s)
}

// MarshalText writes the priority's name.
func (p Priority) MarshalText() ([]byte, error) {
	if p < 0 || int(p) >= len(priorityNames) {
		return nil, fmt.Errorf("priority %d out of range", int(p))
	}
	return []byte(p.String()), nil
}

// UnmarshalText reads a priority's name.
func (p *Priority) UnmarshalText(b []byte) error {
	v, err := ParsePriority(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// Controller is a PoE controller with some ports. Implementations are safe
// for concurrent use.
type Controller interface {
	// Ports lists the ports the controller drives.
	Ports() []string
	// Enable lets the port detect, classify and power a device. It returns
	// once the controller accepted the command; power follows.
	Enable(ctx context.Context, port string) error
	// Disable removes power from the port.
	Disable(ctx context.Context, port string) error
	// PowerCycle removes power for off, then enables the port again: the
	// device on it reboots.
	PowerCycle(ctx context.Context, port string, off time.Duration) error
	// Status reports the port's state. An answer the controller could not
	// give sensibly is an error, never a made-up status.
	Status(ctx context.Context, port string) (PortStatus, error)
	// SetLimit sets the most power the port may deliver, in mW
	// (ErrNotSupported if the controller has no per-port limit).
	SetLimit(ctx context.Context, port string, mw int) error
	// SetPriority sets the port's priority in the controller's own power
	// management (ErrNotSupported if it has none).
	SetPriority(ctx context.Context, port string, p Priority) error
	// Budget is the total power the controller can source, in mW; 0 when
	// the controller does not know.
	Budget(ctx context.Context) (int, error)
	// Close releases the controller. Ports keep their power state, as a
	// hardware PSE does when its driver exits.
	Close() error
}

// ErrUnknownPort is returned for a port the controller does not drive.
var ErrUnknownPort = errors.New("unknown PoE port")

// ErrNotSupported is returned for a setting the controller does not have.
var ErrNotSupported = errors.New("not supported by this PoE controller")

// ClassPowerMW is the power a PSE allocates for each IEEE 802.3af/at class
// (the PSE-side figures: 15.4 W for class 0 and 3, 4 W class 1, 7 W class
// 2, 30 W class 4).
var ClassPowerMW = [5]int{15400, 4000, 7000, 15400, 30000}

// ClassDrawMW is the most a powered device of each class may draw at its
// end of the cable (802.3af/at: 12.95 W for class 0 and 3, 3.84 W class 1,
// 6.49 W class 2, 25.5 W class 4); the lab's phones draw this.
var ClassDrawMW = [5]int{12950, 3840, 6490, 12950, 25500}

// maxPortMW bounds what any port can plausibly deliver: 802.3bt type 4
// allows 90 W at the PSE, 99.9 W at the PI; more is a bad reading.
const maxPortMW = 100_000

// cycle is PowerCycle for controllers without a native port reset.
func cycle(ctx context.Context, c Controller, port string, off time.Duration) error {
	if err := c.Disable(ctx, port); err != nil {
		return err
	}
	t := time.NewTimer(off)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		// The port stays off: say so rather than leave it in doubt.
		return fmt.Errorf("power cycle of %s interrupted with the port off: %w", port, context.Cause(ctx))
	}
	return c.Enable(ctx, port)
}

// retry runs fn up to attempts times, waiting backoff between tries, and
// returns the last error: hardware that answered badly once (a checksum, a
// value out of range) usually answers well the next time.
func retry(ctx context.Context, attempts int, backoff time.Duration, fn func() error) error {
	var err error
	for i := range max(attempts, 1) {
		if i > 0 {
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return errors.Join(err, context.Cause(ctx))
			}
		}
		if err = fn(); err == nil {
			return nil
		}
		if errors.Is(err, ErrUnknownPort) || errors.Is(err, ErrNotSupported) {
			return err // asking again cannot help
		}
	}
	return err
}

// checkStatus refuses readings no port can have, so that a garbled answer
// is retried and then reported instead of trusted.
func checkStatus(st PortStatus) error {
	switch st.State {
	case StateDisabled, StateSearching, StateDelivering, StateFault:
	default:
		return fmt.Errorf("impossible state %q", st.State)
	}
	if st.Class < -1 || st.Class > 8 {
		return fmt.Errorf("impossible class %d", st.Class)
	}
	if st.PowerMW < 0 || st.PowerMW > maxPortMW {
		return fmt.Errorf("impossible power %d mW", st.PowerMW)
	}
	if st.LimitMW < 0 || st.LimitMW > maxPortMW {
		return fmt.Errorf("impossible limit %d mW", st.LimitMW)
	}
	return nil
}
