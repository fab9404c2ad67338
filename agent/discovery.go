package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/phoneboot/phoneboot/userspace/cdp"
	"github.com/phoneboot/phoneboot/userspace/control"
	"github.com/phoneboot/phoneboot/userspace/discovery"
	"github.com/phoneboot/phoneboot/userspace/lldp"
	"github.com/phoneboot/phoneboot/userspace/neighbor"
)

// discoveryPorts builds what each port advertises: CDP and LLDP-MED always
// name the same voice VLAN for a port (a phone that hears two can keep
// rebooting), at the port's voice priority.
func discoveryPorts(cfg Config) ([]discovery.PortConfig, error) {
	dc := cfg.Discovery
	deviceID := dc.DeviceID
	if deviceID == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("host name for the CDP device ID: %w", err)
		}
		deviceID = h
	}
	ttl := 3 * time.Duration(dc.Interval) / time.Second
	var chassis net.HardwareAddr
	out := make([]discovery.PortConfig, 0, len(cfg.Ports))
	for _, p := range cfg.Ports {
		ifi, err := net.InterfaceByName(p.Name)
		if err != nil {
			return nil, fmt.Errorf("port %s: %w", p.Name, err)
		}
		if chassis == nil {
			// LLDP's Chassis ID must be the same on every port: the first's MAC.
			chassis = ifi.HardwareAddr
		}
		prio := uint8(5)
		if p.VoicePriority != nil {
			prio = uint8(*p.VoicePriority)
		}
		poe := cfg.Power.Backend != "none" && p.PoEEnabled()
		pc := discovery.PortConfig{Name: p.Name}
		if dc.CDP {
			c := &cdp.PortConfig{
				DeviceID: deviceID, PortID: p.Name, Platform: "phoneboot",
				SoftwareVersion: "phoneboot " + Version,
				NativeVLAN:      p.NativeVLAN, VoiceVLAN: p.VoiceVLAN,
				TTL: uint8(ttl),
			}
			if poe {
				// Until a phone asks for more or less, it is offered what the
				// power manager reserves for an unclassified port.
				c.PoE, c.PowerAvailableMW = true, uint32(cfg.Power.ReserveMW)
			}
			pc.CDP = c
		}
		if dc.LLDP {
			l := &lldp.PortConfig{
				ChassisMAC: chassis, PortName: p.Name, PortDescription: "phone port " + p.Name,
				SystemName: deviceID, SystemDescription: "phoneboot " + Version,
				TTL: uint16(ttl),
			}
			if p.VoiceVLAN != 0 {
				l.Policies = []lldp.NetworkPolicy{{
					Application: lldp.AppVoice, Tagged: true, VLAN: p.VoiceVLAN,
					Priority: prio, DSCP: uint8(dc.VoiceDSCP),
				}}
			}
			if poe {
				l.PoE, l.PowerAvailableMW = true, uint32(cfg.Power.ReserveMW)
			}
			pc.LLDP = l
		}
		out = append(out, pc)
	}
	return out, nil
}

// newDiscovery starts CDP and LLDP on the ports. Phones it hears are
// marked in the data path, for ports with auto voice VLAN.
func (a *Agent) newDiscovery(cfg Config, log *slog.Logger) error {
	ports, err := discoveryPorts(cfg)
	if err != nil {
		return err
	}
	a.neighbors = neighbor.NewTable(nil, 0)
	var phones sync.Map // MACs already marked, so a phone is written once
	var powerRequest func(string, []uint32) uint32
	if a.power != nil {
		powerRequest = a.powerRequest
	}
	svc, err := discovery.New(discovery.Config{
		PowerRequest: powerRequest,
		Ports:        ports,
		Interval:     time.Duration(cfg.Discovery.Interval),
		Neighbors:    a.neighbors,
		OnNeighbor: func(n neighbor.Neighbor) {
			if a.fastpath == nil || !isPhone(n) {
				return
			}
			if _, seen := phones.LoadOrStore(n.MAC.String(), true); seen {
				return
			}
			if err := a.fastpath.VLAN().SetPhoneMAC(n.MAC); err != nil {
				phones.Delete(n.MAC.String())
				log.Warn("phone not marked for auto voice VLAN", "mac", n.MAC, "error", err)
			}
		},
	}, log)
	if err != nil {
		return err
	}
	a.discovery = svc
	a.add("discovery", svc)
	return nil
}

