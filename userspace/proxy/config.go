package proxy

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// Protocol is what a listener carries.
type Protocol string

const (
	SCCP    Protocol = "sccp"     // TCP 2000: the first message is read, RegisterAck watched
	SIP     Protocol = "sip"      // TCP 5060: the first REGISTER is read, its final answer watched
	SCCPTLS Protocol = "sccp-tls" // TCP 2443: passed through, never terminated
	SIPTLS  Protocol = "sip-tls"  // TCP 5061: passed through, never terminated
)

// Listener is one port phones connect to.
type Listener struct {
	Protocol Protocol
	Addr     string // "10.1.0.1:2000", ":2000"
	// UpstreamPort is the CallManagers' port for this protocol; 0 takes
	// the listener's own port.
	UpstreamPort int
}

// CallManager is one upstream; Config.CallManagers is ordered, highest
// priority first, as in the phones' configuration file.
type CallManager struct {
	Name string // for logs, the registration table and metrics labels
	Host string // address or name; the port comes from the listener
}

// ProbeKind is how a health check talks to a CallManager.
type ProbeKind string

const (
	// ProbeSCCP connects to the SCCP port and sends KeepAlive; any
	// well-formed SCCP answer within the timeout passes. It tells a hung
	// CallManager (TCP up, nothing answered) from a live one.
	ProbeSCCP ProbeKind = "sccp"
	// ProbeSCCPRegister connects and registers HealthConfig.ProbeDevice:
	// RegisterAck (then Unregister) or RegisterReject passes. Every
	// CallManager answers a Register, also one that does not answer a
	// KeepAlive before registration; the price is a registration attempt
	// in its logs every interval.
	ProbeSCCPRegister ProbeKind = "sccp-register"
	// ProbeTCP only connects.
	ProbeTCP ProbeKind = "tcp"
	// ProbeSIPOptions connects to the SIP port and sends OPTIONS; any
	// SIP status line within the timeout passes (a 404 or 503 too: the
	// SIP stack answered). It tells a CallManager whose SIP service is
	// down or hung from a live one.
	ProbeSIPOptions ProbeKind = "sip-options"
)

// HealthConfig tunes the active health checks.
type HealthConfig struct {
	Interval time.Duration // between probes of one CallManager; 0 means 2 s
	Timeout  time.Duration // for the connect and for the answer; 0 means 1 s
	Rise     int           // passes in a row to go up; 0 means 2
	Fall     int           // failures in a row to go down; 0 means 3
	Probe    ProbeKind     // "" means sccp
	Port     int           // the probed port; 0 means 2000
	// SIPProbe, when set (sip-options or tcp), is a second check on
	// SIPPort that SIP sessions follow instead of the main one: a
	// CallManager whose SIP service is down is then left for SIP phones
	// only. "" means none: SIP sessions follow Probe like every other.
	SIPProbe ProbeKind
	SIPPort  int // 0 means 5060
	// ProbeDevice is the device name ProbeSCCPRegister registers; ""
	// means SEP000000000000, which no phone has.
	ProbeDevice string
}

// AdmissionConfig paces new connections toward each CallManager, so a
// boot storm queues at the proxy instead of overloading the CallManager.
type AdmissionConfig struct {
	// Rate is new connections per second per CallManager; 0 admits
	// without pacing.
	Rate float64
	// Burst is how many may pass at once after a quiet spell; 0 means 1.
	Burst int
	// QueueLimit bounds the phones waiting per CallManager; past it a
	// new phone is closed (and counted). 0 means 10,000.
	QueueLimit int
}

// FailbackConfig paces the return to a higher-priority CallManager that
// came back.
type FailbackConfig struct {
	// Delay is how long a returning CallManager must stay healthy before
	// phones are moved back (CUCM's Connection Monitor Duration plays
	// the same part for SRST); 0 means 30 s, negative moves at once.
	Delay time.Duration
	// Rate is sessions moved back per second, each gap jittered by
	// ±50 %; 0 means Admission.Rate, or 50 if that is 0.
	Rate float64
	// Disabled leaves phones where they are until they reconnect.
	Disabled bool
}

