package vnet

import "github.com/phoneboot/phoneboot/userspace/offload"

// SetVLANOffload turns receive and transmit VLAN offload of a link in the
// namespace on or off (ethtool -K DEV rxvlan off txvlan off). With it on, a
// veth carries tags beside the frame instead of in it, so XDP never sees
// them and a peer's XDP program misses the tag it must act on.
func (n *NS) SetVLANOffload(link string, on bool) error {
	return n.Do(func() error { return offload.SetVLAN(link, on) })
}
