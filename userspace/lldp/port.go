package lldp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/phoneboot/phoneboot/userspace/neighbor"
	"golang.org/x/net/bpf"
)

// PortConfig is what phoneboot advertises over LLDP on one phone port.
type PortConfig struct {
	// MAC is the port's own address, the source of its frames.
	MAC net.HardwareAddr
	// ChassisMAC identifies the appliance (Chassis ID subtype MAC), the
	// same on every port.
	ChassisMAC net.HardwareAddr
	// PortName is the Port ID (subtype interface name), e.g. "swp1".
	PortName          string
	PortDescription   string
	SystemName        string
	SystemDescription string
	// Addresses are the appliance's management addresses.
	Addresses []netip.Addr
	// Policies are the LLDP-MED network policies, VoicePolicy(vlan) for a
	// phone port. The voice VLAN must be the one CDP hands out on the
	// port (cdp.PortConfig.VoiceVLAN).
	Policies []NetworkPolicy
	// PoE: the port sources power, advertised in Extended Power-via-MDI
	// (as a PSE, primary source) starting with PowerAvailableMW.
	PoE              bool
	PowerAvailableMW uint32
	PowerPriority    PowerPriority
	// TTL in seconds; 0 means DefaultTTL.
	TTL uint16
}

// Port is the LLDP side of one phone port. It is not safe for concurrent
// use: the port's own loop owns it.
type Port struct {
	cfg     PortConfig
	powerMW uint32
}

// NewPort checks cfg and returns the port.
func NewPort(cfg PortConfig) (*Port, error) {
	var errs []error
	if len(cfg.MAC) != 6 {
		errs = append(errs, fmt.Errorf("MAC %q is not 6 bytes", cfg.MAC))
	}
	if len(cfg.ChassisMAC) != 6 {
		errs = append(errs, fmt.Errorf("chassis MAC %q is not 6 bytes", cfg.ChassisMAC))
	}
	if cfg.PortName == "" {
		errs = append(errs, errors.New("port name is empty"))
	}
	for _, p := range cfg.Policies {
		if p.VLAN > 4094 || p.Priority > 7 || p.DSCP > 63 {
			errs = append(errs, fmt.Errorf("policy VLAN %d (0-4094), priority %d (0-7), DSCP %d (0-63)", p.VLAN, p.Priority, p.DSCP))
		}
	}
	if cfg.PowerAvailableMW/100 > 0xffff {
		errs = append(errs, fmt.Errorf("available power %d mW is too much to advertise", cfg.PowerAvailableMW))
	}
	if cfg.PowerPriority > PriorityLow {
		errs = append(errs, fmt.Errorf("power priority %d", cfg.PowerPriority))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("lldp port %s: %w", cfg.PortName, err)
	}
	cfg.MAC = slices.Clone(cfg.MAC)
	cfg.ChassisMAC = slices.Clone(cfg.ChassisMAC)
	cfg.Addresses = slices.Clone(cfg.Addresses)
	cfg.Policies = slices.Clone(cfg.Policies)
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	p := &Port{cfg: cfg, powerMW: cfg.PowerAvailableMW}
	// Later changes (the power figure) keep the size, so an advertisement
	// that encodes now always will.
	if _, err := p.Advertisement().AppendFrame(nil); err != nil {
		return nil, fmt.Errorf("lldp port %s: %w", cfg.PortName, err)
	}
	return p, nil
}

// Advertisement is the LLDPDU the port sends every Interval.
func (p *Port) Advertisement() *Message {
	c := &p.cfg
	m := p.Withdrawal()
	m.TTL = c.TTL
	m.PortDescription = c.PortDescription
	m.SystemName = c.SystemName
	m.SystemDescription = c.SystemDescription
	m.Capabilities = &SystemCapabilities{System: CapBridge, Enabled: CapBridge}
	for _, a := range c.Addresses {
		m.ManagementAddresses = append(m.ManagementAddresses, ManagementAddress{Addr: a, InterfaceSubtype: InterfaceUnknown})
	}
	med := &MED{Capabilities: MEDCapCapabilities, Class: ClassNetworkConnectivity}
	if len(c.Policies) > 0 {
		med.Capabilities |= MEDCapNetworkPolicy
		m.NetworkPolicies = c.Policies
	}
	if c.PoE {
		med.Capabilities |= MEDCapPowerPSE
		m.ExtendedPower = &ExtendedPower{
			Type:      PowerPSE,
			Source:    PowerSourcePrimary,
			Priority:  c.PowerPriority,
			DeciWatts: uint16(p.powerMW / 100),
		}
	}
	m.MED = med
	return m
}

// Withdrawal is the "shutdown LLDPDU" (Chassis ID, Port ID, TTL 0), sent
// when phoneboot stops serving the port so that the phone forgets it now.
func (p *Port) Withdrawal() *Message {
	return &Message{
		Source:    p.cfg.MAC,
		ChassisID: ChassisID{Subtype: ChassisMAC, ID: p.cfg.ChassisMAC},
		PortID:    PortID{Subtype: PortInterfaceName, ID: []byte(p.cfg.PortName)},
	}
}

// SetPowerAvailable changes the power the port offers, as the PoE budget
// decides, and reports whether the advertisement changed (send it now if
// so). LLDP-MED carries power in 0.1 W steps; mW below that are dropped,
// and a figure beyond the field's 6553.5 W is capped.
func (p *Port) SetPowerAvailable(mw uint32) (changed bool) {
	mw = min(mw, 0xffff*100)
	if mw/100 == p.powerMW/100 {
		p.powerMW = mw
		return false
	}
	p.powerMW = mw
	return true
}

// Neighbor is the neighbour m describes, heard on localPort. Its device ID
// is the System Name, or the Chassis ID without one; its platform the
// LLDP-MED model, or the System Description; its requested power that of
// an Extended Power-via-MDI TLV sent as a powered device.
func (m *Message) Neighbor(localPort string) neighbor.Neighbor {
	n := neighbor.Neighbor{
		Protocol:        neighbor.LLDP,
		LocalPort:       localPort,
		MAC:             m.Source,
		DeviceID:        m.SystemName,
		Platform:        m.Inventory.Model,
		PortID:          m.PortID.String(),
		SoftwareVersion: m.Inventory.SoftwareRevision,
		TTL:             time.Duration(m.TTL) * time.Second,
	}
	if n.DeviceID == "" {
		n.DeviceID = m.ChassisID.String()
	}
	if n.Platform == "" {
		n.Platform = m.SystemDescription
	}
	for _, ma := range m.ManagementAddresses {
		if !slices.Contains(n.Addresses, ma.Addr) {
			n.Addresses = append(n.Addresses, ma.Addr)
		}
	}
	if p := m.ExtendedPower; p != nil && p.Type == PowerPD {
		n.PowerRequestedMW = p.MilliWatts()
	}
	return n
}

// Filter returns the classic BPF program for a port's raw socket that
// passes LLDP frames and nothing else.
func Filter() []bpf.Instruction {
	return []bpf.Instruction{
		bpf.LoadAbsolute{Off: 12, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: EtherType, SkipTrue: 1},
		bpf.RetConstant{Val: 0xffff},
		bpf.RetConstant{Val: 0},
	}
}
