package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/phoneboot/phoneboot/userspace/control"
	"github.com/phoneboot/phoneboot/userspace/fastpath"
)

// Failure injection during a storm (--fault KIND@WHEN, repeatable):
//
//   - callmanager: the next CallManager in priority order (cm1, then cm2)
//     is stopped: its listener closes and every connection is reset, as
//     when CUCM's service stops. Phones registered through the proxy lose
//     their connection, register again, and the proxy sends them to the
//     next CallManager.
//   - daemon: the daemon is killed (SIGKILL: no clean stop, nothing
//     flushed) and started again with the same config, as systemd's
//     Restart= would. Its pinned XDP program and maps stay and keep
//     answering DHCP meanwhile; everything else it serves (CDP, the Go DHCP
//     server, TFTP, HTTP, the registration proxy, power) is gone until it
//     is ready again.
//   - port[:pN]: the port's power is cycled through the daemon's control
//     API, as `phoneboot poe cycle pN` does (off for power.cycle_off, then
//     detection again). A PoE phone has no other supply, so a cable pull
//     is the same to it: the phones on the port lose power and reboot.
//     A port not powered yet (a stagger) is cycled once it is.
//     They go back to waiting for power, then boot, CDP, DHCP, their
//     configuration, firmware (a phone that upgraded runs the new load
//     and skips it) and registration, as after any power-up. The lab
//     does not model link loss without power loss (a phone with a local
//     power supply), in which a phone would keep running and only renew.
//
// WHEN is a time after the storm's start ("8s") or a count of phones that
// have finished a phase ("dhcp=300": when the 300th phone has its lease;
// "register=1000": when 1,000 phones have registered). No fault fires
// before the daemon is first ready, and faults fire one at a time: one
// that falls due while the daemon restarts waits for it, and faults that
// wait go in the order given.

// The kinds of fault.
const (
	FaultCallManager = "callmanager"
	FaultDaemon      = "daemon"
	FaultPort        = "port"
)

// Fault is one failure to inject during the storm.
type Fault struct {
	Kind string
	Port string // FaultPort: the port whose power is cycled
	// When: After the storm's start, or once Count phones have finished
	// Phase (then After is 0).
	After time.Duration
	Phase string
	Count int
	Spec  string // as given
}

// phaseNames are the lab's phases, in order (as (*lab).phases lists them).
var phaseNames = []string{"power", "boot", "cdp", "dhcp", "config", "firmware", "register"}

// ParseFault reads a fault as --fault gives it: KIND@WHEN, KIND one of
// callmanager, daemon, port or port:PORT (port alone is p1), WHEN a
// duration after the storm's start or PHASE=COUNT.
func ParseFault(s string) (Fault, error) {
	f := Fault{Spec: s}
	kind, when, ok := strings.Cut(s, "@")
	if !ok {
		return f, fmt.Errorf("--fault %q: want KIND@WHEN, such as daemon@5s or port:p2@dhcp=100", s)
	}
	switch k, port, hasPort := strings.Cut(kind, ":"); {
	case k == FaultPort && !hasPort:
		f.Kind, f.Port = k, "p1"
	case k == FaultPort && port != "":
		f.Kind, f.Port = k, port
	case (k == FaultCallManager || k == FaultDaemon) && !hasPort:
		f.Kind = k
	default:
		return f, fmt.Errorf("--fault %q: kind %q is not callmanager, daemon, port or port:PORT", s, kind)
	}
	if phase, n, ok := strings.Cut(when, "="); ok {
		if !slices.Contains(phaseNames, phase) {
			return f, fmt.Errorf("--fault %q: phase %q is not one of %s", s, phase, strings.Join(phaseNames, ", "))
		}
		count, err := strconv.Atoi(n)
		if err != nil || count < 1 {
			return f, fmt.Errorf("--fault %q: %q is not a count of phones (1 or more)", s, n)
		}
		f.Phase, f.Count = phase, count
		return f, nil
	}
	d, err := time.ParseDuration(when)
	if err != nil || d < 0 {
		return f, fmt.Errorf("--fault %q: %q is neither a time after the storm's start (8s) nor PHASE=COUNT (dhcp=300)", s, when)
	}
	f.After = d
	return f, nil
}

