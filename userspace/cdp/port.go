package cdp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/phoneboot/phoneboot/userspace/neighbor"
)

// Interval is how often a port advertises: Cisco's default, which with
// DefaultTTL lets a neighbour miss two advertisements.
const Interval = 60 * time.Second

// PortConfig is what phoneboot advertises over CDP on one phone port.
type PortConfig struct {
	// MAC is the port's own address, the source of its frames.
	MAC net.HardwareAddr
	// DeviceID names the appliance (its host name); required.
	DeviceID string
	// PortID names the port as neighbours will show it; required.
	PortID          string
	SoftwareVersion string
	Platform        string
	// Addresses are the appliance's addresses a phone may manage it at.
	Addresses []netip.Addr
	// NativeVLAN is the port's untagged (data) VLAN, 1-4094; 0 leaves
	// the TLV out.
	NativeVLAN uint16
	// VoiceVLAN, 1-4094, is handed to phones in the VoIP VLAN Reply; 0
	// sends no reply. LLDP-MED must advertise the same VLAN on the port:
	// a phone takes the last policy it heard from either protocol, and
	// two that differ can make it reboot over and over.
	VoiceVLAN uint16
	// TrustBitmap and UntrustedCoS go with the voice VLAN and tell the
	// phone what to do with frames from the PC behind it. TrustBitmap 0
	// (what HPE switches and a Catalyst 2950 send) leaves the PC untrusted
	// and its frames rewritten to UntrustedCoS (0-7).
	TrustBitmap  uint8
	UntrustedCoS uint8
	// HalfDuplex advertises half duplex; the default is full.
	HalfDuplex bool
	// PoE: the port sources inline power, so it advertises Power
	// Available, starting with PowerAvailableMW.
	PoE              bool
	PowerAvailableMW uint32
	// TTL in seconds; 0 means DefaultTTL.
	TTL uint8
}

// Port is the CDP side of one phone port: what it advertises, and the
// state of the power negotiation with the device on it. It is not safe
// for concurrent use: the port's own loop owns it.
type Port struct {
	cfg          PortConfig
	powerMW      uint32
	requestID    uint16 // the last Power Requested's, 0 if none since link-up
	managementID uint16
}

// NewPort checks cfg and returns the port's state, as after link-up.
func NewPort(cfg PortConfig) (*Port, error) {
	var errs []error
	if len(cfg.MAC) != 6 {
		errs = append(errs, fmt.Errorf("MAC %q is not 6 bytes", cfg.MAC))
	}
	if cfg.DeviceID == "" {
		errs = append(errs, errors.New("device ID is empty"))
	}
	if cfg.PortID == "" {
		errs = append(errs, errors.New("port ID is empty"))
	}
	if cfg.NativeVLAN > 4094 {
		errs = append(errs, fmt.Errorf("native VLAN %d is not 1-4094", cfg.NativeVLAN))
	}
	if cfg.VoiceVLAN > 4094 {
		errs = append(errs, fmt.Errorf("voice VLAN %d is not 1-4094", cfg.VoiceVLAN))
	}
	if cfg.UntrustedCoS > 7 {
		errs = append(errs, fmt.Errorf("untrusted CoS %d is not 0-7", cfg.UntrustedCoS))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("cdp port %s: %w", cfg.PortID, err)
	}
	cfg.MAC = slices.Clone(cfg.MAC)
	cfg.Addresses = slices.Clone(cfg.Addresses)
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	p := &Port{cfg: cfg, powerMW: cfg.PowerAvailableMW, managementID: 1}
	// Whatever else changes later (power figures) keeps the size, so an
	// advertisement that encodes now always will.
	if _, err := p.Advertisement().AppendFrame(nil); err != nil {
		return nil, fmt.Errorf("cdp port %s: %w", cfg.PortID, err)
	}
	return p, nil
}

// Advertisement is the message the port sends every Interval, and at once
// when Receive or SetPowerAvailable says so.
func (p *Port) Advertisement() *Message {
	c := &p.cfg
	m := &Message{
		Source:          c.MAC,
		Version:         Version,
		TTL:             c.TTL,
		DeviceID:        c.DeviceID,
		Addresses:       c.Addresses,
		PortID:          c.PortID,
		Capabilities:    CapSwitch,
		SoftwareVersion: c.SoftwareVersion,
		Platform:        c.Platform,
		NativeVLAN:      c.NativeVLAN,
	}
	d := FullDuplex
	if c.HalfDuplex {
		d = HalfDuplex
	}
	m.Duplex = &d
	if c.VoiceVLAN != 0 {
		m.VoIPVLANReply = &ApplianceVLAN{ID: VoiceApplianceID, VLAN: c.VoiceVLAN}
		trust, cos := c.TrustBitmap, c.UntrustedCoS
		m.TrustBitmap, m.UntrustedCoS = &trust, &cos
	}
	if c.PoE {
		m.PowerAvailable = &PowerAvailable{
			RequestID:       p.requestID,
			ManagementID:    p.managementID,
			MilliWatts:      p.powerMW,
			ManagementLevel: NoPreference,
		}
	}
	return m
}

