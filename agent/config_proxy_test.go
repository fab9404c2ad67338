package agent

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/phoneboot/phoneboot/userspace/provision"
	"github.com/phoneboot/phoneboot/userspace/proxy"
)

func TestParseConfigProxyErrors(t *testing.T) {
	const on = "proxy:\n  enabled: true\n"
	const cm = "  callmanagers: [{name: cm1, host: 10.0.0.10}]\n"
	const prov = "provision: {enabled: true, root: /srv, callmanager_groups: [{name: a, members: [{host: 10.0.0.10}]}]}\n"
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"no workers", on + cm + "  workers: 0\n",
			`f.yaml:4: proxy.workers: 0 is not 1 to 64 (1: the proxy runs in the daemon's process)`},
		{"too many workers", on + cm + "  workers: 65\n",
			`f.yaml:4: proxy.workers: 65 is not 1 to 64 (1: the proxy runs in the daemon's process)`},
		{"no listener", on + "  listeners: []\n" + cm,
			`f.yaml:3: proxy.listeners: an enabled proxy needs at least one listener`},
		{"unknown protocol", on + "  listeners: [{protocol: h323, listen: 0.0.0.0:1720}]\n" + cm,
			`f.yaml:3: proxy.listeners[0].protocol: "h323" is not one of sccp, sip, sccp-tls, sip-tls`},
		{"no listen address", on + "  listeners:\n    - protocol: sccp\n" + cm,
			`f.yaml:4: proxy.listeners[0].listen: an address and port such as 0.0.0.0:2000 is required`},
		{"listen port 0", on + "  listeners:\n    - {protocol: sccp, listen: 0.0.0.0:0}\n" + cm,
			`f.yaml:4: proxy.listeners[0].listen: an address and port such as 0.0.0.0:2000 is required`},
		{"listen on a name", on + "  listeners:\n    - {protocol: sccp, listen: \"localhost:2000\"}\n" + cm,
			`f.yaml:4: proxy.listeners[0].listen: "localhost:2000" is not valid: unable to parse IP`},
		{"listen twice", on + "  listeners:\n    - {protocol: sccp, listen: 0.0.0.0:2000}\n    - {protocol: sip, listen: 0.0.0.0:2000}\n" + cm,
			`f.yaml:5: proxy.listeners[1].listen: 0.0.0.0:2000 is also listeners[0]`},
		{"bad upstream port", on + "  listeners:\n    - {protocol: sccp, listen: 0.0.0.0:2000, upstream_port: 70000}\n" + cm,
			`f.yaml:4: proxy.listeners[0].upstream_port: 70000 is not a port 1-65535 (0: the listener's port)`},
		{"no CallManager", on,
			`f.yaml:1: proxy.callmanagers: 0 CallManagers; the group has 1 to 3, highest priority first`},
		{"four CallManagers", on + "  callmanagers: [{name: a, host: h1}, {name: b, host: h2}, {name: c, host: h3}, {name: d, host: h4}]\n",
			`f.yaml:3: proxy.callmanagers: 4 CallManagers; the group has 1 to 3, highest priority first`},
		{"bad name", on + "  callmanagers:\n    - {name: cm 1, host: 10.0.0.10}\n",
			`f.yaml:4: proxy.callmanagers[0].name: "cm 1" is not a name of letters, digits, '.', '_' and '-'`},
		{"no name", on + "  callmanagers:\n    - {host: 10.0.0.10}\n",
			`f.yaml:4: proxy.callmanagers[0].name: "" is not a name of letters, digits, '.', '_' and '-'`},
		{"name twice", on + "  callmanagers:\n    - {name: cm, host: 10.0.0.10}\n    - {name: cm, host: 10.0.0.11}\n",
			`f.yaml:5: proxy.callmanagers[1].name: "cm" is also callmanagers[0]`},
		{"bad host", on + "  callmanagers:\n    - {name: cm1, host: 10.0.0.300}\n",
			`f.yaml:4: proxy.callmanagers[0].host: "10.0.0.300" is not an address or host name`},
		{"host with a port", on + "  callmanagers:\n    - {name: cm1, host: \"10.0.0.1:2000\"}\n",
			`f.yaml:4: proxy.callmanagers[0].host: "10.0.0.1:2000" is not an address or host name`},
		{"host twice", on + "  callmanagers:\n    - {name: a, host: CM1.example.net}\n    - {name: b, host: cm1.example.net}\n",
			`f.yaml:5: proxy.callmanagers[1].host: cm1.example.net is also callmanagers[0]`},
		{"bad probe", on + cm + "  health:\n    probe: icmp\n",
			`f.yaml:5: proxy.health.probe: "icmp" is not one of sccp, sccp-register, tcp, sip-options`},
		{"bad SIP probe", on + cm + "  health:\n    sip_probe: sccp\n",
			`f.yaml:5: proxy.health.sip_probe: "sccp" is not one of sip-options, tcp (empty: none)`},
		{"bad SIP probe port", on + cm + "  health:\n    sip_port: 65536\n",
			`f.yaml:5: proxy.health.sip_port: 65536 is not a port 1-65535 (0: the sip listener's upstream port)`},
		{"bad probe port", on + cm + "  health:\n    port: -1\n",
			`f.yaml:5: proxy.health.port: -1 is not a port 1-65535 (0: the sccp listener's upstream port)`},
		{"long probe device", on + cm + "  health:\n    probe_device: SEP0000000000000\n",
			`f.yaml:5: proxy.health.probe_device: "SEP0000000000000" is not a device name of 1 to 15 letters and digits`},
		{"empty probe device", on + cm + "  health:\n    probe_device: \"\"\n",
			`f.yaml:5: proxy.health.probe_device: "" is not a device name of 1 to 15 letters and digits`},
		{"zero interval", on + cm + "  health:\n    interval: 0s\n",
			`f.yaml:5: proxy.health.interval: must be positive`},
		{"timeout not below interval", on + cm + "  health:\n    interval: 1s\n    timeout: 1s\n",
			`f.yaml:6: proxy.health.timeout: 1s must be positive and below the interval 1s`},
		{"zero timeout", on + cm + "  health:\n    timeout: 0s\n",
			`f.yaml:5: proxy.health.timeout: 0s must be positive and below the interval 2s`},
		{"zero rise", on + cm + "  health:\n    rise: 0\n",
			`f.yaml:5: proxy.health.rise: 0 must be at least 1`},
		{"zero fall", on + cm + "  health:\n    fall: 0\n",
			`f.yaml:5: proxy.health.fall: 0 must be at least 1`},
		{"negative failback delay", on + cm + "  failback:\n    delay: -1s\n",
			`f.yaml:5: proxy.failback.delay: must not be negative`},
		{"negative failback rate", on + cm + "  failback:\n    rate: -5\n",
			`f.yaml:5: proxy.failback.rate: must not be negative (0: admission.rate, or 50)`},
		{"negative admission rate", on + cm + "  admission:\n    rate: -1\n",
			`f.yaml:5: proxy.admission.rate: must not be negative (0: no pacing)`},
		{"zero burst", on + cm + "  admission:\n    burst: 0\n",
			`f.yaml:5: proxy.admission.burst: 0 must be at least 1`},
		{"zero queue", on + cm + "  admission:\n    queue_limit: 0\n",
			`f.yaml:5: proxy.admission.queue_limit: 0 must be at least 1`},
		{"zero header timeout", on + cm + "  header_timeout: 0s\n", `f.yaml:4: proxy.header_timeout: must be positive`},
		{"zero register timeout", on + cm + "  register_timeout: 0s\n", `f.yaml:4: proxy.register_timeout: must be positive`},
		{"zero dial timeout", on + cm + "  dial_timeout: 0s\n", `f.yaml:4: proxy.dial_timeout: must be positive`},
		{"zero answer grace", on + cm + "  answer_grace: 0s\n", `f.yaml:4: proxy.answer_grace: must be positive`},
		{"zero user timeout", on + cm + "  user_timeout: 0s\n", `f.yaml:4: proxy.user_timeout: must be positive`},
		{"zero sweep interval", on + cm + "  sweep_interval: 0s\n", `f.yaml:4: proxy.sweep_interval: must be positive`},
		{"header timeout below a second", on + cm + "  header_timeout: 500ms\n",
			`f.yaml:4: proxy.header_timeout: 500ms is below 1s`},
		{"negative idle timeout", on + cm + "  idle_timeout: -1s\n",
			`f.yaml:4: proxy.idle_timeout: must not be negative (0: from the keepalive interval)`},
		{"bad duration", on + cm + "  dial_timeout: soon\n",
			`f.yaml:4: proxy.dial_timeout: "soon" is not a duration such as 500ms or 2s`},
		{"unknown key", on + cm + "  health:\n    retries: 3\n",
			`f.yaml:5: proxy.health.retries: unknown key (known keys here: fall, interval, port, probe, probe_device, rise, sip_port, sip_probe, timeout)`},

		// Provisioning phones to the proxy.
		{"provisioned without a sip listener", prov + on + cm + "  listeners:\n    - {protocol: sccp, listen: 10.1.0.1:2000}\n",
			`f.yaml:5: proxy.listeners: provisioned phones register over SCCP or SIP, each to the port of its protocol: the proxy needs an sccp and a sip listener`},
		{"provisioned with two sccp ports", prov + on + cm + "  listeners:\n    - {protocol: sccp, listen: 10.1.0.1:2000}\n" +
			"    - {protocol: sip, listen: 10.1.0.1:5060}\n    - {protocol: sccp, listen: 10.2.0.1:2002}\n",
			`f.yaml:8: proxy.listeners[2].listen: port 2002 differs from the first sccp listener's: phones are provisioned one port per protocol`},
		{"provisioned with no address to tell", prov + on + cm,
			`f.yaml:1: provision.proxy: phones cannot be told where the registration proxy is: set provision.proxy.host or subnets, ` +
				`serve DHCP pools whose server_ip the sccp and sip listeners take, or listen on one address`},
		{"provisioned with a bad proxy address", "provision:\n  enabled: true\n  root: /srv\n  callmanager_groups: [{name: a, members: [{host: 10.0.0.10}]}]\n" +
			"  proxy:\n    subnets: [{subnet: 10.64.0.0/13, host: \"-x-\"}]\n" + on + cm,
			`f.yaml:6: provision.proxy.subnets[0].host: "-x-" is not an address or host name`},
		{"the proxy is switched on in its own section", "provision:\n  proxy:\n    enabled: true\n",
			`f.yaml:3: provision.proxy.enabled: unknown key (known keys here: host, subnets)`},
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

