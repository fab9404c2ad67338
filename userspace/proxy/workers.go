package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// Workers runs the proxy in worker processes, each with a descriptor
// table of its own: every proxied phone holds two descriptors (its side
// and the CallManager's), so one process caps near half its hard
// RLIMIT_NOFILE in phones, and a host that cannot raise that limit can
// still hold more phones in more processes (as nginx's workers do).
//
// The parent binds every listener in NewWorkers, once per worker with
// SO_REUSEPORT, so that bind errors come at once and the sockets are in
// the caller's network namespace; the kernel spreads new connections over
// the workers' sockets by a hash of their addresses (no thundering herd
// of N processes woken per phone). Each worker runs the proxy of this
// package on its sockets, with its own health checks and a 1/N share of
// the admission pacing, and answers the parent's queries for its counters
// and table over a unix socket pair.
type Workers struct {
	log   *slog.Logger
	addrs []net.Addr
	ws    []*worker
	spawn *vnet.Thread // starts the workers (see vnet.Thread on Pdeathsig)

	stopTimeout time.Duration
	stopping    atomic.Bool
	stopOnce    sync.Once
	died        chan *worker // a worker that exited (buffered: one per worker)
}

// WorkersConfig says how many workers to run and how to start one.
type WorkersConfig struct {
	// Workers is how many processes; 2 or more (a single proxy runs in
	// the caller's process: New).
	Workers int
	// Command starts one worker: a program and its arguments, which
	// calls RunWorker. It should be the same binary as the caller
	// (/proc/self/exe), since the two speak a private protocol.
	Command []string
	// StopTimeout bounds the wait for a worker after SIGTERM, before it
	// is killed; 0 means 15 s.
	StopTimeout time.Duration
}

type worker struct {
	index int
	cmd   *exec.Cmd

	mu   sync.Mutex // one query at a time on ctl
	ctl  net.Conn
	enc  *json.Encoder
	dec  *json.Decoder
	lost bool // a query failed midway: the stream is out of step

	exited  chan struct{} // closed once the process has been reaped
	waitErr error         // its exit, set before exited closes
	logDone chan struct{} // its stderr read to the end
}

// The parent's first message to a worker, and what a worker answers.
type workerHello struct {
	Config    Config     `json:"config"`
	Listeners int        `json:"listeners"` // descriptors 4 on
	LogLevel  slog.Level `json:"log_level"`
}

type workerRequest struct {
	Op string `json:"op"` // "stats" or "registrations"
}

type workerReply struct {
	Ready         bool           `json:"ready,omitempty"`
	Error         string         `json:"error,omitempty"`
	Stats         *Stats         `json:"stats,omitempty"`
	Registrations []Registration `json:"registrations,omitempty"`
}

// Descriptors a worker inherits: its control socket, then its listeners.
const (
	workerCtlFD       = 3
	workerFirstListFD = 4
)

// workerQueryTimeout bounds one query of a worker.
const workerQueryTimeout = 10 * time.Second

// workerReadyTimeout bounds a worker's start.
const workerReadyTimeout = 30 * time.Second

// NewWorkers validates cfg, opens its listeners for every worker, and
// starts the workers; it returns when every one is serving.
func NewWorkers(cfg Config, wc WorkersConfig, log *slog.Logger) (_ *Workers, err error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	if wc.Workers < 2 {
		return nil, fmt.Errorf("proxy: %d workers; run one proxy with New", wc.Workers)
	}
	if len(wc.Command) == 0 {
		return nil, errors.New("proxy: no worker command")
	}
	if wc.StopTimeout == 0 {
		wc.StopTimeout = 15 * time.Second
	}
	sets, err := listenSets(cfg, wc.Workers)
	// The workers hold the sockets; the parent's copies go whatever
	// happens (a listener's address stays readable once closed).
	defer func() {
		for _, set := range sets {
			for _, ln := range set {
				ln.Close()
			}
		}
	}()
	if err != nil {
		return nil, err
	}
	w := &Workers{log: log, died: make(chan *worker, wc.Workers), stopTimeout: wc.StopTimeout}
	for _, ln := range sets[0] {
		w.addrs = append(w.addrs, ln.Addr())
	}
	if w.spawn, err = vnet.StartThreadHere(); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	hello := workerHello{Config: workerConfig(cfg, sets[0], wc.Workers), Listeners: len(cfg.Listeners), LogLevel: lowestLevel(log)}
	for i := range wc.Workers {
		wk, err := w.start(i, wc, sets[i])
		if err != nil {
			return nil, fmt.Errorf("proxy: worker %d: %w", i, err)
		}
		w.ws = append(w.ws, wk)
	}
	// Sent once all are started, so that they come up together.
	for _, wk := range w.ws {
		if err := wk.handshake(hello); err != nil {
			return nil, fmt.Errorf("proxy: worker %d (pid %d): %w", wk.index, wk.cmd.Process.Pid, err)
		}
	}
	return w, nil
}