// isPhone tells a phone from other neighbours: it asks for a voice VLAN,
// or names itself as Cisco phones do (SEP and its MAC).
func isPhone(n neighbor.Neighbor) bool {
	return n.VoiceVLANQuery || strings.HasPrefix(n.DeviceID, "SEP")
}

// Neighbors lists the CDP and LLDP neighbours for the control API.
func (a *Agent) Neighbors(context.Context) ([]control.Neighbor, error) {
	if a.neighbors == nil {
		return nil, errors.New("discovery is not enabled (discovery.cdp and discovery.lldp are both false)")
	}
	list := a.neighbors.List()
	out := make([]control.Neighbor, 0, len(list))
	for _, n := range list {
		c := control.Neighbor{
			Port: n.LocalPort, Protocol: string(n.Protocol), MAC: n.MAC.String(),
			DeviceID: printable([]byte(n.DeviceID)), Platform: printable([]byte(n.Platform)), PortID: printable([]byte(n.PortID)),
			SoftwareVersion: printable([]byte(n.SoftwareVersion)), PowerRequestedMW: n.PowerRequestedMW,
			VoiceVLANQuery: n.VoiceVLANQuery, Expires: n.Expires,
		}
		for _, ad := range n.Addresses {
			c.Addresses = append(c.Addresses, ad.String())
		}
		out = append(out, c)
	}
	return out, nil
}

var (
	descDiscoveryFrames = prometheus.NewDesc("phoneboot_discovery_frames_received_total",
		"CDP and LLDP frames received, by protocol and result (ok, bad_checksum: used all the same, not_cdp, malformed).", []string{"protocol", "result"}, nil)
	descDiscoverySent = prometheus.NewDesc("phoneboot_discovery_advertisements_sent_total",
		"CDP and LLDP advertisements sent; scheduled: at start, every interval, on link-up and at stop; immediate: CDP answers to a phone's VoIP VLAN Query or power request.", []string{"kind"}, nil)
	descDiscoverySendErrors = prometheus.NewDesc("phoneboot_discovery_send_errors_total",
		"Advertisements that could not be sent.", nil, nil)
	descNeighbors = prometheus.NewDesc("phoneboot_neighbors",
		"Neighbours currently known, by protocol.", []string{"protocol"}, nil)
)

// discoveryCollector exports the discovery service's counters.
type discoveryCollector struct{ a *Agent }

func (c discoveryCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDiscoveryFrames, descDiscoverySent, descDiscoverySendErrors, descNeighbors} {
		ch <- d
	}
}

func (c discoveryCollector) Collect(ch chan<- prometheus.Metric) {
	svc := c.a.discovery
	if svc == nil {
		return
	}
	st := svc.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(descDiscoveryFrames, st.CDPReceived, "cdp", "ok")
	counter(descDiscoveryFrames, st.CDPBadChecksum, "cdp", "bad_checksum")
	counter(descDiscoveryFrames, st.CDPNotCDP, "cdp", "not_cdp")
	counter(descDiscoveryFrames, st.CDPMalformed, "cdp", "malformed")
	counter(descDiscoveryFrames, st.LLDPReceived, "lldp", "ok")
	counter(descDiscoveryFrames, st.LLDPMalformed, "lldp", "malformed")
	counter(descDiscoverySent, st.Advertisements-st.ImmediateReplies, "scheduled")
	counter(descDiscoverySent, st.ImmediateReplies, "immediate")
	counter(descDiscoverySendErrors, st.SendErrors)
	byProto := map[string]float64{string(neighbor.CDP): 0, string(neighbor.LLDP): 0}
	for _, n := range c.a.neighbors.List() {
		byProto[string(n.Protocol)]++
	}
	for p, v := range byProto {
		ch <- prometheus.MustNewConstMetric(descNeighbors, prometheus.GaugeValue, v, p)
	}
}
