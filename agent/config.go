package agent

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/phoneboot/phoneboot/userspace/fastpath"
	"github.com/phoneboot/phoneboot/userspace/provision"
)

// Config is the daemon's configuration file. Every field has a default, so
// an empty file is a valid config that serves nothing; see
// deploy/phoneboot.yaml for a documented example.
type Config struct {
	Log       LogConfig        `yaml:"log"`
	Control   ControlConfig    `yaml:"control"`
	Metrics   MetricsConfig    `yaml:"metrics"`
	FastPath  FastPathConfig   `yaml:"fastpath"`
	Ports     []PortConfig     `yaml:"ports"`
	Power     PowerConfig      `yaml:"power"`
	VLAN      VLANConfig       `yaml:"vlan"`
	Discovery DiscoveryConfig  `yaml:"discovery"`
	DHCP      DHCPConfig       `yaml:"dhcp"`
	Provision provision.Config `yaml:"provision"`
	TFTP      TFTPConfig       `yaml:"tftp"`
	HTTP      HTTPConfig       `yaml:"http"`
	Proxy     ProxyConfig      `yaml:"proxy"`
}

// DiscoveryConfig controls CDP and LLDP-MED on the phone ports.
type DiscoveryConfig struct {
	// CDP and LLDP turn each protocol's advertisements on. Both are heard
	// (for the neighbour table) while either is on.
	CDP  bool `yaml:"cdp"`
	LLDP bool `yaml:"lldp"`
	// Interval between advertisements (the TTL is three times it).
	Interval Duration `yaml:"interval"`
	// DeviceID is the name phones show for the switch; empty: the host name.
	DeviceID string `yaml:"device_id"`
	// VoiceDSCP is the DSCP of the LLDP-MED voice policy.
	VoiceDSCP int `yaml:"voice_dscp"`
}

// Enabled reports whether the discovery service runs.
func (d DiscoveryConfig) Enabled() bool { return d.CDP || d.LLDP }

// LogConfig selects the log level and format.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// ControlConfig places the local control socket.
type ControlConfig struct {
	Socket string `yaml:"socket"`
}

// MetricsConfig places the Prometheus listener.
type MetricsConfig struct {
	Listen string `yaml:"listen"` // host:port; empty turns metrics off
}

// FastPathConfig controls the XDP program on the phone ports.
type FastPathConfig struct {
	Enabled      bool   `yaml:"enabled"`
	XDPMode      string `yaml:"xdp_mode"` // native, generic or auto
	PinDir       string `yaml:"pin_dir"`
	DetachOnStop bool   `yaml:"detach_on_stop"`
}

// PortConfig is one phone-facing port.
type PortConfig struct {
	Name string `yaml:"name"`
	// PoE says whether the power manager powers this port (when power
	// management is on). Defaults to true.
	PoE *bool `yaml:"poe"`
	// Power is how the power manager treats the port.
	Power PortPowerConfig `yaml:"power,omitempty"`
	// Lab wires the port to the lab's simulated PSE; only with power.backend lab.
	Lab *LabPortConfig `yaml:"lab"`
	// VoiceVLAN is the VLAN phones on this port tag with (and are told by
	// CDP and LLDP-MED); 0: none.
	VoiceVLAN uint16 `yaml:"voice_vlan"`
	// TrunkVLANs are further voice VLANs the port carries tagged: an
	// appliance's trunk towards access switches.
	TrunkVLANs []uint16 `yaml:"trunk_vlans"`
	// NativeVLAN is the VLAN of the port's untagged frames; 0: none.
	NativeVLAN uint16 `yaml:"native_vlan"`
	// VoicePriority is the 802.1p priority (CoS) of the frames the
	// appliance tags; default 5.
	VoicePriority *int `yaml:"voice_priority"`
	// AutoVoice puts untagged frames from known phones into VoiceVLAN.
	AutoVoice bool `yaml:"auto_voice"`
}

// VLANs is the port's VLAN policy for the data path; ok is false when the
// port has none (no voice or trunk VLAN), so its frames pass as they come.
func (p PortConfig) VLANs() (v fastpath.PortVLANs, ok bool) {
	if p.VoiceVLAN == 0 && len(p.TrunkVLANs) == 0 {
		return v, false
	}
	prio := uint8(fastpath.DefaultVoicePriority)
	if p.VoicePriority != nil {
		prio = uint8(*p.VoicePriority)
	}
	v.Native = p.NativeVLAN
	if p.VoiceVLAN != 0 {
		v.Tagged = append(v.Tagged, fastpath.TaggedVLAN{ID: p.VoiceVLAN, Priority: prio})
		if p.AutoVoice {
			v.AutoVoice = p.VoiceVLAN
		}
	}
	for _, id := range p.TrunkVLANs {
		v.Tagged = append(v.Tagged, fastpath.TaggedVLAN{ID: id, Priority: prio})
	}
	return v, true
}