// Config of the proxy. The daemon maps its YAML onto this.
type Config struct {
	Listeners    []Listener
	CallManagers []CallManager // 1 to 3, highest priority first
	Health       HealthConfig
	Admission    AdmissionConfig
	Failback     FailbackConfig
	// HeaderTimeout bounds the wait for the phone's whole first message
	// (slow or partial senders are cut off); 0 means 10 s.
	HeaderTimeout time.Duration
	// RegisterTimeout bounds the wait for the CallManager's answer to
	// the registration; 0 means 30 s.
	RegisterTimeout time.Duration
	// DialTimeout bounds a connection to a CallManager; 0 means 3 s.
	DialTimeout time.Duration
	// AnswerGrace is how long past its keepalive interval a CallManager
	// may stay silent toward a phone that keeps talking before the
	// session counts as hung and is closed; 0 means 2 s.
	AnswerGrace time.Duration
	// IdleTimeout closes a session whose phone sent nothing for this
	// long. 0 means three keepalive intervals (from RegisterAck) plus
	// AnswerGrace for SCCP, and no limit where no interval is known
	// (the kernel's TCP keepalive still finds dead peers).
	IdleTimeout time.Duration
	// UserTimeout is TCP_USER_TIMEOUT on upstream connections: data the
	// CallManager leaves unacknowledged this long aborts the session (a
	// black-holed path). 0 means 10 s.
	UserTimeout time.Duration
	// SweepInterval is how often sessions are checked for a silent
	// CallManager or an idle phone; 0 means 1 s.
	SweepInterval time.Duration
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.Health.Interval, 2*time.Second)
	def(&c.Health.Timeout, time.Second)
	if c.Health.Rise == 0 {
		c.Health.Rise = 2
	}
	if c.Health.Fall == 0 {
		c.Health.Fall = 3
	}
	if c.Health.Probe == "" {
		c.Health.Probe = ProbeSCCP
	}
	if c.Health.Port == 0 {
		c.Health.Port = 2000
	}
	if c.Health.SIPPort == 0 {
		c.Health.SIPPort = 5060
	}
	if c.Health.ProbeDevice == "" {
		c.Health.ProbeDevice = "SEP000000000000"
	}
	if c.Admission.Burst == 0 {
		c.Admission.Burst = 1
	}
	if c.Admission.QueueLimit == 0 {
		c.Admission.QueueLimit = 10000
	}
	def(&c.Failback.Delay, 30*time.Second)
	if c.Failback.Rate == 0 {
		c.Failback.Rate = c.Admission.Rate
		if c.Failback.Rate == 0 {
			c.Failback.Rate = 50
		}
	}
	def(&c.HeaderTimeout, 10*time.Second)
	def(&c.RegisterTimeout, 30*time.Second)
	def(&c.DialTimeout, 3*time.Second)
	def(&c.AnswerGrace, 2*time.Second)
	def(&c.UserTimeout, 10*time.Second)
	def(&c.SweepInterval, time.Second)
}

func (c *Config) validate() error {
	if len(c.Listeners) == 0 {
		return errors.New("no listener")
	}
	if n := len(c.CallManagers); n == 0 || n > 3 {
		return fmt.Errorf("%d CallManagers, want 1 to 3", n)
	}
	names := map[string]bool{}
	for _, cm := range c.CallManagers {
		if cm.Host == "" || cm.Name == "" {
			return fmt.Errorf("CallManager %+v needs a name and a host", cm)
		}
		if names[cm.Name] {
			return fmt.Errorf("CallManager name %q twice", cm.Name)
		}
		names[cm.Name] = true
	}
	for _, l := range c.Listeners {
		switch l.Protocol {
		case SCCP, SIP, SCCPTLS, SIPTLS:
		default:
			return fmt.Errorf("listener %s: unknown protocol %q", l.Addr, l.Protocol)
		}
		if _, _, err := net.SplitHostPort(l.Addr); err != nil {
			return fmt.Errorf("listener %q: %w", l.Addr, err)
		}
		if l.UpstreamPort < 0 || l.UpstreamPort > 65535 {
			return fmt.Errorf("listener %s: upstream port %d", l.Addr, l.UpstreamPort)
		}
	}
	switch c.Health.Probe {
	case ProbeSCCP, ProbeSCCPRegister, ProbeTCP, ProbeSIPOptions:
	default:
		return fmt.Errorf("unknown health probe %q", c.Health.Probe)
	}
	switch c.Health.SIPProbe {
	case "", ProbeSIPOptions, ProbeTCP:
	default:
		return fmt.Errorf("SIP health probe %q, want sip-options or tcp", c.Health.SIPProbe)
	}
	if c.Health.Timeout >= c.Health.Interval {
		return fmt.Errorf("health timeout %s must be below the interval %s", c.Health.Timeout, c.Health.Interval)
	}
	if c.Admission.Rate < 0 || c.Failback.Rate < 0 || c.Admission.Burst < 0 || c.Admission.QueueLimit < 0 {
		return errors.New("negative admission or failback setting")
	}
	return nil
}
