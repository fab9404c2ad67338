package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// A phone's IP identity. After DHCP each simulated phone has an interface
// of its own in its port's namespace: a macvlan on the port's phone-side
// link with the phone's MAC and its leased address, so that it speaks UDP
// and TCP through the kernel like a real phone. The macvlans are made when
// the lab is built (down: the phone's NIC exists before it is powered) and
// brought up with the address when the phone has its lease; there are no
// namespaces per phone. The phone tagger on the port's link (XDP and TC)
// tags and untags macvlan traffic as it does the raw socket's, by source
// MAC.
//
// Neighbour entries are installed, not learned over ARP: the kernel's ARP
// table is one for all namespaces, and its garbage-collection limit
// (net.ipv4.neigh.default.gc_thresh3, 1024 on a stock kernel) counts every
// dynamic entry of every namespace on the host. A storm of 1,000 phones
// would need 2,000 (the phone's entry for the appliance, the appliance's
// for the phone), and the kernel refuses new ones past the limit
// ("neighbor table overflow"); permanent entries are not counted. So when
// a phone comes up, the lab gives it a permanent entry for the appliance's
// address in its subnet and the appliance one for the phone, as a switch
// that learns ARP from DHCP snooping would. arp_ignore=1 and arp_announce=2
// still keep ARP right if anything asks: only the owner of an address
// answers for it, from that address.

// phoneIndexBase is the first interface index of the phones' macvlans in
// a port's namespace (the lab picks them so that one batch can create a
// macvlan and address it without a lookup in between).
const phoneIndexBase = 1000

// writeNetSysctls writes net sysctls (paths under /proc/sys/net) in the
// calling thread's namespace.
func writeNetSysctls(kv map[string]string) error {
	for k, v := range kv {
		if err := os.WriteFile(filepath.Join("/proc/sys/net", k), []byte(v), 0o644); err != nil {
			return fmt.Errorf("sysctl net/%s: %w", k, err)
		}
	}
	return nil
}

// bridgeWithoutNetfilter keeps the calling thread's namespace's bridges
// from passing the frames they forward through iptables, arptables and
// ip6tables, as br_netfilter does in every namespace while the module is
// loaded (a host running containers loads it; its sysctls are then 1 in
// every new namespace). A switch forwards without a firewall: in a storm of
// 3,000 phones the hooks took 8 % of the machine's CPU, on empty tables.
// Without the module there is nothing to turn off.
func bridgeWithoutNetfilter() error {
	if _, err := os.Stat("/proc/sys/net/bridge"); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return writeNetSysctls(map[string]string{
		"bridge/bridge-nf-call-iptables": "0", "bridge/bridge-nf-call-ip6tables": "0", "bridge/bridge-nf-call-arptables": "0",
	})
}

// The lab is IPv4, as phones boot: no IPv6 addresses, router
// solicitations or MLD reports from thousands of interfaces.
var noIPv6 = map[string]string{"ipv6/conf/all/disable_ipv6": "1", "ipv6/conf/default/disable_ipv6": "1"}

// portSysctls are a port namespace's: many phones' interfaces on one
// link, each answering ARP only for its own address.
var portSysctls = map[string]string{
	"ipv4/conf/all/arp_ignore": "1", "ipv4/conf/default/arp_ignore": "1",
	"ipv4/conf/all/arp_announce": "2", "ipv4/conf/default/arp_announce": "2",
	"ipv6/conf/all/disable_ipv6": "1", "ipv6/conf/default/disable_ipv6": "1",
}

// createPhoneNICs makes the macvlans of the phones on port p, down.
func createPhoneNICs(p *Port, phones []*Phone) error {
	link, err := p.NS.Netlink().LinkByName(p.Link)
	if err != nil {
		return fmt.Errorf("port %s: %w", p.Name, err)
	}
	var msgs [][]byte
	flush := func() error {
		if err := p.rt.do(msgs...); err != nil {
			return fmt.Errorf("port %s: phone interfaces: %w", p.Name, err)
		}
		msgs = msgs[:0]
		return nil
	}
	for _, ph := range phones {
		msgs = append(msgs, macvlanRequest(ph.nicName(), ph.nicIndex, link.Attrs().Index, ph.MAC))
		if len(msgs) == rtnlBatchMsgs {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

func (ph *Phone) nicName() string { return fmt.Sprintf("ph%d", ph.nicIndex-phoneIndexBase) }

// applianceSide is what a phone's interface needs from the appliance: the
// appliance's address in each subnet and its MAC, and a way to install
// the appliance's neighbour entry for the phone.
type applianceSide struct {
	mac    net.HardwareAddr
	index  int   // the bridge's, in the appliance namespace
	rt     *rtnl // the appliance namespace's
	server func(netip.Prefix) netip.Addr
}

// bringUpNIC gives the phone its address (from DHCP) on its interface and
// brings it up, with neighbour entries both ways.
func (ph *Phone) bringUpNIC(app *applianceSide) error {
	server := app.server(ph.Subnet)
	if !server.IsValid() {
		return fmt.Errorf("no appliance address in %s", ph.Subnet)
	}
	if err := ph.Port.rt.do(
		addrRequest(ph.nicIndex, netip.PrefixFrom(ph.IP, ph.Subnet.Bits())),
		neighRequest(ph.nicIndex, server, app.mac),
		linkUpRequest(ph.nicIndex),
	); err != nil {
		return fmt.Errorf("bring up %s (%s) with %s: %w", ph.nicName(), ph.MAC, ph.IP, err)
	}
	ph.nicAddr = netip.PrefixFrom(ph.IP, ph.Subnet.Bits())
	if err := app.rt.do(neighRequest(app.index, ph.IP, ph.MAC)); err != nil {
		return fmt.Errorf("the appliance's neighbour entry for %s: %w", ph.IP, err)
	}
	return nil
}

// listenUDP opens a UDP socket of the phone: in its port's namespace,
// bound to its interface and laddr. It has the signature of
// net.ListenUDP, for tftp.FetchOptions.Listen.
func (ph *Phone) listenUDP(network string, laddr *net.UDPAddr) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := ph.Port.thread.Do(func() error {
		lc := net.ListenConfig{Control: ph.bindToNIC}
		pc, err := lc.ListenPacket(context.Background(), network, laddr.String())
		if err != nil {
			return err
		}
		c = pc.(*net.UDPConn)
		return nil
	})
	return c, err
}

// bindToNIC binds a socket to the phone's interface: its packets leave
// through it, and replies are only taken from it.
func (ph *Phone) bindToNIC(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BINDTOIFINDEX, ph.nicIndex)
	}); err != nil {
		return err
	}
	return serr
}