// validateFaults checks the faults against the lab's size.
func (o *Options) validateFaults() error {
	cms := 0
	for _, f := range o.Faults {
		switch {
		case f.Kind == FaultPort && !slices.Contains(portNames(o.Ports), f.Port):
			return fmt.Errorf("--fault %q: the lab's ports are p1 to p%d", f.Spec, o.Ports)
		case f.Count > o.Phones:
			return fmt.Errorf("--fault %q: the lab has %d phones", f.Spec, o.Phones)
		case f.Phase == "" && f.After >= o.Timeout:
			return fmt.Errorf("--fault %q: after the storm's --timeout %s", f.Spec, o.Timeout)
		}
		if f.Kind == FaultCallManager {
			if cms++; cms >= len(callManagerAddrs) {
				return fmt.Errorf("--fault %q: %d CallManager faults would stop all %d CallManagers", f.Spec, cms, len(callManagerAddrs))
			}
		}
	}
	return nil
}

func portNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("p%d", i+1)
	}
	return names
}

// FaultReport is one injected fault and the phones' recovery from it.
type FaultReport struct {
	Kind    string `json:"kind"`
	Target  string `json:"target"`  // cm1, the daemon, p3
	Trigger string `json:"trigger"` // as given to --fault
	// Injected says whether it fired: a PHASE=COUNT the storm never
	// reached does not (Error says why).
	Injected  bool    `json:"injected"`
	AtSeconds float64 `json:"at_seconds"` // from the storm's start
	Error     string  `json:"error,omitempty"`
	// Affected is how many phones it hit: for callmanager the phones
	// registered then; for daemon every phone powered then (all depend on
	// the daemon); for port the phones on the port. Recovered is how many
	// of them registered after it (again, or for the first time), and
	// RecoverySeconds the time from the fault until the last of them did.
	Affected        int     `json:"affected"`
	Recovered       int     `json:"recovered"`
	RecoverySeconds float64 `json:"recovery_seconds"`
	// Of the phones it hit, RegisteredAtFault were registered then; all
	// of them were registered again ReregisteredSeconds after the fault
	// (0 if some never were). For daemon the difference from Recovery is
	// the storm still in progress: phones that had not registered yet.
	RegisteredAtFault   int     `json:"registered_at_fault"`
	ReregisteredSeconds float64 `json:"reregistered_seconds"`
	// For daemon: from the kill until the restarted daemon's READY=1, and
	// the DHCP answers the pinned XDP program gave meanwhile (OFFERs and
	// ACKs, from its counters).
	DownSeconds              float64 `json:"down_seconds,omitempty"`
	FastPathAnswersWhileDown uint64  `json:"fast_path_answers_while_down,omitempty"`
	// What the restarted daemon found that the fast path had handed out
	// (phoneboot_dhcp_fastpath_start_recovered): events waiting in its
	// ring buffer, and bound clients its store lacked, adopted or refused.
	RestartEvents  int `json:"restart_events,omitempty"`
	RestartAdopted int `json:"restart_adopted,omitempty"`
	RestartRefused int `json:"restart_refused,omitempty"`
	// For port: from the power going off until it was back.
	PowerOffSeconds float64 `json:"power_off_seconds,omitempty"`
}

// Event is something that happened to the appliance or the phones as a
// whole during the storm, at AtSeconds from its start.
type Event struct {
	Kind      string  `json:"kind"`
	AtSeconds float64 `json:"at_seconds"`
	Detail    string  `json:"detail,omitempty"`
}

// The kinds of event.
const (
	eventCallManagerStopped = "callmanager_stopped"
	eventDaemonKilled       = "daemon_killed"
	eventDaemonReady        = "daemon_ready"
	eventPowerOff           = "port_power_off"
	eventPowerOn            = "port_power_on"
	eventRecovered          = "recovered"
	eventNotInjected        = "fault_not_injected"
)

// faultRunner injects the storm's faults and follows the recovery.
type faultRunner struct {
	l     *lab
	rec   *recorder
	start time.Time

	runs    []*faultRun
	turns   turns // one fault at a time
	wg      sync.WaitGroup
	settled chan struct{} // closed when every phone finished its first pass

	mu     sync.Mutex
	events []Event
}

type faultRun struct {
	Fault
	index int   // in the order given
	cm    int   // FaultCallManager: which CallManager it stops
	port  *Port // FaultPort: the port it cycles
	at    time.Time
	rep   FaultReport
	// watch follows the phones it hit, regWatch those of them that were
	// registered then.
	watch, regWatch *recoveryWatch
}

