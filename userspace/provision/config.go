package provision

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Config is the daemon's provision section: the directory phones are served
// from, the firmware catalog, the CallManager groups and registration
// proxy, and the inventory of phones. Zero values take the defaults of
// DefaultConfig when the daemon starts from it.
type Config struct {
	// Enabled turns provisioning on (read by the daemon).
	Enabled bool `yaml:"enabled"`
	// Root is the directory phones are served from: trust lists, firmware,
	// locales, ring lists, dial plans. Required.
	Root string `yaml:"root"`
	// Catalog is the firmware catalog (images.Catalog YAML), validated
	// against Root at start. Empty: no catalog, and loads are not checked.
	Catalog string `yaml:"catalog"`
	// AutoRegistration serves XMLDefault.cnf.xml to phones that have no
	// SEP<MAC>.cnf.xml; off, they get "file not found".
	AutoRegistration bool `yaml:"auto_registration"`
	// DevicePool is the device pool every phone gets.
	DevicePool DevicePool `yaml:"device_pool"`
	// Groups are the CallManager groups phones register to.
	Groups []Group `yaml:"callmanager_groups"`
	// Proxy is the registration proxy: when on, every phone's group is the
	// proxy, which relays to the group's CallManagers.
	Proxy Proxy `yaml:"proxy"`
	// DefaultLoads is the load each model must run, by model (CP-8851). A
	// model missing here runs the catalog's load for it when the catalog
	// has exactly one.
	DefaultLoads map[string]string `yaml:"default_loads"`
	// Defaults apply to phones that do not set their own.
	Defaults PhoneDefaults `yaml:"defaults"`
	// Phones is the inventory.
	Phones []Phone `yaml:"phones"`
}

// DevicePool is what CallManager's device pool gives a phone besides its
// group: a name and date and time settings.
type DevicePool struct {
	Name     string   `yaml:"name"`
	DateTime DateTime `yaml:"date_time"`
}

// DateTime is the date/time group of the device pool.
type DateTime struct {
	Name string `yaml:"name"`
	// DateTemplate is how the phone shows dates: D, M and Y (or YY for a
	// four-digit year) separated by /, - or ., an A at the end for a
	// 12-hour clock: M/D/Y, D.M.YY, Y-M-DA.
	DateTemplate string `yaml:"date_template"`
	// TimeZone is a CallManager time zone name, such as "Central
	// Europe Standard/Daylight Time".
	TimeZone string `yaml:"time_zone"`
	// NTP are the NTP servers (addresses or host names) phones query.
	NTP []string `yaml:"ntp"`
}

// Group is a CallManager group: up to three CallManagers, tried in
// priority order (lowest first).
type Group struct {
	Name    string   `yaml:"name"`
	Members []Member `yaml:"members"`
}

// Member is one CallManager of a group. A group serves SCCP and SIP phones
// alike, and each finds the port of its protocol in its configuration.
type Member struct {
	Host     string `yaml:"host"`      // address or host name
	SCCPPort int    `yaml:"sccp_port"` // 0: 2000
	SIPPort  int    `yaml:"sip_port"`  // 0: 5060
	Priority int    `yaml:"priority"`  // 0-2, lowest tried first
}

// Proxy is the registration proxy as phones reach it. The daemon turns it
// on and sets its ports from its own proxy section (which runs the proxy),
// and adds the addresses it derives from there; the config file gives
// only the addresses it cannot derive.
type Proxy struct {
	Enabled bool `yaml:"-"`
	// Host is the proxy's address for phones in no listed subnet.
	Host string `yaml:"host"`
	// Subnets give the proxy's address by the phone's own: the appliance
	// has one address per voice VLAN, and a phone reaches the one in its
	// subnet. The longest matching prefix wins; among equal prefixes, the
	// first listed.
	Subnets  []ProxySubnet `yaml:"subnets"`
	SCCPPort int           `yaml:"-"` // 0: 2000
	SIPPort  int           `yaml:"-"` // 0: 5060
}

// ProxySubnet is the proxy's address for the phones of one subnet.
type ProxySubnet struct {
	Subnet netip.Prefix `yaml:"subnet"`
	Host   string       `yaml:"host"`
}

