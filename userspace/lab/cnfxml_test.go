package lab

import (
	"reflect"
	"strings"
	"testing"
)

// Files in the shapes the sources show (chan-sccp's SCCP template,
// usecallmanager's SIP file, chan-sccp's XMLDefault), abridged; the files
// phoneboot generates are parsed in provision_test.go.
const (
	sccpCnf = `<?xml version="1.0" encoding="UTF-8"?>
<device>
  <fullConfig>true</fullConfig>
  <deviceProtocol>SCCP</deviceProtocol>
  <devicePool>
    <name>Default</name>
    <callManagerGroup><members>
      <member priority="1"><callManager>
        <ports><ethernetPhonePort>2002</ethernetPhonePort></ports>
        <processNodeName>10.0.0.2</processNodeName>
      </callManager></member>
      <member priority="0"><callManager>
        <ports><ethernetPhonePort>2000</ethernetPhonePort></ports>
        <processNodeName>10.0.0.1</processNodeName>
      </callManager></member>
    </members></callManagerGroup>
  </devicePool>
  <versionStamp>{Jan 01 2003 00:00:00}</versionStamp>
  <loadInformation>P00308010100</loadInformation>
  <userLocale><name>English_United_States</name><uid>1</uid><langCode>en_US</langCode></userLocale>
</device>
`
	sipCnf = `<device><fullConfig>true</fullConfig><deviceProtocol>SIP</deviceProtocol>
  <devicePool><callManagerGroup><members><member priority="0"><callManager>
    <ports><sipPort>5062</sipPort><securedSipPort>5061</securedSipPort></ports>
    <processNodeName>cm.example.net</processNodeName></callManager></member></members></callManagerGroup></devicePool>
  <versionStamp>d902ed5a-c1e5-4233-b1d6-a960d53d1c3a</versionStamp>
  <loadInformation>sip88xx.14-2-1-0001-14</loadInformation></device>`
	defaultCnf = `<?xml version="1.0" encoding="UTF-8"?>
<Default>
  <callManagerGroup><members>
    <member priority="0"><callManager><ports><ethernetPhonePort>2000</ethernetPhonePort></ports>
      <processNodeName>10.0.0.1</processNodeName></callManager></member>
    <member priority="1"><callManager><ports><ethernetPhonePort>2000</ethernetPhonePort><sipPort>5060</sipPort></ports>
      <processNodeName>10.0.0.2</processNodeName></callManager></member>
  </members></callManagerGroup>
  <loadInformation8 model="Cisco 7940">P0030801SR02</loadInformation8>
  <loadInformation435 model="Cisco 7945">SCCP45.9-3-1SR4-1S</loadInformation435>
</Default>
<!-- generated -->
`
)

func TestParseDeviceConfig(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   string
		want phoneConfig
	}{
		{"SCCP, members out of order", sccpCnf, phoneConfig{
			Protocol: "SCCP", Load: "P00308010100", DevicePool: "Default", VersionStamp: "{Jan 01 2003 00:00:00}", UserLocale: "English_United_States",
			CallManagers: []callManager{{Priority: 0, Host: "10.0.0.1", SCCPPort: 2000, SIPPort: 5060}, {Priority: 1, Host: "10.0.0.2", SCCPPort: 2002, SIPPort: 5060}},
		}},
		{"SIP", sipCnf, phoneConfig{
			Protocol: "SIP", Load: "sip88xx.14-2-1-0001-14", VersionStamp: "d902ed5a-c1e5-4233-b1d6-a960d53d1c3a",
			CallManagers: []callManager{{Priority: 0, Host: "cm.example.net", SCCPPort: 2000, SIPPort: 5062}},
		}},
		{"no load", strings.Replace(sipCnf, "<loadInformation>sip88xx.14-2-1-0001-14</loadInformation>", "<loadInformation></loadInformation>", 1), phoneConfig{
			Protocol: "SIP", VersionStamp: "d902ed5a-c1e5-4233-b1d6-a960d53d1c3a",
			CallManagers: []callManager{{Priority: 0, Host: "cm.example.net", SCCPPort: 2000, SIPPort: 5062}},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseDeviceConfig([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", *got, tt.want)
			}
		})
	}
}

