package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/httpboot"
	"github.com/phoneboot/phoneboot/userspace/neighbor"
	"github.com/phoneboot/phoneboot/userspace/provision"
	"github.com/phoneboot/phoneboot/userspace/tftp"
)

// TFTPConfig places the TFTP server phones fetch their files from.
type TFTPConfig struct {
	// Listen addresses (host:port); each transfer answers from the address
	// its request came to.
	Listen []string `yaml:"listen"`
	// MaxTransfers at once, and from one client address.
	MaxTransfers int `yaml:"max_transfers"`
	MaxPerClient int `yaml:"max_per_client"`
	// ClientRate is read requests a second one client address may make.
	ClientRate float64 `yaml:"client_rate"`
	// Rate and Burst bound read requests a second from everyone: past
	// them requests are dropped unanswered, and the phones send again.
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"`
	// ReceiveBuffer is the listening socket's receive buffer in bytes,
	// where a burst of read requests waits to be read.
	ReceiveBuffer int `yaml:"receive_buffer"`
}

// HTTPConfig places the HTTP file server newer phones try first (6970).
type HTTPConfig struct {
	// Listen is host:port; empty turns HTTP off.
	Listen string `yaml:"listen"`
	// MaxConns open at once; past it a connection gets 503.
	MaxConns int `yaml:"max_conns"`
}

// IPv4 only by default: phones boot on IPv4, and an IPv6 listener fails
// to start on hosts with IPv6 turned off.
// The global request rate takes a storm's first files at once: 10,000
// phones ask for about five files each within seconds (at the old 2,000 a
// second, the lab's 10,000-phone storm had 41,000 of 88,600 requests
// dropped and resent 2 s later). An RRQ costs the server tens of µs.
func defaultTFTPConfig() TFTPConfig {
	return TFTPConfig{Listen: []string{"0.0.0.0:69"}, MaxTransfers: 4096, MaxPerClient: 4, ClientRate: 10, Rate: 20000, Burst: 20000,
		ReceiveBuffer: 4 << 20}
}

// A 10,000-phone site has some 5,000 phones that provision over HTTP, each
// holding its connection from its first file to its last (a firmware
// download among them). At 1,024 the later ones were refused and fetched
// everything over TFTP instead, which costs the appliance more per byte:
// in the lab's 10,000-phone storm 4,096 took the config phase's p50 from
// 7.8-8.4 s to 5.7-7.4 s and the storm from 107-117 s to 105-106 s.
func defaultHTTPConfig() HTTPConfig { return HTTPConfig{Listen: "0.0.0.0:6970", MaxConns: 4096} }

// The largest TFTP blocks keep a block and its headers (IP, UDP 8, TFTP 4)
// in one 1500-byte Ethernet frame: larger blocks would be fragmented (a
// lost fragment loses the whole block), and a GSO send of a window of
// them is refused. IPv4's header is 20 bytes, IPv6's 40.
const (
	tftpMaxBlockSize   = 1500 - 20 - 8 - 4 // 1468
	tftpMaxBlockSizeV6 = 1500 - 40 - 8 - 4 // 1448
)