// PhoneDefaults are a phone's settings when its entry leaves them out.
type PhoneDefaults struct {
	Group         string `yaml:"callmanager_group"` // empty: the first group
	UserLocale    string `yaml:"user_locale"`
	NetworkLocale string `yaml:"network_locale"`
}

// Phone is one phone of the inventory.
type Phone struct {
	MAC MAC `yaml:"mac"`
	// Model (CP-8851); empty: the model CDP or LLDP-MED reports.
	Model string `yaml:"model"`
	// Protocol is SIP or SCCP; empty: SCCP for loads named SCCP... or
	// P00..., SIP otherwise.
	Protocol    string `yaml:"protocol"`
	Description string `yaml:"description"`
	// Lines are its directory numbers, on buttons 1, 2, ... (SIP phones;
	// SCCP phones get theirs from CallManager).
	Lines         []Line `yaml:"lines"`
	UserLocale    string `yaml:"user_locale"`
	NetworkLocale string `yaml:"network_locale"`
	// Load overrides the model's default load.
	Load  string `yaml:"load"`
	Group string `yaml:"callmanager_group"`
}

// Line is one directory number of a phone.
type Line struct {
	Number      string `yaml:"number"`
	Label       string `yaml:"label"`
	DisplayName string `yaml:"display_name"`
}

// Ports phones register to when a member or the proxy sets none.
const (
	DefaultSCCPPort = 2000
	DefaultSIPPort  = 5060
)

// MaxGroupMembers is the most CallManagers a group holds.
const MaxGroupMembers = 3

// DefaultConfig is the section's defaults.
func DefaultConfig() Config {
	return Config{
		Root: "/var/lib/phoneboot/tftpboot",
		DevicePool: DevicePool{
			Name: "Default",
			DateTime: DateTime{
				Name:         "CMLocal",
				DateTemplate: "M/D/Y",
				TimeZone:     "Greenwich Standard Time",
			},
		},
		Defaults: PhoneDefaults{UserLocale: "English_United_States", NetworkLocale: "United_States"},
	}
}

// FieldError is a config value that is not valid; Key is its dotted path
// inside the section (phones[3].lines[0].number).
type FieldError struct {
	Key, Msg string
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Msg }

