package agent

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/poe"
)

func TestParsePowerConfigErrors(t *testing.T) {
	for _, tt := range []struct {
		name, yaml, want string
	}{
		{"bad policy", "power:\n  policy: sometimes\n", `f.yaml:2: power.policy: "sometimes" is not one of all, stagger, adaptive`},
		{"negative threshold", "power:\n  adaptive:\n    dhcp_backlog: -1\n", `f.yaml:3: power.adaptive.dhcp_backlog: -1 must not be negative (0 ignores the signal)`},
		{"negative max hold", "power:\n  adaptive: {max_hold: -1s}\n", `f.yaml:2: power.adaptive.max_hold: must not be negative`},
		{"unknown adaptive key", "power:\n  adaptive: {queue: 3}\n", `f.yaml:2: power.adaptive.queue: unknown key (known keys here: dhcp_backlog, max_hold, proxy_queued, tftp_active)`},
		{"negative budget", "power:\n  budget_mw: -5\n", `f.yaml:2: power.budget_mw: -5 must not be negative (0: the controller's budget)`},
		{"bad accounting", "power:\n  accounting: guess\n", `f.yaml:2: power.accounting: "guess" is not one of class, measured`},
		{"zero reserve", "power:\n  reserve_mw: 0\n", `f.yaml:2: power.reserve_mw: 0 is outside 1 to 100000`},
		{"fast poll", "power:\n  poll_interval: 10ms\n", `f.yaml:2: power.poll_interval: 10ms is outside 100ms to 1m`},
		{"long cycle", "power:\n  cycle_off: 2m\n", `f.yaml:2: power.cycle_off: 2m0s is outside 100ms to 1m`},
		{"relative state file", "power:\n  state_file: poe.json\n", `f.yaml:2: power.state_file: "poe.json" must be an absolute file path (or empty)`},
		{"pd69200 address", "power:\n  backend: pd69200\n  pd69200: {bus: 1, address: 0x80}\n", `f.yaml:3: power.pd69200.address: 0x80 is not a 7-bit device address (0x03-0x77)`},
		{"pd69200 bus", "power:\n  backend: pd69200\n  pd69200: {bus: -1}\n", `f.yaml:3: power.pd69200.bus: -1 is not an I2C bus number`},
		{"pd69200 channel", "power:\n  backend: pd69200\nports:\n  - name: p1\n    power: {channel: 48}\n",
			`f.yaml:5: ports[0].power.channel: 48 is not a channel of the controller (pd69200: 0-47)`},
		{"shared channel", "power:\n  backend: pd69200\nports:\n  - name: p1\n    power: {channel: 1}\n  - name: p2\n",
			`f.yaml:6: ports[1].power.channel: channel 1 is port p1's already`},
		{"sysfs without path", "power:\n  backend: sysfs\n", `f.yaml:1: power.sysfs.path: "" must be an absolute path template with {attr} (and {channel} or {port})`},
		{"sysfs without attr", "power:\n  backend: sysfs\n  sysfs: {path: \"/sys/poe/port{channel}\"}\n",
			`f.yaml:3: power.sysfs.path: "/sys/poe/port{channel}" must be an absolute path template with {attr} (and {channel} or {port})`},
		{"sysfs without enable file", "power:\n  backend: sysfs\n  sysfs:\n    path: /sys/poe/{channel}/{attr}\n    files: {enable: \"\"}\n",
			`f.yaml:5: power.sysfs.files.enable: the enable file is required`},
		{"sysfs unknown file key", "power:\n  backend: sysfs\n  sysfs:\n    path: /sys/poe/{channel}/{attr}\n    files: {voltage: v}\n",
			`f.yaml:5: power.sysfs.files.voltage: unknown key (known keys here: class, enable, limit, power, priority, status)`},
		{"bad port priority", "ports:\n  - name: p1\n    power: {priority: urgent}\n", `f.yaml:3: ports[0].power.priority: "urgent" is not a priority (critical, high, low)`},
		{"bad limit", "ports:\n  - name: p1\n    power: {limit_mw: 200000}\n", `f.yaml:3: ports[0].power.limit_mw: 200000 is outside 0 to 100000`},
		{"ifname without netlink", "ports:\n  - name: p1\n    power: {ifname: lan1}\n", `f.yaml:3: ports[0].power.ifname: only used with power.backend netlink`},
		{"bad ifname", "power: {backend: netlink}\nports:\n  - name: p1\n    power: {ifname: \"a/b\"}\n", `f.yaml:4: ports[0].power.ifname: "a/b" is not a valid interface name`},
		{"channel without a channel backend", "power: {backend: netlink}\nports:\n  - name: p1\n    power: {channel: 2}\n",
			`f.yaml:4: ports[0].power.channel: only used with power.backend pd69200 or sysfs`},
		{"power on a port without poe", "ports:\n  - name: p1\n    poe: false\n    power: {priority: high}\n",
			`f.yaml:4: ports[0].power: the port has poe: false: the power manager leaves it alone`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig("f.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("error\n got: %s\nwant: %s", err, tt.want)
			}
		})
	}
}

