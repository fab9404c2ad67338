package provision

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// validConfig is a config that passes Validate, for tests to break.
func validConfig() Config {
	c := DefaultConfig()
	c.Root = "/nonexistent"
	c.Groups = []Group{{Name: "main", Members: []Member{{Host: "10.0.0.10", Priority: 0}, {Host: "cm2.example.net", Priority: 1}}}}
	c.Phones = []Phone{{MAC: MAC{0, 0x1e, 0x7a, 1, 2, 3}, Model: "CP-8851", Lines: []Line{{Number: "1001", Label: "Reception"}}}}
	return c
}

func TestValidate(t *testing.T) {
	if err := func() error { c := validConfig(); return c.Validate() }(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for _, tc := range []struct {
		name, key, msg string
		edit           func(*Config)
	}{
		{"no root", "root", "required", func(c *Config) { c.Root = "" }},
		{"empty pool name", "device_pool.name", "empty", func(c *Config) { c.DevicePool.Name = "" }},
		{"control char in pool name", "device_pool.name", "control", func(c *Config) { c.DevicePool.Name = "a\x07b" }},
		{"invalid UTF-8", "device_pool.date_time.name", "UTF-8", func(c *Config) { c.DevicePool.DateTime.Name = "\xff" }},
		{"date template", "device_pool.date_time.date_template", "not D, M and Y", func(c *Config) { c.DevicePool.DateTime.DateTemplate = "D/D/Y" }},
		{"date template mixed separators", "device_pool.date_time.date_template", "not D, M and Y", func(c *Config) { c.DevicePool.DateTime.DateTemplate = "D/M-Y" }},
		{"long time zone", "device_pool.date_time.time_zone", "longer", func(c *Config) { c.DevicePool.DateTime.TimeZone = strings.Repeat("x", 65) }},
		{"bad NTP host", "device_pool.date_time.ntp[1]", "host name", func(c *Config) { c.DevicePool.DateTime.NTP = []string{"ntp.example.net", "bad host"} }},
		{"no groups", "callmanager_groups", "at least one", func(c *Config) { c.Groups = nil }},
		{"bad group name", "callmanager_groups[0].name", "not a name", func(c *Config) { c.Groups[0].Name = "a b" }},
		{"duplicate group", "callmanager_groups[1].name", "twice", func(c *Config) { c.Groups = append(c.Groups, c.Groups[0]) }},
		{"empty group", "callmanager_groups[0].members", "0 members", func(c *Config) { c.Groups[0].Members = nil }},
		{"four members", "callmanager_groups[0].members", "4 members", func(c *Config) {
			c.Groups[0].Members = []Member{{Host: "a"}, {Host: "b"}, {Host: "c"}, {Host: "d"}}
		}},
		{"bad member host", "callmanager_groups[0].members[1].host", "host name", func(c *Config) { c.Groups[0].Members[1].Host = "<cm>" }},
		{"bad port", "callmanager_groups[0].members[0]", "port", func(c *Config) { c.Groups[0].Members[0].SIPPort = 70000 }},
		{"priority 3", "callmanager_groups[0].members[1].priority", "not 0 to 2", func(c *Config) { c.Groups[0].Members[1].Priority = 3 }},
		{"same priority", "callmanager_groups[0].members[1].priority", "two members", func(c *Config) { c.Groups[0].Members[1].Priority = 0 }},
		{"proxy without address", "proxy", "host or subnets", func(c *Config) { c.Proxy.Enabled = true }},
		{"proxy bad host", "proxy.host", "host name", func(c *Config) { c.Proxy = Proxy{Enabled: true, Host: "a_b"} }},
		{"proxy subnet without prefix", "proxy.subnets[0].subnet", "prefix", func(c *Config) {
			c.Proxy = Proxy{Enabled: true, Subnets: []ProxySubnet{{Host: "10.0.0.1"}}}
		}},
		{"proxy subnet bad host", "proxy.subnets[0].host", "host name", func(c *Config) {
			c.Proxy = Proxy{Enabled: true, Subnets: []ProxySubnet{{Subnet: netip.MustParsePrefix("10.0.0.0/8"), Host: ""}}}
		}},
		{"proxy port", "proxy", "port", func(c *Config) { c.Proxy = Proxy{Enabled: true, Host: "10.0.0.1", SCCPPort: -1} }},
		{"default load model", "default_loads.CP 8851", "not a model", func(c *Config) { c.DefaultLoads = map[string]string{"CP 8851": "x"} }},
		{"default load name", "default_loads.CP-8851", "not a load name", func(c *Config) { c.DefaultLoads = map[string]string{"CP-8851": "../x"} }},
		{"default group", "defaults.callmanager_group", "no group", func(c *Config) { c.Defaults.Group = "other" }},
		{"default user locale", "defaults.user_locale", "not a user locale", func(c *Config) { c.Defaults.UserLocale = "Klingon" }},
		{"default network locale", "defaults.network_locale", "not a network locale", func(c *Config) { c.Defaults.NetworkLocale = "" }},
		{"no MAC", "phones[0].mac", "required", func(c *Config) { c.Phones[0].MAC = MAC{} }},
		{"duplicate MAC", "phones[1].mac", "also phones[0]", func(c *Config) { c.Phones = append(c.Phones, c.Phones[0]) }},
		{"bad model", "phones[0].model", "not a model", func(c *Config) { c.Phones[0].Model = "CP 8851" }},
		{"bad protocol", "phones[0].protocol", "SIP or SCCP", func(c *Config) { c.Phones[0].Protocol = "H323" }},
		{"long description", "phones[0].description", "longer", func(c *Config) { c.Phones[0].Description = strings.Repeat("x", 129) }},
		{"newline in description", "phones[0].description", "control", func(c *Config) { c.Phones[0].Description = "a\nb" }},
		{"too many lines", "phones[0].lines", "more than", func(c *Config) { c.Phones[0].Lines = make([]Line, maxLines+1) }},
		{"empty number", "phones[0].lines[0].number", "directory number", func(c *Config) { c.Phones[0].Lines[0].Number = "" }},
		{"markup in number", "phones[0].lines[0].number", "directory number", func(c *Config) { c.Phones[0].Lines[0].Number = "<1>" }},
		{"control in label", "phones[0].lines[0].label", "control", func(c *Config) { c.Phones[0].Lines[0].Label = "\x00" }},
		{"long display name", "phones[0].lines[0].display_name", "longer", func(c *Config) { c.Phones[0].Lines[0].DisplayName = strings.Repeat("é", 33) }},
		{"user locale", "phones[0].user_locale", "not a user locale", func(c *Config) { c.Phones[0].UserLocale = "english" }},
		{"network locale", "phones[0].network_locale", "not a network locale", func(c *Config) { c.Phones[0].NetworkLocale = "United States" }},
		{"load", "phones[0].load", "not a load name", func(c *Config) { c.Phones[0].Load = "a/b" }},
		{"group", "phones[0].callmanager_group", "no group", func(c *Config) { c.Phones[0].Group = "other" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.edit(&c)
			err := c.Validate()
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Key != tc.key || !strings.Contains(fe.Msg, tc.msg) {
				t.Errorf("got %v, want %s: ...%s...", err, tc.key, tc.msg)
			}
		})
	}
}

func TestDateTemplates(t *testing.T) {
	for s, want := range map[string]bool{
		"M/D/Y": true, "D/M/Y": true, "D/M/YY": true, "D/M/YA": true, "D/M/YYA": true, "Y-M-D": true, "YY.M.D": true,
		"D.M.Y": true, "": false, "D/M": false, "D/M/Y/": false, "D/D/Y": false, "D/M/Y-": false, "D/M-Y": false,
		"MM/D/Y": false, "D/M/YYY": false, "d/m/y": false, "D/M/YB": false,
	} {
		if got := validDateTemplate(s); got != want {
			t.Errorf("%q: got %v, want %v", s, got, want)
		}
	}
}

func TestMACText(t *testing.T) {
	want := MAC{0x00, 0x1e, 0x7a, 0x12, 0x34, 0x56}
	for _, s := range []string{"00:1e:7a:12:34:56", "00-1E-7A-12-34-56", "001e.7a12.3456", "001E7A123456", "SEP001E7A123456", "sep001e7a123456"} {
		var m MAC
		if err := m.UnmarshalText([]byte(s)); err != nil || m != want {
			t.Errorf("%q: got %v, %v", s, m, err)
		}
	}
	for _, s := range []string{"", "00:1e:7a:12:34", "00:1e:7a:12:34:56:78", "SEP001E7A12345G", "XYZ001E7A123456", "00:1e:7a:12:34:5"} {
		var m MAC
		if err := m.UnmarshalText([]byte(s)); err == nil {
			t.Errorf("%q: accepted as %v", s, m)
		}
	}
	if b, _ := want.MarshalText(); string(b) != "00:1e:7a:12:34:56" {
		t.Errorf("MarshalText: %s", b)
	}
	if got := want.DeviceName(); got != "SEP001E7A123456" {
		t.Errorf("DeviceName: %s", got)
	}
}

func FuzzMAC(f *testing.F) {
	for _, s := range []string{"00:1e:7a:12:34:56", "SEP001E7A123456", "001e.7a12.3456", "::::::", "SEPSEPSEPSEPSEP"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var m MAC
		if m.UnmarshalText([]byte(s)) != nil {
			return
		}
		text, _ := m.MarshalText()
		var again MAC
		if err := again.UnmarshalText(text); err != nil || again != m {
			t.Fatalf("%q -> %v -> %s -> %v, %v", s, m, text, again, err)
		}
		if err := again.UnmarshalText([]byte(m.DeviceName())); err != nil || again != m {
			t.Fatalf("device name %s: %v", m.DeviceName(), err)
		}
	})
}

