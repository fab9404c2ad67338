package agent

import (
	"errors"
	"math"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/phoneboot/phoneboot/userspace/fastpath"
	"github.com/phoneboot/phoneboot/userspace/provision"
)

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string // the whole error text
	}{
		{"unknown top-level key", "log:\n  level: info\nports_:\n  - name: a\n",
			`f.yaml:3: ports_: unknown key (known keys here: control, dhcp, discovery, fastpath, http, log, metrics, ports, power, provision, proxy, tftp, vlan)`},
		{"unknown nested key", "fastpath:\n  enabled: true\n  xdpmode: native\n",
			`f.yaml:3: fastpath.xdpmode: unknown key (known keys here: detach_on_stop, enabled, pin_dir, xdp_mode)`},
		{"unknown key in list item", "ports:\n  - name: a\n  - name: b\n    speed: 1000\n",
			`f.yaml:4: ports[1].speed: unknown key (known keys here: auto_voice, lab, name, native_vlan, poe, power, trunk_vlans, voice_priority, voice_vlan)`},
		{"bad enum", "fastpath:\n  xdp_mode: fast\n",
			`f.yaml:2: fastpath.xdp_mode: "fast" is not one of native, generic, auto`},
		{"bad type", "fastpath:\n  enabled: maybe\n",
			"f.yaml:2: fastpath.enabled: cannot unmarshal !!str `maybe` into bool"},
		{"bad duration", "power:\n  stagger_interval: 5 minutes\n",
			`f.yaml:2: power.stagger_interval: "5 minutes" is not a duration such as 500ms or 2s`},
		{"duplicate key", "log:\n  level: info\n  level: debug\n",
			`f.yaml:3: log.level: duplicate key`},
		{"list where mapping", "log:\n  - info\n",
			`f.yaml:2: log: expected a mapping, got a list`},
		{"mapping where list", "ports:\n  name: a\n",
			`f.yaml:2: ports: expected a list, got a mapping`},
		{"syntax error", "log:\n  level: [info\n",
			`f.yaml:1: did not find expected ',' or ']'`},
		{"duplicate port", "ports:\n  - name: swp1\n  - name: swp1\n",
			`f.yaml:3: ports[1].name: port "swp1" is listed twice`},
		{"missing port name", "ports:\n  - poe: false\n",
			`f.yaml:2: ports[0].name: an interface name is required`},
		{"long port name", "ports:\n  - name: abcdefghijklmnop\n",
			`f.yaml:2: ports[0].name: "abcdefghijklmnop" is not a valid interface name`},
		{"socket in tmp", "control:\n  socket: /tmp/pb.sock\n",
			`f.yaml:2: control.socket: "/tmp/pb.sock" is under /tmp, where any user can create files; use a root-owned directory such as /run/phoneboot`},
		{"relative socket", "control:\n  socket: pb.sock\n",
			`f.yaml:2: control.socket: "pb.sock" must be an absolute path`},
		{"bad metrics address", "metrics:\n  listen: localhost\n",
			`f.yaml:2: metrics.listen: "localhost" is not host:port (address localhost: missing port in address)`},
		{"relative pin dir", "fastpath:\n  pin_dir: bpf/pb\n",
			`f.yaml:2: fastpath.pin_dir: "bpf/pb" must be an absolute directory on bpffs, such as /sys/fs/bpf/phoneboot`},
		{"bad power backend", "power:\n  backend: tps23881\n",
			`f.yaml:2: power.backend: "tps23881" is not one of none, lab, netlink, pd69200, sysfs`},
		{"lab port without lab backend", "ports:\n  - name: p1\n    lab: {netns: x, link: eth0}\n",
			`f.yaml:3: ports[0].lab: only allowed with power.backend lab`},
		{"lab backend without lab section", "power:\n  backend: lab\nports:\n  - name: p1\n",
			`f.yaml:4: ports[0]: power.backend lab needs a lab section (netns, link) for every PoE port`},
		{"bad class", "power:\n  backend: lab\nports:\n  - name: p1\n    lab: {netns: x, link: eth0, class: 7}\n",
			`f.yaml:5: ports[0].lab.class: 7 is not a power class 0-4`},
		{"voice VLAN out of range", "ports:\n  - name: p1\n    voice_vlan: 4095\n",
			`f.yaml:2: ports[0]: tagged VLAN 4095 is not 1-4094`},
		{"voice VLAN also native", "ports:\n  - name: p1\n    voice_vlan: 10\n    native_vlan: 10\n",
			`f.yaml:2: ports[0]: VLAN 10 is listed twice`},
		{"trunk repeats voice", "ports:\n  - name: p1\n    voice_vlan: 10\n    trunk_vlans: [11, 10]\n",
			`f.yaml:2: ports[0]: VLAN 10 is listed twice`},
		{"bad priority", "ports:\n  - name: p1\n    voice_vlan: 10\n    voice_priority: 8\n",
			`f.yaml:4: ports[0].voice_priority: 8 is not an 802.1p priority 0-7`},
		{"auto voice without voice VLAN", "ports:\n  - name: p1\n    auto_voice: true\n",
			`f.yaml:3: ports[0].auto_voice: needs a voice_vlan to put phones in`},
		{"native without voice", "ports:\n  - name: p1\n    native_vlan: 1\n",
			`f.yaml:2: ports[0]: native_vlan and voice_priority need a voice_vlan or trunk_vlans`},
		{"VLANs without the fast path", "fastpath: {enabled: false}\nports:\n  - name: p1\n    voice_vlan: 10\n",
			`f.yaml:3: ports[0]: VLANs need fastpath.enabled: true (the XDP and TC programs do the tagging; there are no 8021q devices)`},
		{"bad OUI", "vlan:\n  phone_ouis: [00:1b:54, 00:1b]\n",
			`f.yaml:2: vlan.phone_ouis[1]: "00:1b" is not an OUI such as 00:1b:54`},
		{"discovery interval too long for CDP's TTL", "discovery:\n  interval: 90s\n",
			`f.yaml:2: discovery.interval: 1m30s is outside 5s to 85s`},
		{"bad DSCP", "discovery:\n  voice_dscp: 64\n",
			`f.yaml:2: discovery.voice_dscp: 64 is not a DSCP 0-63`},
		{"bad provisioning", "provision:\n  enabled: true\n  root: /srv/tftp\n  callmanager_groups: [{name: a, members: []}]\n",
			`f.yaml:4: provision.callmanager_groups[0].members: 0 members; a group has 1 to 3`},
		{"bad tftp listen", "provision: {enabled: true, root: /srv, callmanager_groups: [{name: a, members: [{host: h}]}]}\ntftp:\n  listen: [\":69\"]\n",
			`f.yaml:3: tftp.listen[0]: ":69" is not address:port (no IP)`},
		{"bad tftp rate", "provision: {enabled: true, root: /srv, callmanager_groups: [{name: a, members: [{host: h}]}]}\ntftp:\n  rate: 0\n",
			`f.yaml:2: tftp: rate 0 and burst 20000 must be above 0`},
		{"zero stagger ports", "power:\n  stagger_ports: 0\n",
			`f.yaml:2: power.stagger_ports: 0 must be at least 1`},
		{"two documents", "log:\n  level: info\n---\nlog:\n  level: debug\n",
			`f.yaml:3: more than one YAML document`},
		{"bad subnet", "dhcp:\n  pools:\n    - name: v\n      subnet: 10.0.0.0/33\n",
			`f.yaml:4: dhcp.pools[0].subnet: "10.0.0.0/33" is not valid: prefix length out of range`},
		{"bad address", "dhcp:\n  pools:\n    - name: v\n      routers: [10.0.0.256]\n",
			`f.yaml:4: dhcp.pools[0].routers[0]: "10.0.0.256" is not valid: IPv4 field has value >255`},
		{"bad mac", "dhcp:\n  pools:\n    - name: v\n      reservations: [{mac: 00:1e:7a, ip: 10.0.0.5}]\n",
			`f.yaml:4: dhcp.pools[0].reservations[0].mac: "00:1e:7a" is not a MAC address such as 00:1e:7a:12:34:56`},
		{"bad hex", "dhcp:\n  pools:\n    - name: v\n      vendor_info: zz\n",
			`f.yaml:4: dhcp.pools[0].vendor_info: "zz" is not hex bytes such as 01:04:0a:00:00:01`},
		{"dhcp without pools", "dhcp:\n  enabled: true\n",
			`f.yaml:1: dhcp.pools: dhcp is enabled but has no pools`},
		{"bad vlan", "dhcp:\n  enabled: true\n  pools:\n    - name: v\n      vlan: 4095\n",
			`f.yaml:5: dhcp.pools[0].vlan: 4095 is not a VLAN ID 0-4094`},
		{"zero request age", "dhcp:\n  enabled: true\n  max_request_age: 0s\n  pools:\n    - name: v\n",
			`f.yaml:3: dhcp.max_request_age: must be positive`},
		{"alias", "log: &l\n  level: info\ncontrol: *l\n",
			`f.yaml:3: control: YAML aliases are not supported in the config`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig("f.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("error\n got: %s\nwant: %s", err, tt.want)
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Errorf("error is %T, not *ConfigError", err)
			}
		})
	}
}