// proxy.workers takes 1 to 64; 1 is the default.
func TestParseConfigProxyWorkers(t *testing.T) {
	const on = "proxy:\n  enabled: true\n  callmanagers: [{name: cm1, host: 10.0.0.10}]\n"
	for _, tt := range []struct {
		yaml string
		want int
	}{{on, 1}, {on + "  workers: 1\n", 1}, {on + "  workers: 2\n", 2}, {on + "  workers: 64\n", 64}} {
		cfg, err := ParseConfig("f.yaml", []byte(tt.yaml))
		if err != nil {
			t.Fatalf("%q: %v", tt.yaml, err)
		}
		if cfg.Proxy.Workers != tt.want {
			t.Errorf("%q: workers %d, want %d", tt.yaml, cfg.Proxy.Workers, tt.want)
		}
	}
}

// An off proxy is not checked: its section may hold a half-written
// example.
func TestParseConfigProxyOffIsNotChecked(t *testing.T) {
	if _, err := ParseConfig("f.yaml", []byte("proxy:\n  callmanagers: []\n  health: {rise: 0}\n")); err != nil {
		t.Fatal(err)
	}
}

func TestProxyServerConfig(t *testing.T) {
	cfg, err := ParseConfig("f.yaml", []byte(`
proxy:
  enabled: true
  listeners:
    - {protocol: sccp, listen: 10.1.0.1:2000, upstream_port: 2002}
    - {protocol: sip, listen: "[::]:5060"}
    - {protocol: sip-tls, listen: 0.0.0.0:5061}
  callmanagers:
    - {name: pub, host: 10.0.0.10}
    - {name: sub1, host: cm2.example.net}
  health: {probe: sccp-register, probe_device: SEPPROBE, interval: 5s, timeout: 2s, rise: 3, fall: 4}
  failback: {delay: 0s, rate: 20}
  admission: {rate: 200, burst: 50, queue_limit: 500}
  header_timeout: 5s
  register_timeout: 20s
  dial_timeout: 1s
  answer_grace: 3s
  idle_timeout: 2m
  user_timeout: 8s
  sweep_interval: 500ms
`))
	if err != nil {
		t.Fatal(err)
	}
	want := proxy.Config{
		Listeners: []proxy.Listener{
			{Protocol: proxy.SCCP, Addr: "10.1.0.1:2000", UpstreamPort: 2002},
			{Protocol: proxy.SIP, Addr: "[::]:5060"},
			{Protocol: proxy.SIPTLS, Addr: "0.0.0.0:5061"},
		},
		CallManagers: []proxy.CallManager{{Name: "pub", Host: "10.0.0.10"}, {Name: "sub1", Host: "cm2.example.net"}},
		// The probe goes to the CallManagers' SCCP port.
		Health: proxy.HealthConfig{Interval: 5 * time.Second, Timeout: 2 * time.Second, Rise: 3, Fall: 4,
			Probe: proxy.ProbeSCCPRegister, Port: 2002, ProbeDevice: "SEPPROBE"},
		Admission: proxy.AdmissionConfig{Rate: 200, Burst: 50, QueueLimit: 500},
		// delay 0s is "at once", which the proxy spells negative.
		Failback:      proxy.FailbackConfig{Delay: -1, Rate: 20},
		HeaderTimeout: 5 * time.Second, RegisterTimeout: 20 * time.Second, DialTimeout: time.Second,
		AnswerGrace: 3 * time.Second, IdleTimeout: 2 * time.Minute, UserTimeout: 8 * time.Second,
		SweepInterval: 500 * time.Millisecond,
	}
	if got := cfg.Proxy.ServerConfig(); !reflect.DeepEqual(got, want) {
		t.Errorf("ServerConfig:\n got: %+v\nwant: %+v", got, want)
	}

	// The defaults are the proxy's own.
	d := DefaultConfig().Proxy
	d.CallManagers = []ProxyCallManager{{Name: "cm1", Host: "10.0.0.10"}}
	d.Failback.Enabled = false
	got := d.ServerConfig()
	wantDef := proxy.Config{
		Listeners: []proxy.Listener{{Protocol: proxy.SCCP, Addr: "0.0.0.0:2000"}, {Protocol: proxy.SIP, Addr: "0.0.0.0:5060"},
			{Protocol: proxy.SCCPTLS, Addr: "0.0.0.0:2443"}, {Protocol: proxy.SIPTLS, Addr: "0.0.0.0:5061"}},
		CallManagers: []proxy.CallManager{{Name: "cm1", Host: "10.0.0.10"}},
		Health: proxy.HealthConfig{Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3, Probe: proxy.ProbeSCCP,
			Port: 2000, ProbeDevice: "SEP000000000000"},
		Admission:     proxy.AdmissionConfig{Burst: 1, QueueLimit: 10000},
		Failback:      proxy.FailbackConfig{Delay: 30 * time.Second, Disabled: true},
		HeaderTimeout: 10 * time.Second, RegisterTimeout: 30 * time.Second, DialTimeout: 3 * time.Second,
		AnswerGrace: 2 * time.Second, UserTimeout: 10 * time.Second, SweepInterval: time.Second,
	}
	if !reflect.DeepEqual(got, wantDef) {
		t.Errorf("defaults:\n got: %+v\nwant: %+v", got, wantDef)
	}
}

