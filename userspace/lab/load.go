package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// labMetricsListen is where the lab's agent serves Prometheus metrics,
// inside the appliance namespace (no one outside can reach it).
const labMetricsListen = "127.0.0.1:9617"

// loadCounters are the agent's counters a LoadSample is derived from, at
// one moment. Rates come from the difference of two.
type loadCounters struct {
	at         time.Time
	dhcpFast   float64   // fast-path OFFERs and ACKs
	dhcpGo     float64   // Go server's OFFERs, ACKs and NAKs
	dhcpKea    float64   // Kea's, in a baseline run,
	keaAt      time.Time // read then (Kea may answer later than the agent)
	tftpBytes  float64
	httpBytes  float64
	registered float64 // registrations the proxy saw acknowledged
	powerW     float64 // drawn now, summed over the ports
	// The services' queues now (phoneboot_service_load), the adaptive
	// power policy's signals.
	dhcpBacklog, tftpActive, proxyQueued float64
}

// countersFrom reads loadCounters out of a scrape of the agent's metrics.
func countersFrom(fams map[string]*dto.MetricFamily, at time.Time) loadCounters {
	c := loadCounters{at: at}
	sum := func(name string, keep func(*dto.Metric) bool) float64 {
		total := 0.0
		f := fams[name]
		if f == nil {
			return 0
		}
		for _, m := range f.GetMetric() {
			if keep != nil && !keep(m) {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				total += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				total += m.GetGauge().GetValue()
			case m.GetUntyped() != nil:
				total += m.GetUntyped().GetValue()
			}
		}
		return total
	}
	label := func(m *dto.Metric, name string) string {
		for _, l := range m.GetLabel() {
			if l.GetName() == name {
				return l.GetValue()
			}
		}
		return ""
	}
	c.dhcpFast = sum("phoneboot_xdp_packets_total", func(m *dto.Metric) bool {
		v := label(m, "counter")
		return v == "dhcp_fast_offer" || v == "dhcp_fast_ack"
	})
	c.dhcpGo = sum("phoneboot_dhcp_sent_total", nil)
	c.tftpBytes = sum("phoneboot_tftp_sent_bytes_total", nil)
	c.httpBytes = sum("phoneboot_http_sent_bytes_total", nil)
	c.registered = sum("phoneboot_proxy_register_answers_total", func(m *dto.Metric) bool {
		return label(m, "answer") == "ack"
	})
	c.powerW = sum("phoneboot_poe_port_power_watts", nil)
	signal := func(name string) float64 {
		return sum("phoneboot_service_load", func(m *dto.Metric) bool { return label(m, "signal") == name })
	}
	c.dhcpBacklog, c.tftpActive, c.proxyQueued = signal("dhcp_backlog"), signal("tftp_active"), signal("proxy_queued")
	return c
}

// sampleBetween turns two readings into the load over the interval.
func sampleBetween(prev, cur loadCounters, start time.Time) LoadSample {
	dt := cur.at.Sub(prev.at).Seconds()
	rate := func(a, b float64) float64 {
		if dt <= 0 || b < a { // a counter that went back: the agent restarted
			return 0
		}
		return (b - a) / dt
	}
	keaRate := 0.0
	if dk := cur.keaAt.Sub(prev.keaAt).Seconds(); dk > 0 && cur.dhcpKea >= prev.dhcpKea {
		keaRate = (cur.dhcpKea - prev.dhcpKea) / dk
	}
	return LoadSample{
		T:                 cur.at.Sub(start).Seconds(),
		DHCPFastPerS:      rate(prev.dhcpFast, cur.dhcpFast),
		DHCPGoPerS:        rate(prev.dhcpGo, cur.dhcpGo),
		DHCPKeaPerS:       keaRate,
		TFTPMBPerS:        rate(prev.tftpBytes, cur.tftpBytes) / 1e6,
		HTTPMBPerS:        rate(prev.httpBytes, cur.httpBytes) / 1e6,
		RegistrationsPerS: rate(prev.registered, cur.registered),
		PowerW:            cur.powerW,
		DHCPBacklog:       int(cur.dhcpBacklog),
		TFTPActive:        int(cur.tftpActive),
		ProxyQueued:       int(cur.proxyQueued),
	}
}

// loadSampler scrapes the agent's metrics endpoint in the appliance
// namespace at a fixed interval during the storm.
type loadSampler struct {
	client  *http.Client
	url     string
	every   time.Duration
	samples []LoadSample
	// more adds what the agent's metrics do not have: the baseline's
	// servers' counters.
	more func(ctx context.Context, c *loadCounters)
}

func newLoadSampler(appNS *vnet.NS, listen string, every time.Duration) *loadSampler {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		// The socket is made in the appliance namespace and stays there,
		// whichever thread uses it afterwards.
		err := appNS.Do(func() (err error) {
			conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
	return &loadSampler{
		client: &http.Client{Transport: &http.Transport{DialContext: dial, MaxIdleConns: 1}, Timeout: 2 * time.Second},
		url:    "http://" + listen + "/metrics",
		every:  every,
	}
}

func (s *loadSampler) scrape(ctx context.Context) (loadCounters, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return loadCounters{}, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return loadCounters{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body)
		return loadCounters{}, fmt.Errorf("metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return loadCounters{}, fmt.Errorf("metrics: %w", err)
	}
	c := countersFrom(fams, time.Now())
	if s.more != nil {
		s.more(ctx, &c)
	}
	return c, nil
}

// run samples until ctx ends, then once more so that the storm's last
// moments are in. A failed scrape (the agent not up yet, or restarting)
// leaves a gap: the next good one is measured against the last good one,
// so no interval is counted twice. The first is measured against zero at
// start, when the agent and the baseline's servers began counting: with
// fast PoE phones can be answered before the agent's metrics listen.
func (s *loadSampler) run(ctx context.Context, start time.Time) {
	t := time.NewTicker(s.every)
	defer t.Stop()
	defer s.client.CloseIdleConnections()
	prev := &loadCounters{at: start, keaAt: start}
	sample := func(ctx context.Context) {
		cur, err := s.scrape(ctx)
		if err != nil {
			return
		}
		s.samples = append(s.samples, sampleBetween(*prev, cur, start))
		prev = &cur
	}
	for {
		select {
		case <-ctx.Done():
			last, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			sample(last)
			return
		case <-t.C:
			sample(ctx)
		}
	}
}