// startFaults starts a goroutine per fault that waits for its trigger,
// injects it, and waits for the phones it hit to register again; ctx
// bounds all of it (the storm's deadline). With no faults it does
// nothing, and wait returns at once.
func (l *lab) startFaults(ctx context.Context, rec *recorder, start time.Time) *faultRunner {
	f := &faultRunner{l: l, rec: rec, start: start, settled: make(chan struct{})}
	cms := 0
	for i, flt := range l.o.Faults {
		r := &faultRun{Fault: flt, index: i, rep: FaultReport{Kind: flt.Kind, Trigger: flt.Spec}}
		switch flt.Kind {
		case FaultCallManager:
			r.cm = cms
			r.rep.Target = fmt.Sprintf("cm%d", cms+1)
			cms++
		case FaultDaemon:
			r.rep.Target = "phoneboot"
		case FaultPort:
			r.rep.Target = flt.Port
		}
		f.runs = append(f.runs, r)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.run(ctx, r)
		}()
	}
	return f
}

// turns lets one fault be injected at a time. Faults that fall due while
// another is being injected (a daemon restarting takes seconds) go in
// the order they were given.
type turns struct {
	mu      sync.Mutex
	cond    sync.Cond
	busy    bool
	waiting []int // indexes of the faults waiting, ascending
}

func (t *turns) take(i int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cond.L == nil {
		t.cond.L = &t.mu
	}
	t.waiting = append(t.waiting, i)
	slices.Sort(t.waiting)
	for t.busy || t.waiting[0] != i {
		t.cond.Wait()
	}
	t.waiting = t.waiting[1:]
	t.busy = true
}

func (t *turns) give() {
	t.mu.Lock()
	t.busy = false
	t.mu.Unlock()
	t.cond.Broadcast()
}

// at is t in seconds from the storm's start.
func (f *faultRunner) at(t time.Time) float64 { return t.Sub(f.start).Seconds() }

func (f *faultRunner) event(kind string, t time.Time, detail string) {
	f.mu.Lock()
	f.events = append(f.events, Event{Kind: kind, AtSeconds: f.at(t), Detail: detail})
	f.mu.Unlock()
}

func (f *faultRunner) run(ctx context.Context, r *faultRun) {
	if err := f.trigger(ctx, r); err != nil {
		r.rep.Error = err.Error()
		f.event(eventNotInjected, time.Now(), r.Spec+": "+err.Error())
		return
	}
	f.turns.take(r.index)
	err := context.Cause(ctx)
	if err == nil {
		err = f.injectFault(ctx, r)
	} else {
		err = fmt.Errorf("the storm ended first: %w", err)
	}
	f.turns.give()
	if err != nil {
		r.rep.Error = err.Error()
		if !r.rep.Injected {
			f.event(eventNotInjected, time.Now(), r.Spec+": "+err.Error())
			return
		}
	}
	if r.watch == nil {
		return
	}
	select {
	case <-r.watch.done:
		f.event(eventRecovered, r.watch.recoveredAt(), fmt.Sprintf("%s: %d phones registered again", r.Spec, r.watch.affected))
	case <-ctx.Done():
	}
}

// trigger waits until the fault is due. A phase count is checked every
// triggerPoll against the storm's progress; once every phone has
// finished its first pass the counts are final, and a count not reached
// then never will be.
func (f *faultRunner) trigger(ctx context.Context, r *faultRun) error {
	if r.Phase == "" {
		t := time.NewTimer(time.Until(f.start.Add(r.After)))
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("the storm ended first: %w", context.Cause(ctx))
		}
	}
	i := slices.Index(f.rec.phases, r.Phase)
	tick := time.NewTicker(triggerPoll)
	defer tick.Stop()
	for {
		settled := false
		select {
		case <-f.settled:
			settled = true
		default:
		}
		if per, _, _ := f.rec.progress(); per[i] >= r.Count {
			return nil
		} else if settled {
			return fmt.Errorf("only %d phones finished %s", per[i], r.Phase)
		}
		select {
		case <-tick.C:
		case <-f.settled:
		case <-ctx.Done():
			return fmt.Errorf("the storm ended first: %w", context.Cause(ctx))
		}
	}
}

