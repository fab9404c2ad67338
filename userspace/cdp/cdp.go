// Package cdp encodes and decodes Cisco Discovery Protocol frames and
// holds what phoneboot advertises over CDP on a phone port.
//
// A Cisco IP phone learns its voice VLAN over CDP: when it boots it sends a
// frame carrying the VoIP VLAN Query TLV, the switch answers at once with
// the VoIP VLAN Reply ("Appliance VLAN") TLV, and the phone tags its voice
// traffic with that VLAN. Pre-standard inline power is negotiated the same
// way (Power Requested from the phone, Power Available from the switch).
// Port keeps that per-port exchange; Decode and Message.AppendFrame are the
// codec.
//
// On the wire a CDP frame is an IEEE 802.3 frame (a length where Ethernet
// II has its EtherType) to 01:00:0c:cc:cc:cc, with LLC/SNAP AA AA 03, OUI
// 00:00:0c and protocol ID 0x2000, then the CDP header (version, TTL in
// seconds, checksum) and TLVs whose length counts their own 4-byte header.
//
// The checksum is RFC 1071's over the CDP header and TLVs, except that
// Cisco handles an odd final byte its own way (see checksum). A frame whose
// checksum does not match is still decoded and returned, together with an
// error matching ErrChecksum: Wireshark flags such frames but lldpd does
// not even check, so the caller counts and logs the mismatch and uses the
// message rather than leave a phone without its voice VLAN.
package cdp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// MulticastAddr is the destination of every CDP frame (and of the other
// Cisco protocols, such as VTP and DTP, that share its LLC/SNAP framing).
var MulticastAddr = net.HardwareAddr{0x01, 0x00, 0x0c, 0xcc, 0xcc, 0xcc}

const (
	// Version is the CDP version phoneboot sends.
	Version = 2
	// DefaultTTL is how long, in seconds, a neighbour keeps an
	// advertisement: Cisco's default holdtime.
	DefaultTTL = 180
)

// Errors Decode returns; the caller counts each kind.
var (
	// ErrNotCDP: a frame that is not CDP at all, such as another Cisco
	// protocol (DTP, VTP, PAgP, UDLD...) sent to the same address. Not a
	// fault: ignore it.
	ErrNotCDP = errors.New("not a CDP frame")
	// ErrMalformed: CDP whose framing, TLV lengths or counts do not add
	// up. Nothing of it is used.
	ErrMalformed = errors.New("malformed CDP frame")
	// ErrChecksum: a well-formed frame whose checksum does not match. The
	// message is returned with it and is usable.
	ErrChecksum = errors.New("CDP checksum mismatch")
)

// ChecksumError reports the checksum a frame carried and the one its
// contents give. It matches ErrChecksum.
type ChecksumError struct {
	Got, Want uint16
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("CDP checksum mismatch: frame has %#04x, contents give %#04x", e.Got, e.Want)
}

func (e *ChecksumError) Is(target error) bool { return target == ErrChecksum }

// Type is a TLV type.
type Type uint16

// The TLV types Message covers: every Cisco type Wireshark, lldpd, scapy
// and gopacket describe. Others (0x000c, 0x000d, 0x001c, 0x001e, and the
// 0x1000-0x100d HP access points send) are skipped when decoding.
const (
	TypeDeviceID           Type = 0x0001
	TypeAddresses          Type = 0x0002
	TypePortID             Type = 0x0003
	TypeCapabilities       Type = 0x0004
	TypeSoftwareVersion    Type = 0x0005
	TypePlatform           Type = 0x0006
	TypeIPPrefix           Type = 0x0007
	TypeProtocolHello      Type = 0x0008
	TypeVTPDomain          Type = 0x0009
	TypeNativeVLAN         Type = 0x000a
	TypeDuplex             Type = 0x000b
	TypeVoIPVLANReply      Type = 0x000e
	TypeVoIPVLANQuery      Type = 0x000f
	TypePower              Type = 0x0010
	TypeMTU                Type = 0x0011
	TypeTrustBitmap        Type = 0x0012
	TypeUntrustedCoS       Type = 0x0013
	TypeSystemName         Type = 0x0014
	TypeSystemOID          Type = 0x0015
	TypeManagementAddress  Type = 0x0016
	TypeLocation           Type = 0x0017
	TypeExternalPortID     Type = 0x0018
	TypePowerRequested     Type = 0x0019
	TypePowerAvailable     Type = 0x001a
	TypePortUnidirectional Type = 0x001b
	TypeEnergyWise         Type = 0x001d
	TypeSparePairPoE       Type = 0x001f
)

var typeNames = map[Type]string{
	TypeDeviceID:           "Device ID",
	TypeAddresses:          "Addresses",
	TypePortID:             "Port ID",
	TypeCapabilities:       "Capabilities",
	TypeSoftwareVersion:    "Software Version",
	TypePlatform:           "Platform",
	TypeIPPrefix:           "IP Prefix",
	TypeProtocolHello:      "Protocol Hello",
	TypeVTPDomain:          "VTP Management Domain",
	TypeNativeVLAN:         "Native VLAN",
	TypeDuplex:             "Duplex",
	TypeVoIPVLANReply:      "VoIP VLAN Reply",
	TypeVoIPVLANQuery:      "VoIP VLAN Query",
	TypePower:              "Power Consumption",
	TypeMTU:                "MTU",
	TypeTrustBitmap:        "Trust Bitmap",
	TypeUntrustedCoS:       "Untrusted Port CoS",
	TypeSystemName:         "System Name",
	TypeSystemOID:          "System Object ID",
	TypeManagementAddress:  "Management Address",
	TypeLocation:           "Location",
	TypeExternalPortID:     "External Port-ID",
	TypePowerRequested:     "Power Requested",
	TypePowerAvailable:     "Power Available",
	TypePortUnidirectional: "Port Unidirectional",
	TypeEnergyWise:         "EnergyWise",
	TypeSparePairPoE:       "Spare Pair PoE",
}

