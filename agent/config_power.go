package agent

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/phoneboot/phoneboot/userspace/poe"
)

// PowerConfig controls PoE: which controller, the budget, and how ports
// are powered when the daemon starts.
type PowerConfig struct {
	// Backend is the PoE controller: none (no power management), lab (the
	// lab's simulated PSE), netlink (the kernel's PSE framework), pd69200
	// (a Microchip PD69200/PD69208 on I2C) or sysfs (a vendor driver's
	// files).
	Backend string `yaml:"backend"`
	// Policy is how ports are powered at start: all at once, stagger
	// (StaggerPorts ports every StaggerInterval) or adaptive (stagger,
	// holding a step while the services' queues are at their thresholds).
	Policy          string         `yaml:"policy"`
	StaggerPorts    int            `yaml:"stagger_ports"`
	StaggerInterval Duration       `yaml:"stagger_interval"`
	Adaptive        AdaptiveConfig `yaml:"adaptive"`
	// FastPoE powers the ports (all or stagger) as soon as the PoE
	// controller is open, before the daemon loads its data path and
	// binds its services, as switches' fast PoE powers devices before the
	// switch has finished booting: a phone takes 15-30 s to boot, longer
	// than the daemon takes to start, so it loses nothing and gains the
	// daemon's start. Adaptive waits for the services whose load it reads.
	FastPoE bool `yaml:"fast_poe"`
	// BudgetMW is the power all ports may draw together; 0: the
	// controller's own figure, and without one no limit.
	BudgetMW int `yaml:"budget_mw"`
	// Accounting: class (a port counts what its class allocates, or what
	// CDP/LLDP negotiated) or measured (what it draws now).
	Accounting string `yaml:"accounting"`
	// ReserveMW is what a port counts before its class or draw is known.
	ReserveMW    int      `yaml:"reserve_mw"`
	PollInterval Duration `yaml:"poll_interval"`
	CycleOff     Duration `yaml:"cycle_off"`
	// StateFile keeps the operator's changes (phoneboot poe enable,
	// disable, priority) across restarts; empty: they are not kept.
	StateFile string `yaml:"state_file"`
	// DetectDelay is the lab PSE's detection and classification time
	// before it delivers power.
	DetectDelay Duration      `yaml:"detect_delay"`
	PD69200     PD69200Config `yaml:"pd69200"`
	Sysfs       SysfsConfig   `yaml:"sysfs"`
}

// AdaptiveConfig holds a step of the adaptive policy while any signal is
// at or above its threshold (0 ignores the signal).
type AdaptiveConfig struct {
	DHCPBacklog int `yaml:"dhcp_backlog"`
	TFTPActive  int `yaml:"tftp_active"`
	ProxyQueued int `yaml:"proxy_queued"`
	// MaxHold powers a step anyway once the last one is this old, so that
	// a queue that never drains cannot keep ports dark; 0: no bound.
	MaxHold Duration `yaml:"max_hold"`
}

// PD69200Config places the controller on its I2C bus.
type PD69200Config struct {
	Bus     int `yaml:"bus"`     // /dev/i2c-<bus>
	Address int `yaml:"address"` // 7-bit device address
}

// SysfsConfig places a vendor PoE driver's per-port files.
type SysfsConfig struct {
	// Path is the template of an attribute file: {attr} becomes the file
	// name from Files, {port} the port's name, {channel} its channel.
	Path       string         `yaml:"path"`
	Files      poe.SysfsFiles `yaml:"files"`
	BudgetFile string         `yaml:"budget_file"`
}

// PortPowerConfig is how the power manager treats one port.
type PortPowerConfig struct {
	// Enabled: the manager powers the port (default true); false keeps it
	// off until an operator enables it. (poe: false instead leaves the
	// port to something else altogether.)
	Enabled *bool `yaml:"enabled"`
	// Priority: critical, high or low (default low); low ports are refused
	// and shed first when the budget is short.
	Priority string `yaml:"priority"`
	// LimitMW is the controller's per-port limit; 0 leaves it as it is.
	LimitMW int `yaml:"limit_mw"`
	// Channel is the controller's port number (pd69200, sysfs); default:
	// the port's position among the PoE ports, from 0.
	Channel *int `yaml:"channel"`
	// Ifname is the network device the kernel's PSE hangs off (netlink);
	// default: the port's name.
	Ifname string `yaml:"ifname"`
}