// triggerPoll is how often a PHASE=COUNT trigger looks at the storm's
// progress: a fault fires within this of the count being reached.
const triggerPoll = 2 * time.Millisecond

func (f *faultRunner) injectFault(ctx context.Context, r *faultRun) error {
	switch r.Kind {
	case FaultCallManager:
		return f.stopCallManager(r)
	case FaultDaemon:
		return f.restartDaemon(ctx, r)
	case FaultPort:
		return f.cyclePort(ctx, r)
	}
	return fmt.Errorf("unknown fault kind %q", r.Kind)
}

// stopCallManager stops the CallManager. The phones it hit are those it
// had registered when it stopped, each registered again once it has on a
// connection opened after the CallManager reset its old one, and those
// the lab saw registered before the stop (registered elsewhere, or lost
// in between), on a connection opened after the stop began.
func (f *faultRunner) stopCallManager(r *faultRun) error {
	registered := f.l.registrations.track.registeredPhones()
	at := time.Now()
	resets, err := f.l.cms[r.cm].Stop()
	if err != nil {
		return err
	}
	f.injected(r, at)
	f.event(eventCallManagerStopped, at, r.rep.Target)
	since := map[*Phone]time.Time{}
	for _, ph := range registered {
		since[ph] = at
	}
	byName := map[string]*Phone{}
	for _, ph := range f.l.phones {
		byName[ph.Name] = ph
	}
	for _, rs := range resets {
		if ph := byName[rs.Device]; ph != nil {
			if _, seen := since[ph]; !seen {
				registered = append(registered, ph)
			}
			since[ph] = rs.At
		}
	}
	f.follow(r, at, registered, registered, func(ph *Phone) time.Time { return since[ph] })
	return nil
}

// follow watches the phones the fault hit until each registered again
// on a connection opened at or after since(phone): all of them, and
// those that were registered when it hit.
func (f *faultRunner) follow(r *faultRun, at time.Time, hit, registered []*Phone, since func(*Phone) time.Time) {
	were := map[*Phone]bool{}
	for _, ph := range registered {
		were[ph] = true
	}
	var both []*Phone
	for _, ph := range hit {
		if were[ph] {
			both = append(both, ph)
		}
	}
	track := &f.l.registrations.track
	r.watch = track.watch(at, hit, since)
	r.regWatch = track.watch(at, both, since)
}

// restartDaemon kills the daemon and starts it again with its config.
func (f *faultRunner) restartDaemon(ctx context.Context, r *faultRun) error {
	l := f.l
	affected, registered := f.poweredPhones(), l.registrations.track.registeredPhones()
	answered, cerr := l.fastPathAnswers()
	at := time.Now()
	if err := l.killAgent(); err != nil {
		return err
	}
	f.injected(r, at)
	f.event(eventDaemonKilled, at, "")
	var downErr error
	if l.o.whileDown != nil {
		if err := l.o.whileDown(ctx, l); err != nil {
			downErr = fmt.Errorf("while the daemon was down: %w", err)
		}
	}
	if err := l.spawnAgent(ctx); err != nil {
		return errors.Join(downErr, fmt.Errorf("restart the daemon: %w", err))
	}
	ready := time.Now()
	if after, err := l.fastPathAnswers(); cerr == nil && err == nil {
		r.rep.FastPathAnswersWhileDown = after - answered
	}
	r.rep.DownSeconds = ready.Sub(at).Seconds()
	f.event(eventDaemonReady, ready, fmt.Sprintf("down %.2fs", r.rep.DownSeconds))
	if st, err := l.startRecovered(ctx); err == nil {
		r.rep.RestartEvents, r.rep.RestartAdopted, r.rep.RestartRefused = st["events"], st["adopted"], st["refused"]
	} else {
		l.o.Log.Warn("the restarted daemon's start recovery", "error", err)
	}
	// A phone registers again through the restarted daemon's proxy, on a
	// connection opened after the kill: one whose RegisterAck was on its
	// way at the kill loses that connection too.
	f.follow(r, at, affected, registered, func(*Phone) time.Time { return at })
	return downErr
}