// The lab writes its config with yaml.Marshal: a filled-in proxy section
// must come back the same through the strict parser.
func TestProxyConfigRoundTrip(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Proxy.Enabled = true
	cfg.Proxy.Listeners = []ProxyListener{{Protocol: proxy.SCCP, Listen: netip.MustParseAddrPort("10.64.0.1:2000"), UpstreamPort: 2000}}
	cfg.Proxy.CallManagers = []ProxyCallManager{{Name: "cm1", Host: "10.250.0.1"}, {Name: "cm2", Host: "10.250.0.2"}, {Name: "cm3", Host: "cm3.lab"}}
	cfg.Proxy.Health.Interval = Duration(500 * time.Millisecond)
	cfg.Proxy.Health.Timeout = Duration(400 * time.Millisecond)
	cfg.Proxy.Admission.Rate = 1000
	cfg.Provision.Proxy.Host = "10.64.0.1"
	data, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseConfig("lab.yaml", data)
	if err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	// (yaml.Marshal writes nil lists elsewhere in the config as [], which
	// come back empty, not nil: only this section is compared.)
	if !reflect.DeepEqual(back.Proxy, cfg.Proxy) || back.Provision.Proxy.Host != cfg.Provision.Proxy.Host {
		t.Errorf("round trip:\n got: %+v\nwant: %+v", back.Proxy, cfg.Proxy)
	}
}