func defaultPowerConfig() PowerConfig {
	return PowerConfig{
		Backend:         "none",
		Policy:          "all",
		StaggerPorts:    1,
		StaggerInterval: Duration(2 * time.Second),
		Adaptive:        AdaptiveConfig{DHCPBacklog: 32, TFTPActive: 256, ProxyQueued: 64, MaxHold: Duration(30 * time.Second)},
		FastPoE:         true,
		Accounting:      "class",
		ReserveMW:       poe.ClassPowerMW[0],
		PollInterval:    Duration(2 * time.Second),
		CycleOff:        Duration(2 * time.Second),
		StateFile:       "/var/lib/phoneboot/poe-state.json",
		DetectDelay:     Duration(300 * time.Millisecond),
		PD69200:         PD69200Config{Bus: 1, Address: 0x3c},
		Sysfs:           SysfsConfig{Files: poe.DefaultSysfsFiles()},
	}
}

// powerPort is a PoE port with its settings resolved.
type powerPort struct {
	name     string
	enabled  bool
	priority poe.Priority
	limitMW  int
	channel  int
	ifname   string
}

// powerPorts lists the ports the power manager manages, in config order,
// defaults applied. validate has checked the values.
func (c *Config) powerPorts() []powerPort {
	var out []powerPort
	for _, p := range c.Ports {
		if !p.PoEEnabled() {
			continue
		}
		pp := powerPort{name: p.Name, enabled: true, priority: poe.PriorityLow, limitMW: p.Power.LimitMW, channel: len(out), ifname: p.Name}
		if p.Power.Enabled != nil {
			pp.enabled = *p.Power.Enabled
		}
		if p.Power.Priority != "" {
			pp.priority, _ = poe.ParsePriority(p.Power.Priority)
		}
		if p.Power.Channel != nil {
			pp.channel = *p.Power.Channel
		}
		if p.Power.Ifname != "" {
			pp.ifname = p.Power.Ifname
		}
		out = append(out, pp)
	}
	return out
}

func (c *Config) validatePower(d *strictDecoder, bad func(string, string, ...any) error) error {
	pc := &c.Power
	backends := []string{"none", "lab", "netlink", "pd69200", "sysfs"}
	if !slices.Contains(backends, pc.Backend) {
		return bad("power.backend", "%q is not one of %s", pc.Backend, strings.Join(backends, ", "))
	}
	if !slices.Contains([]string{"all", "stagger", "adaptive"}, pc.Policy) {
		return bad("power.policy", "%q is not one of all, stagger, adaptive", pc.Policy)
	}
	if pc.StaggerPorts < 1 {
		return bad("power.stagger_ports", "%d must be at least 1", pc.StaggerPorts)
	}
	if pc.StaggerInterval < 0 {
		return bad("power.stagger_interval", "must not be negative")
	}
	for key, v := range map[string]int{"dhcp_backlog": pc.Adaptive.DHCPBacklog, "tftp_active": pc.Adaptive.TFTPActive, "proxy_queued": pc.Adaptive.ProxyQueued} {
		if v < 0 {
			return bad("power.adaptive."+key, "%d must not be negative (0 ignores the signal)", v)
		}
	}
	if pc.Adaptive.MaxHold < 0 {
		return bad("power.adaptive.max_hold", "must not be negative")
	}
	if pc.BudgetMW < 0 {
		return bad("power.budget_mw", "%d must not be negative (0: the controller's budget)", pc.BudgetMW)
	}
	if !slices.Contains([]string{"class", "measured"}, pc.Accounting) {
		return bad("power.accounting", "%q is not one of class, measured", pc.Accounting)
	}
	if pc.ReserveMW < 1 || pc.ReserveMW > 100_000 {
		return bad("power.reserve_mw", "%d is outside 1 to 100000", pc.ReserveMW)
	}
	if d := time.Duration(pc.PollInterval); d < 100*time.Millisecond || d > time.Minute {
		return bad("power.poll_interval", "%s is outside 100ms to 1m", d)
	}
	if d := time.Duration(pc.CycleOff); d < 100*time.Millisecond || d > time.Minute {
		return bad("power.cycle_off", "%s is outside 100ms to 1m", d)
	}
	if pc.StateFile != "" && (!filepath.IsAbs(pc.StateFile) || strings.HasSuffix(pc.StateFile, "/")) {
		return bad("power.state_file", "%q must be an absolute file path (or empty)", pc.StateFile)
	}
	if pc.DetectDelay < 0 || time.Duration(pc.DetectDelay) > time.Minute {
		return bad("power.detect_delay", "%s is outside 0 to 1m", time.Duration(pc.DetectDelay))
	}
	switch pc.Backend {
	case "pd69200":
		if pc.PD69200.Bus < 0 {
			return bad("power.pd69200.bus", "%d is not an I2C bus number", pc.PD69200.Bus)
		}
		if pc.PD69200.Address < 0x03 || pc.PD69200.Address > 0x77 {
			return bad("power.pd69200.address", "%#x is not a 7-bit device address (0x03-0x77)", pc.PD69200.Address)
		}
	case "sysfs":
		if !filepath.IsAbs(pc.Sysfs.Path) || !strings.Contains(pc.Sysfs.Path, "{attr}") {
			return bad("power.sysfs.path", "%q must be an absolute path template with {attr} (and {channel} or {port})", pc.Sysfs.Path)
		}
		if pc.Sysfs.Files.Enable == "" {
			return bad("power.sysfs.files.enable", "the enable file is required")
		}
		if pc.Sysfs.BudgetFile != "" && !filepath.IsAbs(pc.Sysfs.BudgetFile) {
			return bad("power.sysfs.budget_file", "%q must be an absolute path", pc.Sysfs.BudgetFile)
		}
	}
	return c.validatePortPower(d, bad)
}