// listenSets opens cfg's listeners once per worker, all with SO_REUSEPORT;
// a listener asking for port 0 gets the port the first set was given.
func listenSets(cfg Config, n int) ([][]*net.TCPListener, error) {
	var sets [][]*net.TCPListener
	for i := range n {
		c := cfg
		if i > 0 {
			c.Listeners = append([]Listener(nil), cfg.Listeners...)
			for j, l := range c.Listeners {
				host, port, _ := net.SplitHostPort(l.Addr)
				if port == "0" {
					c.Listeners[j].Addr = net.JoinHostPort(host, strconv.Itoa(sets[0][j].Addr().(*net.TCPAddr).Port))
				}
			}
		}
		set, err := listen(c, true)
		if err != nil {
			return sets, err
		}
		sets = append(sets, set)
	}
	return sets, nil
}

// workerConfig is one worker's share of cfg: the listeners' upstream ports
// fixed (a listener on port 0 forwards to the port it was given), and the
// admission and failback pacing divided among n workers, so that together
// they pace as one proxy would.
func workerConfig(cfg Config, lns []*net.TCPListener, n int) Config {
	c := cfg
	c.Listeners = append([]Listener(nil), cfg.Listeners...)
	for i := range c.Listeners {
		if c.Listeners[i].UpstreamPort == 0 {
			c.Listeners[i].UpstreamPort = lns[i].Addr().(*net.TCPAddr).Port
		}
	}
	c.Admission.Rate /= float64(n)
	c.Admission.Burst = max(1, c.Admission.Burst/n)
	c.Admission.QueueLimit = max(1, c.Admission.QueueLimit/n)
	c.Failback.Rate /= float64(n) // setDefaults made it positive
	return c
}

// lowestLevel is the lowest level log writes, which workers need not go
// below.
func lowestLevel(log *slog.Logger) slog.Level {
	for _, l := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn} {
		if log.Enabled(context.Background(), l) {
			return l
		}
	}
	return slog.LevelError
}

// start starts worker i on its listeners.
func (w *Workers) start(i int, wc WorkersConfig, lns []*net.TCPListener) (*worker, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	parentEnd, childEnd := os.NewFile(uintptr(fds[0]), "proxy-worker-ctl"), os.NewFile(uintptr(fds[1]), "proxy-worker-ctl")
	defer childEnd.Close()
	ctl, err := net.FileConn(parentEnd)
	parentEnd.Close()
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	files := []*os.File{childEnd}
	defer func() {
		for _, f := range files[1:] {
			f.Close()
		}
	}()
	for _, ln := range lns {
		f, err := ln.File()
		if err != nil {
			ctl.Close()
			return nil, fmt.Errorf("listener %s: %w", ln.Addr(), err)
		}
		files = append(files, f)
	}
	logR, logW, err := os.Pipe()
	if err != nil {
		ctl.Close()
		return nil, err
	}
	defer logW.Close()
	cmd := exec.Command(wc.Command[0], wc.Command[1:]...)
	cmd.ExtraFiles = files
	cmd.Stderr = logW
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// A worker does not outlive the daemon (see vnet.Thread).
		Pdeathsig: syscall.SIGKILL,
		// Nor is it stopped by a terminal's Ctrl-C before the daemon
		// asks: the daemon stops it in order.
		Setpgid: true,
	}
	if err := w.spawn.Do(cmd.Start); err != nil {
		ctl.Close()
		logR.Close()
		return nil, err
	}
	wk := &worker{index: i, cmd: cmd, ctl: ctl, enc: json.NewEncoder(ctl), dec: json.NewDecoder(ctl),
		exited: make(chan struct{}), logDone: make(chan struct{})}
	go func() {
		defer close(wk.logDone)
		relayLog(w.log.With("worker", i), logR)
	}()
	go func() {
		wk.waitErr = cmd.Wait()
		close(wk.exited)
		w.died <- wk
	}()
	return wk, nil
}

// handshake sends the worker its configuration and waits until it serves.
func (wk *worker) handshake(h workerHello) error {
	wk.ctl.SetDeadline(time.Now().Add(workerReadyTimeout))
	defer wk.ctl.SetDeadline(time.Time{})
	var r workerReply
	err := wk.enc.Encode(h)
	if err == nil {
		err = wk.dec.Decode(&r)
	}
	if err != nil {
		// Most likely it exited: say how.
		select {
		case <-wk.exited:
			return fmt.Errorf("exited before it was ready (%s)", wk.cmd.ProcessState)
		case <-time.After(time.Second):
			return fmt.Errorf("not ready: %w", err)
		}
	}
	if r.Error != "" {
		return errors.New(r.Error)
	}
	if !r.Ready {
		return errors.New("answered but not ready")
	}
	return nil
}

