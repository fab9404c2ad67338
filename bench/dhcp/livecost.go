package main

import (
	"context"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// liveCost is the XDP program's own run time per frame while it answers a
// storm, from the kernel's BPF run-time statistics (bpf_prog_info's
// run_time_ns and run_cnt, counted around each run while
// kernel.bpf_stats_enabled is held on). Unlike BPF_PROG_RUN with Repeat 1,
// the program runs back to back in the driver's receive loop here, with
// the maps as warm as a storm keeps them.
type liveCost struct {
	Rate     int     // DORA/s offered during the measurement
	Runs     uint64  // program runs: every frame the port received
	NsPerRun float64 // run time / runs
	Offers   uint64  // answered by the kernel during the measurement
	Acks     uint64
}

// xdpRunStats reads run count and total run time of the XDP program on the
// server's port.
func xdpRunStats(t *topo) (runs uint64, runtime time.Duration, err error) {
	l, err := t.server.Netlink().LinkByName("swp1")
	if err != nil {
		return 0, 0, err
	}
	if l.Attrs().Xdp == nil || l.Attrs().Xdp.ProgId == 0 {
		return 0, 0, fmt.Errorf("no XDP program on swp1")
	}
	prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(l.Attrs().Xdp.ProgId))
	if err != nil {
		return 0, 0, err
	}
	defer prog.Close()
	st, err := prog.Stats()
	if err != nil {
		return 0, 0, err
	}
	return st.RunCount, st.Runtime, nil
}

// measureLiveCost runs pbgen at rate against the fast path with BPF
// run-time statistics on, and only then: counting costs two clock reads
// per run, which the rate sweep should not pay.
func (b *bench) measureLiveCost(ctx context.Context, k serverKind, t *topo, g *gen, rate int) (liveCost, error) {
	c := liveCost{Rate: rate}
	err := b.serverRun(ctx, k, t, g, func(p *proc, dir string) error {
		stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			return fmt.Errorf("enable BPF run-time statistics: %w", err)
		}
		defer stats.Close()
		before, err := b.xdpCounters(dir)
		if err != nil {
			return err
		}
		runs0, rt0, err := xdpRunStats(t)
		if err != nil {
			return err
		}
		if _, err := g.runRate(ctx, rate, b.period); err != nil {
			return err
		}
		runs1, rt1, err := xdpRunStats(t)
		if err != nil {
			return err
		}
		after, err := b.xdpCounters(dir)
		if err != nil {
			return err
		}
		c.Runs = runs1 - runs0
		if c.Runs == 0 {
			return fmt.Errorf("the XDP program did not run")
		}
		c.NsPerRun = float64(rt1-rt0) / float64(c.Runs)
		c.Offers = after["dhcp_fast_offer"] - before["dhcp_fast_offer"]
		c.Acks = after["dhcp_fast_ack"] - before["dhcp_fast_ack"]
		return nil
	})
	return c, err
}
