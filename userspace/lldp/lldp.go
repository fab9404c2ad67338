// Package lldp encodes and decodes LLDP frames (IEEE 802.1AB) with the
// LLDP-MED extensions (ANSI/TIA-1057) a VoIP phone uses, and holds what
// phoneboot advertises over LLDP on a phone port.
//
// An LLDP-MED phone takes its voice VLAN from the Network Policy TLV
// (application "voice", tagged, VLAN, 802.1p priority, DSCP) and reports
// or learns power through Extended Power-via-MDI. A Cisco phone that
// speaks both CDP and LLDP-MED applies whichever policy it heard last, so
// a port must advertise the same voice VLAN over both.
//
// On the wire an LLDPDU is an Ethernet II frame (EtherType 0x88cc) to
// 01:80:c2:00:00:0e holding TLVs with a 7-bit type and a 9-bit length:
// Chassis ID, Port ID and Time To Live first, End of LLDPDU last.
// LLDP-MED TLVs are organizationally specific (type 127) under TIA's OUI
// 00:12:bb.
package lldp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// MulticastAddr is the nearest-bridge address LLDP is sent to: bridges do
// not forward it, so only the device on the other end of the cable hears
// it.
var MulticastAddr = net.HardwareAddr{0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e}

// EtherType is LLDP's.
const EtherType = 0x88cc

const (
	// Interval is how often a port advertises: 802.1AB's default
	// msgTxInterval.
	Interval = 30 * time.Second
	// DefaultTTL, in seconds, is Interval times 802.1AB's default
	// msgTxHold of 4.
	DefaultTTL = 120
)

// Errors Decode returns; the caller counts each kind.
var (
	// ErrNotLLDP: the frame is not LLDP (another EtherType).
	ErrNotLLDP = errors.New("not an LLDP frame")
	// ErrMalformed: an LLDPDU whose TLVs are missing, out of order, or of
	// impossible lengths. Nothing of it is used.
	ErrMalformed = errors.New("malformed LLDP frame")
)

// ChassisIDSubtype says what a Chassis ID is.
type ChassisIDSubtype uint8

const (
	ChassisComponent      ChassisIDSubtype = 1
	ChassisInterfaceAlias ChassisIDSubtype = 2
	ChassisPortComponent  ChassisIDSubtype = 3
	ChassisMAC            ChassisIDSubtype = 4
	// ChassisNetworkAddress: an IANA address family byte, then the address.
	ChassisNetworkAddress ChassisIDSubtype = 5
	ChassisInterfaceName  ChassisIDSubtype = 6
	ChassisLocal          ChassisIDSubtype = 7
)

// ChassisID identifies the sending device.
type ChassisID struct {
	Subtype ChassisIDSubtype
	ID      []byte // 1-255 bytes
}

func (c ChassisID) String() string {
	return idString(c.ID, c.Subtype == ChassisMAC, c.Subtype == ChassisNetworkAddress)
}

// PortIDSubtype says what a Port ID is.
type PortIDSubtype uint8

const (
	PortInterfaceAlias PortIDSubtype = 1
	PortComponent      PortIDSubtype = 2
	PortMAC            PortIDSubtype = 3
	// PortNetworkAddress: an IANA address family byte, then the address.
	PortNetworkAddress PortIDSubtype = 4
	PortInterfaceName  PortIDSubtype = 5
	PortAgentCircuitID PortIDSubtype = 6
	PortLocal          PortIDSubtype = 7
)

// PortID identifies the port the frame was sent from.
type PortID struct {
	Subtype PortIDSubtype
	ID      []byte // 1-255 bytes
}

func (p PortID) String() string {
	return idString(p.ID, p.Subtype == PortMAC, p.Subtype == PortNetworkAddress)
}

// IANA address family numbers, as in network-address IDs and the
// Management Address TLV.
const (
	familyIPv4 = 1
	familyIPv6 = 2
)

// idString renders an ID for people: a MAC as a MAC, an IPv4 or IPv6
// network address as an address, anything else as text.
func idString(id []byte, isMAC, isAddr bool) string {
	switch {
	case isMAC && len(id) == 6:
		return net.HardwareAddr(id).String()
	case isAddr && len(id) == 5 && id[0] == familyIPv4, isAddr && len(id) == 17 && id[0] == familyIPv6:
		a, _ := netip.AddrFromSlice(id[1:])
		return a.String()
	}
	return string(id)
}

// Capabilities is the System Capabilities bitmap.
type Capabilities uint16

const (
	CapOther           Capabilities = 0x01
	CapRepeater        Capabilities = 0x02
	CapBridge          Capabilities = 0x04
	CapWLANAccessPoint Capabilities = 0x08
	CapRouter          Capabilities = 0x10
	CapTelephone       Capabilities = 0x20
	CapDOCSIS          Capabilities = 0x40
	CapStation         Capabilities = 0x80
)

// SystemCapabilities is what the device can do and which of it is on.
type SystemCapabilities struct {
	System, Enabled Capabilities
}

// Interface numbering subtypes of a management address.
const (
	InterfaceUnknown    = 1
	InterfaceIfIndex    = 2
	InterfaceSystemPort = 3
)

// ManagementAddress is an address the device can be managed at.
// Addresses of families other than IPv4 and IPv6 are checked and skipped
// when decoding.
type ManagementAddress struct {
	Addr             netip.Addr
	InterfaceSubtype uint8 // InterfaceUnknown, InterfaceIfIndex, InterfaceSystemPort
	Interface        uint32
	OID              []byte // at most 128 bytes
}

// MEDCapabilities is the LLDP-MED capabilities bitmap: which LLDP-MED
// TLVs the device supports.
type MEDCapabilities uint16