// relayLog passes a worker's log (JSON lines on its stderr) to log, and
// anything else it writes there (a panic) as errors.
func relayLog(log *slog.Logger, r *os.File) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			log.Error("worker output", "line", sc.Text())
			continue
		}
		var level slog.Level
		if s, ok := rec[slog.LevelKey].(string); ok {
			level.UnmarshalText([]byte(s))
		}
		msg, _ := rec[slog.MessageKey].(string)
		delete(rec, slog.TimeKey)
		delete(rec, slog.LevelKey)
		delete(rec, slog.MessageKey)
		keys := make([]string, 0, len(rec))
		for k := range rec {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		args := make([]any, 0, 2*len(keys))
		for _, k := range keys {
			args = append(args, k, rec[k])
		}
		log.Log(context.Background(), level, msg, args...)
	}
	if err := sc.Err(); err != nil {
		// Drained all the same: a worker blocked on a full pipe would
		// hang.
		log.Error("worker output unreadable; the rest is dropped", "error", err)
		io.Copy(io.Discard, r)
	}
}

// Addrs are the listeners' addresses, in the order of Config.Listeners.
func (w *Workers) Addrs() []net.Addr { return w.addrs }

// PIDs are the workers' process IDs, in worker order.
func (w *Workers) PIDs() []int {
	out := make([]int, len(w.ws))
	for i, wk := range w.ws {
		out[i] = wk.cmd.Process.Pid
	}
	return out
}

// Run serves until ctx ends, then stops the workers and waits for them;
// a worker that exits before returns an error (after the others are
// stopped): its phones lost their connections, and the daemon had better
// restart whole than serve on with a share of its listening sockets
// dead.
func (w *Workers) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		w.stop(w.stopTimeout)
		return nil
	case wk := <-w.died:
		if w.stopping.Load() {
			return nil
		}
		err := fmt.Errorf("worker %d (pid %d) exited (%s)", wk.index, wk.cmd.Process.Pid, wk.cmd.ProcessState)
		w.stop(w.stopTimeout)
		return err
	}
}

// stop asks every worker to stop (SIGTERM), and kills those still there
// after timeout; it returns when all have been reaped.
func (w *Workers) stop(timeout time.Duration) {
	w.stopOnce.Do(func() {
		w.stopping.Store(true)
		for _, wk := range w.ws {
			wk.cmd.Process.Signal(syscall.SIGTERM)
		}
		deadline := time.NewTimer(timeout)
		defer deadline.Stop()
		for _, wk := range w.ws {
			select {
			case <-wk.exited:
			case <-deadline.C:
				w.log.Warn("worker did not stop after SIGTERM; killing it", "worker", wk.index, "pid", wk.cmd.Process.Pid)
				wk.cmd.Process.Kill()
				<-wk.exited
			}
			<-wk.logDone
		}
	})
}

// Close stops the workers if Run did not, and releases the rest.
func (w *Workers) Close() error {
	w.stop(w.stopTimeout)
	for _, wk := range w.ws {
		wk.ctl.Close()
	}
	if w.spawn != nil {
		w.spawn.Stop()
		w.spawn = nil
	}
	return nil
}

// query asks the worker one thing. A query that fails midway leaves the
// stream out of step: the connection is closed, and the worker, seeing
// it closed, stops (and Run reports it).
func (wk *worker) query(op string) (workerReply, error) {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	if wk.lost {
		return workerReply{}, errors.New("control connection lost")
	}
	wk.ctl.SetDeadline(time.Now().Add(workerQueryTimeout))
	var r workerReply
	err := wk.enc.Encode(workerRequest{Op: op})
	if err == nil {
		err = wk.dec.Decode(&r)
	}
	if err != nil {
		wk.lost = true
		wk.ctl.Close()
		return r, err
	}
	if r.Error != "" {
		return r, errors.New(r.Error)
	}
	return r, nil
}

// WorkerStats are each worker's counters, in worker order; a worker that
// does not answer is left out (and logged), and once they are stopping
// none is asked.
func (w *Workers) WorkerStats() []Stats {
	var out []Stats
	if w.stopping.Load() {
		return nil
	}
	for _, wk := range w.ws {
		r, err := wk.query("stats")
		if err != nil || r.Stats == nil {
			w.log.Warn("worker stats", "worker", wk.index, "error", err)
			continue
		}
		out = append(out, *r.Stats)
	}
	return out
}

// Stats are the workers' counters together: sums, except that a
// CallManager (or its SIP check) is healthy only while every worker holds
// it so (one that does not steers its phones away), and its transitions
// and failovers, which every worker sees for the same event, are the
// most any worker counted.
func (w *Workers) Stats() Stats { return mergeStats(w.WorkerStats()) }

