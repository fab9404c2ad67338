package provision

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/images"
	"github.com/phoneboot/phoneboot/userspace/bootfiles"
	"github.com/phoneboot/phoneboot/userspace/neighbor"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

const zeroHash = "0000000000000000000000000000000000000000000000000000000000000000"

// testCatalog is a small catalog: a SIP load for the 88xx and 78xx, and an
// SCCP load.
var testCatalog = &images.Catalog{Loads: []images.Load{
	{ID: "sip88xx.14-2-1-0001-14", Models: []string{"CP-8811", "CP-8841", "CP-8851", "CP-8861"},
		LoadsFile: images.File{Name: "sip88xx.14-2-1-0001-14.loads", SHA256: zeroHash},
		Files:     []images.File{{Name: "kern88xx.14-2-1-0001-14.sbn", Size: 1000, SHA256: zeroHash, Platform: 1, Role: "kern"}}},
	{ID: "sip78xx.14-2-1-0001-14", Models: []string{"CP-7821", "CP-7841"},
		LoadsFile: images.File{Name: "sip78xx.14-2-1-0001-14.loads", SHA256: zeroHash},
		Files:     []images.File{{Name: "kern78xx.14-2-1-0001-14.sbn", Size: 700, SHA256: zeroHash, Platform: 1, Role: "kern"}}},
	{ID: "SCCP41.9-4-2SR3-1S", Models: []string{"CP-7941"},
		LoadsFile: images.File{Name: "SCCP41.9-4-2SR3-1S.loads", SHA256: zeroHash},
		Files:     []images.File{{Name: "jar41sccp.9-4-2ES26.sbn", Size: 900, SHA256: zeroHash, Platform: 1, Role: "jar"}}},
}}

var (
	macA = MAC{0x00, 0x1e, 0x7a, 0x12, 0x34, 0x56}
	macB = MAC{0x58, 0x97, 0x1e, 0xcc, 0x97, 0xc1}
	macC = MAC{0x00, 0x06, 0x53, 0x7b, 0x84, 0xef}
	macD = MAC{0xa4, 0x6c, 0x2a, 0x00, 0x00, 0x01}
)

// testConfig has three phones: a SIP 8851 with two lines, a 7841 in the
// second group with its own locales, an SCCP 7941.
func testConfig() Config {
	c := DefaultConfig()
	c.DevicePool.DateTime = DateTime{Name: "CMLocal", DateTemplate: "D.M.YY", TimeZone: "Central Europe Standard/Daylight Time", NTP: []string{"10.64.0.1", "ntp.example.net"}}
	c.Groups = []Group{
		{Name: "main", Members: []Member{{Host: "cm2.example.net", Priority: 1}, {Host: "10.0.0.10", Priority: 0}, {Host: "10.0.0.12", SCCPPort: 2002, SIPPort: 5062, Priority: 2}}},
		{Name: "branch", Members: []Member{{Host: "10.9.0.10", Priority: 0}}},
	}
	c.Phones = []Phone{
		{MAC: macA, Model: "CP-8851", Description: "Reception desk", Lines: []Line{
			{Number: "1001", Label: "Reception", DisplayName: "Front Desk"},
			{Number: "1002", Label: "Queue"},
		}},
		{MAC: macB, Model: "CP-7841", Group: "branch", UserLocale: "German_Germany", NetworkLocale: "Germany", Lines: []Line{{Number: "2001"}}},
		{MAC: macC, Model: "CP-7941", Description: "Lobby"},
	}
	return c
}

type fixture struct {
	root, catalog string
}

// newFixture writes a root with testCatalog's files (and files) and a
// catalog file beside it.
func newFixture(t testing.TB, files map[string]string) fixture {
	t.Helper()
	dir := t.TempDir()
	f := fixture{root: filepath.Join(dir, "root"), catalog: filepath.Join(dir, "catalog.yaml")}
	if err := os.Mkdir(f.root, 0o755); err != nil {
		t.Fatal(err)
	}
	c, err := images.Synthesize(f.root, testCatalog, 3)
	if err != nil {
		t.Fatal(err)
	}
	data, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.catalog, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		p := filepath.Join(f.root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f fixture) service(t testing.TB, cfg Config, nb Neighbors) *Service {
	t.Helper()
	cfg.Root, cfg.Catalog = f.root, f.catalog
	s, err := New(context.Background(), cfg, nb, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

var clientA = netip.MustParseAddrPort("10.64.0.23:50000")

func fetch(t testing.TB, s *Service, name string, client netip.AddrPort) ([]byte, bootfiles.File, error) {
	t.Helper()
	f, err := s.Open(context.Background(), bootfiles.Request{Name: name, Client: client, Protocol: "tftp"})
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	return bytes.Clone(f.Bytes()), f, nil
}

func mustFetch(t testing.TB, s *Service, name string) []byte {
	t.Helper()
	b, _, err := fetch(t, s, name, clientA)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return b
}

// cnf mirrors every element the SEPMAC template writes.
type cnf struct {
	XMLName        xml.Name `xml:"device"`
	FullConfig     string   `xml:"fullConfig"`
	DeviceProtocol string   `xml:"deviceProtocol"`
	DevicePool     struct {
		Name     string `xml:"name"`
		DateTime struct {
			Name         string `xml:"name"`
			DateTemplate string `xml:"dateTemplate"`
			TimeZone     string `xml:"timeZone"`
			NTP          []struct {
				Name string `xml:"name"`
				Mode string `xml:"ntpMode"`
			} `xml:"ntps>ntp"`
		} `xml:"dateTimeSetting"`
		Members []cnfMember `xml:"callManagerGroup>members>member"`
	} `xml:"devicePool"`
	SIPProfile *struct {
		RegisterWithProxy string `xml:"sipProxies>registerWithProxy"`
		PhoneLabel        string `xml:"phoneLabel"`
		Lines             []struct {
			Button       int    `xml:"button,attr"`
			FeatureID    string `xml:"featureID"`
			FeatureLabel string `xml:"featureLabel"`
			Proxy        string `xml:"proxy"`
			Port         int    `xml:"port"`
			Name         string `xml:"name"`
			DisplayName  string `xml:"displayName"`
			Contact      string `xml:"contact"`
		} `xml:"sipLines>line"`
	} `xml:"sipProfile"`
	Description     string `xml:"description"`
	VersionStamp    string `xml:"versionStamp"`
	LoadInformation string `xml:"loadInformation"`
	UserLocale      struct {
		Name       string `xml:"name"`
		UID        string `xml:"uid"`
		LangCode   string `xml:"langCode"`
		WinCharSet string `xml:"winCharSet"`
	} `xml:"userLocale"`
	NetworkLocale          string `xml:"networkLocale"`
	NetworkLocaleInfo      string `xml:"networkLocaleInfo>name"`
	DeviceSecurityMode     string `xml:"deviceSecurityMode"`
	TransportLayerProtocol string `xml:"transportLayerProtocol"`
}

type cnfMember struct {
	Priority int    `xml:"priority,attr"`
	SCCPPort int    `xml:"callManager>ports>ethernetPhonePort"`
	SIPPort  int    `xml:"callManager>ports>sipPort"`
	Host     string `xml:"callManager>processNodeName"`
}

func parseCnf(t testing.TB, data []byte) cnf {
	t.Helper()
	var c cnf
	if err := xml.Unmarshal(data, &c); err != nil {
		t.Fatalf("generated XML does not parse: %v\n%s", err, data)
	}
	return c
}

// elementPaths lists every element of an XML document by its path, in
// document order, and fails on anything but elements, text, comments and
// the declaration.
func elementPaths(t testing.TB, data []byte) []string {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(data))
	var stack, paths []string
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("XML: %v\n%s", err, data)
		}
		switch x := tok.(type) {
		case xml.StartElement:
			stack = append(stack, x.Name.Local)
			paths = append(paths, strings.Join(stack, "/"))
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.Directive:
			t.Fatalf("directive %q in generated XML", x)
		}
	}
	return paths
}

var stampRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func TestPhoneConfig(t *testing.T) {
	f := newFixture(t, nil)
	s := f.service(t, testConfig(), nil)

	main := []cnfMember{
		{Priority: 0, Host: "10.0.0.10", SCCPPort: 2000, SIPPort: 5060},
		{Priority: 1, Host: "cm2.example.net", SCCPPort: 2000, SIPPort: 5060},
		{Priority: 2, Host: "10.0.0.12", SCCPPort: 2002, SIPPort: 5062},
	}
	sipOnly := func(ms []cnfMember) []cnfMember {
		out := slices.Clone(ms)
		for i := range out {
			out[i].SCCPPort = 0
		}
		return out
	}
	sccpOnly := func(ms []cnfMember) []cnfMember {
		out := slices.Clone(ms)
		for i := range out {
			out[i].SIPPort = 0
		}
		return out
	}
	for _, tc := range []struct {
		name, file                  string
		protocol, load              string
		members                     []cnfMember
		lines                       [][3]string // number, label, display name
		description                 string
		locale, langCode, netLocale string
	}{
		{"SIP 8851", "SEP001E7A123456.cnf.xml", "SIP", "sip88xx.14-2-1-0001-14", sipOnly(main),
			[][3]string{{"1001", "Reception", "Front Desk"}, {"1002", "Queue", ""}}, "Reception desk",
			"English_United_States", "en_US", "United_States"},
		{"SIP 7841, own group and locales", "SEP58971ECC97C1.cnf.xml", "SIP", "sip78xx.14-2-1-0001-14",
			[]cnfMember{{Priority: 0, Host: "10.9.0.10", SIPPort: 5060}},
			[][3]string{{"2001", "", ""}}, "", "German_Germany", "de_DE", "Germany"},
		{"SCCP 7941", "SEP0006537B84EF.cnf.xml", "SCCP", "SCCP41.9-4-2SR3-1S", sccpOnly(main), nil, "Lobby",
			"English_United_States", "en_US", "United_States"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := mustFetch(t, s, tc.file)
			c := parseCnf(t, data)
			check := func(what, got, want string) {
				t.Helper()
				if got != want {
					t.Errorf("%s: got %q, want %q", what, got, want)
				}
			}
			check("fullConfig", c.FullConfig, "true")
			check("deviceProtocol", c.DeviceProtocol, tc.protocol)
			check("devicePool/name", c.DevicePool.Name, "Default")
			check("dateTimeSetting/name", c.DevicePool.DateTime.Name, "CMLocal")
			check("dateTemplate", c.DevicePool.DateTime.DateTemplate, "D.M.YY")
			check("timeZone", c.DevicePool.DateTime.TimeZone, "Central Europe Standard/Daylight Time")
			if n := c.DevicePool.DateTime.NTP; len(n) != 2 || n[0].Name != "10.64.0.1" || n[1].Name != "ntp.example.net" || n[0].Mode != "unicast" || n[1].Mode != "unicast" {
				t.Errorf("ntps: %+v", n)
			}
			if !slices.Equal(c.DevicePool.Members, tc.members) {
				t.Errorf("members:\n got %+v\nwant %+v", c.DevicePool.Members, tc.members)
			}
			check("description", c.Description, tc.description)
			check("loadInformation", c.LoadInformation, tc.load)
			check("userLocale/name", c.UserLocale.Name, tc.locale)
			check("userLocale/uid", c.UserLocale.UID, "1")
			check("userLocale/langCode", c.UserLocale.LangCode, tc.langCode)
			check("userLocale/winCharSet", c.UserLocale.WinCharSet, "utf-8")
			check("networkLocale", c.NetworkLocale, tc.netLocale)
			check("networkLocaleInfo/name", c.NetworkLocaleInfo, tc.netLocale)
			check("deviceSecurityMode", c.DeviceSecurityMode, "1")
			if !stampRe.MatchString(c.VersionStamp) || c.VersionStamp == stampPlaceholder {
				t.Errorf("versionStamp %q", c.VersionStamp)
			}
			if tc.protocol == "SCCP" {
				check("transportLayerProtocol", c.TransportLayerProtocol, "")
				if c.SIPProfile != nil {
					t.Error("SCCP phone has a sipProfile")
				}
				return
			}
			check("transportLayerProtocol", c.TransportLayerProtocol, "1")
			if c.SIPProfile == nil {
				t.Fatal("no sipProfile")
			}
			check("registerWithProxy", c.SIPProfile.RegisterWithProxy, "true")
			check("phoneLabel", c.SIPProfile.PhoneLabel, tc.description)
			if len(c.SIPProfile.Lines) != len(tc.lines) {
				t.Fatalf("%d lines, want %d", len(c.SIPProfile.Lines), len(tc.lines))
			}
			for i, l := range c.SIPProfile.Lines {
				want := tc.lines[i]
				if l.Button != i+1 || l.FeatureID != "9" || l.Proxy != "USECALLMANAGER" || l.Port != tc.members[0].SIPPort ||
					l.Name != want[0] || l.Contact != want[0] || l.FeatureLabel != want[1] || l.DisplayName != want[2] {
					t.Errorf("line %d: %+v, want %v", i+1, l, want)
				}
			}
		})
	}
}

