package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/phoneboot/phoneboot/userspace/proxy"
)

// metricsServer serves Prometheus metrics. Its collectors read the agent's
// state at scrape time (the XDP counters straight from the per-CPU map), so
// nothing is copied on the packet path to feed them.
type metricsServer struct {
	ln  net.Listener
	srv *http.Server
}

func newMetricsServer(listen string, a *Agent) (*metricsServer, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&agentCollector{a: a},
		discoveryCollector{a: a},
		provisionCollector{a: a},
		powerCollector{a: a},
		proxyCollector{a: a},
	)
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return &metricsServer{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}, nil
}

func (m *metricsServer) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- m.srv.Serve(m.ln) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return m.srv.Shutdown(sctx)
	}
}

func (m *metricsServer) Close() error { return m.srv.Close() }

var (
	descBuildInfo = prometheus.NewDesc("phoneboot_build_info",
		"Always 1; the version label says which build runs.", []string{"version"}, nil)
	descUptime = prometheus.NewDesc("phoneboot_start_time_seconds",
		"When the daemon started, in seconds since the epoch.", nil, nil)
	descXDPAttached = prometheus.NewDesc("phoneboot_xdp_attached",
		"1 for each port with the XDP program attached, labelled with the mode in use.", []string{"port", "mode"}, nil)
	descXDPPackets = prometheus.NewDesc("phoneboot_xdp_packets_total",
		"Frames seen by the XDP program, by class or attribute.", []string{"counter"}, nil)
	descXDPBytes = prometheus.NewDesc("phoneboot_xdp_bytes_total",
		"Bytes seen by the XDP program, by class or attribute.", []string{"counter"}, nil)
	descServiceUp = prometheus.NewDesc("phoneboot_service_up",
		"1 while the service is running.", []string{"service"}, nil)
	descPoEDelivering = prometheus.NewDesc("phoneboot_poe_port_delivering",
		"1 while the port delivers power.", []string{"port"}, nil)
	descPoEPower = prometheus.NewDesc("phoneboot_poe_port_power_watts",
		"Power drawn on the port.", []string{"port"}, nil)
)

var (
	descDHCPReceived = prometheus.NewDesc("phoneboot_dhcp_received_total",
		"DHCP requests the Go server received, by message type (Kea's pkt4-<type>-received).", []string{"type"}, nil)
	descDHCPSent = prometheus.NewDesc("phoneboot_dhcp_sent_total",
		"DHCP replies the Go server sent, by type; the fast path's are phoneboot_xdp_packets_total{counter=~\"dhcp_fast_.*\"}.", []string{"type"}, nil)
	descDHCPDropped = prometheus.NewDesc("phoneboot_dhcp_dropped_total",
		"DHCP requests the Go server dropped, by reason.", []string{"reason"}, nil)
	descDHCPSilent = prometheus.NewDesc("phoneboot_dhcp_silent_total",
		"DHCP requests handled without a reply, by reason.", []string{"reason"}, nil)
	descDHCPSocketDrops = prometheus.NewDesc("phoneboot_dhcp_socket_drops_total",
		"DHCP requests the kernel dropped because a raw socket's buffer was full.", nil, nil)
	descDHCPFastConflicts = prometheus.NewDesc("phoneboot_dhcp_fastpath_conflicts_total",
		"Leases the XDP fast path handed out that the lease store refused.", nil, nil)
	descDHCPFastStart = prometheus.NewDesc("phoneboot_dhcp_fastpath_start_recovered",
		"What the DHCP server found at start that the fast path had handed out: events in its ring buffer (leases handed out while no daemon read them), and live bound clients the store lacked, adopted or refused (acknowledged but not committed when the last daemon died).", []string{"what"}, nil)
	descDHCPPool = prometheus.NewDesc("phoneboot_dhcp_pool_addresses",
		"Addresses of each pool by state (total, assigned, declined, free).", []string{"pool", "state"}, nil)
	descLeaseRecovered = prometheus.NewDesc("phoneboot_lease_db_recovered",
		"1 if the lease database was corrupt at start and moved aside.", nil, nil)
)

type agentCollector struct{ a *Agent }

func (c *agentCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBuildInfo, descUptime, descXDPAttached, descXDPPackets, descXDPBytes, descServiceUp, descPoEDelivering, descPoEPower,
		descDHCPReceived, descDHCPSent, descDHCPDropped, descDHCPSilent, descDHCPSocketDrops, descDHCPFastConflicts, descDHCPFastStart, descDHCPPool, descLeaseRecovered} {
		ch <- d
	}
}