func TestParsePowerConfig(t *testing.T) {
	cfg, err := ParseConfig("f.yaml", []byte(`
power:
  backend: pd69200
  policy: adaptive
  stagger_ports: 4
  stagger_interval: 500ms
  adaptive: {dhcp_backlog: 10, tftp_active: 0, max_hold: 5s}
  budget_mw: 370000
  accounting: measured
  pd69200: {bus: 2, address: 0x20}
ports:
  - name: swp1
    power: {priority: critical, limit_mw: 30000}
  - name: swp2
    poe: false
  - name: swp3
    power: {enabled: false, channel: 7}
  - name: swp4
`))
	if err != nil {
		t.Fatal(err)
	}
	pc := cfg.Power
	if pc.Backend != "pd69200" || pc.Policy != "adaptive" || pc.BudgetMW != 370000 || pc.Accounting != "measured" ||
		pc.PD69200 != (PD69200Config{Bus: 2, Address: 0x20}) {
		t.Errorf("power = %+v", pc)
	}
	// What the file does not set keeps its default.
	if pc.Adaptive != (AdaptiveConfig{DHCPBacklog: 10, TFTPActive: 0, ProxyQueued: 64, MaxHold: Duration(5 * time.Second)}) {
		t.Errorf("adaptive = %+v", pc.Adaptive)
	}
	want := []powerPort{
		{name: "swp1", enabled: true, priority: poe.PriorityCritical, limitMW: 30000, channel: 0, ifname: "swp1"},
		{name: "swp3", enabled: false, priority: poe.PriorityLow, channel: 7, ifname: "swp3"},
		{name: "swp4", enabled: true, priority: poe.PriorityLow, channel: 2, ifname: "swp4"},
	}
	if got := cfg.powerPorts(); !reflect.DeepEqual(got, want) {
		t.Errorf("power ports\n got  %+v\n want %+v", got, want)
	}

	cfg, err = ParseConfig("f.yaml", []byte(`
power:
  backend: sysfs
  sysfs:
    path: /sys/bus/i2c/devices/1-0020/port-{channel}/{attr}
    files: {enable: admin_enable_state, power: power_consumption}
    budget_file: /sys/bus/i2c/devices/1-0020/sys/poe_pse_total_power
ports: [{name: swp1, power: {channel: 1}}]
`))
	if err != nil {
		t.Fatal(err)
	}
	files := poe.DefaultSysfsFiles()
	files.Enable, files.Power = "admin_enable_state", "power_consumption"
	if cfg.Power.Sysfs.Files != files || !strings.HasSuffix(cfg.Power.Sysfs.BudgetFile, "total_power") {
		t.Errorf("sysfs = %+v", cfg.Power.Sysfs)
	}
	cfg, err = ParseConfig("f.yaml", []byte("power: {backend: netlink}\nports: [{name: swp1, power: {ifname: lan1}}, {name: swp2}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.powerPorts(); got[0].ifname != "lan1" || got[1].ifname != "swp2" {
		t.Errorf("netlink devices %+v", got)
	}
}
