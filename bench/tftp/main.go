// Command tftp benchmarks phoneboot's TFTP server (userspace/tftp) against
// tftpd-hpa and atftpd, and its HTTP server on 6970 (userspace/httpboot),
// on one veth pair between two network namespaces it creates and removes:
// 1, 50 and 500 concurrent clients fetching a 16 MiB file, reporting the
// aggregate MB/s, the server's CPU seconds per GiB served and the p99
// transfer time. The load comes from the bench's own generator (the
// package's recvmmsg client, tftp.Fetch, and net/http), whose CPU is
// reported too. See README.md.
//
//	go run ./bench/tftp [--quick] [--json PATH]
package main

import (
	"context"
	"crypto/rand"
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
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		var err error
		switch os.Args[1] {
		case "serve":
			err = runServe(os.Args[2:])
		case "gen":
			err = runGen(os.Args[2:])
		default:
			goto bench
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench/tftp %s: %v\n", os.Args[1], err)
			os.Exit(1)
		}
		return
	}
bench:
	var o options
	flag.BoolVar(&o.quick, "quick", false, "short run (under 3 minutes): steps capped at 12 s, one transfer for the single client")
	flag.StringVar(&o.jsonPath, "json", "", "write the results as JSON to `PATH`")
	flag.StringVar(&o.servers, "servers", "phoneboot,tftpd-hpa,atftpd,phoneboot-http", "comma-separated servers to run")
	flag.StringVar(&o.clients, "clients", "1,50,500", "comma-separated concurrent client counts")
	flag.IntVar(&o.blksize, "blksize", 1468, "TFTP blksize for every server (1468: a 1500-byte IP packet)")
	flag.IntVar(&o.windowsize, "windowsize", 16, "TFTP windowsize for the servers that support it (phoneboot, atftpd)")
	flag.IntVar(&o.fileMiB, "file-mib", 16, "size of the file fetched")
	flag.IntVar(&o.repeat, "repeat", 1, "runs of each step; the median is reported")
	flag.StringVar(&o.hpa, "tftpd-hpa", "", "in.tftpd binary (default: apt-get download tftpd-hpa and unpack it)")
	flag.StringVar(&o.atftpd, "atftpd", "", "atftpd binary (default: apt-get download atftpd and unpack it)")
	flag.Parse()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err := run(o); err != nil {
		if errors.Is(err, context.Canceled) {
			err = errors.New("interrupted; namespaces, cgroups and servers removed")
		}
		fmt.Fprintln(os.Stderr, "bench/tftp:", err)
		os.Exit(1)
	}
}

type options struct {
	quick                bool
	jsonPath             string
	servers, clients     string
	blksize, windowsize  int
	fileMiB, repeat      int
	hpa, atftpd          string
	stepLimit            time.Duration
	clientCounts         []int
	self, dir, file      string
	probeFile, probePath string
}

// server is one server under test.
type server struct {
	name  string
	proto string // "tftp" or "http"
	port  int
	// window: whether the server is asked for windowsize.
	window bool
	argv   func(o *options) []string
}

var servers = []server{
	{name: "phoneboot", proto: "tftp", port: 69, window: true, argv: func(o *options) []string {
		return []string{o.self, "serve", "--root", o.dir, "--addr", serverIP}
	}},
	// The same with sendmmsg (a message per packet) instead of GSO: the
	// end-to-end side of the send path comparison. Not in the default
	// set.
	{name: "phoneboot-sendmmsg", proto: "tftp", port: 69, window: true, argv: func(o *options) []string {
		return []string{o.self, "serve", "--root", o.dir, "--addr", serverIP, "--no-gso"}
	}},
	// tftpd-hpa as Debian runs it (in.tftpd --listen --secure), with
	// --foreground so that the bench owns the process. It has no
	// windowsize: lock-step.
	{name: "tftpd-hpa", proto: "tftp", port: 69, argv: func(o *options) []string {
		return []string{o.hpa, "--listen", "--foreground", "--secure", "--user", "root", "--address", serverIP + ":69", o.dir}
	}},
	// atftpd standalone with Debian's --maxthread 100 (its
	// /etc/default/atftpd). Raised to 1000 so that all 500 clients are
	// served at once, it aborts in glibc's FD_SETSIZE check (it select()s
	// on a descriptor above 1023): see README.md.
	{name: "atftpd", proto: "tftp", port: 69, window: true, argv: func(o *options) []string {
		return []string{o.atftpd, "--daemon", "--no-fork", "--port", "69", "--bind-address", serverIP,
			"--user", "root", "--group", "root", "--maxthread", "100", "--logfile", "/dev/null", "--verbose=1", o.dir}
	}},
	{name: "phoneboot-http", proto: "http", port: 6970, argv: func(o *options) []string {
		return []string{o.self, "serve", "--root", o.dir, "--addr", serverIP}
	}},
}