// TestConfigYAML decodes the documented example with unknown keys refused,
// as the daemon's strict decoder does, and validates it.
func TestConfigYAML(t *testing.T) {
	data, err := os.ReadFile("testdata/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Phones[1].MAC != (MAC{0x58, 0x97, 0x1e, 0xcc, 0x97, 0xc1}) || c.Proxy.Subnets[1].Subnet != netip.MustParsePrefix("10.72.0.0/13") ||
		c.Groups[0].Members[2].SIPPort != 5062 || c.DefaultLoads["CP-8851"] != "sip88xx.14-2-1-0001-14" || c.Phones[0].Lines[0].DisplayName != "Front Desk" {
		t.Errorf("decoded %+v", c)
	}
	// Every text, list and map field of Config is set somewhere in the
	// example, so that it documents them all.
	set := map[string]bool{}
	checkSet(reflect.ValueOf(c), "", set)
	for path, ok := range set {
		if !ok {
			t.Errorf("testdata/config.yaml never sets %s", path)
		}
	}
}

func checkSet(v reflect.Value, path string, set map[string]bool) {
	switch v.Kind() {
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[netip.Prefix]() {
			return
		}
		for i := range v.NumField() {
			checkSet(v.Field(i), path+"."+v.Type().Field(i).Name, set)
		}
	case reflect.Slice:
		set[path] = set[path] || v.Len() > 0
		for i := range v.Len() {
			checkSet(v.Index(i), path, set)
		}
	case reflect.Map, reflect.String:
		set[path] = set[path] || v.Len() > 0
	}
}