// TestPhoneConfigElements pins the element layout: every element the
// parse-back struct checks, and nothing else.
func TestPhoneConfigElements(t *testing.T) {
	f := newFixture(t, nil)
	s := f.service(t, testConfig(), nil)
	common := []string{"device", "device/fullConfig", "device/deviceProtocol", "device/devicePool", "device/devicePool/name",
		"device/devicePool/dateTimeSetting", "device/devicePool/dateTimeSetting/name", "device/devicePool/dateTimeSetting/dateTemplate",
		"device/devicePool/dateTimeSetting/timeZone", "device/devicePool/dateTimeSetting/ntps",
		"device/devicePool/dateTimeSetting/ntps/ntp", "device/devicePool/dateTimeSetting/ntps/ntp/name", "device/devicePool/dateTimeSetting/ntps/ntp/ntpMode",
		"device/devicePool/callManagerGroup", "device/devicePool/callManagerGroup/members", "device/devicePool/callManagerGroup/members/member",
		"device/devicePool/callManagerGroup/members/member/callManager", "device/devicePool/callManagerGroup/members/member/callManager/ports",
		"device/devicePool/callManagerGroup/members/member/callManager/processNodeName",
		"device/description", "device/versionStamp", "device/loadInformation", "device/userLocale", "device/userLocale/name",
		"device/userLocale/uid", "device/userLocale/langCode", "device/userLocale/winCharSet", "device/networkLocale",
		"device/networkLocaleInfo", "device/networkLocaleInfo/name", "device/deviceSecurityMode"}
	sip := append(slices.Clone(common), "device/devicePool/callManagerGroup/members/member/callManager/ports/sipPort",
		"device/sipProfile", "device/sipProfile/sipProxies", "device/sipProfile/sipProxies/registerWithProxy", "device/sipProfile/phoneLabel",
		"device/sipProfile/sipLines", "device/sipProfile/sipLines/line", "device/sipProfile/sipLines/line/featureID",
		"device/sipProfile/sipLines/line/featureLabel", "device/sipProfile/sipLines/line/proxy", "device/sipProfile/sipLines/line/port",
		"device/sipProfile/sipLines/line/name", "device/sipProfile/sipLines/line/displayName", "device/sipProfile/sipLines/line/contact",
		"device/transportLayerProtocol")
	sccp := append(slices.Clone(common), "device/devicePool/callManagerGroup/members/member/callManager/ports/ethernetPhonePort")
	for file, want := range map[string][]string{"SEP001E7A123456.cnf.xml": sip, "SEP0006537B84EF.cnf.xml": sccp} {
		got := elementPaths(t, mustFetch(t, s, file))
		slices.Sort(want)
		got = slices.Compact(slices.Sorted(slices.Values(got)))
		if !slices.Equal(got, want) {
			t.Errorf("%s elements:\n got %q\nwant %q", file, got, want)
		}
	}
}

func TestGolden(t *testing.T) {
	f := newFixture(t, nil)
	s := f.service(t, testConfig(), nil)
	cfg := testConfig()
	cfg.AutoRegistration = true
	auto := f.service(t, cfg, nil)
	for golden, get := range map[string]func() []byte{
		"SEP001E7A123456.cnf.xml": func() []byte { return mustFetch(t, s, "SEP001E7A123456.cnf.xml") },
		"SEP58971ECC97C1.cnf.xml": func() []byte { return mustFetch(t, s, "SEP58971ECC97C1.cnf.xml") },
		"SEP0006537B84EF.cnf.xml": func() []byte { return mustFetch(t, s, "SEP0006537B84EF.cnf.xml") },
		"XMLDefault.cnf.xml":      func() []byte { return mustFetch(t, auto, "XMLDefault.cnf.xml") },
	} {
		t.Run(golden, func(t *testing.T) {
			got := get()
			path := filepath.Join("testdata", golden)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from %s (run with -update after a deliberate change):\n%s", golden, path, got)
			}
		})
	}
}

