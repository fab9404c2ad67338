package agent

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/phoneboot/phoneboot/userspace/provision"
	"github.com/phoneboot/phoneboot/userspace/proxy"
	"github.com/phoneboot/phoneboot/userspace/sccp"
)

// ProxyConfig is the proxy section: the registration proxy between the
// phones and an ordered group of up to three CallManagers. Every key maps
// onto proxy.Config (see ServerConfig).
type ProxyConfig struct {
	Enabled bool `yaml:"enabled"`
	// Workers is how many processes run the proxy: 1 runs it in the
	// daemon's; more run it in worker processes, each with a descriptor
	// table of its own, for a host whose hard open-file limit one process
	// cannot hold two descriptors per phone within (see proxy.NewWorkers).
	Workers int `yaml:"workers"`
	// Listeners are where phones connect; the default is SCCP on 2000, SIP
	// on 5060 and their TLS ports 2443 and 5061 (passed through) on every
	// address.
	Listeners []ProxyListener `yaml:"listeners"`
	// CallManagers are the upstreams, highest priority first (1 to 3).
	CallManagers []ProxyCallManager `yaml:"callmanagers"`
	Health       ProxyHealth        `yaml:"health"`
	Failback     ProxyFailback      `yaml:"failback"`
	Admission    ProxyAdmission     `yaml:"admission"`
	// HeaderTimeout bounds the wait for a phone's whole first message.
	HeaderTimeout Duration `yaml:"header_timeout"`
	// RegisterTimeout bounds the wait for the CallManager's answer to a
	// registration.
	RegisterTimeout Duration `yaml:"register_timeout"`
	// DialTimeout bounds a connection to a CallManager.
	DialTimeout Duration `yaml:"dial_timeout"`
	// AnswerGrace is how long past its keepalive interval a CallManager
	// may leave a talking phone unanswered before the session counts as
	// hung and is closed.
	AnswerGrace Duration `yaml:"answer_grace"`
	// IdleTimeout closes a session whose phone sent nothing for this
	// long; 0: three keepalive intervals plus answer_grace for SCCP, none
	// for the others.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// UserTimeout is TCP_USER_TIMEOUT toward the CallManagers: data
	// unacknowledged this long (a black-holed path) ends the session.
	UserTimeout Duration `yaml:"user_timeout"`
	// SweepInterval is how often sessions are checked for a silent
	// CallManager or an idle phone.
	SweepInterval Duration `yaml:"sweep_interval"`
}

// ProxyListener is one address phones connect to.
type ProxyListener struct {
	// Protocol is sccp, sip, sccp-tls or sip-tls (the TLS ones are passed
	// through, never terminated).
	Protocol proxy.Protocol `yaml:"protocol"`
	// Listen is address:port; 0.0.0.0 listens on every address.
	Listen netip.AddrPort `yaml:"listen"`
	// UpstreamPort is the CallManagers' port for this protocol; 0: the
	// listener's own port.
	UpstreamPort int `yaml:"upstream_port"`
}

// ProxyCallManager is one CallManager; its port is the listener's
// upstream port for each protocol.
type ProxyCallManager struct {
	// Name appears in logs, the registration table and metrics labels.
	Name string `yaml:"name"`
	// Host is an address or a host name.
	Host string `yaml:"host"`
}

// ProxyHealth tunes the active health checks of each CallManager.
type ProxyHealth struct {
	// Probe is sccp (KeepAlive answered), sccp-register (a probe device
	// registers: for CallManagers that answer no KeepAlive before
	// registration), tcp (connect only) or sip-options (a SIP OPTIONS
	// answered with any status).
	Probe proxy.ProbeKind `yaml:"probe"`
	// Port is the port probed; 0: the sccp listener's upstream port, or
	// 2000 without an sccp listener (for sip-options the sip one's, or
	// 5060).
	Port int `yaml:"port"`
	// SIPProbe, sip-options or tcp, is a second check, on SIPPort, that
	// SIP sessions follow instead of the first; "": none, SIP sessions
	// follow probe.
	SIPProbe proxy.ProbeKind `yaml:"sip_probe"`
	// SIPPort is the port SIPProbe probes; 0: the sip listener's upstream
	// port, or 5060.
	SIPPort int `yaml:"sip_port"`
	// ProbeDevice is the device sccp-register registers.
	ProbeDevice string   `yaml:"probe_device"`
	Interval    Duration `yaml:"interval"`
	Timeout     Duration `yaml:"timeout"`
	// Rise passes in a row bring a CallManager up, Fall failures in a
	// row take it down (and close its sessions).
	Rise int `yaml:"rise"`
	Fall int `yaml:"fall"`
}

