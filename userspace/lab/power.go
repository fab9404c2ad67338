package lab

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/phoneboot/phoneboot/agent"
	"github.com/phoneboot/phoneboot/userspace/control"
)

// The power side of the lab: the power policies, and what they do to the
// appliance's services (the peak of the signals the adaptive policy
// watches, sampled through the daemon's control API).

var powerPolicies = []string{"all", "stagger", "adaptive"}

// PeakLoad is the highest each service's queue got during the storm, as
// the daemon reported it (`GET /v1/load`) every LoadEvery.
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
	// The lab's own, never the host's operator settings.
	cfg.Power.StateFile = l.runDir + "/poe-state.json"
}

// loadSampler records the peak of the daemon's load signals.
type loadSampler struct {
	stopOnce sync.Once
	cancel   context.CancelFunc
	done     chan struct{}
	peak     PeakLoad
}

// sampleLoad asks the daemon for its load every `every` until stopped.
// A failed sample is skipped (and logged): the storm matters more.
func sampleLoad(ctx context.Context, socket string, every time.Duration, log *slog.Logger) *loadSampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &loadSampler{cancel: cancel, done: make(chan struct{})}
	client := control.NewClient(socket)
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			l, err := client.Load(ctx)
			if err == nil {
				s.peak.DHCPBacklog = max(s.peak.DHCPBacklog, l.DHCPBacklog)
				s.peak.TFTPActive = max(s.peak.TFTPActive, l.TFTPActive)
				s.peak.ProxyQueued = max(s.peak.ProxyQueued, l.ProxyQueued)
				s.peak.Samples++
			} else if ctx.Err() == nil {
				log.Warn("load sample", "error", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop ends the sampling and returns the peaks.
func (s *loadSampler) stop() PeakLoad {
	s.stopOnce.Do(s.cancel)
	<-s.done
	return s.peak
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