// LabPortConfig is the phone side of a lab port: powering the port brings
// Link in namespace Netns up, as a powered phone brings its PHY up.
type LabPortConfig struct {
	Netns string `yaml:"netns"`
	Link  string `yaml:"link"`
	Class int    `yaml:"class"` // IEEE 802.3 power class the phone presents, 0-4
}

// Duration is a time.Duration written as "1.5s", "200ms".
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return errors.New("expected a duration such as 500ms or 2s")
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 500ms or 2s", n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration back in Go syntax.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Default file locations for a packaged install.
const (
	DefaultConfigPath    = "/etc/phoneboot/phoneboot.yaml"
	DefaultControlSocket = "/run/phoneboot/control.sock"
	DefaultPinDir        = "/sys/fs/bpf/phoneboot"
)

// DefaultConfig is the configuration an empty file gives.
func DefaultConfig() Config {
	return Config{
		Log:     LogConfig{Level: "info", Format: "text"},
		Control: ControlConfig{Socket: DefaultControlSocket},
		Metrics: MetricsConfig{Listen: "127.0.0.1:9617"},
		FastPath: FastPathConfig{
			Enabled: true,
			XDPMode: "auto",
			PinDir:  DefaultPinDir,
		},
		Power:     defaultPowerConfig(),
		Discovery: DiscoveryConfig{CDP: true, LLDP: true, Interval: Duration(60 * time.Second), VoiceDSCP: 46},
		DHCP:      defaultDHCPConfig(),
		Provision: provision.DefaultConfig(),
		TFTP:      defaultTFTPConfig(),
		HTTP:      defaultHTTPConfig(),
		Proxy:     defaultProxyConfig(),
	}
}