// ProxyFailback paces the return to a higher-priority CallManager.
type ProxyFailback struct {
	// Enabled moves phones back; off, they stay until they reconnect.
	Enabled bool `yaml:"enabled"`
	// Delay is how long a returning CallManager must stay healthy first;
	// 0 moves at once.
	Delay Duration `yaml:"delay"`
	// Rate is sessions moved back per second, each gap jittered ±50 %; 0:
	// admission.rate, or 50 when that is 0.
	Rate float64 `yaml:"rate"`
}

// ProxyAdmission is the token bucket new connections pass toward each
// CallManager.
type ProxyAdmission struct {
	// Rate is new connections per second per CallManager; 0: no pacing.
	Rate float64 `yaml:"rate"`
	// Burst is how many may pass at once after a quiet spell.
	Burst int `yaml:"burst"`
	// QueueLimit bounds the phones waiting per CallManager; past it a new
	// phone is closed.
	QueueLimit int `yaml:"queue_limit"`
}

// MaxProxyWorkers bounds proxy.workers.
const MaxProxyWorkers = 64

// The proxy package's own defaults, written out so that the example
// config can show them.
func defaultProxyConfig() ProxyConfig {
	any4 := netip.IPv4Unspecified()
	return ProxyConfig{
		Workers: 1,
		Listeners: []ProxyListener{
			{Protocol: proxy.SCCP, Listen: netip.AddrPortFrom(any4, sccp.Port)},
			{Protocol: proxy.SIP, Listen: netip.AddrPortFrom(any4, provision.DefaultSIPPort)},
			{Protocol: proxy.SCCPTLS, Listen: netip.AddrPortFrom(any4, sccp.SecurePort)},
			{Protocol: proxy.SIPTLS, Listen: netip.AddrPortFrom(any4, 5061)},
		},
		Health: ProxyHealth{
			Probe: proxy.ProbeSCCP, ProbeDevice: "SEP000000000000",
			Interval: Duration(2 * time.Second), Timeout: Duration(time.Second), Rise: 2, Fall: 3,
		},
		Failback:        ProxyFailback{Enabled: true, Delay: Duration(30 * time.Second)},
		Admission:       ProxyAdmission{Burst: 1, QueueLimit: 10000},
		HeaderTimeout:   Duration(10 * time.Second),
		RegisterTimeout: Duration(30 * time.Second),
		DialTimeout:     Duration(3 * time.Second),
		AnswerGrace:     Duration(2 * time.Second),
		UserTimeout:     Duration(10 * time.Second),
		SweepInterval:   Duration(time.Second),
	}
}

// ServerConfig is the proxy's configuration (validated: see validate).
func (c ProxyConfig) ServerConfig() proxy.Config {
	out := proxy.Config{
		Health: proxy.HealthConfig{
			Interval: time.Duration(c.Health.Interval), Timeout: time.Duration(c.Health.Timeout),
			Rise: c.Health.Rise, Fall: c.Health.Fall, Probe: c.Health.Probe, Port: c.healthPort(),
			ProbeDevice: c.Health.ProbeDevice, SIPProbe: c.Health.SIPProbe,
		},
		Admission: proxy.AdmissionConfig{Rate: c.Admission.Rate, Burst: c.Admission.Burst, QueueLimit: c.Admission.QueueLimit},
		Failback:  proxy.FailbackConfig{Delay: time.Duration(c.Failback.Delay), Rate: c.Failback.Rate, Disabled: !c.Failback.Enabled},
		// Zero means the proxy's own default; every one of these is
		// positive once validated, apart from idle_timeout.
		HeaderTimeout:   time.Duration(c.HeaderTimeout),
		RegisterTimeout: time.Duration(c.RegisterTimeout),
		DialTimeout:     time.Duration(c.DialTimeout),
		AnswerGrace:     time.Duration(c.AnswerGrace),
		IdleTimeout:     time.Duration(c.IdleTimeout),
		UserTimeout:     time.Duration(c.UserTimeout),
		SweepInterval:   time.Duration(c.SweepInterval),
	}
	if c.Failback.Delay == 0 {
		out.Failback.Delay = -1 // the proxy's "at once"; its zero is 30 s
	}
	if c.Health.SIPProbe != "" {
		out.Health.SIPPort = c.Health.SIPPort
		if out.Health.SIPPort == 0 {
			out.Health.SIPPort = c.sipUpstreamPort()
		}
	}
	for _, l := range c.Listeners {
		out.Listeners = append(out.Listeners, proxy.Listener{Protocol: l.Protocol, Addr: l.Listen.String(), UpstreamPort: l.UpstreamPort})
	}
	for _, cm := range c.CallManagers {
		out.CallManagers = append(out.CallManagers, proxy.CallManager{Name: cm.Name, Host: cm.Host})
	}
	return out
}