func (c *agentCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.a.Status(context.Background())
	ch <- prometheus.MustNewConstMetric(descBuildInfo, prometheus.GaugeValue, 1, st.Version)
	ch <- prometheus.MustNewConstMetric(descUptime, prometheus.GaugeValue, float64(st.StartedAt.UnixNano())/1e9)
	for _, p := range st.Ports {
		if p.XDPMode != "off" {
			ch <- prometheus.MustNewConstMetric(descXDPAttached, prometheus.GaugeValue, 1, p.Name, p.XDPMode)
		}
		if p.PoEState != "" {
			on := 0.0
			if p.PoEState == "delivering" {
				on = 1
			}
			ch <- prometheus.MustNewConstMetric(descPoEDelivering, prometheus.GaugeValue, on, p.Name)
			ch <- prometheus.MustNewConstMetric(descPoEPower, prometheus.GaugeValue, float64(p.PowerMW)/1000, p.Name)
		}
	}
	for _, k := range st.Counters {
		ch <- prometheus.MustNewConstMetric(descXDPPackets, prometheus.CounterValue, float64(k.Packets), k.Name)
		ch <- prometheus.MustNewConstMetric(descXDPBytes, prometheus.CounterValue, float64(k.Bytes), k.Name)
	}
	for _, s := range st.Services {
		up := 0.0
		if s.State == "running" {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descServiceUp, prometheus.GaugeValue, up, s.Name)
	}
	if srv := c.a.dhcp; srv != nil {
		ds := srv.Handler().Stats()
		for t, n := range ds.ReceivedByType {
			ch <- prometheus.MustNewConstMetric(descDHCPReceived, prometheus.CounterValue, float64(n), t)
		}
		for t, n := range map[string]uint64{"offer": ds.Offers, "ack": ds.Acks, "nak": ds.Naks} {
			ch <- prometheus.MustNewConstMetric(descDHCPSent, prometheus.CounterValue, float64(n), t)
		}
		for r, n := range ds.DroppedBy {
			ch <- prometheus.MustNewConstMetric(descDHCPDropped, prometheus.CounterValue, float64(n), r)
		}
		for r, n := range ds.Silent {
			ch <- prometheus.MustNewConstMetric(descDHCPSilent, prometheus.CounterValue, float64(n), r)
		}
		ch <- prometheus.MustNewConstMetric(descDHCPSocketDrops, prometheus.CounterValue, float64(srv.SocketDrops()))
		ch <- prometheus.MustNewConstMetric(descDHCPFastConflicts, prometheus.CounterValue, float64(ds.FastPathConflicts))
		st := srv.Started()
		for what, n := range map[string]int{"events": st.Events, "adopted": st.Adopted, "refused": st.Refused} {
			ch <- prometheus.MustNewConstMetric(descDHCPFastStart, prometheus.GaugeValue, float64(n), what)
		}
		for _, p := range ds.Pools {
			for state, n := range map[string]uint64{"total": p.Total, "assigned": p.Assigned, "declined": p.Declined, "free": p.Free} {
				ch <- prometheus.MustNewConstMetric(descDHCPPool, prometheus.GaugeValue, float64(n), p.Name, state)
			}
		}
		recovered := 0.0
		if c.a.leaseRecovered != "" {
			recovered = 1
		}
		ch <- prometheus.MustNewConstMetric(descLeaseRecovered, prometheus.GaugeValue, recovered)
	}
}

var (
	descProxyRegistrations = prometheus.NewDesc("phoneboot_proxy_registrations",
		"Phone connections through the registration proxy now, by state and CallManager (\"none\" before one is chosen).",
		[]string{"state", "callmanager"}, nil)
	descProxySessions = prometheus.NewDesc("phoneboot_proxy_sessions_open",
		"Phone connections the registration proxy holds open.", nil, nil)
	descProxyAccepted = prometheus.NewDesc("phoneboot_proxy_accepted_total",
		"Phone connections accepted, by protocol.", []string{"protocol"}, nil)
	descProxyAnswers = prometheus.NewDesc("phoneboot_proxy_register_answers_total",
		"Answers to registrations seen (ack: RegisterAck or 2xx; reject: RegisterReject or a final refusal).", []string{"answer"}, nil)
	descProxyClosed = prometheus.NewDesc("phoneboot_proxy_sessions_closed_total",
		"Sessions the proxy ended, by reason; upstream_down are those a failover closed.", []string{"reason"}, nil)
	descProxyDialFailures = prometheus.NewDesc("phoneboot_proxy_dial_failures_total",
		"Connections to a CallManager that failed (the next one was tried).", nil, nil)
	descProxyAcceptErrors = prometheus.NewDesc("phoneboot_proxy_accept_errors_total",
		"Errors accepting phone connections (such as running out of descriptors).", nil, nil)
	descProxyAdmissionQueued = prometheus.NewDesc("phoneboot_proxy_admission_waits_total",
		"Phone connections that waited in an admission queue before going on to their CallManager.", nil, nil)
	descProxyAdmissionRejected = prometheus.NewDesc("phoneboot_proxy_admission_rejected_total",
		"Phone connections closed because the admission queue was full (also in sessions_closed_total{reason=\"queue_full\"}).", nil, nil)
	descProxyAdmissionWaiting = prometheus.NewDesc("phoneboot_proxy_admission_queue_depth",
		"Phone connections waiting for admission toward the CallManager now.", []string{"callmanager"}, nil)
	descProxyCMUp = prometheus.NewDesc("phoneboot_proxy_callmanager_up",
		"1 while the health checks hold the CallManager healthy.", []string{"callmanager"}, nil)
	descProxyCMSessions = prometheus.NewDesc("phoneboot_proxy_callmanager_sessions",
		"Sessions relayed to the CallManager now.", []string{"callmanager"}, nil)
	descProxyCMFailovers = prometheus.NewDesc("phoneboot_proxy_failovers_total",
		"Times the health checks took the CallManager down, closing its sessions so their phones register on the next.", []string{"callmanager"}, nil)
	descProxyCMProbes = prometheus.NewDesc("phoneboot_proxy_health_probes_total",
		"Health probes of the CallManager, by result.", []string{"callmanager", "result"}, nil)
	descProxySIPUp = prometheus.NewDesc("phoneboot_proxy_sip_check_up",
		"1 while the SIP check (health.sip_probe), which SIP sessions follow, holds the CallManager healthy.", []string{"callmanager"}, nil)
	descProxySIPProbes = prometheus.NewDesc("phoneboot_proxy_sip_check_probes_total",
		"SIP check probes of the CallManager, by result.", []string{"callmanager", "result"}, nil)
	descProxySIPFailovers = prometheus.NewDesc("phoneboot_proxy_sip_check_failovers_total",
		"Times the SIP check took the CallManager down for SIP, closing its SIP sessions.", []string{"callmanager"}, nil)
	descProxyCMVetoes = prometheus.NewDesc("phoneboot_proxy_health_vetoes_total",
		"Times failed probes would have taken the CallManager down while its phones still heard from it (kept up).", []string{"callmanager"}, nil)
)

