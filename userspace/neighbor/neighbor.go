// Package neighbor holds what phoneboot has heard from the devices on its
// ports over CDP and LLDP: one Neighbor type that both decoders produce,
// and a Table that forgets a neighbour when its advertised TTL runs out.
// Provisioning and the PoE manager read the table; `phoneboot neighbors`
// lists it.
package neighbor

import (
	"bytes"
	"cmp"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Protocol is the discovery protocol a neighbour was heard on.
type Protocol string

const (
	CDP  Protocol = "cdp"
	LLDP Protocol = "lldp"
)

// Neighbor is one device as its last advertisement described it. Fields
// the advertisement did not carry are zero.
type Neighbor struct {
	Protocol Protocol `json:"protocol"`
	// LocalPort is our port the advertisement arrived on.
	LocalPort string `json:"local_port"`
	// MAC is the advertisement's Ethernet source address.
	MAC net.HardwareAddr `json:"mac"`
	// DeviceID names the device: CDP's Device ID (SEP<MAC> on Cisco
	// phones), LLDP's System Name, or failing that its Chassis ID.
	DeviceID string `json:"device_id"`
	// Platform is the model: CDP's Platform ("Cisco IP Phone 7960"),
	// LLDP-MED's Model Name, or failing that LLDP's System Description.
	Platform string `json:"platform,omitempty"`
	// PortID is the device's own name for the port it sent from.
	PortID string `json:"port_id,omitempty"`
	// Addresses are the IPv4 and IPv6 addresses it announced.
	Addresses []netip.Addr `json:"addresses,omitempty"`
	// SoftwareVersion: CDP's Software Version or LLDP-MED's Software
	// Revision.
	SoftwareVersion string `json:"software_version,omitempty"`
	// PowerRequestedMW is the power the device asks its PSE for, in mW:
	// CDP's Power Requested (the first, preferred level) or the LLDP-MED
	// Extended Power-via-MDI of a powered device. 0: none asked.
	PowerRequestedMW uint32 `json:"power_requested_mw,omitempty"`
	// VoiceVLANQuery is set when a CDP advertisement carried the VoIP VLAN
	// Query TLV: the device is a phone waiting to be told its voice VLAN.
	VoiceVLANQuery bool `json:"voice_vlan_query,omitempty"`
	// TTL is how long the advertisement is valid; 0 withdraws the
	// neighbour (a device sends it when its interface goes down).
	TTL time.Duration `json:"ttl"`
	// Expires is when the table forgets the neighbour (set by Update).
	Expires time.Time `json:"expires"`
}

// Table is the set of current neighbours, safe for concurrent use. An
// entry is keyed by local port, protocol and MAC, so a phone that speaks
// both CDP and LLDP has two entries, and expires TTL after its last
// advertisement.
type Table struct {
	mu         sync.Mutex
	now        func() time.Time
	maxPerPort int
	entries    map[key]Neighbor
}

type key struct {
	port  string
	proto Protocol
	mac   string // string(net.HardwareAddr)
}

// DefaultMaxPerPort bounds the entries of one port. A phone port has a
// phone and perhaps the PC behind it; more than this is someone flooding
// advertisements with made-up source MACs, and must not grow the table.
const DefaultMaxPerPort = 8

// NewTable makes an empty table. now is the clock (nil: time.Now);
// maxPerPort bounds the entries of one port (0: DefaultMaxPerPort): when a
// new neighbour would exceed it, the entry that would expire first goes.
func NewTable(now func() time.Time, maxPerPort int) *Table {
	if now == nil {
		now = time.Now
	}
	if maxPerPort <= 0 {
		maxPerPort = DefaultMaxPerPort
	}
	return &Table{now: now, maxPerPort: maxPerPort, entries: make(map[key]Neighbor)}
}

// Update records an advertisement, replacing the neighbour's previous one,
// and sets its Expires. A TTL of 0 removes the neighbour.
func (t *Table) Update(n Neighbor) {
	k := key{port: n.LocalPort, proto: n.Protocol, mac: string(n.MAC)}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if n.TTL <= 0 {
		delete(t.entries, k)
		return
	}
	n.Expires = now.Add(n.TTL)
	// The table keeps its own copies: the caller's slices may be reused.
	n.MAC = slices.Clone(n.MAC)
	n.Addresses = slices.Clone(n.Addresses)
	if _, ok := t.entries[k]; !ok {
		t.makeRoom(n.LocalPort, now)
	}
	t.entries[k] = n
}

// makeRoom drops expired entries of port and, if it is still full, the one
// that expires first.
func (t *Table) makeRoom(port string, now time.Time) {
	var (
		count    int
		first    key
		firstExp time.Time
	)
	for k, e := range t.entries {
		if k.port != port {
			continue
		}
		if !e.Expires.After(now) {
			delete(t.entries, k)
			continue
		}
		if count == 0 || e.Expires.Before(firstExp) {
			first, firstExp = k, e.Expires
		}
		count++
	}
	if count >= t.maxPerPort {
		delete(t.entries, first)
	}
}

// List returns the neighbours that have not expired, ordered by local port,
// protocol and MAC. Expired entries are dropped. The neighbours' slices are
// shared with the table: read them, do not modify them.
func (t *Table) List() []Neighbor {
	return t.collect(func(Neighbor) bool { return true })
}

// Port returns the unexpired neighbours heard on one local port, ordered by
// protocol and MAC.
func (t *Table) Port(port string) []Neighbor {
	return t.collect(func(n Neighbor) bool { return n.LocalPort == port })
}

func (t *Table) collect(keep func(Neighbor) bool) []Neighbor {
	t.mu.Lock()
	now := t.now()
	var out []Neighbor
	for k, e := range t.entries {
		if !e.Expires.After(now) {
			delete(t.entries, k)
			continue
		}
		if keep(e) {
			out = append(out, e)
		}
	}
	t.mu.Unlock()
	slices.SortFunc(out, func(a, b Neighbor) int {
		return cmp.Or(
			cmp.Compare(a.LocalPort, b.LocalPort),
			cmp.Compare(a.Protocol, b.Protocol),
			bytes.Compare(a.MAC, b.MAC),
		)
	})
	return out
}