// upstreamPort is the CallManagers' port behind a listener.
func (l ProxyListener) upstreamPort() int {
	if l.UpstreamPort != 0 {
		return l.UpstreamPort
	}
	return int(l.Listen.Port())
}

// healthPort is the port the health checks probe: the CallManagers' SCCP
// port (their SIP port for sip-options) unless the config names one.
func (c ProxyConfig) healthPort() int {
	if c.Health.Port != 0 {
		return c.Health.Port
	}
	if c.Health.Probe == proxy.ProbeSIPOptions {
		return c.sipUpstreamPort()
	}
	for _, l := range c.Listeners {
		if l.Protocol == proxy.SCCP {
			return l.upstreamPort()
		}
	}
	return sccp.Port
}

// sipUpstreamPort is the CallManagers' SIP port: the sip listener's
// upstream port, or 5060 without a sip listener.
func (c ProxyConfig) sipUpstreamPort() int {
	for _, l := range c.Listeners {
		if l.Protocol == proxy.SIP {
			return l.upstreamPort()
		}
	}
	return provision.DefaultSIPPort
}

// A CallManager's name is a metrics label and a column of the table.
var cmNameRe = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

var hostLabelRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

// checkHost accepts an IP address or a DNS host name.
func checkHost(s string) error {
	if _, err := netip.ParseAddr(s); err == nil {
		return nil
	}
	if s == "" || len(s) > 253 {
		return fmt.Errorf("%q is not an address or host name", s)
	}
	labels := strings.Split(strings.TrimSuffix(s, "."), ".")
	for _, label := range labels {
		if !hostLabelRe.MatchString(label) {
			return fmt.Errorf("%q is not an address or host name", s)
		}
	}
	// A name's last label is never all digits: 10.0.0.300 is a mistyped
	// address, not a name.
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return fmt.Errorf("%q is not an address or host name", s)
	}
	return nil
}