// proxyCollector exports the registration proxy's table and counters.
type proxyCollector struct{ a *Agent }

func (c proxyCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descProxyRegistrations, descProxySessions, descProxyAccepted, descProxyAnswers,
		descProxyClosed, descProxyDialFailures, descProxyAcceptErrors, descProxyAdmissionQueued, descProxyAdmissionRejected,
		descProxyAdmissionWaiting, descProxyCMUp, descProxyCMSessions, descProxyCMFailovers, descProxyCMProbes, descProxyCMVetoes,
		descProxySIPUp, descProxySIPProbes, descProxySIPFailovers} {
		ch <- d
	}
}

func (c proxyCollector) Collect(ch chan<- prometheus.Metric) {
	p := c.a.proxy
	if p == nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	st := p.Stats()
	// Every state of every CallManager, zeros included, so that a series
	// does not vanish when its last phone moves. A phone still being read
	// has no CallManager yet.
	type key struct{ state, cm string }
	regs := map[key]int{{string(proxy.StateReading), "none"}: 0}
	for _, s := range []proxy.State{proxy.StateQueued, proxy.StateRegistering, proxy.StateRegistered,
		proxy.StateRejected, proxy.StateConnected} {
		for _, cm := range st.CallManagers {
			regs[key{string(s), cm.Name}] = 0
		}
	}
	for _, r := range st.Table {
		cm := r.CallManager
		if cm == "" {
			cm = "none"
		}
		regs[key{string(r.State), cm}] += r.Rows
	}
	for k, n := range regs {
		gauge(descProxyRegistrations, float64(n), k.state, k.cm)
	}
	gauge(descProxySessions, float64(st.Active))
	for proto, n := range st.Accepted {
		counter(descProxyAccepted, n, string(proto))
	}
	counter(descProxyAnswers, st.Registered, "ack")
	counter(descProxyAnswers, st.Rejected, "reject")
	for reason, n := range st.Closed {
		counter(descProxyClosed, n, reason)
	}
	counter(descProxyDialFailures, st.DialFailures)
	counter(descProxyAcceptErrors, st.AcceptErrors)
	counter(descProxyAdmissionQueued, st.Queued)
	counter(descProxyAdmissionRejected, st.Closed["queue_full"])
	for _, cm := range st.CallManagers {
		up := 0.0
		if cm.Healthy {
			up = 1
		}
		gauge(descProxyCMUp, up, cm.Name)
		gauge(descProxyCMSessions, float64(cm.Sessions), cm.Name)
		gauge(descProxyAdmissionWaiting, float64(cm.Waiting), cm.Name)
		counter(descProxyCMFailovers, cm.Failovers, cm.Name)
		counter(descProxyCMProbes, cm.ProbesOK, cm.Name, "ok")
		counter(descProxyCMProbes, cm.ProbesFail, cm.Name, "failed")
		counter(descProxyCMVetoes, cm.Vetoes, cm.Name)
		if sip := cm.SIP; sip != nil {
			up := 0.0
			if sip.Healthy {
				up = 1
			}
			gauge(descProxySIPUp, up, cm.Name)
			counter(descProxySIPProbes, sip.ProbesOK, cm.Name, "ok")
			counter(descProxySIPProbes, sip.ProbesFail, cm.Name, "failed")
			counter(descProxySIPFailovers, sip.Failovers, cm.Name)
		}
	}
}