func mergeStats(all []Stats) Stats {
	st := Stats{Accepted: map[Protocol]uint64{}, Closed: map[string]uint64{}}
	type key struct {
		state State
		cm    string
	}
	table := map[key]int{}
	for i, s := range all {
		for p, n := range s.Accepted {
			st.Accepted[p] += n
		}
		for r, n := range s.Closed {
			st.Closed[r] += n
		}
		st.Active += s.Active
		st.Registered += s.Registered
		st.Rejected += s.Rejected
		st.Queued += s.Queued
		st.DialFailures += s.DialFailures
		st.AcceptErrors += s.AcceptErrors
		st.HealthFailures += s.HealthFailures
		for j, c := range s.CallManagers {
			if i == 0 {
				if c.SIP != nil {
					sip := *c.SIP
					c.SIP = &sip
				}
				st.CallManagers = append(st.CallManagers, c)
				continue
			}
			if j >= len(st.CallManagers) {
				break // the workers share one config; never so
			}
			m := &st.CallManagers[j]
			m.Sessions += c.Sessions
			m.Waiting += c.Waiting
			mergeCheck(&m.CheckStats, c.CheckStats)
			if m.SIP != nil && c.SIP != nil {
				mergeCheck(m.SIP, *c.SIP)
			}
		}
		for _, t := range s.Table {
			table[key{t.State, t.CallManager}] += t.Rows
		}
	}
	st.Table = make([]TableCount, 0, len(table))
	for k, n := range table {
		st.Table = append(st.Table, TableCount{State: k.state, CallManager: k.cm, Rows: n})
	}
	sortTable(st.Table)
	return st
}

// mergeCheck adds one worker's view of a health check to m.
func mergeCheck(m *CheckStats, c CheckStats) {
	m.Healthy = m.Healthy && c.Healthy
	m.Transitions = max(m.Transitions, c.Transitions)
	m.Failovers = max(m.Failovers, c.Failovers)
	m.ProbesOK += c.ProbesOK
	m.ProbesFail += c.ProbesFail
	m.Vetoes += c.Vetoes
}

// Registrations are every worker's tables in one, sorted by device then
// phone. IDs are made unique: a worker's ID times the number of workers,
// plus its index.
func (w *Workers) Registrations() []Registration {
	var out []Registration
	if w.stopping.Load() {
		return nil
	}
	n := uint64(len(w.ws))
	for _, wk := range w.ws {
		r, err := wk.query("registrations")
		if err != nil {
			w.log.Warn("worker registrations", "worker", wk.index, "error", err)
			continue
		}
		for _, row := range r.Registrations {
			if row.ID <= math.MaxUint64/n-1 {
				row.ID = row.ID*n + uint64(wk.index)
			}
			out = append(out, row)
		}
	}
	sortRegistrations(out)
	return out
}

// RunWorker is a worker's side: it reads its configuration from the
// control socket it inherited, serves the listeners it inherited until
// ctx ends or the parent goes away, answering the parent's queries.
func RunWorker(ctx context.Context) error {
	f := os.NewFile(workerCtlFD, "proxy-worker-ctl")
	ctl, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("control socket (descriptor 3): %w; proxy workers are started by the daemon", err)
	}
	defer ctl.Close()
	enc, dec := json.NewEncoder(ctl), json.NewDecoder(ctl)
	var h workerHello
	if err := dec.Decode(&h); err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: h.LogLevel}))
	p, err := workerProxy(h, log)
	if err != nil {
		enc.Encode(workerReply{Error: err.Error()})
		return err
	}
	if err := enc.Encode(workerReply{Ready: true}); err != nil {
		p.Close()
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		// The parent's end closes when it goes: stop then.
		defer cancel()
		for {
			var req workerRequest
			if err := dec.Decode(&req); err != nil {
				return
			}
			var r workerReply
			switch req.Op {
			case "stats":
				st := p.Stats()
				r.Stats = &st
			case "registrations":
				r.Registrations = p.Registrations()
			default:
				r.Error = fmt.Sprintf("unknown query %q", req.Op)
			}
			if err := enc.Encode(r); err != nil {
				return
			}
		}
	}()
	return p.Run(ctx)
}

// workerProxy is the proxy on the worker's inherited listeners.
func workerProxy(h workerHello, log *slog.Logger) (*Proxy, error) {
	cfg := h.Config
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	if h.Listeners != len(cfg.Listeners) {
		return nil, fmt.Errorf("%d listeners passed for %d configured", h.Listeners, len(cfg.Listeners))
	}
	var lns []*net.TCPListener
	for i := range h.Listeners {
		f := os.NewFile(uintptr(workerFirstListFD+i), "proxy-listener")
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("listener descriptor %d: %w", workerFirstListFD+i, err)
		}
		lns = append(lns, ln.(*net.TCPListener))
	}
	return newProxy(cfg, log, lns), nil
}