const (
	MEDCapCapabilities  MEDCapabilities = 0x01
	MEDCapNetworkPolicy MEDCapabilities = 0x02
	MEDCapLocation      MEDCapabilities = 0x04
	MEDCapPowerPSE      MEDCapabilities = 0x08
	MEDCapPowerPD       MEDCapabilities = 0x10
	MEDCapInventory     MEDCapabilities = 0x20
)

// DeviceClass is the LLDP-MED device type.
type DeviceClass uint8

const (
	ClassNotDefined DeviceClass = 0
	// ClassEndpoint1..3 are endpoints; a phone is class III.
	ClassEndpoint1 DeviceClass = 1
	ClassEndpoint2 DeviceClass = 2
	ClassEndpoint3 DeviceClass = 3
	// ClassNetworkConnectivity is a switch (what phoneboot is).
	ClassNetworkConnectivity DeviceClass = 4
)

// MED is the LLDP-MED Capabilities TLV. TIA-1057 has every other
// LLDP-MED TLV go with it.
type MED struct {
	Capabilities MEDCapabilities
	Class        DeviceClass
}

// Application is a Network Policy's application type.
type Application uint8

const (
	AppVoice               Application = 1
	AppVoiceSignaling      Application = 2
	AppGuestVoice          Application = 3
	AppGuestVoiceSignaling Application = 4
	AppSoftphoneVoice      Application = 5
	AppVideoConferencing   Application = 6
	AppStreamingVideo      Application = 7
	AppVideoSignaling      Application = 8
)

// NetworkPolicy is the LLDP-MED Network Policy TLV: the VLAN and QoS an
// application's traffic should use.
type NetworkPolicy struct {
	Application Application
	// Unknown: the sender does not know the policy (the other fields are
	// then meaningless).
	Unknown bool
	// Tagged: use VLAN with an 802.1Q tag. Cisco phones apply VLAN and
	// Priority only when it is set; untagged, only DSCP.
	Tagged   bool
	VLAN     uint16 // 12 bits; 0: priority-tagged frames
	Priority uint8  // 802.1p, 3 bits
	DSCP     uint8  // 6 bits
}

// VoicePolicy is the usual voice policy for vlan: tagged, 802.1p priority
// 5 ("voice") and DSCP 46 (expedited forwarding).
func VoicePolicy(vlan uint16) NetworkPolicy {
	return NetworkPolicy{Application: AppVoice, Tagged: true, VLAN: vlan, Priority: 5, DSCP: 46}
}

// PowerType is who sends an Extended Power-via-MDI TLV.
type PowerType uint8

const (
	PowerPSE PowerType = 0 // a switch port sourcing power
	PowerPD  PowerType = 1 // a powered device, such as a phone
)

// Power sources: for a PSE, PowerSourcePrimary or PowerSourceBackup; for
// a PD, PowerSourcePSE, PowerSourceLocal or PowerSourcePSEAndLocal. 0 is
// unknown either way.
const (
	PowerSourcePrimary     = 1
	PowerSourceBackup      = 2
	PowerSourcePSE         = 1
	PowerSourceLocal       = 2
	PowerSourcePSEAndLocal = 3
)

// PowerPriority is a port's power priority.
type PowerPriority uint8

const (
	PriorityUnknown  PowerPriority = 0
	PriorityCritical PowerPriority = 1
	PriorityHigh     PowerPriority = 2
	PriorityLow      PowerPriority = 3
)

// ExtendedPower is the LLDP-MED Extended Power-via-MDI TLV: the power a
// PSE makes available, or a PD needs.
type ExtendedPower struct {
	Type     PowerType     // 2 bits
	Source   uint8         // 2 bits
	Priority PowerPriority // 4 bits
	// DeciWatts is the power in units of 0.1 W, as on the wire (TIA-1057
	// goes to 102.3 W).
	DeciWatts uint16
}

// MilliWatts is the power in mW.
func (p ExtendedPower) MilliWatts() uint32 { return uint32(p.DeciWatts) * 100 }

// Inventory holds the LLDP-MED inventory TLVs; an empty field was not sent.
type Inventory struct {
	HardwareRevision string
	FirmwareRevision string
	SoftwareRevision string
	SerialNumber     string
	Manufacturer     string
	Model            string
	AssetID          string
}

// Message is one LLDPDU. ChassisID, PortID and TTL are always there;
// otherwise a zero field (empty, nil) is a TLV that is absent. When a
// frame repeats an optional TLV the last one wins, except Management
// Address and Network Policy, of which there may be several.
type Message struct {
	// Source is the frame's Ethernet source address.
	Source    net.HardwareAddr
	ChassisID ChassisID
	PortID    PortID
	// TTL is how long, in seconds, receivers keep the advertisement; 0
	// (a "shutdown LLDPDU") tells them to forget the sender now.
	TTL                 uint16
	PortDescription     string
	SystemName          string
	SystemDescription   string
	Capabilities        *SystemCapabilities
	ManagementAddresses []ManagementAddress

	MED             *MED
	NetworkPolicies []NetworkPolicy
	ExtendedPower   *ExtendedPower
	Inventory       Inventory
}

// Policy returns the first network policy for app, if any.
func (m *Message) Policy(app Application) (NetworkPolicy, bool) {
	for _, p := range m.NetworkPolicies {
		if p.Application == app {
			return p, true
		}
	}
	return NetworkPolicy{}, false
}

func (t tlvType) String() string {
	if s, ok := tlvNames[t]; ok {
		return s
	}
	return fmt.Sprintf("TLV %d", uint8(t))
}