func (c *ProxyConfig) validate(bad func(string, string, ...any) error) error {
	if !c.Enabled {
		return nil
	}
	if c.Workers < 1 || c.Workers > MaxProxyWorkers {
		return bad("proxy.workers", "%d is not 1 to %d (1: the proxy runs in the daemon's process)", c.Workers, MaxProxyWorkers)
	}
	if len(c.Listeners) == 0 {
		return bad("proxy.listeners", "an enabled proxy needs at least one listener")
	}
	addrs := map[netip.AddrPort]int{}
	for i, l := range c.Listeners {
		key := fmt.Sprintf("proxy.listeners[%d]", i)
		switch l.Protocol {
		case proxy.SCCP, proxy.SIP, proxy.SCCPTLS, proxy.SIPTLS:
		default:
			return bad(key+".protocol", "%q is not one of sccp, sip, sccp-tls, sip-tls", l.Protocol)
		}
		if !l.Listen.IsValid() || l.Listen.Port() == 0 {
			return bad(key+".listen", "an address and port such as 0.0.0.0:2000 is required")
		}
		if j, dup := addrs[l.Listen]; dup {
			return bad(key+".listen", "%s is also listeners[%d]", l.Listen, j)
		}
		addrs[l.Listen] = i
		if l.UpstreamPort < 0 || l.UpstreamPort > 65535 {
			return bad(key+".upstream_port", "%d is not a port 1-65535 (0: the listener's port)", l.UpstreamPort)
		}
	}
	if n := len(c.CallManagers); n == 0 || n > 3 {
		return bad("proxy.callmanagers", "%d CallManagers; the group has 1 to 3, highest priority first", n)
	}
	names, hosts := map[string]int{}, map[string]int{}
	for i, cm := range c.CallManagers {
		key := fmt.Sprintf("proxy.callmanagers[%d]", i)
		if !cmNameRe.MatchString(cm.Name) {
			return bad(key+".name", "%q is not a name of letters, digits, '.', '_' and '-'", cm.Name)
		}
		if j, dup := names[cm.Name]; dup {
			return bad(key+".name", "%q is also callmanagers[%d]", cm.Name, j)
		}
		names[cm.Name] = i
		if err := checkHost(cm.Host); err != nil {
			return bad(key+".host", "%v", err)
		}
		if j, dup := hosts[strings.ToLower(cm.Host)]; dup {
			return bad(key+".host", "%s is also callmanagers[%d]", cm.Host, j)
		}
		hosts[strings.ToLower(cm.Host)] = i
	}
	h := c.Health
	switch h.Probe {
	case proxy.ProbeSCCP, proxy.ProbeSCCPRegister, proxy.ProbeTCP, proxy.ProbeSIPOptions:
	default:
		return bad("proxy.health.probe", "%q is not one of sccp, sccp-register, tcp, sip-options", h.Probe)
	}
	if h.Port < 0 || h.Port > 65535 {
		return bad("proxy.health.port", "%d is not a port 1-65535 (0: the sccp listener's upstream port)", h.Port)
	}
	switch h.SIPProbe {
	case "", proxy.ProbeSIPOptions, proxy.ProbeTCP:
	default:
		return bad("proxy.health.sip_probe", "%q is not one of sip-options, tcp (empty: none)", h.SIPProbe)
	}
	if h.SIPPort < 0 || h.SIPPort > 65535 {
		return bad("proxy.health.sip_port", "%d is not a port 1-65535 (0: the sip listener's upstream port)", h.SIPPort)
	}
	if !validDeviceName(h.ProbeDevice) {
		return bad("proxy.health.probe_device", "%q is not a device name of 1 to 15 letters and digits", h.ProbeDevice)
	}
	if h.Interval <= 0 {
		return bad("proxy.health.interval", "must be positive")
	}
	if h.Timeout <= 0 || h.Timeout >= h.Interval {
		return bad("proxy.health.timeout", "%s must be positive and below the interval %s", time.Duration(h.Timeout), time.Duration(h.Interval))
	}
	if h.Rise < 1 {
		return bad("proxy.health.rise", "%d must be at least 1", h.Rise)
	}
	if h.Fall < 1 {
		return bad("proxy.health.fall", "%d must be at least 1", h.Fall)
	}
	if c.Failback.Delay < 0 {
		return bad("proxy.failback.delay", "must not be negative")
	}
	if c.Failback.Rate < 0 {
		return bad("proxy.failback.rate", "must not be negative (0: admission.rate, or 50)")
	}
	if c.Admission.Rate < 0 {
		return bad("proxy.admission.rate", "must not be negative (0: no pacing)")
	}
	if c.Admission.Burst < 1 {
		return bad("proxy.admission.burst", "%d must be at least 1", c.Admission.Burst)
	}
	if c.Admission.QueueLimit < 1 {
		return bad("proxy.admission.queue_limit", "%d must be at least 1", c.Admission.QueueLimit)
	}
	for _, d := range []struct {
		key string
		v   Duration
	}{
		{"header_timeout", c.HeaderTimeout}, {"register_timeout", c.RegisterTimeout}, {"dial_timeout", c.DialTimeout},
		{"answer_grace", c.AnswerGrace}, {"user_timeout", c.UserTimeout}, {"sweep_interval", c.SweepInterval},
	} {
		if d.v <= 0 {
			return bad("proxy."+d.key, "must be positive")
		}
	}
	if c.HeaderTimeout < Duration(time.Second) {
		// It is also TCP_DEFER_ACCEPT, in whole seconds.
		return bad("proxy.header_timeout", "%s is below 1s", time.Duration(c.HeaderTimeout))
	}
	if c.IdleTimeout < 0 {
		return bad("proxy.idle_timeout", "must not be negative (0: from the keepalive interval)")
	}
	return nil
}