// TestXMLInjection puts markup, entities and quotes into every free-text
// value of the inventory: each must come back, after parsing, exactly as
// configured, and the document must have the same elements as with plain
// values.
func TestXMLInjection(t *testing.T) {
	hostile := []string{
		`</description><loadInformation>evil</loadInformation>`,
		`<![CDATA[x]]>`, `]]>`, `&amp;`, `&lt;`, `&#x3c;`, `&xxe;`, `<!ENTITY x SYSTEM "file:///etc/passwd">`,
		`"'`, `a"b`, `<?xml version="1.0"?>`, `<!-- x -->`, `Ünïcødé ☎`, `{{.Load}}`, `%s%n`,
	}
	f := newFixture(t, nil)
	plain := f.service(t, testConfig(), nil)
	plainPaths := elementPaths(t, mustFetch(t, plain, "SEP001E7A123456.cnf.xml"))
	for _, v := range hostile {
		t.Run(v, func(t *testing.T) {
			cfg := testConfig()
			cfg.DevicePool.Name = v
			cfg.DevicePool.DateTime.Name = v
			cfg.DevicePool.DateTime.TimeZone = v
			cfg.Phones[0].Description = v
			cfg.Phones[0].Lines[0].Label = v
			cfg.Phones[0].Lines[0].DisplayName = v
			cfg.Phones[0].Lines[1].Label = "x" + v
			s := f.service(t, cfg, nil)
			data := mustFetch(t, s, "SEP001E7A123456.cnf.xml")
			if paths := elementPaths(t, data); !slices.Equal(paths, plainPaths) {
				t.Fatalf("elements changed:\n%s", data)
			}
			c := parseCnf(t, data)
			for what, got := range map[string]string{
				"devicePool/name": c.DevicePool.Name, "dateTimeSetting/name": c.DevicePool.DateTime.Name,
				"timeZone": c.DevicePool.DateTime.TimeZone, "description": c.Description, "phoneLabel": c.SIPProfile.PhoneLabel,
				"featureLabel": c.SIPProfile.Lines[0].FeatureLabel, "displayName": c.SIPProfile.Lines[0].DisplayName,
			} {
				if got != v {
					t.Errorf("%s: got %q, want %q", what, got, v)
				}
			}
			if got := c.SIPProfile.Lines[1].FeatureLabel; got != "x"+v {
				t.Errorf("second label: got %q", got)
			}
			if c.LoadInformation != "sip88xx.14-2-1-0001-14" {
				t.Errorf("loadInformation %q", c.LoadInformation)
			}
		})
	}
}

// TestEscapeNeverLeaksMarkup checks the escaping itself on characters XML
// cannot carry at all, which the config refuses but esc must still
// neutralise.
func TestEscapeNeverLeaksMarkup(t *testing.T) {
	for _, s := range []string{"a<b", "x\x00y", "\xff\xfe", "tab\there", "nl\nx", "cr\rx", "'\"&"} {
		e := string(esc(s))
		if strings.ContainsAny(e, "<>\"'\x00\n\r\t") {
			t.Errorf("esc(%q) = %q", s, e)
		}
		var v struct {
			X string `xml:"x"`
		}
		if err := xml.Unmarshal([]byte("<r><x>"+e+"</x></r>"), &v); err != nil {
			t.Errorf("esc(%q) = %q does not parse: %v", s, e, err)
		}
	}
	if s := "plain text 123"; string(esc(s)) != s {
		t.Errorf("plain text changed: %q", esc(s))
	}
}

// TestDataIsEscapedText makes the escaping structural: the templates' data
// types hold no plain strings, only xmlText, so no template can print an
// unescaped inventory value.
func TestDataIsEscapedText(t *testing.T) {
	for _, v := range []any{cnfData{}, defaultData{}} {
		walkTypes(t, reflect.TypeOf(v), reflect.TypeOf(v).Name())
	}
}

func walkTypes(t *testing.T, typ reflect.Type, path string) {
	switch typ.Kind() {
	case reflect.String:
		if typ != reflect.TypeFor[xmlText]() {
			t.Errorf("%s is a %s, not xmlText", path, typ)
		}
	case reflect.Slice:
		walkTypes(t, typ.Elem(), path+"[]")
	case reflect.Struct:
		for i := range typ.NumField() {
			walkTypes(t, typ.Field(i).Type, path+"."+typ.Field(i).Name)
		}
	case reflect.Int, reflect.Bool:
	default:
		t.Errorf("%s: unexpected kind %s", path, typ.Kind())
	}
}

func TestMACCase(t *testing.T) {
	f := newFixture(t, map[string]string{
		"SEP0000000000AA.cnf.xml": "<device>static</device>",
	})
	s := f.service(t, testConfig(), nil)
	want := mustFetch(t, s, "SEP001E7A123456.cnf.xml")
	for _, name := range []string{"sep001e7a123456.cnf.xml", "Sep001E7a123456.CNF.XML", "/SEP001E7A123456.cnf.xml", "//SEP001e7A123456.cnf.xml"} {
		if got := mustFetch(t, s, name); !bytes.Equal(got, want) {
			t.Errorf("%s: different content", name)
		}
	}
	// A phone the inventory lacks: the root's file, in any case, or nothing.
	if got := mustFetch(t, s, "sep0000000000aa.cnf.xml"); string(got) != "<device>static</device>" {
		t.Errorf("root file: %q", got)
	}
	for _, name := range []string{"SEP0000000000BB.cnf.xml", "SEP001E7A12345G.cnf.xml", "SEP001E7A1234567.cnf.xml", "x/SEP001E7A123456.cnf.xml"} {
		if _, _, err := fetch(t, s, name, clientA); !errors.Is(err, bootfiles.ErrNotFound) {
			t.Errorf("%s: got %v, want not found", name, err)
		}
	}
	for _, name := range []string{"../SEP001E7A123456.cnf.xml", "SEP001E7A123456.cnf.xml\x00", ""} {
		if _, _, err := fetch(t, s, name, clientA); !errors.Is(err, bootfiles.ErrForbidden) {
			t.Errorf("%q: got %v, want forbidden", name, err)
		}
	}
}