func (t Type) String() string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("TLV %#04x", uint16(t))
}

// Capabilities is the Capabilities TLV's bitmap.
type Capabilities uint32

const (
	CapRouter            Capabilities = 0x001
	CapTransparentBridge Capabilities = 0x002
	CapSourceRouteBridge Capabilities = 0x004
	CapSwitch            Capabilities = 0x008
	CapHost              Capabilities = 0x010
	CapIGMP              Capabilities = 0x020
	CapRepeater          Capabilities = 0x040
	CapPhone             Capabilities = 0x080
	CapRemotelyManaged   Capabilities = 0x100
)

// Duplex is the Duplex TLV's value.
type Duplex uint8

const (
	HalfDuplex Duplex = 0
	FullDuplex Duplex = 1
)

// ApplianceVLAN is the value of the VoIP VLAN Reply and Query TLVs: an
// appliance ID and a VLAN.
type ApplianceVLAN struct {
	// ID is the "appliance ID"; a Catalyst 2950 sends 1 with the voice
	// VLAN (VoiceApplianceID).
	ID   uint8
	VLAN uint16
}

// VoiceApplianceID is the appliance ID a Catalyst 2950 puts in its VoIP
// VLAN Reply (a captured frame in scapy's CDP tests); phoneboot sends it.
const VoiceApplianceID = 1

// ProtocolHello is the Protocol Hello TLV: an OUI and protocol ID (0x0112
// is Cisco cluster management) and that protocol's data.
type ProtocolHello struct {
	OUI        [3]byte
	ProtocolID uint16
	Data       []byte
}

// Location is the Location TLV: a byte of unknown meaning, then text.
type Location struct {
	Kind uint8
	Text string
}

// PowerRequest is the Power Requested TLV a powered device (a phone)
// sends: the power levels it can run at, most preferred first, in mW.
type PowerRequest struct {
	// RequestID changes with each new request (lldpd starts at 1 and
	// avoids 0); the switch echoes it in Power Available.
	RequestID    uint16
	ManagementID uint16
	MilliWatts   []uint32
}

// PowerAvailable is the Power Available TLV a switch sends.
type PowerAvailable struct {
	// RequestID echoes the last Power Requested's; 0 if none arrived since
	// the link came up.
	RequestID uint16
	// ManagementID goes up by 1 (by 2 to skip 0) whenever the available
	// power changes, a new request arrives or the link goes down.
	ManagementID uint16
	MilliWatts   uint32
	// ManagementLevel is the power level the switch would like the device
	// to report in Power Consumption; NoPreference for none.
	ManagementLevel uint32
}

// NoPreference is the ManagementLevel for "no preference", which Cisco's
// switch guides say their switches always send. That it is all ones on the
// wire is an assumption not checked against a capture.
const NoPreference = 0xffffffff

// SparePairPoE is the Spare Pair PoE (UPOE) TLV's bitmap.
type SparePairPoE uint8

const (
	PSEFourWire           SparePairPoE = 0x01
	PDSparePairShared     SparePairPoE = 0x02
	PDRequestsSparePairOn SparePairPoE = 0x04
	PSESparePairOn        SparePairPoE = 0x08
)

// Message is one CDP advertisement. A field that is zero (nil, empty) is a
// TLV that is absent; where zero is a meaningful value the field is a
// pointer. When a frame repeats a TLV the last one wins.
type Message struct {
	// Source is the frame's Ethernet source address.
	Source net.HardwareAddr
	// Version is the CDP version, 1 or 2; AppendFrame writes 2 for 0.
	Version uint8
	// TTL is how long, in seconds, receivers keep the advertisement; 0
	// tells them to forget the sender now.
	TTL uint8

	DeviceID string
	// Addresses are the sender's IPv4 and IPv6 addresses. Entries of other
	// protocols (CLNS, DECnet...) are checked and skipped when decoding.
	Addresses       []netip.Addr
	PortID          string
	Capabilities    Capabilities
	SoftwareVersion string
	Platform        string
	// IPPrefixes and ODRGateway share the IP Prefix TLV (on-demand
	// routing): a 4-byte value is the gateway, 5-byte records prefixes.
	IPPrefixes    []netip.Prefix
	ODRGateway    netip.Addr
	ProtocolHello *ProtocolHello
	VTPDomain     string
	// NativeVLAN is the sender port's untagged VLAN.
	NativeVLAN uint16
	Duplex     *Duplex
	// VoIPVLANReply tells a phone its voice VLAN (a switch sends it).
	VoIPVLANReply *ApplianceVLAN
	// VoIPVLANQuery asks for the voice VLAN (a phone sends it). Its
	// contents are undocumented; its presence is what matters.
	VoIPVLANQuery *ApplianceVLAN
	// PowerConsumption is what a powered device draws, in mW.
	PowerConsumption uint16
	MTU              uint32
	// TrustBitmap tells a phone whether to trust the CoS of frames from
	// the PC behind it (0: do not, rewrite them to UntrustedCoS).
	TrustBitmap         *uint8
	UntrustedCoS        *uint8
	SystemName          string
	SystemOID           []byte
	ManagementAddresses []netip.Addr
	Location            *Location
	// ExternalPortID, PortUnidirectional and EnergyWise are kept as raw
	// values: their formats are undocumented (EnergyWise's partly reverse
	// engineered) and phoneboot has no use for them.
	ExternalPortID     []byte
	PowerRequested     *PowerRequest
	PowerAvailable     *PowerAvailable
	PortUnidirectional []byte
	EnergyWise         []byte
	SparePairPoE       *SparePairPoE
}