func (c *Config) validatePortPower(d *strictDecoder, bad func(string, string, ...any) error) error {
	backend := c.Power.Backend
	channels := map[int]string{}
	n := 0
	for i, p := range c.Ports {
		key := fmt.Sprintf("ports[%d]", i)
		pp := p.Power
		if !p.PoEEnabled() {
			if _, set := d.lines[key+".power"]; set {
				return bad(key+".power", "the port has poe: false: the power manager leaves it alone")
			}
		}
		if p.Lab != nil {
			if backend != "lab" {
				return bad(key+".lab", "only allowed with power.backend lab")
			}
			if p.Lab.Netns == "" || strings.ContainsAny(p.Lab.Netns, "/\x00") {
				return bad(key+".lab.netns", "%q is not a namespace name", p.Lab.Netns)
			}
			if err := checkIfName(p.Lab.Link); err != nil {
				return bad(key+".lab.link", "%v", err)
			}
			if p.Lab.Class < 0 || p.Lab.Class > 4 {
				return bad(key+".lab.class", "%d is not a power class 0-4", p.Lab.Class)
			}
		} else if backend == "lab" && p.PoEEnabled() {
			return bad(key, "power.backend lab needs a lab section (netns, link) for every PoE port")
		}
		if pp.Priority != "" {
			if _, err := poe.ParsePriority(pp.Priority); err != nil {
				return bad(key+".power.priority", "%v", err)
			}
		}
		if pp.LimitMW < 0 || pp.LimitMW > 100_000 {
			return bad(key+".power.limit_mw", "%d is outside 0 to 100000", pp.LimitMW)
		}
		if pp.Ifname != "" {
			if backend != "netlink" {
				return bad(key+".power.ifname", "only used with power.backend netlink")
			}
			if err := checkIfName(pp.Ifname); err != nil {
				return bad(key+".power.ifname", "%v", err)
			}
		}
		if pp.Channel != nil && backend != "pd69200" && backend != "sysfs" {
			return bad(key+".power.channel", "only used with power.backend pd69200 or sysfs")
		}
		if !p.PoEEnabled() {
			continue
		}
		ch := n
		n++
		if pp.Channel != nil {
			ch = *pp.Channel
		}
		if backend == "pd69200" || backend == "sysfs" {
			if ch < 0 || (backend == "pd69200" && ch > 47) {
				return bad(key+".power.channel", "%d is not a channel of the controller (pd69200: 0-47)", ch)
			}
			if other, dup := channels[ch]; dup {
				return bad(key+".power.channel", "channel %d is port %s's already", ch, other)
			}
			channels[ch] = p.Name
		}
	}
	return nil
}