func run(o options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, cgroups, port 69)")
	}
	for _, s := range strings.Split(o.clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("--clients: bad count %q", s)
		}
		o.clientCounts = append(o.clientCounts, n)
	}
	var chosen []server
	for _, name := range strings.Split(o.servers, ",") {
		i := slices.IndexFunc(servers, func(s server) bool { return s.name == name })
		if i < 0 {
			return fmt.Errorf("--servers: unknown server %q", name)
		}
		chosen = append(chosen, servers[i])
	}
	o.stepLimit = 10 * time.Minute
	if o.quick {
		o.stepLimit = 12 * time.Second
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cl := &cleanups{}
	defer cl.run()
	go func() {
		<-ctx.Done()
		cl.run()
	}()

	if o.self, err = os.Executable(); err != nil {
		return err
	}
	if o.dir, err = os.MkdirTemp("", "pbbench-tftp-"); err != nil {
		return err
	}
	os.Chmod(o.dir, 0o755)
	cl.add(func() { os.RemoveAll(o.dir) })
	if err := o.findServers(ctx, chosen); err != nil {
		return err
	}
	o.file = filepath.Join(o.dir, "load.sbn")
	content := make([]byte, o.fileMiB<<20)
	rand.Read(content)
	if err := os.WriteFile(o.file, content, 0o644); err != nil {
		return err
	}
	o.probeFile = "probe.txt"
	o.probePath = filepath.Join(o.dir, o.probeFile)
	if err := os.WriteFile(o.probePath, []byte("ready\n"), 0o644); err != nil {
		return err
	}
	tp, err := newTopo(cl)
	if err != nil {
		return err
	}
	id := filepath.Base(o.dir)
	genCG, err := newCgroup(cl, id+"-gen")
	if err != nil {
		return err
	}

	start := time.Now()
	machine := machineNotes()
	fmt.Print(machine)
	rep := &report{o: &o, machine: machine}
	for _, s := range chosen {
		res, err := benchServer(ctx, &o, tp, s, genCG, cl, id)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		rep.results = append(rep.results, res...)
	}
	rep.wall = time.Since(start)
	rep.print(os.Stdout)
	if o.jsonPath != "" {
		data, err := json.MarshalIndent(rep.json(), "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.jsonPath, append(data, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// findServers unpacks tftpd-hpa and atftpd from their Debian packages
// into the bench's directory (they conflict with each other as installed
// packages, and neither should run as the machine's own service).
func (o *options) findServers(ctx context.Context, chosen []server) error {
	need := map[string]*string{}
	for _, s := range chosen {
		switch s.name {
		case "tftpd-hpa":
			if o.hpa == "" {
				need["tftpd-hpa"] = &o.hpa
			}
		case "atftpd":
			if o.atftpd == "" {
				need["atftpd"] = &o.atftpd
			}
		}
	}
	for pkg, dst := range need {
		dl := filepath.Join(o.dir, "deb-"+pkg)
		if err := os.Mkdir(dl, 0o755); err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, "apt-get", "download", pkg)
		cmd.Dir = dl
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get download %s: %v\n%s", pkg, err, out)
		}
		debs, _ := filepath.Glob(filepath.Join(dl, pkg+"_*.deb"))
		if len(debs) != 1 {
			return fmt.Errorf("apt-get download %s: %d packages", pkg, len(debs))
		}
		if out, err := exec.CommandContext(ctx, "dpkg", "-x", debs[0], filepath.Join(dl, "root")).CombinedOutput(); err != nil {
			return fmt.Errorf("dpkg -x %s: %v\n%s", debs[0], err, out)
		}
		bin := map[string]string{"tftpd-hpa": "usr/sbin/in.tftpd", "atftpd": "usr/sbin/atftpd"}[pkg]
		*dst = filepath.Join(dl, "root", bin)
		progress("%s: %s", pkg, filepath.Base(debs[0]))
	}
	return nil
}

// stepResult is one server measured with one number of clients.
type stepResult struct {
	server      string
	clients     int
	transfers   int
	completed   int
	bytes       int64
	wall        float64 // s
	mbPerS      float64
	cpuSPerGiB  float64 // server
	genSPerGiB  float64 // load generator
	otherBusy   float64 // % of the machine busy outside the server and generator
	p99         float64 // s; NaN if some transfers did not finish
	p50         float64
	resent      int
	drops       int64 // UDP datagrams dropped at a full socket buffer, both namespaces
	errors      []string
	repeats     []float64 // mb_per_s of every repeat
	cpuRepeats  []float64
	limitedNote string
}

func benchServer(ctx context.Context, o *options, tp *topo, s server, genCG *cgroup, cl *cleanups, id string) ([]stepResult, error) {
	cg, err := newCgroup(cl, id+"-"+s.name)
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(o.dir, s.name+".log")
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	progress("%s: starting", s.name)
	cmd, err := startIn(tp.server, cg, log, log, s.argv(o)...)
	if err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	var exitErr error
	go func() { exitErr = cmd.Wait(); close(exited) }()
	stopServer := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(3 * time.Second):
		}
		cg.killAll()
	}
	defer stopServer()
	addr := fmt.Sprintf("%s:%d", serverIP, s.port)
	if _, err := runGenStep(ctx, o, tp, genCG, "--proto", s.proto, "--server", addr, "--file", o.probeFile, "--want", o.probePath, "--probe", "--limit", "10s"); err != nil {
		out, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("not serving: %v\n%s", err, out)
	}
	var results []stepResult
	crashed := false
	for _, n := range o.clientCounts {
		each := 1
		if n == 1 && !o.quick {
			each = 3 // a p99 of one transfer says little
		}
		var runs []stepResult
		for r := range o.repeat {
			progress("%s: %d clients (run %d of %d)", s.name, n, r+1, o.repeat)
			res, err := step(ctx, o, tp, s, cg, genCG, addr, n, each)
			if err != nil {
				return nil, err
			}
			progress("%s: %d clients: %.1f MB/s, server %.2f CPU s/GiB, generator %.2f, p99 %.2f s, %d/%d done, %d resent by clients, %d UDP drops, machine busy elsewhere %.0f%%",
				s.name, n, res.mbPerS, res.cpuSPerGiB, res.genSPerGiB, res.p99, res.completed, res.transfers, res.resent, res.drops, res.otherBusy)
			select {
			case <-exited:
				crashed = true
				out, _ := os.ReadFile(logPath)
				res.limitedNote = fmt.Sprintf("the server died during this step (%v): %s", exitErr, lastLine(out))
				progress("%s: %s", s.name, res.limitedNote)
			default:
			}
			runs = append(runs, res)
			if crashed {
				break
			}
		}
		results = append(results, median(runs))
		if crashed {
			// A server that died is not measured further (the steps
			// left are missing from the report).
			return results, nil
		}
	}
	stopServer()
	if out, _ := os.ReadFile(logPath); len(out) > 0 {
		progress("%s: server log:\n%s", s.name, strings.TrimSpace(string(out)))
	}
	return results, nil
}

