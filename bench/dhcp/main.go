// Command dhcp benchmarks phoneboot's DHCP server against ISC Kea and
// dnsmasq, each in a pair of network namespaces it creates and removes:
// the highest DORA rate with under 0.1 % lost exchanges (perfdhcp, and the
// bench's own phone-like generator), perfdhcp's avalanche scenario, the
// XDP fast path's cost per request under BPF_PROG_RUN, and the daemon's
// RSS with 100,000 leases. See README.md.
//
//	go run ./bench/dhcp [--quick] [--json PATH] [--phoneboot BIN]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type bench struct {
	quick     bool
	period    time.Duration
	avalanche int           // clients in the avalanche scenario
	avLimit   time.Duration // give up on an avalanche after this long
	ladder    []int         // rates tried, upwards
	refine    int           // bisection steps between the last pass and the first failure
	progRuns  int

	phoneboot, kea, dnsmasq, perfdhcp string
	gens                              map[string]bool // generators to run
	// pin runs the servers on CPU 0 and perfdhcp on CPU 1 (--pin).
	pin bool

	run   *runDir
	cl    *cleanups
	steps int
}

func main() {
	quick := flag.Bool("quick", false, "short run (under 3 minutes): 2 s steps, coarser rate ladder, 2,000-client avalanche")
	jsonPath := flag.String("json", "", "write the results as JSON to `PATH`")
	pbBin := flag.String("phoneboot", "", "phoneboot binary (default: go build ./cmd/phoneboot into a temp dir)")
	only := flag.String("servers", "", "comma-separated subset of servers to run (phoneboot-xdp, phoneboot-userspace, kea, dnsmasq)")
	rssLeases := flag.Int("rss-leases", 100000, "leases in the database for the RSS measurement")
	parts := flag.String("parts", "rates,fastpath,rss", "comma-separated subset of the measurements: rates (rates and avalanche), fastpath (BPF_PROG_RUN), rss")
	rates := flag.String("rates", "", "comma-separated DORA rates to climb instead of the default ladder")
	gens := flag.String("gens", "perfdhcp,pbgen", "comma-separated subset of the generators for the rates part")
	pin := flag.Bool("pin", false, "run the servers on CPU 0 and perfdhcp on CPU 1 (taskset), so that neither takes the other's CPU (pbgen runs in the bench, unpinned)")
	flag.Parse()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err := run(*quick, *jsonPath, *pbBin, *only, *parts, *rates, *gens, *rssLeases, *pin); err != nil {
		if errors.Is(err, context.Canceled) {
			err = errors.New("interrupted; namespaces, mounts and servers removed")
		}
		fmt.Fprintln(os.Stderr, "bench/dhcp:", err)
		os.Exit(1)
	}
}

