// Package dhcp is phoneboot's DHCPv4 server (RFC 2131/2132): pools per
// voice VLAN, leases through lease.Store, and raw sockets on the phone
// ports. The protocol logic (Handler) is pure: a request in, a reply out,
// no sockets, so tests and the XDP fast path's differential test call it
// directly.
package dhcp

import (
	"net"
	"net/netip"
	"time"
)

// PoolConfig is the address pool of one voice VLAN.
type PoolConfig struct {
	Name string
	// VLAN is the 802.1Q VLAN the pool serves; 0 serves untagged requests.
	VLAN       uint16
	Subnet     netip.Prefix
	RangeStart netip.Addr
	RangeEnd   netip.Addr
	// ServerIP is the appliance's own address in Subnet: option 54 and the
	// source of replies.
	ServerIP       netip.Addr
	Routers        []netip.Addr // option 3
	DNS            []netip.Addr // option 6
	Domain         string       // option 15
	NTP            []netip.Addr // option 42
	TFTPServers    []netip.Addr // option 150 (Cisco TFTP server list)
	TFTPServerName string       // option 66
	VendorInfo     []byte       // option 43, raw
	LeaseTime      time.Duration
	T1, T2         time.Duration // options 58 and 59; 0: 50 % and 87.5 % of LeaseTime
	Classes        []ClassConfig
	Reservations   []ReservationConfig
}

// ClassConfig overrides provisioning options for clients whose option 60
// (vendor class) matches. Cisco phones send
// "Cisco Systems, Inc. IP Phone CP-<model>".
type ClassConfig struct {
	Name string
	// Exactly one of VendorClass (the whole option 60) and VendorClassPrefix.
	VendorClass       string
	VendorClassPrefix string
	// Overrides; empty keeps the pool's value.
	TFTPServers    []netip.Addr
	TFTPServerName string
	VendorInfo     []byte
}

// ReservationConfig gives a MAC a fixed address in the pool.
type ReservationConfig struct {
	MAC net.HardwareAddr
	IP  netip.Addr
}

// Config is the server's configuration.
type Config struct {
	Pools []PoolConfig
	// OfferTimeout is how long an offered address stays held for the
	// client that was offered it.
	OfferTimeout time.Duration
	// DeclineProbation is how long a declined address is kept out of use.
	DeclineProbation time.Duration
	// MaxLeasesPerPort caps unexpired leases taken through one port (0: no cap).
	MaxLeasesPerPort int
	// MaxDeclinesPerPort caps the addresses one port can have in decline
	// probation at once (0: no cap). DECLINEs past the cap are dropped
	// ("decline-limit"), so a port that declines every offer cannot
	// empty the pool: the addresses it holds stay counted against
	// MaxLeasesPerPort instead.
	MaxDeclinesPerPort int
	// RatePerPort and RateBurst bound the DHCP packets accepted per port
	// per second (0: no limit).
	RatePerPort float64
	RateBurst   int
	// VerifyClientMAC drops requests (not from relays) whose chaddr is not
	// the frame's source MAC, as DHCP snooping does.
	VerifyClientMAC bool
}

// Request is one DHCP message as it arrived on a phone port.
type Request struct {
	Port     string           // ingress port
	VLAN     uint16           // 802.1Q VLAN ID, 0 if untagged
	SrcMAC   net.HardwareAddr // Ethernet source
	SrcIP    netip.Addr       // IPv4 source
	DstIP    netip.Addr       // IPv4 destination: broadcast, or our address for unicast renewals
	SrcPort  uint16           // UDP source port (68 from clients, 67 from relays)
	Payload  []byte           // the UDP payload: the BOOTP/DHCP message
	Received time.Time
}

// Reply is a message to send back out of the request's port.
type Reply struct {
	Port    string
	VLAN    uint16 // tag the reply with this VLAN ID, 0 for untagged
	DstMAC  net.HardwareAddr
	SrcIP   netip.Addr
	DstIP   netip.Addr
	DstPort uint16 // 68 to clients, 67 to relays
	Payload []byte // the encoded DHCP message
}