// Where provisioned phones are told the proxy is.
func TestProvisionConfigProxyRoute(t *testing.T) {
	const base = `
provision:
  enabled: true
  root: /srv
  callmanager_groups: [{name: main, members: [{host: 10.0.0.10}, {host: 10.0.0.11, priority: 1}]}]
`
	const pools = `
dhcp:
  enabled: true
  pools:
    - {name: v100, subnet: 10.64.0.0/13, server_ip: 10.64.0.1}
    - {name: v101, subnet: 10.72.0.0/13, server_ip: 10.72.0.1}
`
	const cms = "  callmanagers: [{name: cm1, host: 10.0.0.10}]\n"
	tests := []struct {
		name string
		yaml string
		want provision.Proxy
	}{
		{"off: straight to the CallManagers", base + pools + "proxy:\n  enabled: false\n" + cms,
			provision.Proxy{}},
		{"off keeps the written addresses, unused", base + "  proxy: {host: 10.9.0.1}\n" + "proxy:\n  enabled: false\n",
			provision.Proxy{Host: "10.9.0.1"}},
		{"every address: each pool's server address", base + pools + "proxy:\n  enabled: true\n" + cms,
			provision.Proxy{Enabled: true, SCCPPort: 2000, SIPPort: 5060, Subnets: []provision.ProxySubnet{
				{Subnet: netip.MustParsePrefix("10.64.0.0/13"), Host: "10.64.0.1"},
				{Subnet: netip.MustParsePrefix("10.72.0.0/13"), Host: "10.72.0.1"},
			}}},
		{"one address: that one, and the pool it is in", base + pools + `proxy:
  enabled: true
  listeners:
    - {protocol: sccp, listen: 10.72.0.1:2002}
    - {protocol: sip, listen: 10.72.0.1:5062}
` + cms,
			provision.Proxy{Enabled: true, SCCPPort: 2002, SIPPort: 5062, Host: "10.72.0.1", Subnets: []provision.ProxySubnet{
				{Subnet: netip.MustParsePrefix("10.72.0.0/13"), Host: "10.72.0.1"},
			}}},
		{"an address per VLAN", base + pools + `proxy:
  enabled: true
  listeners:
    - {protocol: sccp, listen: 10.64.0.1:2000}
    - {protocol: sccp, listen: 10.72.0.1:2000}
    - {protocol: sip, listen: 10.64.0.1:5060}
    - {protocol: sip, listen: 10.72.0.1:5060}
` + cms,
			provision.Proxy{Enabled: true, SCCPPort: 2000, SIPPort: 5060, Subnets: []provision.ProxySubnet{
				{Subnet: netip.MustParsePrefix("10.64.0.0/13"), Host: "10.64.0.1"},
				{Subnet: netip.MustParsePrefix("10.72.0.0/13"), Host: "10.72.0.1"},
			}}},
		{"SIP on one VLAN only: the other VLAN's phones are not told", base + pools + `proxy:
  enabled: true
  listeners:
    - {protocol: sccp, listen: 0.0.0.0:2000}
    - {protocol: sip, listen: 10.64.0.1:5060}
` + cms,
			provision.Proxy{Enabled: true, SCCPPort: 2000, SIPPort: 5060, Subnets: []provision.ProxySubnet{
				{Subnet: netip.MustParsePrefix("10.64.0.0/13"), Host: "10.64.0.1"},
			}}},
		{"written addresses first, then the derived", base + `  proxy:
    host: 10.255.0.1
    subnets: [{subnet: 10.64.0.0/13, host: 10.64.0.9}]
` + pools + "proxy:\n  enabled: true\n" + cms,
			provision.Proxy{Enabled: true, SCCPPort: 2000, SIPPort: 5060, Host: "10.255.0.1", Subnets: []provision.ProxySubnet{
				{Subnet: netip.MustParsePrefix("10.64.0.0/13"), Host: "10.64.0.9"},
				{Subnet: netip.MustParsePrefix("10.64.0.0/13"), Host: "10.64.0.1"},
				{Subnet: netip.MustParsePrefix("10.72.0.0/13"), Host: "10.72.0.1"},
			}}},
		{"no DHCP: the written host", base + "  proxy: {host: 10.255.0.1}\nproxy:\n  enabled: true\n" + cms,
			provision.Proxy{Enabled: true, SCCPPort: 2000, SIPPort: 5060, Host: "10.255.0.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig("f.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			pc := cfg.ProvisionConfig()
			if !reflect.DeepEqual(pc.Proxy, tt.want) {
				t.Errorf("proxy route:\n got: %+v\nwant: %+v", pc.Proxy, tt.want)
			}
			// The rest of the section is as written, and the parsed
			// config is not changed by asking.
			pc.Proxy = cfg.Provision.Proxy
			if !reflect.DeepEqual(pc, cfg.Provision) {
				t.Errorf("ProvisionConfig changed more than the proxy")
			}
			if again := cfg.ProvisionConfig(); !reflect.DeepEqual(again.Proxy, tt.want) {
				t.Errorf("second call: %+v", again.Proxy)
			}
		})
	}
}