func TestProxy(t *testing.T) {
	f := newFixture(t, nil)
	cfg := testConfig()
	cfg.AutoRegistration = true
	cfg.Proxy = Proxy{Enabled: true, Host: "10.255.0.1", SIPPort: 5070, Subnets: []ProxySubnet{
		{Subnet: netip.MustParsePrefix("10.64.0.0/13"), Host: "10.64.0.1"},
		{Subnet: netip.MustParsePrefix("10.64.0.0/24"), Host: "10.64.0.254"},
		{Subnet: netip.MustParsePrefix("2001:db8::/32"), Host: "2001:db8::1"},
	}}
	s := f.service(t, cfg, nil)
	for _, tc := range []struct {
		client, host string
	}{
		{"10.64.1.7:1000", "10.64.0.1"},
		{"10.64.0.7:1000", "10.64.0.254"}, // the longer prefix
		{"[::ffff:10.64.1.7]:1000", "10.64.0.1"},
		{"[2001:db8::42]:1000", "2001:db8::1"},
		{"192.168.1.7:1000", "10.255.0.1"}, // no subnet: the default host
	} {
		client := netip.MustParseAddrPort(tc.client)
		for _, file := range []string{"SEP001E7A123456.cnf.xml", "SEP0006537B84EF.cnf.xml"} {
			data, _, err := fetch(t, s, file, client)
			if err != nil {
				t.Fatal(err)
			}
			c := parseCnf(t, data)
			want := cnfMember{Priority: 0, Host: tc.host, SIPPort: 5070}
			if c.DeviceProtocol == "SCCP" {
				want = cnfMember{Priority: 0, Host: tc.host, SCCPPort: 2000}
			}
			if !slices.Equal(c.DevicePool.Members, []cnfMember{want}) {
				t.Errorf("%s from %s: members %+v, want %+v", file, client, c.DevicePool.Members, want)
			}
		}
		data, _, err := fetch(t, s, "XMLDefault.cnf.xml", client)
		if err != nil {
			t.Fatal(err)
		}
		if d := parseDefault(t, data); !slices.Equal(d.Members, []cnfMember{{Priority: 0, Host: tc.host, SCCPPort: 2000, SIPPort: 5070}}) {
			t.Errorf("XMLDefault from %s: %+v", client, d.Members)
		}
	}
	// Without a default host, a phone in no subnet gets nothing.
	cfg.Proxy.Host = ""
	s = f.service(t, cfg, nil)
	if _, _, err := fetch(t, s, "SEP001E7A123456.cnf.xml", netip.MustParseAddrPort("192.168.1.7:1000")); !errors.Is(err, bootfiles.ErrNotFound) {
		t.Errorf("outside the subnets: %v", err)
	}
	// The proxy off: straight at the group (TestPhoneConfig checks the
	// members); on and off give different version stamps.
	cfg.Proxy.Enabled = false
	off := parseCnf(t, mustFetch(t, f.service(t, cfg, nil), "SEP001E7A123456.cnf.xml"))
	cfg.Proxy = Proxy{Enabled: true, Host: "10.0.0.10"}
	on := parseCnf(t, mustFetch(t, f.service(t, cfg, nil), "SEP001E7A123456.cnf.xml"))
	if len(off.DevicePool.Members) != 3 || len(on.DevicePool.Members) != 1 || off.VersionStamp == on.VersionStamp {
		t.Errorf("off: %d members, stamp %s; on: %d members, stamp %s", len(off.DevicePool.Members), off.VersionStamp, len(on.DevicePool.Members), on.VersionStamp)
	}
}

type xmlDefault struct {
	XMLName xml.Name    `xml:"Default"`
	Members []cnfMember `xml:"callManagerGroup>members>member"`
	Loads   []struct {
		XMLName xml.Name
		Model   string `xml:"model,attr"`
		Load    string `xml:",chardata"`
	} `xml:",any"`
}

func parseDefault(t testing.TB, data []byte) xmlDefault {
	t.Helper()
	var d xmlDefault
	if err := xml.Unmarshal(data, &d); err != nil {
		t.Fatalf("XMLDefault does not parse: %v\n%s", err, data)
	}
	return d
}

