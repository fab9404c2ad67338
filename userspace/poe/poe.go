// Package poe drives Power-over-Ethernet controllers and sequences the
// powering of phone ports so that a boot storm is shaped, not suffered.
//
// Every backend (the lab's simulated PSE today; Linux PSE netlink, sysfs and
// PD69200 I2C later) implements Controller, and the Manager works only
// through that interface.
package poe

import (
	"context"
	"errors"
)

// State is what a port's power sourcing equipment is doing.
type State string

const (
	// StateDisabled: the port is administratively off.
	StateDisabled State = "disabled"
	// StateSearching: enabled, detecting and classifying a powered device.
	StateSearching State = "searching"
	// StateDelivering: power is on.
	StateDelivering State = "delivering"
	// StateFault: the controller reported a fault on the port.
	StateFault State = "fault"
)

// PortStatus is one port as the controller reports it.
type PortStatus struct {
	Port    string `json:"port"`
	State   State  `json:"state"`
	Class   int    `json:"class"`    // detected IEEE 802.3 class, -1 before classification
	PowerMW int    `json:"power_mw"` // power drawn now, milliwatts
	Fault   string `json:"fault,omitempty"`
}

// Controller is a PoE controller with some ports.
type Controller interface {
	// Ports lists the ports the controller drives.
	Ports() []string
	// Enable lets the port detect, classify and power a device. It returns
	// once the controller accepted the command; power follows.
	Enable(ctx context.Context, port string) error
	// Disable removes power from the port.
	Disable(ctx context.Context, port string) error
	// Status reports the port's state.
	Status(ctx context.Context, port string) (PortStatus, error)
	// Close releases the controller.
	Close() error
}

// ErrUnknownPort is returned for a port the controller does not drive.
var ErrUnknownPort = errors.New("unknown PoE port")

// ClassPowerMW is the power a PSE allocates for each IEEE 802.3af/at class
// (the PSE-side figures: 15.4 W for class 0 and 3, 4 W class 1, 7 W class
// 2, 30 W class 4).
var ClassPowerMW = [5]int{15400, 4000, 7000, 15400, 30000}