// Validate checks the section's values and references. It returns the
// first problem as a *FieldError.
func (c *Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return &FieldError{Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	if c.Root == "" {
		return bad("root", "the directory phones are served from is required")
	}
	if err := checkText(c.DevicePool.Name, 64, false); err != nil {
		return bad("device_pool.name", "%v", err)
	}
	dt := c.DevicePool.DateTime
	if err := checkText(dt.Name, 64, false); err != nil {
		return bad("device_pool.date_time.name", "%v", err)
	}
	if !validDateTemplate(dt.DateTemplate) {
		return bad("device_pool.date_time.date_template", "%q is not D, M and Y (or YY) separated by /, - or . with an optional A, such as M/D/Y", dt.DateTemplate)
	}
	if err := checkText(dt.TimeZone, 64, false); err != nil {
		return bad("device_pool.date_time.time_zone", "%v", err)
	}
	for i, h := range dt.NTP {
		if err := checkHost(h); err != nil {
			return bad(fmt.Sprintf("device_pool.date_time.ntp[%d]", i), "%v", err)
		}
	}
	if len(c.Groups) == 0 {
		return bad("callmanager_groups", "at least one group is required: phones must register somewhere")
	}
	groups := map[string]bool{}
	for i, g := range c.Groups {
		key := fmt.Sprintf("callmanager_groups[%d]", i)
		if !nameRe.MatchString(g.Name) {
			return bad(key+".name", "%q is not a name of letters, digits, '.', '_' and '-'", g.Name)
		}
		if groups[g.Name] {
			return bad(key+".name", "group %q is listed twice", g.Name)
		}
		groups[g.Name] = true
		if len(g.Members) == 0 || len(g.Members) > MaxGroupMembers {
			return bad(key+".members", "%d members; a group has 1 to %d", len(g.Members), MaxGroupMembers)
		}
		prios := map[int]bool{}
		for j, m := range g.Members {
			mkey := fmt.Sprintf("%s.members[%d]", key, j)
			if err := checkHost(m.Host); err != nil {
				return bad(mkey+".host", "%v", err)
			}
			if err := checkPorts(m.SCCPPort, m.SIPPort); err != nil {
				return bad(mkey, "%v", err)
			}
			if m.Priority < 0 || m.Priority >= MaxGroupMembers {
				return bad(mkey+".priority", "%d is not 0 to %d", m.Priority, MaxGroupMembers-1)
			}
			if prios[m.Priority] {
				return bad(mkey+".priority", "two members have priority %d", m.Priority)
			}
			prios[m.Priority] = true
		}
	}
	if c.Proxy.Enabled {
		if c.Proxy.Host == "" && len(c.Proxy.Subnets) == 0 {
			return bad("proxy", "an enabled proxy needs a host or subnets")
		}
		if c.Proxy.Host != "" {
			if err := checkHost(c.Proxy.Host); err != nil {
				return bad("proxy.host", "%v", err)
			}
		}
		for i, s := range c.Proxy.Subnets {
			key := fmt.Sprintf("proxy.subnets[%d]", i)
			if !s.Subnet.IsValid() {
				return bad(key+".subnet", "a prefix such as 10.64.0.0/13 is required")
			}
			if err := checkHost(s.Host); err != nil {
				return bad(key+".host", "%v", err)
			}
		}
		if err := checkPorts(c.Proxy.SCCPPort, c.Proxy.SIPPort); err != nil {
			return bad("proxy", "%v", err)
		}
	}
	for model, load := range c.DefaultLoads {
		key := "default_loads." + model
		if !modelRe.MatchString(model) {
			return bad(key, "%q is not a model such as CP-8851", model)
		}
		if !loadRe.MatchString(load) {
			return bad(key, "%q is not a load name such as sip88xx.14-2-1-0001-14", load)
		}
	}
	if c.Defaults.Group != "" && !groups[c.Defaults.Group] {
		return bad("defaults.callmanager_group", "no group %q", c.Defaults.Group)
	}
	if _, ok := userLocales[c.Defaults.UserLocale]; !ok {
		return bad("defaults.user_locale", "%s", unknownLocale(c.Defaults.UserLocale))
	}
	if !networkLocaleRe.MatchString(c.Defaults.NetworkLocale) {
		return bad("defaults.network_locale", "%q is not a network locale such as United_States", c.Defaults.NetworkLocale)
	}
	macs := map[MAC]int{}
	for i, p := range c.Phones {
		key := fmt.Sprintf("phones[%d]", i)
		if p.MAC == (MAC{}) {
			return bad(key+".mac", "a MAC address is required")
		}
		if j, dup := macs[p.MAC]; dup {
			return bad(key+".mac", "%s is also phones[%d]", p.MAC, j)
		}
		macs[p.MAC] = i
		if p.Model != "" && !modelRe.MatchString(p.Model) {
			return bad(key+".model", "%q is not a model such as CP-8851", p.Model)
		}
		switch strings.ToUpper(p.Protocol) {
		case "", "SIP", "SCCP":
		default:
			return bad(key+".protocol", "%q is not SIP or SCCP", p.Protocol)
		}
		if err := checkText(p.Description, 128, true); err != nil {
			return bad(key+".description", "%v", err)
		}
		if len(p.Lines) > maxLines {
			return bad(key+".lines", "%d lines, more than %d", len(p.Lines), maxLines)
		}
		for j, l := range p.Lines {
			lkey := fmt.Sprintf("%s.lines[%d]", key, j)
			if !numberRe.MatchString(l.Number) {
				return bad(lkey+".number", "%q is not a directory number (digits, letters, * # + . _ @ -, up to 32)", l.Number)
			}
			if err := checkText(l.Label, 64, true); err != nil {
				return bad(lkey+".label", "%v", err)
			}
			if err := checkText(l.DisplayName, 64, true); err != nil {
				return bad(lkey+".display_name", "%v", err)
			}
		}
		if _, ok := userLocales[p.UserLocale]; p.UserLocale != "" && !ok {
			return bad(key+".user_locale", "%s", unknownLocale(p.UserLocale))
		}
		if p.NetworkLocale != "" && !networkLocaleRe.MatchString(p.NetworkLocale) {
			return bad(key+".network_locale", "%q is not a network locale such as United_States", p.NetworkLocale)
		}
		if p.Load != "" && !loadRe.MatchString(p.Load) {
			return bad(key+".load", "%q is not a load name such as sip88xx.14-2-1-0001-14", p.Load)
		}
		if p.Group != "" && !groups[p.Group] {
			return bad(key+".callmanager_group", "no group %q", p.Group)
		}
	}
	return nil
}

// maxLines bounds a phone's lines: an 8861 has ten line keys, and key
// expansion modules add up to three times 28.
const maxLines = 96

var (
	nameRe          = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	modelRe         = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,31}$`)
	loadRe          = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	numberRe        = regexp.MustCompile(`^[A-Za-z0-9*#+._@-]{1,32}$`)
	networkLocaleRe = regexp.MustCompile(`^[A-Za-z][A-Za-z_]{0,63}$`)
	hostLabelRe     = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	dateTemplateRe  = regexp.MustCompile(`^(D|M|YY|Y)([/.-])(D|M|YY|Y)([/.-])(D|M|YY|Y)A?$`)
)

func validDateTemplate(s string) bool {
	m := dateTemplateRe.FindStringSubmatch(s)
	if m == nil || m[2] != m[4] {
		return false
	}
	parts := []string{m[1], m[3], m[5]}
	for i, p := range parts {
		if p == "YY" {
			parts[i] = "Y"
		}
	}
	slices.Sort(parts)
	return slices.Equal(parts, []string{"D", "M", "Y"})
}

// checkHost accepts an IP address or a DNS host name.
func checkHost(s string) error {
	if _, err := netip.ParseAddr(s); err == nil {
		return nil
	}
	if s == "" || len(s) > 253 {
		return fmt.Errorf("%q is not an address or host name", s)
	}
	for label := range strings.SplitSeq(strings.TrimSuffix(s, "."), ".") {
		if !hostLabelRe.MatchString(label) {
			return fmt.Errorf("%q is not an address or host name", s)
		}
	}
	return nil
}

func checkPorts(sccp, sip int) error {
	if sccp < 0 || sccp > 65535 || sip < 0 || sip > 65535 {
		return fmt.Errorf("ports %d/%d: a port is 1-65535 (0: the default)", sccp, sip)
	}
	return nil
}

// checkText accepts what a phone can show: valid UTF-8 without control
// characters, at most max bytes. Markup characters are fine: every value
// is XML-escaped where it is written.
func checkText(s string, max int, emptyOK bool) error {
	switch {
	case s == "" && !emptyOK:
		return fmt.Errorf("must not be empty")
	case len(s) > max:
		return fmt.Errorf("is longer than %d bytes", max)
	case !utf8.ValidString(s):
		return fmt.Errorf("is not valid UTF-8")
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		return fmt.Errorf("%q holds a control character", s)
	}
	return nil
}

// MAC is a phone's Ethernet address, written 00:1e:7a:12:34:56,
// 00-1E-7A-12-34-56, 001e.7a12.3456, 001E7A123456 or SEP001E7A123456.
type MAC [6]byte

// UnmarshalText parses any of the forms above.
func (m *MAC) UnmarshalText(b []byte) error {
	s := string(b)
	hexs := strings.NewReplacer(":", "", "-", "", ".", "").Replace(s)
	if len(hexs) == 15 && strings.EqualFold(hexs[:3], "SEP") {
		hexs = hexs[3:]
	}
	if len(hexs) != 12 {
		return fmt.Errorf("%q is not a MAC address such as 00:1e:7a:12:34:56", s)
	}
	if _, err := hex.Decode(m[:], []byte(hexs)); err != nil {
		return fmt.Errorf("%q is not a MAC address such as 00:1e:7a:12:34:56", s)
	}
	return nil
}

// MarshalText writes the colon form.
func (m MAC) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

func (m MAC) String() string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// DeviceName is the phone's name as CallManager and its files know it:
// SEP and the MAC in upper-case hex.
func (m MAC) DeviceName() string { return "SEP" + strings.ToUpper(hex.EncodeToString(m[:])) }