func TestAutoRegistration(t *testing.T) {
	f := newFixture(t, map[string]string{"XMLDefault.cnf.xml": "<Default>static</Default>"})
	cfg := testConfig()
	off := f.service(t, cfg, nil)
	// Off: not found, even though the root has a file of that name.
	for _, name := range []string{"XMLDefault.cnf.xml", "xmldefault.cnf.xml", "/XmlDefault.cnf.xml"} {
		if _, _, err := fetch(t, off, name, clientA); !errors.Is(err, bootfiles.ErrNotFound) {
			t.Errorf("auto-registration off, %s: got %v", name, err)
		}
	}
	cfg.AutoRegistration = true
	on := f.service(t, cfg, nil)
	data := mustFetch(t, on, "xmldefault.CNF.xml")
	d := parseDefault(t, data)
	wantMembers := []cnfMember{
		{Priority: 0, Host: "10.0.0.10", SCCPPort: 2000, SIPPort: 5060},
		{Priority: 1, Host: "cm2.example.net", SCCPPort: 2000, SIPPort: 5060},
		{Priority: 2, Host: "10.0.0.12", SCCPPort: 2002, SIPPort: 5062},
	}
	if !slices.Equal(d.Members, wantMembers) {
		t.Errorf("members %+v", d.Members)
	}
	// One tag per model of models.yaml the catalog has a load for, named
	// by its device type.
	ms, err := images.Models()
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, m := range ms {
		if ids := testCatalog.LoadsFor(m.Model); len(ids) == 1 {
			want = append(want, "loadInformation"+itoa(m.DeviceType)+"|Cisco "+strings.TrimPrefix(m.Model, "CP-")+"|"+ids[0])
		}
	}
	var got []string
	for _, l := range d.Loads {
		if l.XMLName.Local == "callManagerGroup" {
			continue
		}
		got = append(got, l.XMLName.Local+"|"+l.Model+"|"+l.Load)
	}
	if len(want) < 4 || !slices.Equal(got, want) {
		t.Errorf("loads:\n got %q\nwant %q", got, want)
	}
	if !strings.Contains(string(data), `<loadInformation684 model="Cisco 8851">sip88xx.14-2-1-0001-14</loadInformation684>`) {
		t.Errorf("no 8851 tag:\n%s", data)
	}
	// A phone in the inventory still gets its own file.
	if c := parseCnf(t, mustFetch(t, on, "SEP001E7A123456.cnf.xml")); c.LoadInformation == "" {
		t.Error("inventory phone lost its load")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestTrustLists(t *testing.T) {
	f := newFixture(t, map[string]string{"ITLFile.tlv": "itl", "CTLSEP001E7A123456.tlv": "ctl"})
	s := f.service(t, testConfig(), nil)
	for name, want := range map[string]string{"ITLFile.tlv": "itl", "itlfile.tlv": "itl", "/CTLSEP001E7A123456.tlv": "ctl", "ctlsep001e7a123456.tlv": "ctl"} {
		got, file, err := fetch(t, s, name, clientA)
		if err != nil || string(got) != want || file.OS() == nil {
			t.Errorf("%s: %q, %v", name, got, err)
		}
	}
	for _, name := range []string{"ITLSEP001E7A123456.tlv", "CTLSEP58971ECC97C1.tlv", "CTLFile.tlv", "SEP001E7A123456.cnf.xml.sgn"} {
		start := time.Now()
		_, _, err := fetch(t, s, name, clientA)
		if !errors.Is(err, bootfiles.ErrNotFound) {
			t.Errorf("%s: got %v, want not found", name, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s: not found after %v", name, d) // a retry loop, not a speed target
		}
	}
	// Other files come from the root as they are.
	f2 := newFixture(t, map[string]string{"Ringlist.xml": "<CiscoIPPhoneRingList/>", "English_United_States/mk-sip.jar": "jar"})
	s2 := f2.service(t, testConfig(), nil)
	for name, want := range map[string]string{"ringlist.xml": "<CiscoIPPhoneRingList/>", "/english_united_states/MK-SIP.jar": "jar"} {
		if got := mustFetch(t, s2, name); string(got) != want {
			t.Errorf("%s: %q", name, got)
		}
	}
	if got := mustFetch(t, s2, "kern88xx.14-2-1-0001-14.sbn"); len(got) != 1000 {
		t.Errorf("firmware: %d bytes", len(got))
	}
}

func TestVersionStamp(t *testing.T) {
	f := newFixture(t, nil)
	stamp := func(cfg Config) string {
		t.Helper()
		return parseCnf(t, mustFetch(t, f.service(t, cfg, nil), "SEP001E7A123456.cnf.xml")).VersionStamp
	}
	base := stamp(testConfig())
	if again := stamp(testConfig()); again != base {
		t.Errorf("same config, stamps %s and %s", base, again)
	}
	// Another phone's change leaves this one's stamp alone.
	other := testConfig()
	other.Phones[1].Lines[0].Number = "2999"
	if s := stamp(other); s != base {
		t.Errorf("another phone's change moved the stamp")
	}
	for name, edit := range map[string]func(*Config){
		"line number": func(c *Config) { c.Phones[0].Lines[1].Number = "1003" },
		"line label":  func(c *Config) { c.Phones[0].Lines[1].Label = "Queue 2" },
		"new line":    func(c *Config) { c.Phones[0].Lines = append(c.Phones[0].Lines, Line{Number: "1009"}) },
		"load": func(c *Config) {
			c.DefaultLoads = map[string]string{"CP-8851": "sip88xx.14-2-1-0001-14"}
			c.Phones[0].Load = "sip78xx.14-2-1-0001-14"
			c.Phones[0].Model = ""
		},
		"group member": func(c *Config) { c.Groups[0].Members[0].Host = "cm9.example.net" },
		"group":        func(c *Config) { c.Phones[0].Group = "branch" },
		"locale":       func(c *Config) { c.Phones[0].UserLocale = "French_France" },
		"time zone":    func(c *Config) { c.DevicePool.DateTime.TimeZone = "GMT Standard/Daylight Time" },
		"description":  func(c *Config) { c.Phones[0].Description = "Reception desk 2" },
	} {
		cfg := testConfig()
		edit(&cfg)
		if s := stamp(cfg); s == base {
			t.Errorf("%s: stamp did not change", name)
		}
	}
}

// fakeNeighbors is a neighbour table whose reads are counted.
type fakeNeighbors struct {
	mu    sync.Mutex
	list  []neighbor.Neighbor
	reads int
}

func (n *fakeNeighbors) List() []neighbor.Neighbor {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.reads++
	return slices.Clone(n.list)
}

func (n *fakeNeighbors) set(list ...neighbor.Neighbor) {
	n.mu.Lock()
	n.list = list
	n.mu.Unlock()
}

func TestNeighborModel(t *testing.T) {
	f := newFixture(t, nil)
	cfg := testConfig()
	cfg.Phones = append(cfg.Phones, Phone{MAC: macD, Lines: []Line{{Number: "3001"}}}) // no model
	nb := &fakeNeighbors{}
	s := f.service(t, cfg, nb)
	now := time.Date(2026, 3, 1, 12, 0, 0, 500e6, time.UTC)
	s.now = func() time.Time { return now }
	s.loadedAt = time.Date(2026, 3, 1, 11, 0, 0, 0, time.UTC)

	get := func() (cnf, time.Time) {
		t.Helper()
		data, file, err := fetch(t, s, "SEPA46C2A000001.cnf.xml", clientA)
		if err != nil {
			t.Fatal(err)
		}
		return parseCnf(t, data), file.ModTime()
	}
	c, mod := get()
	if c.LoadInformation != "" || !mod.Equal(s.loadedAt) {
		t.Errorf("not heard: load %q, modified %v", c.LoadInformation, mod)
	}
	nb.set(
		neighbor.Neighbor{Protocol: neighbor.CDP, DeviceID: "SEPA46C2A000001", Platform: "Cisco IP Phone 8851"},
		// Another phone's entry, and one for a phone whose model is
		// configured: neither changes anything.
		neighbor.Neighbor{Protocol: neighbor.CDP, DeviceID: "SEP0000000000FF", Platform: "Cisco IP Phone 7841"},
		neighbor.Neighbor{Protocol: neighbor.LLDP, DeviceID: "SEP001E7A123456", Platform: "CP-7841"},
	)
	if c, _ := get(); c.LoadInformation != "" {
		t.Errorf("read the table again within %v: %q", neighborRefresh, c.LoadInformation)
	}
	now = now.Add(neighborRefresh)
	c, mod = get()
	if c.LoadInformation != "sip88xx.14-2-1-0001-14" || c.DeviceProtocol != "SIP" {
		t.Errorf("heard as 8851: load %q protocol %q", c.LoadInformation, c.DeviceProtocol)
	}
	heardAt := time.Date(2026, 3, 1, 12, 0, 2, 0, time.UTC) // rounded up to the second
	if !mod.Equal(heardAt) {
		t.Errorf("modified %v, want %v", mod, heardAt)
	}
	if c := parseCnf(t, mustFetch(t, s, "SEP001E7A123456.cnf.xml")); c.LoadInformation != "sip88xx.14-2-1-0001-14" {
		t.Errorf("configured model overridden by LLDP: %q", c.LoadInformation)
	}
	// Heard the same a while later: the modification time stays.
	now = now.Add(10 * time.Second)
	if _, mod := get(); !mod.Equal(heardAt) {
		t.Errorf("modified moved to %v", mod)
	}
	// Gone from the table: the load goes, and the time moves on again.
	nb.set()
	now = now.Add(neighborRefresh)
	c, mod = get()
	if c.LoadInformation != "" || !mod.After(heardAt) {
		t.Errorf("after it left: load %q, modified %v", c.LoadInformation, mod)
	}
	// A variant suffix runs its base model's load.
	nb.set(neighbor.Neighbor{Protocol: neighbor.LLDP, DeviceID: "sepa46c2a000001", Platform: "CP-7841NR"})
	now = now.Add(neighborRefresh)
	if c, _ := get(); c.LoadInformation != "sip78xx.14-2-1-0001-14" {
		t.Errorf("7841NR: %q", c.LoadInformation)
	}
	reads := nb.reads
	for range 100 {
		get()
	}
	if nb.reads != reads {
		t.Errorf("%d table reads for 100 requests within a second", nb.reads-reads)
	}
}

func TestPlatformModel(t *testing.T) {
	for in, want := range map[string]string{
		"Cisco IP Phone 8851": "CP-8851", "Cisco IP Phone 7960": "CP-7960", "CP-8851": "CP-8851", "cp-8851nr": "CP-8851NR",
		"Cisco IP Phone CP-8845": "CP-8845", "Cisco IP Phone 7942G": "CP-7942G", "Cisco IP Phone 8851 SIP 14.2": "CP-8851",
		"": "", "Cisco": "", "Cisco IP Phone": "", "Cisco IP Phone 885": "", "Cisco IP Phone 88A1": "", "Cisco 8851-K9": "",
	} {
		if got := platformModel(in); got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
}

func TestProtocolOf(t *testing.T) {
	for load, want := range map[string]string{
		"sip88xx.14-2-1-0001-14": "SIP", "SCCP41.9-4-2SR3-1S": "SCCP", "sccp45.9-3-1SR4-1S": "SCCP", "P00308010200": "SCCP",
		"P0S3-08-12-00": "SIP", "": "SIP",
	} {
		if got := protocolOf(load); got != want {
			t.Errorf("%q: got %s, want %s", load, got, want)
		}
	}
}

func TestNewErrors(t *testing.T) {
	f := newFixture(t, nil)
	newWith := func(edit func(*Config)) error {
		cfg := testConfig()
		cfg.Root, cfg.Catalog = f.root, f.catalog
		edit(&cfg)
		s, err := New(context.Background(), cfg, nil, testLogger(t))
		if err == nil {
			s.Close()
		}
		return err
	}
	for _, tc := range []struct {
		name, key, msg string
		edit           func(*Config)
	}{
		{"phone load not in catalog", "phones[0].load", "not in the firmware catalog", func(c *Config) { c.Phones[0].Load = "sip88xx.15-0-1" }},
		{"phone load for another model", "phones[1].load", "is for CP-8811", func(c *Config) { c.Phones[1].Load = "sip88xx.14-2-1-0001-14" }},
		{"default load not in catalog", "default_loads.CP-8851", "not in the firmware catalog", func(c *Config) { c.DefaultLoads = map[string]string{"CP-8851": "x"} }},
		{"default load for another model", "default_loads.CP-7841", "is for", func(c *Config) { c.DefaultLoads = map[string]string{"CP-7841": "sip88xx.14-2-1-0001-14"} }},
		{"catalog missing", "catalog", "no such file", func(c *Config) { c.Catalog = filepath.Join(f.root, "nope.yaml") }},
		{"invalid config", "callmanager_groups", "at least one", func(c *Config) { c.Groups = nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := newWith(tc.edit)
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Key != tc.key || !strings.Contains(fe.Msg, tc.msg) {
				t.Errorf("got %v, want %s: ...%s...", err, tc.key, tc.msg)
			}
		})
	}
	// A catalog that does not match the root names the file.
	if err := os.Remove(filepath.Join(f.root, "kern78xx.14-2-1-0001-14.sbn")); err != nil {
		t.Fatal(err)
	}
	err := newWith(func(*Config) {})
	var fe *images.FileError
	if !errors.As(err, &fe) || fe.Name != "kern78xx.14-2-1-0001-14.sbn" || fe.Problem != "missing" {
		t.Errorf("missing firmware file: %v", err)
	}
	if err := newWith(func(c *Config) { c.Root = filepath.Join(f.root, "nope") }); err == nil {
		t.Error("missing root accepted")
	}
	// Without a catalog, loads are not checked.
	if err := newWith(func(c *Config) { c.Catalog = ""; c.Phones[0].Load = "anything" }); err != nil {
		t.Errorf("no catalog: %v", err)
	}
}

func TestParseConfigName(t *testing.T) {
	for name, want := range map[string]bool{
		"SEP001E7A123456.cnf.xml": true, "sep001e7a123456.CNF.XML": true,
		"SEP001E7A123456.cnf.xml.sgn": false, "SEP001E7A12345.cnf.xml": false, "SEP001E7A12345G.cnf.xml": false,
		"SIP001E7A123456.cnf.xml": false, "SEP001E7A123456.cnf.xmx": false, "": false, "XMLDefault.cnf.xml": false,
	} {
		m, ok := parseConfigName(name)
		if ok != want || ok && m != macA {
			t.Errorf("%q: %v %v", name, m, ok)
		}
	}
}

// FuzzOpen sends any name through Open: no panic, a generated file always
// parses, and nothing but ErrNotFound and ErrForbidden comes back as an
// error.
func FuzzOpen(f *testing.F) {
	fx := newFixture(f, map[string]string{"ITLFile.tlv": "itl", "dir/a.xml": "a"})
	cfg := testConfig()
	cfg.AutoRegistration = true
	s := fx.service(f, cfg, nil)
	s.log = slog.New(slog.DiscardHandler) // f.Log is not allowed inside the target
	for _, name := range []string{"SEP001E7A123456.cnf.xml", "sep0006537b84ef.cnf.xml", "XMLDefault.cnf.xml", "ITLFile.tlv",
		"../etc/passwd", "/dir/a.xml", "dir/../dir/a.xml", "\x00", "SEP001E7A123456.cnf.xml/", "."} {
		f.Add(name)
	}
	f.Fuzz(func(t *testing.T, name string) {
		file, err := s.Open(context.Background(), bootfiles.Request{Name: name, Client: clientA, Protocol: "tftp"})
		if err != nil {
			if !errors.Is(err, bootfiles.ErrNotFound) && !errors.Is(err, bootfiles.ErrForbidden) {
				t.Fatalf("%q: %v", name, err)
			}
			return
		}
		defer file.Close()
		if file.OS() == nil { // generated
			d := xml.NewDecoder(bytes.NewReader(file.Bytes()))
			for {
				if _, err := d.Token(); err == io.EOF {
					break
				} else if err != nil {
					t.Fatalf("%q: generated XML: %v", name, err)
				}
			}
		}
	})
}

func FuzzPlatformModel(f *testing.F) {
	for _, p := range []string{"Cisco IP Phone 8851", "CP-8851NR", "", "CP-", "1234 5678"} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		m := platformModel(p)
		if m != "" && (!strings.HasPrefix(m, "CP-") || !modelRe.MatchString(m)) {
			t.Fatalf("%q -> %q", p, m)
		}
		if _, ok := deviceMAC(p); ok && len(p) != 15 {
			t.Fatalf("device MAC from %q", p)
		}
	})
}

// benchService is a service with 10,000 phones, the size of a large site.
func benchService(b *testing.B, proxy bool) (*Service, []string) {
	f := newFixture(b, nil)
	cfg := testConfig()
	cfg.Proxy = Proxy{Enabled: proxy, Host: "10.255.0.1", Subnets: []ProxySubnet{{Subnet: netip.MustParsePrefix("10.64.0.0/13"), Host: "10.64.0.1"}}}
	cfg.Phones = nil
	var names []string
	for i := range 10000 {
		mac := MAC{0x00, 0x1e, 0x7a, 0, byte(i >> 8), byte(i)}
		cfg.Phones = append(cfg.Phones, Phone{MAC: mac, Model: "CP-8851", Description: "Phone " + itoa(i), Lines: []Line{
			{Number: itoa(10000 + i), Label: "Line 1", DisplayName: "User " + itoa(i)},
			{Number: itoa(20000 + i), Label: "Line 2"},
		}})
		names = append(names, mac.DeviceName()+".cnf.xml")
	}
	s := f.service(b, cfg, nil)
	s.log = slog.New(slog.DiscardHandler)
	return s, names
}

// BenchmarkPhoneConfig is the cost of one generated SEP<MAC>.cnf.xml: a
// boot storm of 10,000 phones asks for 10,000 of them.
func BenchmarkPhoneConfig(b *testing.B) {
	for _, proxy := range []bool{false, true} {
		name := "direct"
		if proxy {
			name = "proxy"
		}
		b.Run(name, func(b *testing.B) {
			s, names := benchService(b, proxy)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				f, err := s.Open(context.Background(), bootfiles.Request{Name: names[i%len(names)], Client: clientA, Protocol: "tftp"})
				if err != nil {
					b.Fatal(err)
				}
				f.Close()
				i++
			}
		})
	}
}

// BenchmarkPhoneConfigParallel asks from every CPU at once, as the TFTP
// and HTTP servers' goroutines do in a storm.
func BenchmarkPhoneConfigParallel(b *testing.B) {
	s, names := benchService(b, true)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			f, err := s.Open(context.Background(), bootfiles.Request{Name: names[i%len(names)], Client: clientA, Protocol: "tftp"})
			if err != nil {
				b.Fatal(err)
			}
			f.Close()
			i += 7
		}
	})
}

func BenchmarkXMLDefault(b *testing.B) {
	f := newFixture(b, nil)
	cfg := testConfig()
	cfg.AutoRegistration = true
	s := f.service(b, cfg, nil)
	b.ReportAllocs()
	for b.Loop() {
		file, err := s.Open(context.Background(), bootfiles.Request{Name: "XMLDefault.cnf.xml", Client: clientA})
		if err != nil {
			b.Fatal(err)
		}
		file.Close()
	}
}

// BenchmarkTrustListMiss is the "file not found" every phone gets for
// three trust lists at each boot when the root has none.
func BenchmarkTrustListMiss(b *testing.B) {
	s, _ := benchService(b, false)
	names := []string{"CTLSEP001E7A000001.tlv", "ITLSEP001E7A000001.tlv", "ITLFile.tlv"}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := s.Open(context.Background(), bootfiles.Request{Name: names[i%3], Client: clientA}); !errors.Is(err, bootfiles.ErrNotFound) {
			b.Fatal(err)
		}
		i++
	}
}