// step runs the generator once: n clients, each fetching the file each
// times.
func step(ctx context.Context, o *options, tp *topo, s server, cg, genCG *cgroup, addr string, n, each int) (stepResult, error) {
	window := 0
	if s.window {
		window = o.windowsize
	}
	srv0, err := cg.usage()
	if err != nil {
		return stepResult{}, err
	}
	gen0, err := genCG.usage()
	if err != nil {
		return stepResult{}, err
	}
	stat0 := readStat()
	drops0 := udpErrors(tp.client) + udpErrors(tp.server)
	g, err := runGenStep(ctx, o, tp, genCG, "--proto", s.proto, "--server", addr, "--file", filepath.Base(o.file), "--want", o.file,
		"--clients", strconv.Itoa(n), "--each", strconv.Itoa(each), "--blksize", strconv.Itoa(o.blksize),
		"--windowsize", strconv.Itoa(window), "--limit", o.stepLimit.String())
	if err != nil {
		return stepResult{}, err
	}
	stat1 := readStat()
	drops := udpErrors(tp.client) + udpErrors(tp.server) - drops0
	srv1, _ := cg.usage()
	gen1, _ := genCG.usage()
	gib := float64(g.Bytes) / (1 << 30)
	res := stepResult{
		server: s.name, clients: n, transfers: g.Transfers, completed: g.Completed, bytes: g.Bytes, wall: g.WallS,
		mbPerS:     float64(g.Bytes) / g.WallS / 1e6,
		cpuSPerGiB: (srv1 - srv0).Seconds() / gib,
		genSPerGiB: (gen1 - gen0).Seconds() / gib,
		resent:     g.Resent, errors: g.Errors, drops: drops,
		p99: math.NaN(), p50: math.NaN(),
	}
	busy := stat1.busy - stat0.busy - (srv1 - srv0) - (gen1 - gen0)
	if total := stat1.total - stat0.total; total > 0 {
		res.otherBusy = max(0, 100*busy.Seconds()/total.Seconds())
	}
	// Transfers that did not finish count as infinitely long: a p99
	// that falls on one is "not done" (NaN), not the p99 of the lucky.
	durs := slices.Clone(g.Durations)
	for range g.Transfers - g.Completed {
		durs = append(durs, math.Inf(1))
	}
	res.p99, res.p50 = percentile(durs, 0.99), percentile(durs, 0.50)
	if g.Completed < g.Transfers {
		res.limitedNote = fmt.Sprintf("%d of %d transfers done (step limit %s)", g.Completed, g.Transfers, o.stepLimit)
	}
	res.repeats, res.cpuRepeats = []float64{res.mbPerS}, []float64{res.cpuSPerGiB}
	return res, nil
}

