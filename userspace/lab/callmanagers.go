package lab

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/phoneboot/phoneboot/agent"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// The lab's CallManagers: three simulators (userspace/cmsim) in a
// namespace of their own behind a veth pair from the appliance namespace,
// on 10.250.0.11-13, as a CUCM cluster behind the appliance's uplink. The
// agent's registration proxy is their only client: the phones' files name
// the proxy, at the appliance's address in their subnet.

var (
	callManagerNet = netip.MustParsePrefix("10.250.0.0/24")
	// applianceUplink is the appliance's address toward the CallManagers.
	applianceUplink  = netip.MustParseAddr("10.250.0.1")
	callManagerAddrs = []netip.Addr{
		netip.MustParseAddr("10.250.0.11"),
		netip.MustParseAddr("10.250.0.12"),
		netip.MustParseAddr("10.250.0.13"),
	}
)

const (
	uplinkName = "uplink" // the appliance's end of the veth to the CallManagers
	cmLink     = "eth0"   // the CallManagers' end
	cmPort     = 2000     // SCCP
	// cmKeepAlive is the keepalive interval the CallManagers give phones
	// in RegisterAck: CUCM's default. It is the CallManager's setting, a
	// protocol timer, so --time-scale does not touch it.
	cmKeepAlive = 30 * time.Second
)

// startCallManagers makes the CallManagers' namespace and link and starts
// the three simulators (in a process of their own, cmproc.go); they serve
// until cleanup.
func (l *lab) startCallManagers() error {
	var err error
	if l.cmNS, err = vnet.Create("pb" + l.id + "c"); err != nil {
		return err
	}
	if err := l.cmNS.Do(func() error { return writeNetSysctls(noIPv6) }); err != nil {
		return fmt.Errorf("CallManagers' namespace: %w", err)
	}
	if err := vnet.Veth(l.appNS, uplinkName, l.cmNS, cmLink); err != nil {
		return err
	}
	addrs := map[*vnet.NS][]netip.Addr{l.appNS: {applianceUplink}, l.cmNS: callManagerAddrs}
	for ns, link := range map[*vnet.NS]string{l.appNS: uplinkName, l.cmNS: cmLink} {
		h := ns.Netlink()
		lk, err := h.LinkByName(link)
		if err != nil {
			return fmt.Errorf("CallManagers' link: %w", err)
		}
		for _, a := range addrs[ns] {
			if err := h.AddrAdd(lk, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(callManagerNet.Bits(), 32)}}); err != nil {
				return fmt.Errorf("CallManager address %s: %w", a, err)
			}
		}
		if err := h.LinkSetUp(lk); err != nil {
			return fmt.Errorf("CallManagers' link: %w", err)
		}
	}
	keepAlive := l.o.cmKeepAlive
	if keepAlive == 0 {
		keepAlive = cmKeepAlive
	}
	var listen []string
	for _, a := range callManagerAddrs {
		listen = append(listen, netip.AddrPortFrom(a, cmPort).String())
	}
	logf, err := os.Create(filepath.Join(l.runDir, "callmanagers.log"))
	if err != nil {
		return err
	}
	defer logf.Close() // the process has its own copy
	// Started from a thread of its own that stays until cleanup: the
	// kernel sends the simulators' parent-death signal when the thread
	// that started them ends, and a pooled thread may end whenever a
	// goroutine that locked it returns without unlocking (as the lab's
	// namespace threads do).
	if l.cmThread, err = l.cmNS.StartThread(); err != nil {
		return err
	}
	l.cmProc, l.cms, err = startCMProcess(l.o.AgentCommand[0], l.cmThread.Do, l.runDir, listen, keepAlive, logf, l.o.Log)
	return err
}

// proxyConfig turns the agent's registration proxy on, in front of the
// lab's CallManagers (highest priority first), with its default
// listeners on every address: the phones' files name it at the
// appliance's address in their subnet.
func (l *lab) proxyConfig(cfg *agent.Config) {
	cfg.Proxy.Enabled = true
	cfg.Proxy.Workers = max(l.o.ProxyWorkers, 1)
	cfg.Proxy.CallManagers = nil
	for i, a := range callManagerAddrs {
		cfg.Proxy.CallManagers = append(cfg.Proxy.CallManagers, agent.ProxyCallManager{Name: fmt.Sprintf("cm%d", i+1), Host: a.String()})
	}
}