func (c *Config) validateProvision(bad func(string, string, ...any) error) error {
	if !c.Provision.Enabled {
		return nil
	}
	if err := c.validateProxyRoute(bad); err != nil {
		return err
	}
	pc := c.ProvisionConfig()
	if err := pc.Validate(); err != nil {
		var fe *provision.FieldError
		if errors.As(err, &fe) {
			return bad("provision."+fe.Key, "%s", fe.Msg)
		}
		return bad("provision", "%v", err)
	}
	for i, l := range c.TFTP.Listen {
		if _, err := netip.ParseAddrPort(l); err != nil {
			return bad(fmt.Sprintf("tftp.listen[%d]", i), "%q is not address:port (%v)", l, err)
		}
	}
	if len(c.TFTP.Listen) == 0 {
		return bad("tftp.listen", "phones fetch their files over TFTP: at least one address is needed")
	}
	if c.TFTP.MaxTransfers < 1 || c.TFTP.MaxPerClient < 1 || c.TFTP.MaxPerClient > c.TFTP.MaxTransfers {
		return bad("tftp", "max_transfers %d and max_per_client %d must be at least 1, per client at most the total",
			c.TFTP.MaxTransfers, c.TFTP.MaxPerClient)
	}
	if c.TFTP.ClientRate <= 0 {
		return bad("tftp.client_rate", "%v must be above 0", c.TFTP.ClientRate)
	}
	if c.TFTP.ReceiveBuffer < 4096 || c.TFTP.ReceiveBuffer > 1<<30 {
		return bad("tftp.receive_buffer", "%d bytes, not in 4096..1 GiB", c.TFTP.ReceiveBuffer)
	}
	if c.TFTP.Rate <= 0 || c.TFTP.Burst < 1 {
		return bad("tftp", "rate %v and burst %d must be above 0", c.TFTP.Rate, c.TFTP.Burst)
	}
	if c.HTTP.Listen != "" {
		if _, err := netip.ParseAddrPort(c.HTTP.Listen); err != nil {
			return bad("http.listen", "%q is not address:port (%v)", c.HTTP.Listen, err)
		}
	}
	if c.HTTP.MaxConns < 1 {
		return bad("http.max_conns", "%d must be at least 1", c.HTTP.MaxConns)
	}
	return nil
}

// newProvision builds the files phones fetch (generated configs, trust
// lists, firmware under the root, the catalog checked first) and the TFTP
// and HTTP servers that hand them out.
func (a *Agent) newProvision(cfg Config, log *slog.Logger) error {
	var nb provision.Neighbors
	if a.neighbors != nil {
		nb = neighborList{a.neighbors}
	}
	src, err := provision.New(context.Background(), cfg.ProvisionConfig(), nb, log)
	if err != nil {
		return err
	}
	a.provision = src
	a.add("provision", idleService{close: src.Close})

	if err := checkFileLimit(filesNeeded(cfg)); err != nil {
		return err
	}
	tc := tftp.Config{
		Source:         src,
		MaxTransfers:   cfg.TFTP.MaxTransfers,
		MaxPerClient:   cfg.TFTP.MaxPerClient,
		ClientRate:     cfg.TFTP.ClientRate,
		ClientBurst:    max(1, int(2*cfg.TFTP.ClientRate)),
		Rate:           cfg.TFTP.Rate,
		Burst:          cfg.TFTP.Burst,
		MaxBlockSize:   tftpMaxBlockSize,
		MaxBlockSizeV6: tftpMaxBlockSizeV6,
		ReceiveBuffer:  cfg.TFTP.ReceiveBuffer,
	}
	for _, l := range cfg.TFTP.Listen {
		tc.Addrs = append(tc.Addrs, netip.MustParseAddrPort(l)) // validated
	}
	a.tftp, err = tftp.New(tc, log.With("service", "tftp"))
	if err != nil {
		return err
	}
	a.add("tftp", a.tftp)

	if cfg.HTTP.Listen != "" {
		a.http, err = httpboot.New(httpboot.Config{
			Addr: netip.MustParseAddrPort(cfg.HTTP.Listen), Source: src, MaxConns: cfg.HTTP.MaxConns,
		}, log.With("service", "http"))
		if err != nil {
			return err
		}
		a.add("http", a.http)
	}
	return nil
}

// filesNeeded is how many descriptors the file servers need at their
// limits: a TFTP transfer holds its socket and its file, and so does an
// HTTP connection sending one; 64 more for everything else.
func filesNeeded(cfg Config) uint64 {
	n := 2*cfg.TFTP.MaxTransfers + 64
	if cfg.HTTP.Listen != "" {
		n += 2 * cfg.HTTP.MaxConns
	}
	return uint64(n)
}

// checkFileLimit refuses to start with an open file limit under need:
// past it, transfers and connections would fail in the middle of a storm.
func checkFileLimit(need uint64) error {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("open file limit: %w", err)
	}
	if rl.Cur < need {
		return fmt.Errorf("tftp.max_transfers and http.max_conns need %d file descriptors, RLIMIT_NOFILE is %d (raise LimitNOFILE, or lower them)", need, rl.Cur)
	}
	return nil
}

