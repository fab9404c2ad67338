package lab

import (
	"fmt"
	"io"
	"time"

	"github.com/phoneboot/phoneboot/agent"
)

// The power side of the lab: the power policies, and what they do to the
// appliance's services (the peak of the signals the adaptive policy
// watches, from the lab's load samples).

var powerPolicies = []string{"all", "stagger", "adaptive"}

// PeakLoad is the highest each service's queue got during the storm, as
// the daemon's metrics (phoneboot_service_load) showed it at the lab's
// load samples.
type PeakLoad struct {
	DHCPBacklog int `json:"dhcp_backlog"`
	TFTPActive  int `json:"tftp_active"`
	ProxyQueued int `json:"proxy_queued"`
	Samples     int `json:"samples"`
}

// applyPower sets the agent's power policy from the lab's options: stagger
// and adaptive take --stagger-ports ports every --stagger; adaptive holds
// a step while a queue is at its threshold.
func (l *lab) applyPower(cfg *agent.Config) {
	cfg.Power.Backend = "lab"
	cfg.Power.Policy = l.o.PowerPolicy
	cfg.Power.StaggerPorts = l.o.StaggerPorts
	cfg.Power.StaggerInterval = agent.Duration(l.o.Stagger)
	if l.o.Adaptive != nil {
		cfg.Power.Adaptive = *l.o.Adaptive
	}
	// A real PSE spends a few hundred ms detecting and classifying.
	cfg.Power.DetectDelay = agent.Duration(time.Duration(float64(300*time.Millisecond) * l.o.TimeScale))
	// The lab PSE's status is memory, cheap to read: poll it often, so
	// the power drawn shows in the lab's load samples during a short storm.
	cfg.Power.PollInterval = agent.Duration(100 * time.Millisecond)
	// The lab's own, never the host's operator settings.
	cfg.Power.StateFile = l.runDir + "/poe-state.json"
}

// peakLoad is the highest each queue got over the samples.
func peakLoad(samples []LoadSample) PeakLoad {
	p := PeakLoad{Samples: len(samples)}
	for _, s := range samples {
		p.DHCPBacklog = max(p.DHCPBacklog, s.DHCPBacklog)
		p.TFTPActive = max(p.TFTPActive, s.TFTPActive)
		p.ProxyQueued = max(p.ProxyQueued, s.ProxyQueued)
	}
	return p
}

// writePowerSummary is the report's line on the power policy's effect.
func (rep Report) writePowerSummary(w io.Writer) {
	done := "not every phone completed"
	if rep.Completed == rep.Phones {
		done = fmt.Sprintf("every phone done after %.1fs", rep.AllDoneSeconds)
	}
	p := rep.PeakLoad
	fmt.Fprintf(w, "power policy %s: %s; peak load: DHCP backlog %d, TFTP transfers %d, proxy queue %d (%d samples)\n",
		rep.PowerPolicy, done, p.DHCPBacklog, p.TFTPActive, p.ProxyQueued, p.Samples)
}