// LoadConfig reads and validates a config file.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig decodes and validates config text; name is used in errors.
func ParseConfig(name string, data []byte) (Config, error) {
	cfg := DefaultConfig()
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, &ConfigError{File: name, Line: yamlErrorLine(err), Msg: cleanYAMLError(err)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return Config{}, &ConfigError{File: name, Line: extra.Line, Msg: "more than one YAML document"}
	}
	d := &strictDecoder{file: name, lines: map[string]int{}}
	if root.Kind != 0 {
		if err := d.decode(&root, reflectValue(&cfg), ""); err != nil {
			return Config{}, err
		}
	}
	if err := cfg.validate(d); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// validate checks values and cross-references. Errors carry the line of
// the offending key when the file set it, and the key alone otherwise.
func (c *Config) validate(d *strictDecoder) error {
	bad := func(key, format string, args ...any) error {
		return &ConfigError{File: d.file, Line: d.line(key), Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return bad("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return bad("log.format", "%q is not one of text, json", c.Log.Format)
	}
	if err := checkControlSocket(c.Control.Socket); err != nil {
		return bad("control.socket", "%v", err)
	}
	if c.Metrics.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Metrics.Listen); err != nil {
			return bad("metrics.listen", "%q is not host:port (%v)", c.Metrics.Listen, err)
		}
	}
	switch c.FastPath.XDPMode {
	case "native", "generic", "auto":
	default:
		return bad("fastpath.xdp_mode", "%q is not one of native, generic, auto", c.FastPath.XDPMode)
	}
	if c.FastPath.Enabled {
		if !filepath.IsAbs(c.FastPath.PinDir) || filepath.Clean(c.FastPath.PinDir) == "/" {
			return bad("fastpath.pin_dir", "%q must be an absolute directory on bpffs, such as %s", c.FastPath.PinDir, DefaultPinDir)
		}
	}
	seen := map[string]bool{}
	for i, p := range c.Ports {
		key := fmt.Sprintf("ports[%d]", i)
		if err := checkIfName(p.Name); err != nil {
			return bad(key+".name", "%v", err)
		}
		if seen[p.Name] {
			return bad(key+".name", "port %q is listed twice", p.Name)
		}
		seen[p.Name] = true
		if err := p.validateVLANs(key, c.FastPath.Enabled, bad); err != nil {
			return err
		}
	}
	if d := time.Duration(c.Discovery.Interval); c.Discovery.Enabled() && (d < 5*time.Second || d > 85*time.Second) {
		// The TTL is three intervals and must fit CDP's one-byte TTL.
		return bad("discovery.interval", "%s is outside 5s to 85s", d)
	}
	if c.Discovery.VoiceDSCP < 0 || c.Discovery.VoiceDSCP > 63 {
		return bad("discovery.voice_dscp", "%d is not a DSCP 0-63", c.Discovery.VoiceDSCP)
	}
	if len(c.Discovery.DeviceID) > 200 {
		return bad("discovery.device_id", "is longer than 200 bytes")
	}
	for i, o := range c.VLAN.PhoneOUIs {
		if _, err := ParseOUI(o); err != nil {
			return bad(fmt.Sprintf("vlan.phone_ouis[%d]", i), "%v", err)
		}
	}
	if err := c.validatePower(d, bad); err != nil {
		return err
	}
	if err := c.DHCP.validate(bad); err != nil {
		return err
	}
	if err := c.Proxy.validate(bad); err != nil {
		return err
	}
	return c.validateProvision(bad)
}

func (p PortConfig) validateVLANs(key string, fastPath bool, bad func(string, string, ...any) error) error {
	if p.VoicePriority != nil && (*p.VoicePriority < 0 || *p.VoicePriority > 7) {
		return bad(key+".voice_priority", "%d is not an 802.1p priority 0-7", *p.VoicePriority)
	}
	if p.AutoVoice && p.VoiceVLAN == 0 {
		return bad(key+".auto_voice", "needs a voice_vlan to put phones in")
	}
	v, ok := p.VLANs()
	if !ok {
		if p.NativeVLAN != 0 || p.VoicePriority != nil {
			return bad(key, "native_vlan and voice_priority need a voice_vlan or trunk_vlans")
		}
		return nil
	}
	if err := v.Validate(); err != nil {
		return bad(key, "%v", err)
	}
	if !fastPath {
		return bad(key, "VLANs need fastpath.enabled: true (the XDP and TC programs do the tagging; there are no 8021q devices)")
	}
	return nil
}

// VLANConfig holds what the VLAN policy needs beyond the ports.
type VLANConfig struct {
	// PhoneOUIs are MAC prefixes (aa:bb:cc) taken for phones by auto_voice
	// ports, beside the phones CDP and LLDP find.
	PhoneOUIs []string `yaml:"phone_ouis"`
}

// ParseOUI reads an OUI written aa:bb:cc or aa-bb-cc.
func ParseOUI(s string) ([3]byte, error) {
	var o [3]byte
	parts := strings.FieldsFunc(s, func(r rune) bool { return r == ':' || r == '-' })
	if len(parts) != 3 || len(s) != 8 {
		return o, fmt.Errorf("%q is not an OUI such as 00:1b:54", s)
	}
	for i, p := range parts {
		b, err := hex.DecodeString(p)
		if err != nil || len(b) != 1 {
			return o, fmt.Errorf("%q is not an OUI such as 00:1b:54", s)
		}
		o[i] = b[0]
	}
	return o, nil
}

// PoEEnabled reports whether the power manager should power this port.
func (p PortConfig) PoEEnabled() bool { return p.PoE == nil || *p.PoE }

// PortNames lists the configured ports in order.
func (c *Config) PortNames() []string {
	names := make([]string, len(c.Ports))
	for i, p := range c.Ports {
		names[i] = p.Name
	}
	return names
}

func checkIfName(name string) error {
	if name == "" {
		return errors.New("an interface name is required")
	}
	// IFNAMSIZ is 16 including the terminating NUL.
	if len(name) > 15 || strings.ContainsAny(name, "/: \t\n\x00") || name == "." || name == ".." {
		return fmt.Errorf("%q is not a valid interface name", name)
	}
	return nil
}

// checkControlSocket refuses socket paths where another user could create
// or replace the socket before us: it must be absolute and not in a
// world-writable directory such as /tmp.
func checkControlSocket(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%q must be an absolute path", path)
	}
	dir := filepath.Clean(filepath.Dir(path))
	for d := dir; ; d = filepath.Dir(d) {
		if d == "/tmp" || d == "/var/tmp" || d == "/dev/shm" {
			return fmt.Errorf("%q is under %s, where any user can create files; use a root-owned directory such as /run/phoneboot", path, d)
		}
		if d == "/" {
			break
		}
	}
	if st, err := os.Stat(dir); err == nil && st.Mode().Perm()&0o002 != 0 {
		return fmt.Errorf("directory %s is world-writable; use a root-owned directory such as /run/phoneboot", dir)
	}
	return nil
}
