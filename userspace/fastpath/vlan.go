package fastpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
)

// MaxVLAN is the highest usable 802.1Q VLAN ID (4095 is reserved).
const MaxVLAN = 4094

// DefaultVoicePriority is the 802.1p priority voice frames carry unless
// configured otherwise (Cisco's and LLDP-MED's default for voice).
const DefaultVoicePriority = 5

// TaggedVLAN is a VLAN a port carries tagged, and the 802.1p priority the
// appliance gives the frames it sends on it.
type TaggedVLAN struct {
	ID       uint16
	Priority uint8
}

// PortVLANs is one port's VLAN policy. A port that has one drops frames
// tagged with any other VLAN (and all double-tagged frames), strips the tag
// from frames for the appliance's IP services, and tags what the appliance
// sends back (bpf/lib/vlan.h, bpf/tc_phone_egress.c).
type PortVLANs struct {
	// Native is the VLAN untagged frames belong to; 0 when the port's
	// untagged traffic is in no VLAN the appliance serves. A phone that
	// tags with it is accepted too.
	Native uint16
	// Tagged lists the VLANs the port carries tagged: a phone port's voice
	// VLAN, or every voice VLAN of a trunk.
	Tagged []TaggedVLAN
	// AutoVoice, when not 0, puts untagged frames from known phones
	// (SetPhoneMAC, SetPhoneOUIs) into this VLAN, which must be in Tagged.
	AutoVoice uint16
}

// Validate checks IDs, priorities and AutoVoice.
func (p PortVLANs) Validate() error {
	if p.Native > MaxVLAN {
		return fmt.Errorf("native VLAN %d is not 0-%d", p.Native, MaxVLAN)
	}
	seen := map[uint16]bool{}
	for _, v := range p.Tagged {
		if v.ID < 1 || v.ID > MaxVLAN {
			return fmt.Errorf("tagged VLAN %d is not 1-%d", v.ID, MaxVLAN)
		}
		if v.Priority > 7 {
			return fmt.Errorf("VLAN %d: priority %d is not 0-7", v.ID, v.Priority)
		}
		if seen[v.ID] || v.ID == p.Native {
			return fmt.Errorf("VLAN %d is listed twice", v.ID)
		}
		seen[v.ID] = true
	}
	if p.AutoVoice != 0 && !seen[p.AutoVoice] {
		return fmt.Errorf("auto voice VLAN %d is not one of the port's tagged VLANs", p.AutoVoice)
	}
	return nil
}

// StationMode is how a station sends, learned from its frames.
type StationMode string

// Station modes.
const (
	StationUntagged StationMode = "untagged"
	StationTagged   StationMode = "tagged"
	// StationPriority is a phone put into the voice VLAN by auto voice: it
	// sends untagged and gets priority-tagged (VID 0) frames.
	StationPriority StationMode = "priority-tagged"
)

// Station is one learned entry: a MAC address seen on a port, in a VLAN.
type Station struct {
	Ifindex int              `json:"ifindex"`
	MAC     net.HardwareAddr `json:"mac"`
	VLAN    uint16           `json:"vlan"`
	Mode    StationMode      `json:"mode"`
}

// VLANTables is the VLAN policy in the program's maps.
type VLANTables struct {
	o *Objects
}

// VLAN returns the VLAN tables of the loaded program.
func (o *Objects) VLAN() *VLANTables { return &VLANTables{o: o} }

// SetPort writes a port's policy, replacing what it had (pinned maps keep
// an earlier run's members, so the stale ones are removed).
func (t *VLANTables) SetPort(ifindex int, p PortVLANs) error {
	if err := p.Validate(); err != nil {
		return err
	}
	want := map[phonePortPbVlanMemberKey]phonePortPbVlanMember{}
	if p.Native != 0 {
		want[memberKey(ifindex, p.Native)] = phonePortPbVlanMember{Untagged: 1}
	}
	for _, v := range p.Tagged {
		want[memberKey(ifindex, v.ID)] = phonePortPbVlanMember{Pcp: v.Priority}
	}
	if err := t.deleteMembers(ifindex, want); err != nil {
		return err
	}
	for k, v := range want {
		if err := t.o.objs.PbVlanMembers.Put(k, v); err != nil {
			return fmt.Errorf("write VLAN %d of ifindex %d: %w", k.Vlan, ifindex, err)
		}
	}
	// The port entry last: it turns the policy on, with its members in place.
	port := phonePortPbVlanPort{AutoVoiceVlan: p.AutoVoice}
	if err := t.o.objs.PbVlanPorts.Put(uint32(ifindex), port); err != nil {
		return fmt.Errorf("write VLAN policy of ifindex %d: %w", ifindex, err)
	}
	return nil
}

// DeletePort removes a port's policy: its frames pass as they come again.
func (t *VLANTables) DeletePort(ifindex int) error {
	if err := t.o.objs.PbVlanPorts.Delete(uint32(ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete VLAN policy of ifindex %d: %w", ifindex, err)
	}
	return t.deleteMembers(ifindex, nil)
}

func memberKey(ifindex int, vlan uint16) phonePortPbVlanMemberKey {
	return phonePortPbVlanMemberKey{Ifindex: uint32(ifindex), Vlan: vlan}
}

// deleteMembers removes the port's members that are not in keep.
func (t *VLANTables) deleteMembers(ifindex int, keep map[phonePortPbVlanMemberKey]phonePortPbVlanMember) error {
	var k phonePortPbVlanMemberKey
	var v phonePortPbVlanMember
	var stale []phonePortPbVlanMemberKey
	it := t.o.objs.PbVlanMembers.Iterate()
	for it.Next(&k, &v) {
		if k.Ifindex != uint32(ifindex) {
			continue
		}
		if _, ok := keep[k]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read VLAN members: %w", err)
	}
	for _, k := range stale {
		if err := t.o.objs.PbVlanMembers.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete VLAN %d of ifindex %d: %w", k.Vlan, ifindex, err)
		}
	}
	return nil
}