func TestParseConfigEmptyIsDefault(t *testing.T) {
	for _, text := range []string{"", "\n", "# nothing\n", "log:\n"} {
		cfg, err := ParseConfig("f.yaml", []byte(text))
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		if !reflect.DeepEqual(cfg, DefaultConfig()) {
			t.Errorf("%q: got %+v, want defaults", text, cfg)
		}
	}
}

func TestParseConfigValues(t *testing.T) {
	cfg, err := ParseConfig("f.yaml", []byte(`
log: {level: debug, format: json}
fastpath: {xdp_mode: generic, detach_on_stop: true}
ports:
  - name: swp1
  - name: swp2
    poe: false
power:
  policy: stagger
  stagger_ports: 4
  stagger_interval: 1500ms
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Log.Level != "debug" || cfg.Log.Format != "json" {
		t.Errorf("log = %+v", cfg.Log)
	}
	if cfg.FastPath.XDPMode != "generic" || !cfg.FastPath.DetachOnStop || !cfg.FastPath.Enabled {
		t.Errorf("fastpath = %+v", cfg.FastPath)
	}
	if got := cfg.PortNames(); !reflect.DeepEqual(got, []string{"swp1", "swp2"}) {
		t.Errorf("ports = %v", got)
	}
	if !cfg.Ports[0].PoEEnabled() || cfg.Ports[1].PoEEnabled() {
		t.Errorf("poe flags: %v %v", cfg.Ports[0].PoEEnabled(), cfg.Ports[1].PoEEnabled())
	}
	if cfg.Power.Policy != "stagger" || cfg.Power.StaggerPorts != 4 || time.Duration(cfg.Power.StaggerInterval) != 1500*time.Millisecond {
		t.Errorf("power = %+v", cfg.Power)
	}
}

func TestParseConfigVLANs(t *testing.T) {
	cfg, err := ParseConfig("f.yaml", []byte(`
ports:
  - name: swp1
    voice_vlan: 100
    native_vlan: 1
    auto_voice: true
  - name: trunk0
    voice_vlan: 100
    trunk_vlans: [101, 102]
    voice_priority: 6
  - name: swp2
vlan:
  phone_ouis: [00:1b:54, 00-1E-7A]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		v  fastpath.PortVLANs
		ok bool
	}{
		{fastpath.PortVLANs{Native: 1, Tagged: []fastpath.TaggedVLAN{{ID: 100, Priority: 5}}, AutoVoice: 100}, true},
		{fastpath.PortVLANs{Tagged: []fastpath.TaggedVLAN{{ID: 100, Priority: 6}, {ID: 101, Priority: 6}, {ID: 102, Priority: 6}}}, true},
		{fastpath.PortVLANs{}, false},
	}
	for i, w := range want {
		got, ok := cfg.Ports[i].VLANs()
		if ok != w.ok || !reflect.DeepEqual(got, w.v) {
			t.Errorf("ports[%d].VLANs() = %+v %v, want %+v %v", i, got, ok, w.v, w.ok)
		}
	}
	for _, s := range cfg.VLAN.PhoneOUIs {
		if _, err := ParseOUI(s); err != nil {
			t.Error(err)
		}
	}
	if o, _ := ParseOUI("00-1E-7A"); o != [3]byte{0x00, 0x1e, 0x7a} {
		t.Errorf("ParseOUI(00-1E-7A) = %x", o)
	}
}

// The example config documents the defaults: it must parse, and apart from
// the keys it marks as examples it must say what DefaultConfig says.
func TestExampleConfigShowsDefaults(t *testing.T) {
	cfg, err := LoadConfig("../deploy/phoneboot.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Ports) == 0 {
		t.Fatal("the example lists no ports")
	}
	cfg.Ports = nil // marked "example"
	if len(cfg.DHCP.Pools) == 0 {
		t.Fatal("the example has no DHCP pool")
	}
	cfg.DHCP.Pools = nil // marked "example"
	if len(cfg.VLAN.PhoneOUIs) == 0 {
		t.Fatal("the example has no phone OUIs")
	}
	cfg.VLAN.PhoneOUIs = nil // marked "example"
	if len(cfg.Provision.Phones) == 0 || cfg.Provision.Enabled {
		t.Fatal("the example has no provisioning example, or turns it on")
	}
	if len(cfg.Proxy.CallManagers) == 0 || cfg.Proxy.Enabled {
		t.Fatal("the example has no CallManagers for the proxy, or turns it on")
	}
	ex := cfg
	ex.Provision.Enabled = true
	ex.Proxy.Enabled = true
	if err := ex.validate(&strictDecoder{file: "example", lines: map[string]int{}}); err != nil {
		t.Errorf("the provisioning and proxy examples are not valid once enabled: %v", err)
	}
	cfg.Provision = provision.DefaultConfig() // marked "example"
	cfg.Proxy.CallManagers = nil              // marked "example"
	if want := DefaultConfig(); !reflect.DeepEqual(cfg, want) {
		t.Errorf("example config differs from the defaults:\n got: %+v\nwant: %+v", cfg, want)
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	_, err := LoadConfig("/nonexistent/phoneboot.yaml")
	if err == nil || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "/nonexistent/phoneboot.yaml") {
		t.Fatalf("got %v, want a not-exist error naming the file", err)
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{"", "log: {level: info}", "ports:\n  - name: a\n", "power:\n  backend: lab\n", "a: [1, {b: c}]", "- - -"} {
		f.Add([]byte(s))
	}
	if data, err := os.ReadFile("../deploy/phoneboot.yaml"); err == nil {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		// Anything accepted must validate again unchanged.
		d := &strictDecoder{file: "fuzz.yaml", lines: map[string]int{}}
		if err := cfg.validate(d); err != nil {
			t.Fatalf("accepted config fails validation: %v", err)
		}
	})
}

// TestConfigMarshalsBack: a config built in Go and written as YAML (as the
// lab and the benchmarks write the daemon's) parses back unchanged, a port
// without PoE included: keys written at their zero value must not trip
// the checks of what a user sets.
func TestConfigMarshalsBack(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Control.Socket = "/run/phoneboot-test/control.sock"
	poe := false
	cfg.Ports = []PortConfig{{Name: "swp1", PoE: &poe}, {Name: "swp2"}}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseConfig("written.yaml", data)
	if err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	if len(back.Ports) != 2 || back.Ports[0].PoEEnabled() || !back.Ports[1].PoEEnabled() {
		t.Errorf("ports read back: %+v", back.Ports)
	}
}

// TestFilesNeeded: the file servers' descriptors at their limits, and a
// limit under them refused with the settings to change.
func TestFilesNeeded(t *testing.T) {
	cfg := DefaultConfig()
	if got, want := filesNeeded(cfg), uint64(2*4096+2*4096+64); got != want {
		t.Errorf("defaults need %d descriptors, want %d", got, want)
	}
	cfg.HTTP.Listen = ""
	if got, want := filesNeeded(cfg), uint64(2*4096+64); got != want {
		t.Errorf("without HTTP: %d, want %d", got, want)
	}
	if err := checkFileLimit(1); err != nil {
		t.Errorf("one descriptor: %v", err)
	}
	err := checkFileLimit(math.MaxUint64)
	if err == nil || !strings.Contains(err.Error(), "RLIMIT_NOFILE") || !strings.Contains(err.Error(), "http.max_conns") {
		t.Errorf("over the limit: %v, want an error naming the limit and the settings", err)
	}
}