// fastPathAnswers is the fast path's DHCP answers so far, read through
// its pins (0 without the fast path).
func (l *lab) fastPathAnswers() (uint64, error) {
	if l.o.NoXDP {
		return 0, nil
	}
	p, err := fastpath.OpenPinned(l.pinDir)
	if err != nil {
		return 0, err
	}
	defer p.Close()
	cs, err := p.Counters()
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, c := range cs {
		if c.Name == "dhcp_fast_offer" || c.Name == "dhcp_fast_ack" {
			n += c.Packets
		}
	}
	return n, nil
}

// cyclePort power-cycles the port through the daemon, as an operator's
// `phoneboot poe cycle` does; the call returns once the power is back on
// its way (detection follows).
func (f *faultRunner) cyclePort(ctx context.Context, r *faultRun) error {
	l := f.l
	p := l.ports[slices.Index(portNames(len(l.ports)), r.Port)]
	// Power the port has not had yet cannot be cycled (a stagger may not
	// have reached it): the fault waits for it.
	select {
	case <-p.power.firstOn:
	case <-ctx.Done():
		return fmt.Errorf("%s was never powered: %w", r.Port, context.Cause(ctx))
	}
	var affected []*Phone
	for _, ph := range l.phones {
		if ph.Port == p && !ph.failed.Load() {
			affected = append(affected, ph)
		}
	}
	registered := l.registrations.track.registeredPhones()
	at := time.Now()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := control.NewClient(filepath.Join(l.runDir, "control.sock")).PoEAction(cctx, r.Port, control.PoECycle, ""); err != nil {
		return fmt.Errorf("power-cycle %s: %w", r.Port, err)
	}
	r.port = p
	f.injected(r, at)
	back := time.Now()
	// The phones register again once the power is back: on connections
	// opened from the end of the call on.
	f.follow(r, at, affected, registered, func(*Phone) time.Time { return back })
	return nil
}

func (f *faultRunner) injected(r *faultRun, at time.Time) {
	r.at = at
	r.rep.Injected = true
	r.rep.AtSeconds = f.at(at)
}

// poweredPhones are the phones past the power phase that have not failed.
func (f *faultRunner) poweredPhones() []*Phone {
	var out []*Phone
	for _, ph := range f.l.phones {
		if ph.powered.Load() && !ph.failed.Load() {
			out = append(out, ph)
		}
	}
	return out
}

// wait returns once every fault has fired and its phones have registered
// again, or the storm's deadline has passed; call it once every phone has
// finished its first pass. Phones a fault hit that did not register again
// by then are failures.
func (f *faultRunner) wait() {
	close(f.settled)
	f.wg.Wait()
	for _, r := range f.runs {
		if r.watch == nil {
			continue
		}
		for _, ph := range r.watch.pendingPhones() {
			f.rec.failAfterCompleting(ph.Name, "register", fmt.Errorf("not registered again after the %s fault at %.1fs", r.Spec, r.rep.AtSeconds))
		}
	}
}

// addTo puts the faults, the events and the registered phones over time
// into the report.
func (f *faultRunner) addTo(rep *Report) {
	for _, r := range f.runs {
		if w := r.watch; w != nil {
			r.rep.Affected, r.rep.Recovered = w.affected, w.affected-len(w.pendingPhones())
			if t := w.recoveredAt(); !t.IsZero() {
				r.rep.RecoverySeconds = t.Sub(w.at).Seconds()
			}
		}
		if w := r.regWatch; w != nil {
			r.rep.RegisteredAtFault = w.affected
			if t := w.recoveredAt(); !t.IsZero() {
				r.rep.ReregisteredSeconds = t.Sub(w.at).Seconds()
			}
		}
		if r.port != nil {
			if off, on := r.port.power.offAfter(r.at); !on.IsZero() {
				r.rep.PowerOffSeconds = on.Sub(off).Seconds()
			}
		}
		rep.Faults = append(rep.Faults, r.rep)
	}
	f.mu.Lock()
	rep.Events = slices.Clone(f.events)
	f.mu.Unlock()
	for _, p := range f.l.ports {
		for _, ch := range p.power.changes() {
			kind := eventPowerOff
			if ch.on {
				kind = eventPowerOn
			}
			if ch.on && ch.first {
				continue // the storm's own power-up
			}
			rep.Events = append(rep.Events, Event{Kind: kind, AtSeconds: f.at(ch.at), Detail: p.Name})
		}
	}
	slices.SortStableFunc(rep.Events, func(a, b Event) int {
		switch {
		case a.AtSeconds < b.AtSeconds:
			return -1
		case a.AtSeconds > b.AtSeconds:
			return 1
		}
		return 0
	})
	if rep.Series != nil {
		rep.Series.Registered = f.l.registrations.track.series(f.start)
	}
}