// SetSubnets replaces the voice subnets: frames to an address in one of
// them, for a station not learned yet, are tagged with its VLAN.
func (t *VLANTables) SetSubnets(subnets map[netip.Prefix]uint16) error {
	want := map[phonePortPbVlanSubnetKey]uint16{}
	for p, vlan := range subnets {
		if !p.Addr().Is4() {
			return fmt.Errorf("voice subnet %s: only IPv4 is tagged by subnet", p)
		}
		if vlan < 1 || vlan > MaxVLAN {
			return fmt.Errorf("voice subnet %s: VLAN %d is not 1-%d", p, vlan, MaxVLAN)
		}
		want[subnetKey(p.Masked())] = vlan
	}
	var k phonePortPbVlanSubnetKey
	var v phonePortPbVlanSubnet
	var stale []phonePortPbVlanSubnetKey
	it := t.o.objs.PbVlanSubnets.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[k]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read voice subnets: %w", err)
	}
	for _, k := range stale {
		if err := t.o.objs.PbVlanSubnets.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete voice subnet: %w", err)
		}
	}
	for k, vlan := range want {
		if err := t.o.objs.PbVlanSubnets.Put(k, phonePortPbVlanSubnet{Vlan: vlan}); err != nil {
			return fmt.Errorf("write voice subnet of VLAN %d: %w", vlan, err)
		}
	}
	return nil
}

func subnetKey(p netip.Prefix) phonePortPbVlanSubnetKey {
	a := p.Addr().As4()
	// The C key holds the address in network order.
	return phonePortPbVlanSubnetKey{Prefixlen: uint32(p.Bits()), Addr: binary.NativeEndian.Uint32(a[:])}
}

// SetPhoneMAC marks a MAC address as a phone's (learned by CDP or LLDP),
// for auto voice VLAN.
func (t *VLANTables) SetPhoneMAC(mac net.HardwareAddr) error {
	k, err := phoneMACKey(mac)
	if err != nil {
		return err
	}
	if err := t.o.objs.PbPhoneMacs.Put(k, uint8(1)); err != nil {
		return fmt.Errorf("write phone MAC %s: %w", mac, err)
	}
	return nil
}

// DeletePhoneMAC forgets a phone's MAC address.
func (t *VLANTables) DeletePhoneMAC(mac net.HardwareAddr) error {
	k, err := phoneMACKey(mac)
	if err != nil {
		return err
	}
	if err := t.o.objs.PbPhoneMacs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete phone MAC %s: %w", mac, err)
	}
	return nil
}

func phoneMACKey(mac net.HardwareAddr) (phonePortPbPhoneMacKey, error) {
	var k phonePortPbPhoneMacKey
	if len(mac) != 6 {
		return k, fmt.Errorf("MAC %s is not 6 bytes", mac)
	}
	copy(k.Mac[:], mac)
	return k, nil
}

// SetPhoneOUIs replaces the OUIs (first three MAC bytes) whose stations are
// taken for phones by auto voice VLAN.
func (t *VLANTables) SetPhoneOUIs(ouis [][3]byte) error {
	want := map[uint32]bool{}
	for _, o := range ouis {
		want[uint32(o[0])<<16|uint32(o[1])<<8|uint32(o[2])] = true
	}
	var k uint32
	var v uint8
	var stale []uint32
	it := t.o.objs.PbPhoneOuis.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read phone OUIs: %w", err)
	}
	for _, k := range stale {
		if err := t.o.objs.PbPhoneOuis.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete phone OUI: %w", err)
		}
	}
	for k := range want {
		if err := t.o.objs.PbPhoneOuis.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("write phone OUI %06x: %w", k, err)
		}
	}
	return nil
}

// Stations lists the learned stations.
func (t *VLANTables) Stations() ([]Station, error) {
	var k phonePortPbVlanStationKey
	var v phonePortPbVlanStation
	var out []Station
	it := t.o.objs.PbVlanStations.Iterate()
	for it.Next(&k, &v) {
		s := Station{Ifindex: int(k.Ifindex), MAC: append(net.HardwareAddr(nil), k.Mac[:]...), VLAN: v.Vlan}
		switch phonePortPbVlanStationMode(v.Mode) {
		case phonePortPbVlanStationModePB_STATION_UNTAGGED:
			s.Mode = StationUntagged
		case phonePortPbVlanStationModePB_STATION_TAGGED:
			s.Mode = StationTagged
		case phonePortPbVlanStationModePB_STATION_PRIORITY:
			s.Mode = StationPriority
		default:
			s.Mode = StationMode(fmt.Sprintf("mode %d", v.Mode))
		}
		out = append(out, s)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read stations: %w", err)
	}
	return out, nil
}

// VLAN returns the VLAN tables of the attached program.
func (f *FastPath) VLAN() *VLANTables { return f.objs.VLAN() }