func TestParseDefaultConfig(t *testing.T) {
	got, err := parseDefaultConfig([]byte(defaultCnf), 435)
	if err != nil {
		t.Fatal(err)
	}
	want := phoneConfig{Load: "SCCP45.9-3-1SR4-1S", CallManagers: []callManager{
		{Priority: 0, Host: "10.0.0.1", SCCPPort: 2000, SIPPort: 5060}, {Priority: 1, Host: "10.0.0.2", SCCPPort: 2000, SIPPort: 5060}}}
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("got  %+v\nwant %+v", *got, want)
	}
	// A model the file names no load for keeps its own.
	got, err = parseDefaultConfig([]byte(defaultCnf), 684)
	if err != nil || got.Load != "" {
		t.Errorf("device type 684: %+v, %v; want no load", got, err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	member := func(attrs, inner string) string {
		return `<device><deviceProtocol>SIP</deviceProtocol><devicePool><callManagerGroup><members><member ` + attrs + `><callManager>` +
			inner + `</callManager></member></members></callManagerGroup></devicePool></device>`
	}
	for _, tt := range []struct {
		name, in, want string
	}{
		{"empty", "", "no <device>"},
		{"not XML", "SEP001122334455", "no <device>"},
		{"other root", "<Default/>", "root <Default>, want <device>"},
		{"truncated", sccpCnf[:len(sccpCnf)/2], "configuration file"},
		{"second root", sipCnf + "<device/>", "<device> after </device>"},
		{"text after root", sipCnf + "junk", "text after </device>"},
		{"no protocol", `<device><loadInformation>x</loadInformation></device>`, `deviceProtocol "" is neither`},
		{"bad protocol", strings.Replace(sipCnf, ">SIP<", ">MGCP<", 1), `deviceProtocol "MGCP"`},
		{"no members", `<device><deviceProtocol>SCCP</deviceProtocol></device>`, "no CallManager"},
		{"empty host", member(`priority="0"`, `<processNodeName> </processNodeName>`), "processNodeName"},
		{"host with a slash", member(`priority="0"`, `<processNodeName>a/b</processNodeName>`), "processNodeName"},
		{"bad priority", member(`priority="x"`, `<processNodeName>h</processNodeName>`), `priority: "x"`},
		{"priority too high", member(`priority="5"`, `<processNodeName>h</processNodeName>`), `priority: "5"`},
		{"port 0", member(`priority="0"`, `<ports><sipPort>0</sipPort></ports><processNodeName>h</processNodeName>`), "sipPort"},
		{"port too high", member(`priority="0"`, `<ports><ethernetPhonePort>65536</ethernetPhonePort></ports><processNodeName>h</processNodeName>`), "ethernetPhonePort"},
		{"load with a path", strings.Replace(sipCnf, "sip88xx.14-2-1-0001-14", "../etc/passwd", 1), "not a load name"},
		{"load with a space", strings.Replace(sipCnf, "sip88xx.14-2-1-0001-14", "a b", 1), "not a load name"},
		{"too large", "<device>" + strings.Repeat(" ", maxConfigSize) + "</device>", "more than"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseDeviceConfig([]byte(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error with %q", err, tt.want)
			}
		})
	}
	for _, tt := range []struct {
		name, in, want string
	}{
		{"device file", sipCnf, "root <device>, want <Default>"},
		{"load twice", strings.Replace(defaultCnf, "</Default>", `<loadInformation435>x</loadInformation435></Default>`, 1), "twice"},
		{"empty load", strings.Replace(defaultCnf, "SCCP45.9-3-1SR4-1S", "", 1), "is empty"},
		{"no members", `<Default><loadInformation435>x</loadInformation435></Default>`, "no CallManager"},
	} {
		t.Run("default/"+tt.name, func(t *testing.T) {
			_, err := parseDefaultConfig([]byte(tt.in), 435)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error with %q", err, tt.want)
			}
		})
	}
}

// TestParseConfigManyMembers: a phone takes the first five members.
func TestParseConfigManyMembers(t *testing.T) {
	var b strings.Builder
	b.WriteString(`<device><deviceProtocol>SCCP</deviceProtocol><devicePool><callManagerGroup><members>`)
	for i := 4; i >= 0; i-- {
		b.WriteString(`<member priority="` + string(rune('0'+i)) + `"><callManager><processNodeName>cm` + string(rune('0'+i)) + `</processNodeName></callManager></member>`)
	}
	b.WriteString(`<member priority="0"><callManager><processNodeName>sixth</processNodeName></callManager></member>`)
	b.WriteString(`</members></callManagerGroup></devicePool></device>`)
	c, err := parseDeviceConfig([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	var hosts []string
	for _, cm := range c.CallManagers {
		hosts = append(hosts, cm.Host)
	}
	if want := []string{"cm0", "cm1", "cm2", "cm3", "cm4"}; !reflect.DeepEqual(hosts, want) {
		t.Errorf("CallManagers %v, want %v", hosts, want)
	}
}

func FuzzParseCnfXML(f *testing.F) {
	for _, s := range []string{sccpCnf, sipCnf, defaultCnf, "<device/>", "<Default></Default>"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(c *phoneConfig, err error) {
			if err != nil {
				return
			}
			if len(c.CallManagers) == 0 || len(c.CallManagers) > maxCallManagers {
				t.Fatalf("%d CallManagers", len(c.CallManagers))
			}
			for i, cm := range c.CallManagers {
				if cm.Host == "" || cm.SCCPPort < 1 || cm.SCCPPort > 65535 || cm.SIPPort < 1 || cm.SIPPort > 65535 ||
					i > 0 && cm.Priority < c.CallManagers[i-1].Priority {
					t.Fatalf("CallManager %d: %+v", i, cm)
				}
			}
			if checkLoadName(c.Load) != nil {
				t.Fatalf("load %q", c.Load)
			}
		}
		check(parseDeviceConfig(data))
		check(parseDefaultConfig(data, 435))
	})
}
