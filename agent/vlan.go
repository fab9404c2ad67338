package agent

import (
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/phoneboot/phoneboot/userspace/fastpath"
	"github.com/phoneboot/phoneboot/userspace/offload"
)

// vlanOffloadOff turns a port's VLAN offload off, so XDP sees the tags in
// the frames; the policy cannot work with it on.
func vlanOffloadOff(port string, log *slog.Logger) error {
	rx, tx, err := offload.VLAN(port)
	if err != nil {
		return err
	}
	if !rx && !tx {
		return nil
	}
	if err := offload.SetVLAN(port, false); err != nil {
		return fmt.Errorf("the port has VLANs, so XDP must see tags: %w", err)
	}
	log.Info("VLAN offload turned off, so XDP sees the tags", "port", port, "rxvlanWas", rx, "txvlanWas", tx)
	return nil
}

// applyVLANs writes the ports' VLAN policy into the data path, replacing
// whatever pinned maps kept from an earlier run: ports without VLANs get
// none, the voice subnets come from the DHCP pools, and the phone OUIs
// from the vlan section.
func applyVLANs(cfg Config, fp *fastpath.FastPath, log *slog.Logger) error {
	vt := fp.VLAN()
	ifindex := map[string]int{}
	for _, a := range fp.Attachments() {
		ifindex[a.Port] = a.Ifindex
	}
	for _, p := range cfg.Ports {
		idx, ok := ifindex[p.Name]
		if !ok {
			return fmt.Errorf("port %s is not attached", p.Name)
		}
		v, ok := p.VLANs()
		var err error
		if ok {
			err = vlanOffloadOff(p.Name, log)
			if err == nil {
				err = vt.SetPort(idx, v)
			}
		} else {
			err = vt.DeletePort(idx)
		}
		if err != nil {
			return fmt.Errorf("port %s: %w", p.Name, err)
		}
	}
	subnets := map[netip.Prefix]uint16{}
	if cfg.DHCP.Enabled {
		for _, pool := range cfg.DHCP.Pools {
			if pool.VLAN != 0 {
				subnets[pool.Subnet.Masked()] = pool.VLAN
			}
		}
	}
	if err := vt.SetSubnets(subnets); err != nil {
		return err
	}
	ouis := make([][3]byte, 0, len(cfg.VLAN.PhoneOUIs))
	for _, s := range cfg.VLAN.PhoneOUIs {
		o, err := ParseOUI(s) // validated with the config
		if err != nil {
			return err
		}
		ouis = append(ouis, o)
	}
	return vt.SetPhoneOUIs(ouis)
}