func run(quick bool, jsonPath, pbBin, only, parts, rates, gens string, rssLeases int, pin bool) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, XDP, BPF_PROG_RUN, mounts)")
	}
	want := map[string]bool{}
	for _, p := range strings.Split(parts, ",") {
		switch p {
		case "rates", "fastpath", "rss":
			want[p] = true
		default:
			return fmt.Errorf("--parts: unknown part %q", p)
		}
	}
	b := &bench{quick: quick, cl: &cleanups{}, gens: map[string]bool{}, pin: pin}
	if pin && runtime.NumCPU() < 2 {
		return errors.New("--pin needs two CPUs")
	}
	if pin {
		progress("--pin: the servers run on CPU %s, perfdhcp on CPU %s", serverCPU, generatorCPU)
	}
	for _, g := range strings.Split(gens, ",") {
		switch g {
		case "perfdhcp", "pbgen":
			b.gens[g] = true
		default:
			return fmt.Errorf("--gens: unknown generator %q", g)
		}
	}
	if quick {
		b.period, b.avalanche, b.avLimit = 2*time.Second, 2000, 20*time.Second
		b.ladder = []int{500, 2000, 8000, 32000, 128000}
		b.progRuns = 50000
	} else {
		// 75 s: past the retransmission at 64 s (±1 s) of perfdhcp's
		// avalanche schedule (1, 2, 4, ... 64 s after the first send).
		b.period, b.avalanche, b.avLimit = 5*time.Second, 10000, 75*time.Second
		b.ladder = []int{500, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000}
		b.refine = 2
		b.progRuns = 200000
	}
	if rates != "" {
		b.ladder = nil
		for _, f := range strings.Split(rates, ",") {
			r, err := strconv.Atoi(f)
			if err != nil || r <= 0 || (len(b.ladder) > 0 && r <= b.ladder[len(b.ladder)-1]) {
				return fmt.Errorf("--rates: %q is not a list of rising rates", rates)
			}
			b.ladder = append(b.ladder, r)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Whatever happens, take down namespaces, mounts and processes.
	defer b.cl.run()

	for _, t := range []struct {
		dst  *string
		name string
	}{{&b.kea, "kea-dhcp4"}, {&b.dnsmasq, "dnsmasq"}, {&b.perfdhcp, "perfdhcp"}} {
		p, err := exec.LookPath(t.name)
		if err != nil {
			return fmt.Errorf("%s not found (Debian: kea-dhcp4-server, dnsmasq-base, kea-admin)", t.name)
		}
		*t.dst = p
	}
	if pbBin == "" {
		dir, err := os.MkdirTemp("", "pbbench-build-")
		if err != nil {
			return err
		}
		b.cl.add(func() { os.RemoveAll(dir) })
		pbBin = filepath.Join(dir, "phoneboot")
		fmt.Fprintln(os.Stderr, "building ./cmd/phoneboot ...")
		out, err := exec.CommandContext(ctx, "go", "build", "-o", pbBin, "github.com/phoneboot/phoneboot/cmd/phoneboot").CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build ./cmd/phoneboot: %v\n%s", err, out)
		}
	}
	if b.phoneboot, err = filepath.Abs(pbBin); err != nil {
		return err
	}
	if b.run, err = newRunDir(b.cl); err != nil {
		return err
	}

	start := time.Now()
	machine := machineNotes()
	fmt.Print(machine)

	kinds := serverKinds
	if only != "" {
		kinds = nil
		for _, name := range strings.Split(only, ",") {
			found := false
			for _, k := range serverKinds {
				if k.name == name {
					kinds = append(kinds, k)
					found = true
				}
			}
			if !found {
				return fmt.Errorf("--servers: unknown server %q", name)
			}
		}
	}

	rep := &report{quick: quick, period: b.period, avalanche: b.avalanche}
	if want["rates"] {
		if rep.calib, err = b.calibrate(ctx); err != nil {
			return fmt.Errorf("generator calibration: %w", err)
		}
		for _, k := range kinds {
			res, err := b.benchServer(ctx, k)
			if err != nil {
				return fmt.Errorf("%s: %w", k.name, err)
			}
			rep.servers = append(rep.servers, res...)
		}
	}
	for _, k := range kinds {
		if k.name != "phoneboot-xdp" {
			continue
		}
		if want["fastpath"] {
			progress("phoneboot-xdp: BPF_PROG_RUN, %d runs per request type", b.progRuns)
			c, err := measureFastpath(b.progRuns)
			if err != nil {
				return fmt.Errorf("fast path BPF_PROG_RUN: %w", err)
			}
			rep.fastpath = &c
		}
		if want["rss"] {
			progress("phoneboot-xdp: RSS with %d leases", rssLeases)
			r, err := b.rssRun(ctx, rssLeases)
			if err != nil {
				return fmt.Errorf("RSS with %d leases: %w", rssLeases, err)
			}
			rep.rss = &r
		}
	}
	rep.wall = time.Since(start)
	rep.print(os.Stdout)
	if jsonPath != "" {
		data, err := json.MarshalIndent(rep.json(), "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(jsonPath, append(data, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// stepDir is a fresh directory on the bench's tmpfs for one server run;
// done removes it.
func (b *bench) stepDir() (string, func(), error) {
	b.steps++
	dir := filepath.Join(b.run.path, fmt.Sprintf("s%03d", b.steps))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", nil, err
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}

// step is one rate tried against one server with one generator.
type step struct {
	Requested  int
	SendRate   float64 // DISCOVERs per second the generator managed
	Rate4Way   float64 // completed DORA per second
	DOSent     int
	DORecv     int
	RASent     int
	RARecv     int
	FailRatio  float64 // DORA exchanges lost
	AvgDelay   float64 // ms, over both exchanges
	MaxDelay   float64
	ServerCPU  float64 // % of one core
	GenCPU     float64
	GenLimited bool // the generator sent under 95 % of the requested rate
	// GenDrops counts replies that reached the generator's namespace and
	// overflowed its socket (perfdhcp: UDP RcvbufErrors there).
	GenDrops int
	Note     string
}

func (s step) pass() bool { return s.FailRatio < 0.001 && s.RARecv > 0 }

// result is one server measured with one generator.
type result struct {
	server, gen string
	steps       []step
	best        *step
	avSeconds   float64
	avDone      bool
	avNote      string
	genLimited  bool // the best rate was limited by the generator, not the server
	live        *liveCost
}

// sweep climbs the rate ladder until a step loses 0.1 % or more of its
// exchanges, then bisects between the last pass and the first failure.
func (b *bench) sweep(ctx context.Context, label string, measure func(rate int) (step, error)) ([]step, *step, error) {
	var steps []step
	var best *step
	do := func(rate int) (step, error) {
		s, err := measure(rate)
		if err != nil {
			return s, err
		}
		steps = append(steps, s)
		verdict := "ok"
		if !s.pass() {
			verdict = "LOST"
		}
		progress("%s  -r %6d: sent %7.0f/s  4-way %7.0f/s  lost %6.3f%%  avg %7.2f ms  max %8.2f ms  cpu server %3.0f%% gen %3.0f%%  %s%s",
			label, rate, s.SendRate, s.Rate4Way, 100*s.FailRatio, s.AvgDelay, s.MaxDelay, s.ServerCPU, s.GenCPU, verdict, s.Note)
		return s, nil
	}
	failAt := 0
	for _, r := range b.ladder {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		s, err := do(r)
		if err != nil {
			return nil, nil, err
		}
		if !s.pass() {
			failAt = r
			break
		}
		best = &s
		if s.GenLimited {
			break // higher rates would only measure the generator
		}
	}
	if best == nil {
		// Even the first rate lost exchanges: go down.
		for r := b.ladder[0] / 2; r >= 60; r /= 2 {
			s, err := do(r)
			if err != nil {
				return nil, nil, err
			}
			if s.pass() {
				best = &s
				break
			}
			failAt = r
		}
	}
	if best != nil && failAt > 0 && !best.GenLimited {
		lo, hi := best.Requested, failAt
		for range b.refine {
			if float64(hi)/float64(lo) < 1.2 {
				break
			}
			mid := roundRate(math.Sqrt(float64(lo) * float64(hi)))
			s, err := do(mid)
			if err != nil {
				return nil, nil, err
			}
			if s.pass() {
				lo, best = mid, &s
			} else {
				hi = mid
			}
		}
	}
	return steps, best, nil
}

// roundRate rounds to two significant digits.
func roundRate(v float64) int {
	p := math.Pow(10, math.Floor(math.Log10(v))-1)
	return int(math.Round(v/p) * p)
}

// serverRun starts a fresh server for one measurement, waits until it
// answers, runs fn, and stops it. It reports a server that died.
func (b *bench) serverRun(ctx context.Context, k serverKind, t *topo, g *gen, fn func(p *proc, dir string) error) error {
	dir, done, err := b.stepDir()
	if err != nil {
		return err
	}
	defer done()
	p, err := k.start(ctx, b, t.server, dir)
	if err != nil {
		return err
	}
	b.cl.add(p.stop) // on Ctrl-C; stop is idempotent
	defer p.stop()
	if _, err := g.probe(ctx, 20*time.Second); err != nil {
		return fmt.Errorf("%s not answering: %w; log:\n%s", k.name, err, p.tail())
	}
	if err := fn(p, dir); err != nil {
		return err
	}
	if !p.alive() {
		return fmt.Errorf("%s died during the run; log:\n%s", k.name, p.tail())
	}
	p.stop()
	if strings.HasPrefix(k.name, "phoneboot") {
		if s := logSummary(p.log); s != "" {
			progress("%s: its log after the run: %s", k.name, s)
		}
	}
	return nil
}

// logSummary counts the WARN and ERROR lines of a phoneboot log (it runs
// at level warn) by message, so problems during a run are not missed.
func logSummary(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	counts := map[string]int{}
	first := map[string]string{}
	var order []string
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.Contains(line, "level=WARN") && !strings.Contains(line, "level=ERROR") {
			continue
		}
		key := line
		if i := strings.Index(line, "level="); i >= 0 {
			key = line[i:]
		}
		// Group by level and message, not by the varying attributes.
		if i := strings.Index(key, `" `); i >= 0 {
			key = key[:i+1]
		}
		if counts[key] == 0 {
			order = append(order, key)
			first[key] = line
		}
		counts[key]++
	}
	var parts []string
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%d× %s (first: %s)", counts[k], k, first[k]))
	}
	return strings.Join(parts, "; ")
}

func (b *bench) benchServer(ctx context.Context, k serverKind) ([]result, error) {
	progress("%s: namespaces", k.name)
	t, err := newTopo(b.cl, k.xdp)
	if err != nil {
		return nil, err
	}
	defer t.close()
	g, err := openGen(t.client, t.clientIfindex)
	if err != nil {
		return nil, err
	}
	defer g.close()

	// Option 150 in the OFFER: each server is configured as asked.
	var opt150 bool
	err = b.serverRun(ctx, k, t, g, func(p *proc, dir string) error {
		r, err := g.probe(ctx, 5*time.Second)
		opt150 = err == nil && r.opt150
		return err
	})
	if err != nil {
		return nil, err
	}
	if !opt150 {
		progress("%s: WARNING: its OFFER carries no option 150", k.name)
	}

	var results []result
	if b.gens["perfdhcp"] {
		pd := result{server: k.name, gen: "perfdhcp"}
		pd.steps, pd.best, err = b.sweep(ctx, k.name+" perfdhcp", func(rate int) (step, error) {
			var s step
			err := b.serverRun(ctx, k, t, g, func(p *proc, dir string) error {
				cpu0, t0 := cpuTime(p.pid()), time.Now()
				drops0, err := udpRcvbufErrors(t.client)
				if err != nil {
					return err
				}
				r, pdCPU, err := b.runPerfdhcp(ctx, t.client, 0,
					"-r", fmt.Sprint(rate), "-R", fmt.Sprint(clientCap),
					"-p", fmt.Sprint(b.period.Seconds()), "-W", "1000000")
				if err != nil {
					return err
				}
				el := time.Since(t0)
				drops, err := udpRcvbufErrors(t.client)
				if err != nil {
					return err
				}
				s = perfdhcpStep(rate, b.period, r)
				if s.GenDrops = drops - drops0; s.GenDrops > 0 {
					s.Note += fmt.Sprintf("  (perfdhcp's socket overflowed: %d replies dropped before perfdhcp read them)", s.GenDrops)
				}
				s.ServerCPU = 100 * float64(cpuTime(p.pid())-cpu0) / float64(el)
				s.GenCPU = 100 * float64(pdCPU) / float64(el)
				if k.xdp {
					s.Note += b.kernelShare(dir, r.DO.Sent)
				}
				return nil
			})
			return s, err
		})
		if err != nil {
			return nil, err
		}
		pd.genLimited = pd.best != nil && pd.best.GenLimited
		progress("%s: perfdhcp --scenario avalanche -R %d", k.name, b.avalanche)
		err = b.serverRun(ctx, k, t, g, func(p *proc, dir string) error {
			r, _, err := b.runPerfdhcp(ctx, t.client, b.avLimit, "--scenario", "avalanche", "-R", fmt.Sprint(b.avalanche))
			if err != nil {
				return err
			}
			pd.avSeconds = r.Took.Seconds()
			pd.avDone = r.RA.Recv >= b.avalanche && r.DO.Recv >= b.avalanche
			if !pd.avDone {
				pd.avNote = fmt.Sprintf("stopped after %v: %d of %d clients served", b.avLimit, r.RA.Recv, b.avalanche)
			}
			progress("%s  perfdhcp avalanche: %.2f s, done %v, resent %d, rejected leases %d/%d %s", k.name, pd.avSeconds, pd.avDone, r.Resent, r.DO.Rejected, r.RA.Rejected, pd.avNote)
			return nil
		})
		if err != nil {
			return nil, err
		}
		results = append(results, pd)
	}
	if b.gens["pbgen"] {
		pg := result{server: k.name, gen: "pbgen"}
		pg.steps, pg.best, err = b.sweep(ctx, k.name+" pbgen   ", func(rate int) (step, error) {
			var s step
			err := b.serverRun(ctx, k, t, g, func(p *proc, dir string) error {
				cpu0, t0 := cpuTime(p.pid()), time.Now()
				st, err := g.runRate(ctx, rate, b.period)
				if err != nil {
					return err
				}
				s = genStep(rate, st)
				if k.xdp {
					s.Note += b.kernelShare(dir, st.DOSent)
				}
				s.ServerCPU = 100 * float64(cpuTime(p.pid())-cpu0) / float64(time.Since(t0))
				return nil
			})
			return s, err
		})
		if err != nil {
			return nil, err
		}
		pg.genLimited = pg.best != nil && pg.best.GenLimited
		if k.xdp && pg.best != nil {
			progress("%s: the XDP program's run time at %d DORA/s (BPF statistics on)", k.name, pg.best.Requested)
			c, err := b.measureLiveCost(ctx, k, t, g, pg.best.Requested)
			if err != nil {
				return nil, err
			}
			pg.live = &c
			progress("%s  %.0f ns per run over %d runs (%d OFFER + %d ACK by the kernel)", k.name, c.NsPerRun, c.Runs, c.Offers, c.Acks)
		}
		progress("%s: pbgen avalanche, %d clients", k.name, b.avalanche)
		err = b.serverRun(ctx, k, t, g, func(p *proc, dir string) error {
			st, err := g.runAvalanche(ctx, b.avalanche, b.avLimit)
			if err != nil {
				return err
			}
			pg.avSeconds, pg.avDone = st.Seconds, st.Completed
			kernel := ""
			if k.xdp {
				kernel = b.kernelShare(dir, st.DOSent)
			}
			if !st.Completed {
				pg.avNote = fmt.Sprintf("stopped after %v: %d of %d clients served, %d waiting for OFFER, %d for ACK",
					b.avLimit, st.RARecv, b.avalanche, st.WaitOffer, st.WaitAck)
			}
			progress("%s  pbgen avalanche: %.2f s, done %v, resent %d, NAKs %d %s%s", k.name, pg.avSeconds, pg.avDone, st.Resent, st.Naks, pg.avNote, kernel)
			return nil
		})
		if err != nil {
			return nil, err
		}
		results = append(results, pg)
	}
	return results, nil
}

// kernelShare says how many of the run's requests the XDP program
// answered itself (the rest went to the Go server).
func (b *bench) kernelShare(dir string, discovers int) string {
	c, err := b.xdpCounters(dir)
	if err != nil {
		return "  (" + err.Error() + ")"
	}
	return fmt.Sprintf("  [kernel answered %d OFFER + %d ACK for %d DISCOVER; no free address %d times]",
		c["dhcp_fast_offer"], c["dhcp_fast_ack"], discovers, c["dhcp_fast_no_free"])
}

func perfdhcpStep(rate int, period time.Duration, r pdResult) step {
	// perfdhcp's own "Rate" divides by the run time including -W, so
	// count completed exchanges over the sending period instead.
	s := step{Requested: rate, DOSent: r.DO.Sent, DORecv: r.DO.Recv, RASent: r.RA.Sent, RARecv: r.RA.Recv,
		Rate4Way: float64(r.RA.Recv) / period.Seconds()}
	s.SendRate = float64(r.DO.Sent) / period.Seconds()
	// perfdhcp stops sending REQUESTs when the period ends (-W only
	// collects late replies), so an exchange is lost with probability
	// 1-(1-dropDO)(1-dropRA).
	okDO, okRA := 0.0, 0.0
	if r.DO.Sent > 0 {
		okDO = float64(r.DO.Recv) / float64(r.DO.Sent)
	}
	if r.RA.Sent > 0 {
		okRA = float64(r.RA.Recv) / float64(r.RA.Sent)
	}
	s.FailRatio = 1 - okDO*okRA
	if n := r.DO.Recv + r.RA.Recv; n > 0 {
		s.AvgDelay = (r.DO.AvgDelay*float64(r.DO.Recv) + r.RA.AvgDelay*float64(r.RA.Recv)) / float64(n)
	}
	s.MaxDelay = max(r.DO.MaxDelay, r.RA.MaxDelay)
	s.GenLimited = s.SendRate < 0.95*float64(rate)
	if s.GenLimited {
		s.Note = fmt.Sprintf("  (perfdhcp sent only %.0f%% of the requested rate)", 100*s.SendRate/float64(rate))
	}
	return s
}

func genStep(rate int, st genStats) step {
	s := step{Requested: rate, SendRate: st.SendRate, Rate4Way: st.Rate4Way, DOSent: st.DOSent, DORecv: st.DORecv,
		RASent: st.RASent, RARecv: st.RARecv, FailRatio: st.FailRatio, GenCPU: st.GenCPUPercent}
	if n := st.DORecv + st.RARecv; n > 0 {
		s.AvgDelay = (st.DOAvg*float64(st.DORecv) + st.RAAvg*float64(st.RARecv)) / float64(n)
	}
	s.MaxDelay = max(st.DOMax, st.RAMax)
	s.GenLimited = st.SendRate < 0.95*float64(rate)
	if s.GenLimited {
		s.Note = fmt.Sprintf("  (pbgen sent only %.0f%% of the requested rate)", 100*st.SendRate/float64(rate))
	}
	if st.Naks > 0 || st.Orphans > 0 {
		s.Note += fmt.Sprintf("  naks %d orphans %d", st.Naks, st.Orphans)
	}
	return s
}

// calib is how fast each generator can send on this machine with nothing
// answering: the ceiling of any rate it measures here.
type calib struct {
	perfdhcpSend float64 // DISCOVER/s
	pbgenSend    float64
}

func (b *bench) calibrate(ctx context.Context) (calib, error) {
	var c calib
	progress("generators: send rate with no server answering")
	t, err := newTopo(b.cl, false)
	if err != nil {
		return c, err
	}
	defer t.close()
	g, err := openGen(t.client, t.clientIfindex)
	if err != nil {
		return c, err
	}
	defer g.close()
	const rate = 400000
	per := time.Second
	r, _, err := b.runPerfdhcp(ctx, t.client, 0, "-r", fmt.Sprint(rate), "-R", fmt.Sprint(clientCap), "-p", fmt.Sprint(per.Seconds()))
	if err != nil {
		return c, err
	}
	c.perfdhcpSend = float64(r.DO.Sent) / per.Seconds()
	st, err := g.runRate(ctx, rate, per)
	if err != nil {
		return c, err
	}
	c.pbgenSend = st.SendRate
	progress("generators: perfdhcp %.0f DISCOVER/s, pbgen %.0f DISCOVER/s", c.perfdhcpSend, c.pbgenSend)
	return c, nil
}

func (b *bench) rssRun(ctx context.Context, n int) (rssResult, error) {
	t, err := newTopo(b.cl, true)
	if err != nil {
		return rssResult{}, err
	}
	defer t.close()
	return b.measureRSS(ctx, t.server, n)
}

// machineNotes describes the machine and how busy it was before the run.
func machineNotes() string {
	var sb strings.Builder
	var uts syscallUtsname
	kernel := uname(&uts)
	cpu := "?"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	fmt.Fprintf(&sb, "machine: %d CPUs (%s), kernel %s, %s\n", runtime.NumCPU(), cpu, kernel, runtime.Version())
	busy, top := cpuBusy(time.Second)
	fmt.Fprintf(&sb, "machine: %.0f%% of all CPUs busy in the second before the run", busy)
	if len(top) > 0 {
		fmt.Fprintf(&sb, " (%s)", strings.Join(top, ", "))
	}
	sb.WriteString("\n")
	if busy > 20 {
		sb.WriteString("machine: WARNING: other load is running; the numbers below are lower than on a quiet machine\n")
	}
	return sb.String()
}