func TestCheckHost(t *testing.T) {
	for _, h := range []string{"10.0.0.1", "::1", "cm1", "cm1.example.net", "cm1.example.net.", "a-b.c2"} {
		if err := checkHost(h); err != nil {
			t.Errorf("%q: %v", h, err)
		}
	}
	for _, h := range []string{"", "10.0.0.300", "-a", "a-", "a..b", "a_b", "cm1:2000", "[::1]", "1.2.3", strings.Repeat("a", 64)} {
		if err := checkHost(h); err == nil {
			t.Errorf("%q accepted", h)
		}
	}
}

// The SIP check probes the CallManagers' SIP port, the sip listener's
// upstream port unless sip_port names one, and is off by default; a
// sip-options main probe goes to the SIP port too.
func TestProxyHealthSIPPorts(t *testing.T) {
	const base = `
proxy:
  enabled: true
  listeners:
    - {protocol: sccp, listen: 0.0.0.0:2000, upstream_port: 12000}
    - {protocol: sip, listen: 0.0.0.0:5060, upstream_port: 15060}
  callmanagers: [{name: pub, host: 10.0.0.10}]
`
	for _, tc := range []struct {
		health          string
		probe, sipProbe proxy.ProbeKind
		port, sipPort   int
	}{
		{"{}", proxy.ProbeSCCP, "", 12000, 0},
		{"{sip_probe: sip-options}", proxy.ProbeSCCP, proxy.ProbeSIPOptions, 12000, 15060},
		{"{sip_probe: tcp, sip_port: 5080}", proxy.ProbeSCCP, proxy.ProbeTCP, 12000, 5080},
		{"{probe: sip-options}", proxy.ProbeSIPOptions, "", 15060, 0},
		{"{probe: sip-options, port: 5070}", proxy.ProbeSIPOptions, "", 5070, 0},
	} {
		cfg, err := ParseConfig("f.yaml", []byte(base+"  health: "+tc.health+"\n"))
		if err != nil {
			t.Fatalf("%s: %v", tc.health, err)
		}
		h := cfg.Proxy.ServerConfig().Health
		if h.Probe != tc.probe || h.Port != tc.port || h.SIPProbe != tc.sipProbe || h.SIPPort != tc.sipPort {
			t.Errorf("health %s: probe %s on %d, SIP probe %q on %d; want %s on %d, %q on %d",
				tc.health, h.Probe, h.Port, h.SIPProbe, h.SIPPort, tc.probe, tc.port, tc.sipProbe, tc.sipPort)
		}
	}
}
