package lab

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

const metricsText = `# TYPE phoneboot_xdp_packets_total counter
phoneboot_xdp_packets_total{counter="dhcp_fast_offer"} 300
phoneboot_xdp_packets_total{counter="dhcp_fast_ack"} 200
phoneboot_xdp_packets_total{counter="dhcp"} 9999
# TYPE phoneboot_dhcp_sent_total counter
phoneboot_dhcp_sent_total{type="offer"} 10
phoneboot_dhcp_sent_total{type="ack"} 8
phoneboot_dhcp_sent_total{type="nak"} 2
# TYPE phoneboot_tftp_sent_bytes_total counter
phoneboot_tftp_sent_bytes_total 5e+06
# TYPE phoneboot_proxy_register_answers_total counter
phoneboot_proxy_register_answers_total{answer="ack"} 40
phoneboot_proxy_register_answers_total{answer="reject"} 3
# TYPE phoneboot_poe_port_power_watts gauge
phoneboot_poe_port_power_watts{port="p1"} 6.5
phoneboot_poe_port_power_watts{port="p2"} 3.5
`

func TestCountersFromMetrics(t *testing.T) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(metricsText))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1000, 0)
	c := countersFrom(fams, t0)
	want := loadCounters{at: t0, dhcpFast: 500, dhcpGo: 20, tftpBytes: 5e6, registered: 40, powerW: 10}
	if c != want {
		t.Errorf("counters %+v, want %+v", c, want)
	}
	prev := loadCounters{at: t0.Add(-500 * time.Millisecond), dhcpFast: 400, dhcpGo: 20, tftpBytes: 4e6, registered: 30}
	s := sampleBetween(prev, c, t0.Add(-2*time.Second))
	if s != (LoadSample{T: 2, DHCPFastPerS: 200, TFTPMBPerS: 2, RegistrationsPerS: 20, PowerW: 10}) {
		t.Errorf("sample %+v", s)
	}
	// Kea's answers are a rate over the times Kea was read, which may lag
	// the agent's scrape.
	prev.dhcpKea, prev.keaAt = 100, prev.at
	kc := c
	kc.dhcpKea, kc.keaAt = 400, c.at.Add(500*time.Millisecond) // Kea read 1 s after prev
	if k := sampleBetween(prev, kc, t0).DHCPKeaPerS; k != 300 {
		t.Errorf("Kea's rate %v, want 300/s", k)
	}
	// A restarted agent's counters start again from zero: no negative rate.
	restarted := sampleBetween(c, loadCounters{at: t0.Add(time.Second), dhcpFast: 5}, t0)
	if restarted.DHCPFastPerS != 0 {
		t.Errorf("rate across a restart %v, want 0", restarted.DHCPFastPerS)
	}
}