func validDeviceName(s string) bool {
	if s == "" || len(s) > 15 {
		return false
	}
	for _, r := range s {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// ProvisionConfig is the provision section as the provisioning service
// gets it: with the proxy on, the addresses and ports phones reach it at
// (see proxyRoute); with it off, phones go straight to the CallManager
// groups.
func (c *Config) ProvisionConfig() provision.Config {
	pc := c.Provision
	pc.Proxy = provision.Proxy{Host: c.Provision.Proxy.Host, Subnets: slices.Clone(c.Provision.Proxy.Subnets)}
	if !c.Proxy.Enabled {
		return pc
	}
	pc.Proxy.Enabled = true
	r := c.proxyRoute()
	pc.Proxy.SCCPPort, pc.Proxy.SIPPort = r.sccpPort, r.sipPort
	if pc.Proxy.Host == "" {
		pc.Proxy.Host = r.host
	}
	pc.Proxy.Subnets = append(pc.Proxy.Subnets, r.subnets...)
	return pc
}

// proxyAddrs is where phones reach the proxy, as derived from its
// listeners and the DHCP pools.
type proxyAddrs struct {
	sccpPort, sipPort int
	host              string // the one address the proxy listens on, if so
	subnets           []provision.ProxySubnet
	// badPort names a listener whose port differs from the first one of
	// its protocol (index into Listeners), or -1.
	badPort int
}

// proxyRoute works out the proxy's addresses for provisioning. A phone's
// file names one host with an SCCP and a SIP port, so an address counts
// when both the sccp and the sip listeners take it (a listener on
// 0.0.0.0 takes every address): each DHCP pool's server_ip so counted is
// the proxy's address for the phones of that pool's subnet, and a proxy
// listening on one address only is at that address for every phone.
func (c *Config) proxyRoute() proxyAddrs {
	r := proxyAddrs{badPort: -1}
	type served struct {
		wildcard bool
		addrs    map[netip.Addr]bool
	}
	by := map[proxy.Protocol]*served{proxy.SCCP: {addrs: map[netip.Addr]bool{}}, proxy.SIP: {addrs: map[netip.Addr]bool{}}}
	for i, l := range c.Proxy.Listeners {
		s := by[l.Protocol]
		if s == nil {
			continue
		}
		port := &r.sccpPort
		if l.Protocol == proxy.SIP {
			port = &r.sipPort
		}
		if *port == 0 {
			*port = int(l.Listen.Port())
		} else if *port != int(l.Listen.Port()) && r.badPort < 0 {
			r.badPort = i
		}
		if l.Listen.Addr().IsUnspecified() {
			s.wildcard = true
		} else {
			s.addrs[l.Listen.Addr().Unmap()] = true
		}
	}
	takes := func(a netip.Addr) bool {
		for _, s := range by {
			if !s.wildcard && !s.addrs[a] {
				return false
			}
		}
		return true
	}
	sc, si := by[proxy.SCCP], by[proxy.SIP]
	if !sc.wildcard && !si.wildcard && len(sc.addrs) == 1 && len(si.addrs) == 1 {
		for a := range sc.addrs {
			if si.addrs[a] {
				r.host = a.String()
			}
		}
	}
	if c.DHCP.Enabled {
		for _, p := range c.DHCP.Pools {
			if p.Subnet.IsValid() && p.ServerIP.IsValid() && takes(p.ServerIP.Unmap()) {
				r.subnets = append(r.subnets, provision.ProxySubnet{Subnet: p.Subnet, Host: p.ServerIP.String()})
			}
		}
	}
	return r
}

// validateProxyRoute checks that provisioned phones can be told where the
// proxy is.
func (c *Config) validateProxyRoute(bad func(string, string, ...any) error) error {
	if !c.Provision.Enabled || !c.Proxy.Enabled {
		return nil
	}
	r := c.proxyRoute()
	if r.sccpPort == 0 || r.sipPort == 0 {
		return bad("proxy.listeners", "provisioned phones register over SCCP or SIP, each to the port of its protocol: the proxy needs an sccp and a sip listener")
	}
	if r.badPort >= 0 {
		l := c.Proxy.Listeners[r.badPort]
		return bad(fmt.Sprintf("proxy.listeners[%d].listen", r.badPort),
			"port %d differs from the first %s listener's: phones are provisioned one port per protocol", l.Listen.Port(), l.Protocol)
	}
	pc := c.ProvisionConfig()
	if pc.Proxy.Host == "" && len(pc.Proxy.Subnets) == 0 {
		return bad("provision.proxy", "phones cannot be told where the registration proxy is: set provision.proxy.host or "+
			"subnets, serve DHCP pools whose server_ip the sccp and sip listeners take, or listen on one address")
	}
	return nil
}