// neighborList gives provisioning the neighbour table's models.
type neighborList struct{ t *neighbor.Table }

func (n neighborList) List() []neighbor.Neighbor { return n.t.List() }

var (
	descTFTPRequests = prometheus.NewDesc("phoneboot_tftp_requests_total",
		"TFTP packets on the listening sockets, by outcome (overflowed: dropped by the kernel, the receive buffer full).", []string{"outcome"}, nil)
	descTFTPTransfers = prometheus.NewDesc("phoneboot_tftp_transfers_total",
		"TFTP transfers ended, by how (completed, timed_out, client_aborted, faulted, failed, cancelled).", []string{"end"}, nil)
	descTFTPActive = prometheus.NewDesc("phoneboot_tftp_transfers_active",
		"TFTP transfers in progress.", nil, nil)
	descTFTPBytes = prometheus.NewDesc("phoneboot_tftp_sent_bytes_total",
		"File bytes sent over TFTP, retransmissions included.", nil, nil)
	descTFTPRetransmitted = prometheus.NewDesc("phoneboot_tftp_retransmitted_blocks_total",
		"TFTP DATA packets sent again for want of an ACK.", nil, nil)
	descHTTPResponses = prometheus.NewDesc("phoneboot_http_responses_total",
		"HTTP (6970) responses, by status class.", []string{"status"}, nil)
	descHTTPBytes = prometheus.NewDesc("phoneboot_http_sent_bytes_total",
		"Body bytes sent over HTTP; sendfile: the share sent from the file by the kernel.", []string{"path"}, nil)
)

// provisionCollector exports the file servers' counters.
type provisionCollector struct{ a *Agent }

func (c provisionCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTFTPRequests, descTFTPTransfers, descTFTPActive, descTFTPBytes,
		descTFTPRetransmitted, descHTTPResponses, descHTTPBytes} {
		ch <- d
	}
}

func (c provisionCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	if s := c.a.tftp; s != nil {
		st := s.Stats()
		for outcome, v := range map[string]uint64{
			"started": st.Started, "malformed": st.Malformed, "not_request": st.NotRequests,
			"write_refused": st.WriteRefused, "bad_mode": st.BadMode, "option_refused": st.OptionRefused,
			"overflowed": st.Overflowed, "rate_limited": st.RateLimited, "rate_limited_all": st.RateLimitedAll, "busy": st.Busy,
			"busy_client": st.BusyClient, "not_found": st.NotFound, "forbidden": st.Forbidden,
			"source_error": st.SourceErrors, "netascii_too_long": st.NetasciiTooLong,
		} {
			counter(descTFTPRequests, v, outcome)
		}
		for end, v := range map[string]uint64{
			"completed": st.Completed, "timed_out": st.TimedOut, "client_aborted": st.ClientAborted,
			"faulted": st.Faulted, "failed": st.Failed, "cancelled": st.Cancelled,
		} {
			counter(descTFTPTransfers, v, end)
		}
		ch <- prometheus.MustNewConstMetric(descTFTPActive, prometheus.GaugeValue, float64(st.Active))
		counter(descTFTPBytes, st.Bytes)
		counter(descTFTPRetransmitted, st.Retransmitted)
	}
	if s := c.a.http; s != nil {
		st := s.Stats()
		for status, v := range map[string]uint64{
			"200": st.OK, "206": st.Partial, "304": st.NotModified, "403": st.Forbidden,
			"404": st.NotFound, "405": st.MethodNotAllowed, "500": st.SourceErrors,
			"503": st.ConnsRejected, "other": st.OtherStatus,
		} {
			counter(descHTTPResponses, v, status)
		}
		counter(descHTTPBytes, st.SendfileBytes, "sendfile")
		counter(descHTTPBytes, st.Bytes-st.SendfileBytes, "copied")
	}
}