// runGenStep runs the load generator in the client namespace and reads
// its result.
func runGenStep(ctx context.Context, o *options, tp *topo, genCG *cgroup, args ...string) (genResult, error) {
	var out strings.Builder
	errLog, err := os.CreateTemp(o.dir, "gen-*.log")
	if err != nil {
		return genResult{}, err
	}
	defer os.Remove(errLog.Name())
	defer errLog.Close()
	cmd, err := startIn(tp.client, genCG, &out, errLog, append([]string{o.self, "gen"}, args...)...)
	if err != nil {
		return genResult{}, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		cmd.Process.Kill()
		<-done
		return genResult{}, ctx.Err()
	}
	if err != nil {
		msg, _ := os.ReadFile(errLog.Name())
		return genResult{}, fmt.Errorf("generator: %v\n%s", err, msg)
	}
	var g genResult
	if slices.Contains(args, "--probe") {
		return g, nil
	}
	if err := json.Unmarshal([]byte(out.String()), &g); err != nil {
		return g, fmt.Errorf("generator output %q: %w", out.String(), err)
	}
	return g, nil
}

func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1 // nearest rank
	v := s[max(0, min(i, len(s)-1))]
	if math.IsInf(v, 0) {
		return math.NaN()
	}
	return v
}

// lastLine is the last non-empty line of a log.
func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// median keeps the run with the median throughput, with every run's
// throughput and CPU for the spread.
func median(runs []stepResult) stepResult {
	sorted := slices.Clone(runs)
	slices.SortFunc(sorted, func(a, b stepResult) int { return int(math.Copysign(1, a.mbPerS-b.mbPerS)) })
	m := sorted[len(sorted)/2]
	m.repeats, m.cpuRepeats = nil, nil
	for _, r := range runs {
		m.repeats = append(m.repeats, r.mbPerS)
		m.cpuRepeats = append(m.cpuRepeats, r.cpuSPerGiB)
	}
	return m
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// cpuStat is the machine's CPU time from /proc/stat.
type cpuStat struct{ busy, total time.Duration }

func readStat() cpuStat {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuStat{}
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)[1:]
	var s cpuStat
	for i, v := range f {
		n, _ := strconv.ParseInt(v, 10, 64)
		d := time.Duration(n) * time.Second / 100 // USER_HZ
		s.total += d
		if i != 3 && i != 4 { // idle, iowait
			s.busy += d
		}
	}
	return s
}

func machineNotes() string {
	var sb strings.Builder
	cpu := "?"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Fprintf(&sb, "machine: %d CPUs (%s), kernel %s, %s\n", runtime.NumCPU(), cpu, strings.TrimSpace(string(kernel)), runtime.Version())
	s0 := readStat()
	time.Sleep(time.Second)
	s1 := readStat()
	busy := 100 * (s1.busy - s0.busy).Seconds() / max(1e-9, (s1.total-s0.total).Seconds())
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&sb, "machine: %.0f%% busy in the second before the run, load average %s\n", busy, strings.Join(strings.Fields(string(load))[:3], " "))
	if busy > 20 {
		sb.WriteString("machine: WARNING: other load is running; numbers are noisier and lower than on a quiet machine\n")
	}
	return sb.String()
}
