package agent

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/phoneboot/phoneboot/userspace/dhcp"
)

// DHCPConfig is the dhcp section: the server and its pools.
type DHCPConfig struct {
	Enabled bool `yaml:"enabled"`
	// LeaseDB is the bbolt lease database. Empty keeps leases in memory
	// only (lost on restart): for throwaway setups such as the lab.
	LeaseDB          string   `yaml:"lease_db"`
	OfferTimeout     Duration `yaml:"offer_timeout"`
	DeclineProbation Duration `yaml:"decline_probation"`
	MaxLeasesPerPort int      `yaml:"max_leases_per_port"`
	RatePerPort      float64  `yaml:"rate_per_port"`
	RateBurst        int      `yaml:"rate_burst"`
	VerifyClientMAC  bool     `yaml:"verify_client_mac"`
	// MaxRequestAge: requests that waited longer in the socket are shed
	// unanswered (dhcp.ServerConfig.MaxRequestAge).
	MaxRequestAge Duration         `yaml:"max_request_age"`
	Pools         []DHCPPoolConfig `yaml:"pools"`
}

// DHCPPoolConfig is one pool (one voice VLAN).
type DHCPPoolConfig struct {
	Name           string            `yaml:"name"`
	VLAN           uint16            `yaml:"vlan"`
	Subnet         netip.Prefix      `yaml:"subnet"`
	RangeStart     netip.Addr        `yaml:"range_start"`
	RangeEnd       netip.Addr        `yaml:"range_end"`
	ServerIP       netip.Addr        `yaml:"server_ip"`
	Routers        []netip.Addr      `yaml:"routers"`
	DNS            []netip.Addr      `yaml:"dns"`
	Domain         string            `yaml:"domain"`
	NTP            []netip.Addr      `yaml:"ntp"`
	TFTPServers    []netip.Addr      `yaml:"tftp_servers"`
	TFTPServerName string            `yaml:"tftp_server_name"`
	VendorInfo     HexBytes          `yaml:"vendor_info"`
	LeaseTime      Duration          `yaml:"lease_time"`
	T1             Duration          `yaml:"t1"`
	T2             Duration          `yaml:"t2"`
	Classes        []DHCPClassConfig `yaml:"classes"`
	Reservations   []DHCPReservation `yaml:"reservations"`
}

// DHCPClassConfig overrides provisioning options by option 60.
type DHCPClassConfig struct {
	Name              string       `yaml:"name"`
	VendorClass       string       `yaml:"vendor_class"`
	VendorClassPrefix string       `yaml:"vendor_class_prefix"`
	TFTPServers       []netip.Addr `yaml:"tftp_servers"`
	TFTPServerName    string       `yaml:"tftp_server_name"`
	VendorInfo        HexBytes     `yaml:"vendor_info"`
}

// DHCPReservation is a fixed address for a MAC.
type DHCPReservation struct {
	MAC MAC        `yaml:"mac"`
	IP  netip.Addr `yaml:"ip"`
}

// MAC is a hardware address written as 00:1e:7a:12:34:56 (or with dashes).
type MAC net.HardwareAddr

// UnmarshalYAML parses a MAC address.
func (m *MAC) UnmarshalYAML(n *yaml.Node) error {
	hw, err := net.ParseMAC(n.Value)
	if err != nil || len(hw) != 6 {
		return fmt.Errorf("%q is not a MAC address such as 00:1e:7a:12:34:56", n.Value)
	}
	*m = MAC(hw)
	return nil
}

// MarshalYAML writes the MAC back.
func (m MAC) MarshalYAML() (any, error) { return net.HardwareAddr(m).String(), nil }

// HexBytes is raw option data written in hex ("01:04:c0:a8:00:01" or "0104c0a80001").
type HexBytes []byte

// UnmarshalYAML parses hex, with or without colons.
func (h *HexBytes) UnmarshalYAML(n *yaml.Node) error {
	b, err := hex.DecodeString(strings.ReplaceAll(n.Value, ":", ""))
	if err != nil {
		return fmt.Errorf("%q is not hex bytes such as 01:04:0a:00:00:01", n.Value)
	}
	*h = b
	return nil
}