// Withdrawal is the advertisement with TTL 0, sent when phoneboot stops
// serving the port so that the phone forgets it at once (as IOS does
// before an interface goes down).
func (p *Port) Withdrawal() *Message {
	m := p.Advertisement()
	m.TTL = 0
	return m
}

// Receive takes a message heard on the port and reports whether the port
// should advertise now rather than at the next Interval: the device asked
// for its voice VLAN (VoIP VLAN Query), or it made a new power request
// that Power Available must acknowledge. A query is answered even on a
// port without a voice VLAN: the answer, without a VoIP VLAN Reply, lets
// the phone go on untagged instead of waiting out the interval.
func (p *Port) Receive(m *Message) (advertiseNow bool) {
	if m.VoIPVLANQuery != nil {
		advertiseNow = true
	}
	if r := m.PowerRequested; r != nil && p.cfg.PoE && r.RequestID != p.requestID {
		p.requestID = r.RequestID
		p.bumpManagementID()
		advertiseNow = true
	}
	return advertiseNow
}

// NewPowerRequest reports whether m carries a power request the port has
// not answered yet (a Request-ID other than the last one), so that the
// budget is asked once per request, not at every advertisement that
// repeats it.
func (p *Port) NewPowerRequest(m *Message) bool {
	r := m.PowerRequested
	return r != nil && p.cfg.PoE && len(r.MilliWatts) > 0 && r.RequestID != p.requestID
}

// SetPowerAvailable changes the power the port offers, as the PoE budget
// decides, and reports whether it changed (advertise now if so).
func (p *Port) SetPowerAvailable(mw uint32) (changed bool) {
	if mw == p.powerMW {
		return false
	}
	p.powerMW = mw
	p.bumpManagementID()
	return true
}

// LinkDown resets the power negotiation, as the link going down does.
func (p *Port) LinkDown() {
	p.requestID = 0
	p.bumpManagementID()
}

// bumpManagementID moves the Power Management ID on by one, skipping 0.
func (p *Port) bumpManagementID() {
	p.managementID++
	if p.managementID == 0 {
		p.managementID = 1
	}
}

// PhoneConfig is a phone's side of CDP, for simulated phones.
type PhoneConfig struct {
	MAC net.HardwareAddr
	// DeviceID: Cisco phones send SEP and their MAC in hex.
	DeviceID        string
	PortID          string // a 7960 sends "Port 1"
	SoftwareVersion string
	Platform        string // e.g. "Cisco IP Phone 7960"
	Addresses       []netip.Addr
	// PowerConsumptionMW is what the phone draws (a 7960: 6300).
	PowerConsumptionMW uint16
	// PowerRequested, if set, asks the switch for power levels.
	PowerRequested *PowerRequest
}

// PhoneAdvertisement is what a booting phone sends: its identity, the
// VoIP VLAN Query that asks the switch for the voice VLAN, and its power
// figures.
func PhoneAdvertisement(c PhoneConfig) *Message {
	d := FullDuplex
	return &Message{
		Source:           c.MAC,
		Version:          Version,
		TTL:              DefaultTTL,
		DeviceID:         c.DeviceID,
		Addresses:        c.Addresses,
		PortID:           c.PortID,
		Capabilities:     CapHost | CapPhone,
		SoftwareVersion:  c.SoftwareVersion,
		Platform:         c.Platform,
		Duplex:           &d,
		VoIPVLANQuery:    &ApplianceVLAN{ID: VoiceApplianceID},
		PowerConsumption: c.PowerConsumptionMW,
		PowerRequested:   c.PowerRequested,
	}
}

// Neighbor is the neighbour m describes, heard on localPort. Its
// addresses are m's Addresses and Management Addresses together; its
// requested power is the highest level of Power Requested.
func (m *Message) Neighbor(localPort string) neighbor.Neighbor {
	n := neighbor.Neighbor{
		Protocol:        neighbor.CDP,
		LocalPort:       localPort,
		MAC:             m.Source,
		DeviceID:        m.DeviceID,
		Platform:        m.Platform,
		PortID:          m.PortID,
		SoftwareVersion: m.SoftwareVersion,
		VoiceVLANQuery:  m.VoIPVLANQuery != nil,
		TTL:             time.Duration(m.TTL) * time.Second,
	}
	n.Addresses = slices.Clone(m.Addresses)
	for _, a := range m.ManagementAddresses {
		if !slices.Contains(n.Addresses, a) {
			n.Addresses = append(n.Addresses, a)
		}
	}
	if r := m.PowerRequested; r != nil && len(r.MilliWatts) > 0 {
		n.PowerRequestedMW = slices.Max(r.MilliWatts)
	}
	return n
}