// failAfterCompleting records a phone that did not recover from a fault:
// a failure, and no longer completed if it had. A phone already failed is
// not counted twice.
func (r *recorder) failAfterCompleting(phone, phase string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if slices.ContainsFunc(r.failures, func(f Failure) bool { return f.Phone == phone }) {
		return
	}
	r.failed[phase]++
	r.failures = append(r.failures, Failure{Phone: phone, Phase: phase, Error: err.Error()})
	r.completed--
}

var errPowerLost = errors.New("the port lost power")

// killAgent kills the agent with SIGKILL, as a crash or the OOM killer
// would (nothing is flushed, no pin is removed), and waits until it is
// gone.
func (l *lab) killAgent() error {
	if l.agent == nil {
		return errors.New("the daemon is not running")
	}
	if err := l.agent.Process.Kill(); err != nil {
		return fmt.Errorf("kill the daemon: %w", err)
	}
	<-l.exited
	l.agent = nil
	l.agentThread.Stop()
	l.agentThread = nil
	return nil
}

// writeFaults is the report's lines on the faults and the lease check.
func (rep Report) writeFaults(w io.Writer) {
	for _, f := range rep.Faults {
		var b strings.Builder
		fmt.Fprintf(&b, "fault %s (%s): ", f.Trigger, f.Target)
		if !f.Injected {
			fmt.Fprintf(w, "%snot injected: %s\n", b.String(), f.Error)
			continue
		}
		fmt.Fprintf(&b, "at %.2fs", f.AtSeconds)
		switch f.Kind {
		case FaultDaemon:
			fmt.Fprintf(&b, ", down %.2fs, %d DHCP answers from the fast path meanwhile; at restart %d fast path events, %d leases adopted, %d refused",
				f.DownSeconds, f.FastPathAnswersWhileDown, f.RestartEvents, f.RestartAdopted, f.RestartRefused)
		case FaultPort:
			fmt.Fprintf(&b, ", power off %.2fs", f.PowerOffSeconds)
		}
		fmt.Fprintf(&b, "; %d of %d phones it hit registered again", f.Recovered, f.Affected)
		if f.Recovered == f.Affected {
			fmt.Fprintf(&b, " after %.3fs", f.RecoverySeconds)
		}
		if f.RegisteredAtFault > 0 && f.RegisteredAtFault != f.Affected {
			fmt.Fprintf(&b, ", the %d registered then", f.RegisteredAtFault)
			if f.ReregisteredSeconds > 0 {
				fmt.Fprintf(&b, " after %.3fs", f.ReregisteredSeconds)
			}
		}
		if f.Error != "" {
			fmt.Fprintf(&b, " (%s)", f.Error)
		}
		fmt.Fprintln(w, b.String())
	}
	in := rep.Integrity
	if in == nil {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "lease integrity: %d phones with an address, %d leases in the store", in.Phones, in.StoreLeases)
	if in.FastPath {
		fmt.Fprintf(&b, ", %d bound and %d queued in the fast path", in.KernelBindings, in.KernelQueued)
	}
	if in.Violations == 0 {
		fmt.Fprintf(w, "%s: no violation\n", b.String())
		return
	}
	fmt.Fprintf(w, "%s: %d VIOLATIONS\n", b.String(), in.Violations)
	const shown = 10
	for i, p := range in.Problems {
		if i == shown {
			fmt.Fprintf(w, "... and %d more violations (see --json)\n", in.Violations-shown)
			break
		}
		fmt.Fprintf(w, "VIOLATION %s %s %s: %s\n", p.Kind, p.Phone, p.IP, p.Detail)
	}
}

// startRecovered reads phoneboot_dhcp_fastpath_start_recovered from the
// agent's metrics: what its DHCP server recovered from the fast path at
// start.
func (l *lab) startRecovered(ctx context.Context) (map[string]int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s := newLoadSampler(l.appNS, labMetricsListen, 0)
	defer s.client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, m := range fams["phoneboot_dhcp_fastpath_start_recovered"].GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == "what" {
				out[lp.GetValue()] = int(m.GetGauge().GetValue())
			}
		}
	}
	return out, nil
}