// MarshalYAML writes the bytes back as hex.
func (h HexBytes) MarshalYAML() (any, error) { return hex.EncodeToString(h), nil }

// DefaultLeaseTime is a pool's lease time when the config gives none.
const DefaultLeaseTime = Duration(24 * time.Hour)

func defaultDHCPConfig() DHCPConfig {
	return DHCPConfig{
		LeaseDB:          "/var/lib/phoneboot/leases.db",
		OfferTimeout:     Duration(60 * time.Second),
		DeclineProbation: Duration(10 * time.Minute),
		VerifyClientMAC:  true,
		MaxRequestAge:    Duration(dhcp.DefaultMaxRequestAge),
	}
}

// ServerConfig converts the section into the server's configuration; the
// server validates pools itself, and its errors name pools by name.
func (c DHCPConfig) ServerConfig() dhcp.Config {
	out := dhcp.Config{
		OfferTimeout:     time.Duration(c.OfferTimeout),
		DeclineProbation: time.Duration(c.DeclineProbation),
		MaxLeasesPerPort: c.MaxLeasesPerPort,
		RatePerPort:      c.RatePerPort,
		RateBurst:        c.RateBurst,
		VerifyClientMAC:  c.VerifyClientMAC,
	}
	for _, p := range c.Pools {
		if p.LeaseTime == 0 {
			p.LeaseTime = DefaultLeaseTime
		}
		pc := dhcp.PoolConfig{
			Name: p.Name, VLAN: p.VLAN, Subnet: p.Subnet,
			RangeStart: p.RangeStart, RangeEnd: p.RangeEnd, ServerIP: p.ServerIP,
			Routers: p.Routers, DNS: p.DNS, Domain: p.Domain, NTP: p.NTP,
			TFTPServers: p.TFTPServers, TFTPServerName: p.TFTPServerName, VendorInfo: p.VendorInfo,
			LeaseTime: time.Duration(p.LeaseTime), T1: time.Duration(p.T1), T2: time.Duration(p.T2),
		}
		for _, cl := range p.Classes {
			pc.Classes = append(pc.Classes, dhcp.ClassConfig{
				Name: cl.Name, VendorClass: cl.VendorClass, VendorClassPrefix: cl.VendorClassPrefix,
				TFTPServers: cl.TFTPServers, TFTPServerName: cl.TFTPServerName, VendorInfo: cl.VendorInfo,
			})
		}
		for _, r := range p.Reservations {
			pc.Reservations = append(pc.Reservations, dhcp.ReservationConfig{MAC: net.HardwareAddr(r.MAC), IP: r.IP})
		}
		out.Pools = append(out.Pools, pc)
	}
	return out
}

func (c *DHCPConfig) validate(bad func(key, format string, args ...any) error) error {
	if !c.Enabled {
		return nil
	}
	if len(c.Pools) == 0 {
		return bad("dhcp.pools", "dhcp is enabled but has no pools")
	}
	if c.OfferTimeout <= 0 {
		return bad("dhcp.offer_timeout", "must be positive")
	}
	if c.DeclineProbation < 0 {
		return bad("dhcp.decline_probation", "must not be negative")
	}
	if c.MaxRequestAge <= 0 {
		return bad("dhcp.max_request_age", "must be positive")
	}
	if c.MaxLeasesPerPort < 0 || c.RateBurst < 0 || c.RatePerPort < 0 {
		return bad("dhcp", "max_leases_per_port, rate_per_port and rate_burst must not be negative")
	}
	if c.RatePerPort > 0 && c.RateBurst < 1 {
		return bad("dhcp.rate_burst", "must be at least 1 when rate_per_port is set")
	}
	for i, p := range c.Pools {
		key := fmt.Sprintf("dhcp.pools[%d]", i)
		if p.Name == "" {
			return bad(key+".name", "a pool needs a name")
		}
		if p.VLAN > 4094 {
			return bad(key+".vlan", "%d is not a VLAN ID 0-4094", p.VLAN)
		}
		if p.LeaseTime < 0 {
			return bad(key+".lease_time", "must not be negative")
		}
	}
	// Everything else about pools (subnets, ranges, classes) is checked by
	// the server itself when the daemon starts, naming the pool.
	return nil
}
