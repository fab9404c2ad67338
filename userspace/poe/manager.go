package poe

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Policy is how the manager powers ports after the appliance starts.
type Policy string

const (
	// PolicyAll powers every port at once.
	PolicyAll Policy = "all"
	// PolicyStagger powers StaggerPorts ports every StaggerInterval.
	PolicyStagger Policy = "stagger"
	// PolicyAdaptive is stagger that holds a step while any of the
	// services' queues (Load) is at or above its threshold: the storm is
	// paced by the appliance's own load.
	PolicyAdaptive Policy = "adaptive"
)

// Accounting is how a powered port counts against the budget.
type Accounting string

const (
	// AccountClass counts what the port's class allocates (ClassPowerMW),
	// or what CDP/LLDP negotiated: safe, as a PSE without dynamic power
	// management does it.
	AccountClass Accounting = "class"
	// AccountMeasured counts what the port draws now: more ports fit, and
	// a phone that starts drawing more can push the total over.
	AccountMeasured Accounting = "measured"
)

// Load is how busy the appliance's services are: the signals the adaptive
// policy paces the storm by.
type Load struct {
	DHCPBacklog int `json:"dhcp_backlog"` // DHCP requests waiting in the server's sockets or being handled
	TFTPActive  int `json:"tftp_active"`  // TFTP transfers running
	ProxyQueued int `json:"proxy_queued"` // phones waiting for the registration proxy's admission
}

// AtOrAbove reports whether any signal is at or above its threshold in
// limit; a zero threshold ignores its signal.
func (l Load) AtOrAbove(limit Load) bool {
	over := func(v, t int) bool { return t > 0 && v >= t }
	return over(l.DHCPBacklog, limit.DHCPBacklog) || over(l.TFTPActive, limit.TFTPActive) || over(l.ProxyQueued, limit.ProxyQueued)
}

// LoadSource reports the services' load now; the agent implements it from
// their counters.
type LoadSource interface {
	Load() Load
}

// PortConfig is a managed port as configured.
type PortConfig struct {
	Name     string
	Enabled  bool     // power it (the operator may change this through the API)
	Priority Priority // the operator may change this too
	LimitMW  int      // the controller's per-port limit; 0: leave it
}

// ManagerConfig says which ports to power, how, and within what budget.
type ManagerConfig struct {
	// Ports in power-up order within a priority (critical ports first).
	Ports  []PortConfig
	Policy Policy
	// StaggerPorts ports are powered every StaggerInterval (stagger and
	// adaptive).
	StaggerPorts    int
	StaggerInterval time.Duration
	// Thresholds hold an adaptive step while Load reports any signal at
	// or above them; MaxHold bounds the hold, so that a queue that never
	// drains (a CallManager down) cannot keep ports dark for ever.
	Thresholds Load
	MaxHold    time.Duration
	Load       LoadSource
	// BudgetMW is the power all ports may draw together; 0: what the
	// controller reports, and without a figure from it, no limit.
	BudgetMW   int
	Accounting Accounting
	// ReserveMW is what a powered port counts before its class (or its
	// draw, with AccountMeasured) is known: what a phone can take before
	// it negotiates (default 15400, an 802.3af port).
	ReserveMW int
	// PollInterval is how often the ports' status is read (default 2s).
	PollInterval time.Duration
	// CycleOff is how long a power cycle leaves a port off (default 2s).
	CycleOff time.Duration
	// StatePath is where operator changes made through the API are kept
	// across restarts; empty: they are not kept.
	StatePath string
}

// ManagedPort is a port as the manager sees it.
type ManagedPort struct {
	PortStatus
	Enabled     bool     `json:"enabled"` // wanted on, by config or operator
	Priority    Priority `json:"priority"`
	AllocatedMW int      `json:"allocated_mw"` // what it counts against the budget
	// Held says why a wanted port is not powered: waiting for its step in
	// the sequence, refused or shed for lack of budget, or a controller
	// error.
	Held        string `json:"held,omitempty"`
	RequestedMW int    `json:"requested_mw,omitempty"` // the last CDP/LLDP power request
	GrantedMW   int    `json:"granted_mw,omitempty"`   // what was granted of it
}

// ManagerStatus is the budget and every managed port.
type ManagerStatus struct {
	Policy      Policy        `json:"policy"`
	Accounting  Accounting    `json:"accounting"`
	BudgetMW    int           `json:"budget_mw"` // 0: no limit
	AllocatedMW int           `json:"allocated_mw"`
	DrawnMW     int           `json:"drawn_mw"`
	Ports       []ManagedPort `json:"ports"`
	// PowerRequests counts CDP/LLDP power requests by outcome.
	RequestsGranted uint64 `json:"requests_granted"`
	RequestsRefused uint64 `json:"requests_refused"`
	// AdaptiveHolds counts adaptive steps held for load.
	AdaptiveHolds uint64 `json:"adaptive_holds"`
}

// Held reasons.
const (
	heldSequence = "waiting for its step in the power-up sequence"
	heldBudget   = "not enough power budget"
)

type managed struct {
	cfg        PortConfig
	index      int
	enabled    bool
	priority   Priority
	queued     bool // waiting for the sequencer
	on         bool // the manager powered it: it counts against the budget
	configured bool // limit and priority given to the controller
	held       string
	status     PortStatus
	// unknown: the controller could not say (a read or command failed);
	// status is then a fault naming the error, and lastRead, the last
	// status the controller did give, is what the budget goes by: a phone
	// that was drawing power may well still be.
	unknown   bool
	lastRead  PortStatus
	requested int
	granted   int
}

// Manager keeps the budget and the ports' priorities, powers ports up by
// policy, and carries out the operator's changes.
type Manager struct {
	ctrl Controller
	cfg  ManagerConfig
	log  *slog.Logger

	opMu sync.Mutex // one power change at a time (they talk to the controller)

	mu         sync.Mutex // guards everything below; never held over controller I/O
	ports      []*managed
	byName     map[string]*managed
	ctrlBudget int
	state      *stateFile
	granted    uint64
	refused    uint64
	holds      uint64
}

// NewManager checks the config against the controller's ports, applies
// the saved operator changes, and reads every port's status once, so the
// manager starts from what the controller is doing.
func NewManager(ctx context.Context, ctrl Controller, cfg ManagerConfig, log *slog.Logger) (*Manager, error) {
	switch cfg.Policy {
	case PolicyAll:
	case PolicyStagger, PolicyAdaptive:
		if cfg.StaggerPorts < 1 || cfg.StaggerInterval < 0 {
			return nil, fmt.Errorf("%s needs at least 1 port per step and a non-negative interval", cfg.Policy)
		}
		if cfg.Policy == PolicyAdaptive && cfg.Load == nil {
			return nil, errors.New("adaptive needs a load source")
		}
	default:
		return nil, fmt.Errorf("power policy %q is not one of all, stagger, adaptive", cfg.Policy)
	}
	switch cfg.Accounting {
	case "":
		cfg.Accounting = AccountClass
	case AccountClass, AccountMeasured:
	default:
		return nil, fmt.Errorf("power accounting %q is not one of class, measured", cfg.Accounting)
	}
	if cfg.BudgetMW < 0 || cfg.ReserveMW < 0 || cfg.MaxHold < 0 {
		return nil, errors.New("budget, reserve and max hold must not be negative")
	}
	if cfg.ReserveMW == 0 {
		cfg.ReserveMW = ClassPowerMW[0]
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 2 * time.Second
	}
	if cfg.CycleOff <= 0 {
		cfg.CycleOff = 2 * time.Second
	}
	known := map[string]bool{}
	for _, p := range ctrl.Ports() {
		known[p] = true
	}
	m := &Manager{ctrl: ctrl, cfg: cfg, log: log, byName: map[string]*managed{}}
	for i, pc := range cfg.Ports {
		if !known[pc.Name] {
			return nil, fmt.Errorf("port %s: %w", pc.Name, ErrUnknownPort)
		}
		if m.byName[pc.Name] != nil {
			return nil, fmt.Errorf("port %s is listed twice", pc.Name)
		}
		if pc.Priority < PriorityCritical || pc.Priority > PriorityLow || pc.LimitMW < 0 || pc.LimitMW > maxPortMW {
			return nil, fmt.Errorf("port %s: priority %v or limit %d mW out of range", pc.Name, pc.Priority, pc.LimitMW)
		}
		p := &managed{cfg: pc, index: i, enabled: pc.Enabled, priority: pc.Priority,
			status: PortStatus{Port: pc.Name, State: StateDisabled, Class: -1}}
		m.ports = append(m.ports, p)
		m.byName[pc.Name] = p
	}
	var err error
	if m.state, err = loadState(cfg.StatePath, log); err != nil {
		return nil, err
	}
	for _, p := range m.ports {
		if o, ok := m.state.Ports[p.cfg.Name]; ok {
			if o.Enabled != nil {
				p.enabled = *o.Enabled
			}
			if o.Priority != nil {
				p.priority = *o.Priority
			}
			log.Info("operator's saved setting applies", "port", p.cfg.Name, "enabled", p.enabled, "priority", p.priority.String())
		}
	}
	m.readAll(ctx)
	return m, nil
}

// classAllocMW is what a PSE allocates for a class: 802.3af/at classes
// 0-4, then 802.3bt's 5-8 (45, 60, 75, 90 W).
func classAllocMW(class int) (int, bool) {
	switch {
	case class >= 0 && class < len(ClassPowerMW):
		return ClassPowerMW[class], true
	case class >= 5 && class <= 8:
		return 45000 + (class-5)*15000, true
	}
	return 0, false
}

// allocation is what a port counts against the budget: a port the manager
// powered, or one the controller last said was delivering whatever the
// manager meant (a failed enable that took effect after all); m.mu is held.
func (m *Manager) allocation(p *managed) int {
	st := p.status
	if p.unknown {
		st = p.lastRead
	}
	if !p.on && st.State != StateDelivering {
		return 0
	}
	if p.granted > 0 {
		return p.granted
	}
	capped := func(v int) int {
		if p.cfg.LimitMW > 0 {
			return min(v, p.cfg.LimitMW)
		}
		return v
	}
	switch st.State {
	case StateDelivering:
		if m.cfg.Accounting == AccountMeasured {
			return st.PowerMW
		}
		if a, ok := classAllocMW(st.Class); ok {
			return capped(a)
		}
	case StateFault:
		return 0 // the controller has cut it
	}
	return capped(m.cfg.ReserveMW)
}

func (m *Manager) used() int {
	total := 0
	for _, p := range m.ports {
		total += m.allocation(p)
	}
	return total
}

// budget is the limit in force; 0: none. m.mu is held.
func (m *Manager) budget() int {
	if m.cfg.BudgetMW > 0 {
		return m.cfg.BudgetMW
	}
	return m.ctrlBudget
}

// sheddable lists the powered ports of a priority strictly lower than
// prio, the first to go first: lowest priority, then last configured (as
// Cumulus does: ties go to the lower port). m.mu is held.
func (m *Manager) sheddable(prio Priority) []*managed {
	var out []*managed
	for _, p := range m.ports {
		if p.on && p.priority > prio {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b *managed) int {
		if c := cmp.Compare(b.priority, a.priority); c != 0 {
			return c
		}
		return cmp.Compare(b.index, a.index)
	})
	return out
}

// turnOff marks a port unpowered; m.mu is held, the caller disables it.
func (m *Manager) turnOff(p *managed, held string) {
	p.on, p.granted, p.requested, p.held = false, 0, 0, held
}

// disableShed turns the shed ports off; false if one would not go. A port
// the controller turned off is known to draw nothing from then on; one it
// did not stays counted and powered in the manager's books (its phone may
// still draw), to be shed again at the next poll if the total is still
// over budget. m.opMu is held.
func (m *Manager) disableShed(ctx context.Context, shed []*managed) bool {
	ok := true
	for _, v := range shed {
		err := m.ctrl.Disable(ctx, v.cfg.Name)
		m.mu.Lock()
		if err != nil {
			m.log.Error("disable shed port", "port", v.cfg.Name, "error", err)
			v.on, v.held = true, "shed, but the controller did not turn it off: "+err.Error()
			m.record(v, PortStatus{}, err)
			ok = false
		} else {
			m.record(v, PortStatus{Port: v.cfg.Name, State: StateDisabled, Class: -1, LimitMW: v.status.LimitMW}, nil)
		}
		m.mu.Unlock()
	}
	return ok
}

// tryPower powers p if the budget allows, shedding ports of a lower
// priority if that makes room; otherwise p waits, held for budget, and is
// tried again at every poll. m.opMu is held.
func (m *Manager) tryPower(ctx context.Context, p *managed) bool {
	m.mu.Lock()
	if p.on || !p.enabled {
		m.mu.Unlock()
		return p.on
	}
	p.queued = false
	need := p.cfg.LimitMW
	if need == 0 || need > m.cfg.ReserveMW {
		need = m.cfg.ReserveMW
	}
	var shed []*managed
	if budget := m.budget(); budget > 0 {
		used := m.used()
		for _, v := range m.sheddable(p.priority) {
			if used+need <= budget {
				break
			}
			shed = append(shed, v)
			used -= m.allocation(v)
		}
		if used+need > budget {
			if p.held != heldBudget {
				m.log.Warn("port refused power: budget short", "port", p.cfg.Name, "priority", p.priority.String(),
					"needMW", need, "usedMW", m.used(), "budgetMW", budget)
			}
			p.held = heldBudget
			m.mu.Unlock()
			return false
		}
	}
	for _, v := range shed {
		m.turnOff(v, fmt.Sprintf("%s: shed for %s (priority %s)", heldBudget, p.cfg.Name, p.priority))
		m.log.Warn("port shed for a higher-priority port", "port", v.cfg.Name, "priority", v.priority.String(), "for", p.cfg.Name)
	}
	p.on, p.held = true, ""
	configure := !p.configured
	p.configured = true
	m.mu.Unlock()

	if !m.disableShed(ctx, shed) {
		// A port that would not go off still counts: power p only if
		// it fits beside it.
		m.mu.Lock()
		if budget := m.budget(); budget > 0 && m.used() > budget {
			m.turnOff(p, heldBudget)
			m.mu.Unlock()
			return false
		}
		m.mu.Unlock()
	}
	if configure {
		m.configure(ctx, p)
	}
	if err := m.ctrl.Enable(ctx, p.cfg.Name); err != nil {
		// Not counted, not left in doubt: the port says what happened,
		// and the next poll tries again.
		held := "the controller did not enable it: " + err.Error()
		m.mu.Lock()
		if p.held != held {
			m.log.Error("enable PoE port", "port", p.cfg.Name, "error", err)
		}
		m.turnOff(p, held)
		m.record(p, PortStatus{}, err)
		m.mu.Unlock()
		return false
	}
	return true
}

// configure gives the controller the port's limit and priority before its
// first power-up.
func (m *Manager) configure(ctx context.Context, p *managed) {
	m.mu.Lock()
	prio := p.priority
	m.mu.Unlock()
	if p.cfg.LimitMW > 0 {
		if err := m.ctrl.SetLimit(ctx, p.cfg.Name, p.cfg.LimitMW); err != nil {
			m.log.Warn("set PoE port limit", "port", p.cfg.Name, "limitMW", p.cfg.LimitMW, "error", err)
		}
	}
	if err := m.ctrl.SetPriority(ctx, p.cfg.Name, prio); err != nil && !errors.Is(err, ErrNotSupported) {
		m.log.Warn("set PoE port priority", "port", p.cfg.Name, "error", err)
	}
}

// record keeps what the controller said of a port, or, when it could not
// say (err), a fault naming err, with the port's last known status kept
// for the budget; m.mu is held.
func (m *Manager) record(p *managed, st PortStatus, err error) {
	if err != nil {
		if !p.unknown {
			p.lastRead = p.status
		}
		p.status, p.unknown = faultStatus(p.cfg.Name, err), true
		return
	}
	p.status, p.lastRead, p.unknown = st, st, false
}

func (m *Manager) recordLocked(p *managed, st PortStatus, err error) {
	m.mu.Lock()
	m.record(p, st, err)
	m.mu.Unlock()
}

// poll reads every port's status and the controller's budget, sheds
// ports while the total is over budget, and tries the ports waiting for
// budget again.
func (m *Manager) poll(ctx context.Context) {
	if m.readAll(ctx) {
		m.enforce(ctx)
	}
}

// readAll reads every port's status and the controller's budget; false if
// ctx ended first.
func (m *Manager) readAll(ctx context.Context) bool {
	statuses := make([]PortStatus, len(m.ports))
	errs := make([]error, len(m.ports))
	for i, p := range m.ports {
		st, err := m.ctrl.Status(ctx, p.cfg.Name)
		if err != nil {
			if ctx.Err() != nil {
				return false
			}
			m.log.Warn("PoE port status", "port", p.cfg.Name, "error", err)
		}
		statuses[i], errs[i] = st, err
	}
	budget := 0
	if m.cfg.BudgetMW == 0 {
		var err error
		if budget, err = m.ctrl.Budget(ctx); err != nil {
			m.log.Warn("PoE controller budget", "error", err)
		}
	}
	m.mu.Lock()
	for i, p := range m.ports {
		from := p.status
		m.record(p, statuses[i], errs[i])
		if p.status.State != from.State {
			m.log.Debug("PoE port state", "port", p.cfg.Name, "from", string(from.State), "to", string(p.status.State), "fault", p.status.Fault)
		}
	}
	if m.cfg.BudgetMW == 0 && budget > 0 {
		m.ctrlBudget = budget
	}
	m.mu.Unlock()
	return true
}

// enforce sheds ports, lowest priority first, while the total is over
// budget (phones drawing more than counted, a budget that shrank), then
// powers the ports that wait for budget if they now fit.
func (m *Manager) enforce(ctx context.Context) {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	var shed []*managed
	if budget := m.budget(); budget > 0 {
		used := m.used()
		for _, v := range m.sheddable(-1) {
			if used <= budget {
				break
			}
			m.log.Warn("over budget: shedding port", "port", v.cfg.Name, "priority", v.priority.String(), "usedMW", used, "budgetMW", budget)
			used -= m.allocation(v)
			m.turnOff(v, heldBudget+": shed while over budget")
			shed = append(shed, v)
		}
	}
	var waiting []*managed
	for _, p := range m.ports {
		if p.enabled && !p.on && !p.queued {
			waiting = append(waiting, p)
		}
	}
	m.mu.Unlock()
	m.disableShed(ctx, shed)
	m.sortForPower(waiting)
	for _, p := range waiting {
		m.tryPower(ctx, p)
	}
}

// sortForPower orders ports for power-up: critical first, then in config
// order.
func (m *Manager) sortForPower(ps []*managed) {
	m.mu.Lock()
	defer m.mu.Unlock()
	slices.SortStableFunc(ps, func(a, b *managed) int {
		if c := cmp.Compare(a.priority, b.priority); c != 0 {
			return c
		}
		return cmp.Compare(a.index, b.index)
	})
}

// Run powers the ports per the policy, polls their status, and serves
// until ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	queue := m.start(ctx)
	m.log.Info("powering ports", "ports", len(queue), "policy", string(m.cfg.Policy),
		"perStep", m.cfg.StaggerPorts, "interval", m.cfg.StaggerInterval)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(m.cfg.PollInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				m.poll(ctx)
			}
		}
	}()
	m.sequence(ctx, queue)
	wg.Wait()
	return nil
}

// start disables the ports not wanted on, counts those already delivering
// (a restart of the daemon does not reboot the phones), and queues the
// rest for the sequencer.
func (m *Manager) start(ctx context.Context) []*managed {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	var queue, off []*managed
	m.mu.Lock()
	for _, p := range m.ports {
		switch {
		case !p.enabled:
			off = append(off, p)
		case p.status.State == StateDelivering:
			p.on = true
			m.log.Info("port already delivering power", "port", p.cfg.Name)
		default:
			p.queued, p.held = true, heldSequence
			queue = append(queue, p)
		}
	}
	m.mu.Unlock()
	for _, p := range off {
		if err := m.ctrl.Disable(ctx, p.cfg.Name); err != nil {
			m.log.Error("disable PoE port", "port", p.cfg.Name, "error", err)
			m.recordLocked(p, PortStatus{}, err)
		}
	}
	m.sortForPower(queue)
	return queue
}

// sequence releases the queued ports step by step, until all are out or
// ctx ends. A port the operator enabled or disabled meanwhile has left the
// queue already.
func (m *Manager) sequence(ctx context.Context, queue []*managed) {
	step := len(queue)
	if m.cfg.Policy != PolicyAll {
		step = m.cfg.StaggerPorts
	}
	t := time.NewTicker(max(m.cfg.StaggerInterval, time.Millisecond))
	defer t.Stop()
	lastStep := time.Now()
	for first := true; len(queue) > 0; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if m.cfg.Policy == PolicyAdaptive {
				load := m.cfg.Load.Load()
				if load.AtOrAbove(m.cfg.Thresholds) && (m.cfg.MaxHold == 0 || time.Since(lastStep) < m.cfg.MaxHold) {
					m.mu.Lock()
					m.holds++
					m.mu.Unlock()
					m.log.Debug("adaptive power-up held", "load", load, "thresholds", m.cfg.Thresholds)
					continue
				}
			}
		}
		n := 0
		for n < step && len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			m.opMu.Lock()
			m.mu.Lock()
			still := p.queued
			m.mu.Unlock()
			if still {
				m.tryPower(ctx, p)
				n++
			}
			m.opMu.Unlock()
		}
		lastStep = time.Now()
	}
}

func (m *Manager) port(name string) (*managed, error) {
	p, ok := m.byName[name]
	if !ok {
		return nil, fmt.Errorf("%w %q (not a managed port)", ErrUnknownPort, name)
	}
	return p, nil
}

// SetEnabled is the operator turning a port on or off. The wish is kept
// in the state file; turning on powers the port now (within the budget),
// not at its turn in the sequence.
func (m *Manager) SetEnabled(ctx context.Context, name string, on bool) (ManagedPort, error) {
	p, err := m.port(name)
	if err != nil {
		return ManagedPort{}, err
	}
	m.opMu.Lock()
	m.mu.Lock()
	p.enabled = on
	serr := m.saveLocked(p)
	if on {
		m.mu.Unlock()
		m.tryPower(ctx, p)
	} else {
		p.queued = false
		m.turnOff(p, "")
		m.mu.Unlock()
		if err := m.ctrl.Disable(ctx, name); err != nil {
			m.opMu.Unlock()
			return m.refresh(ctx, p), fmt.Errorf("disable %s: %w", name, err)
		}
	}
	m.opMu.Unlock()
	m.log.Info("operator set PoE port", "port", name, "enabled", on)
	return m.refresh(ctx, p), serr
}

// SetPriority is the operator changing a port's priority, kept in the
// state file and given to the controller.
func (m *Manager) SetPriority(ctx context.Context, name string, prio Priority) (ManagedPort, error) {
	p, err := m.port(name)
	if err != nil {
		return ManagedPort{}, err
	}
	if prio < PriorityCritical || prio > PriorityLow {
		return ManagedPort{}, fmt.Errorf("priority %d out of range", int(prio))
	}
	m.mu.Lock()
	p.priority = prio
	serr := m.saveLocked(p)
	m.mu.Unlock()
	if err := m.ctrl.SetPriority(ctx, name, prio); err != nil && !errors.Is(err, ErrNotSupported) {
		return m.refresh(ctx, p), fmt.Errorf("set priority of %s: %w", name, err)
	}
	m.log.Info("operator set PoE port priority", "port", name, "priority", prio.String())
	m.enforce(ctx) // a port raised above others may now take their power
	return m.refresh(ctx, p), serr
}

// Cycle is the operator power-cycling a powered port: the phone reboots.
func (m *Manager) Cycle(ctx context.Context, name string) (ManagedPort, error) {
	p, err := m.port(name)
	if err != nil {
		return ManagedPort{}, err
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	on := p.on
	p.granted, p.requested = 0, 0 // the phone negotiates again
	m.mu.Unlock()
	if !on {
		return m.refresh(ctx, p), fmt.Errorf("port %s is not powered by phoneboot: nothing to cycle", name)
	}
	m.log.Info("operator power-cycles PoE port", "port", name, "off", m.cfg.CycleOff)
	if err := m.ctrl.PowerCycle(ctx, name, m.cfg.CycleOff); err != nil {
		return m.refresh(ctx, p), fmt.Errorf("power-cycle %s: %w", name, err)
	}
	return m.refresh(ctx, p), nil
}

// refresh reads one port's status and returns it as managed.
func (m *Manager) refresh(ctx context.Context, p *managed) ManagedPort {
	st, err := m.ctrl.Status(ctx, p.cfg.Name)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.record(p, st, err)
	return m.view(p)
}

// view is a port's status for the API; m.mu is held.
func (m *Manager) view(p *managed) ManagedPort {
	return ManagedPort{
		PortStatus: p.status, Enabled: p.enabled, Priority: p.priority, AllocatedMW: m.allocation(p),
		Held: p.held, RequestedMW: p.requested, GrantedMW: p.granted,
	}
}

// Negotiate answers a phone's CDP or LLDP power request on port: the first
// of the levels (mW, most preferred first) that the port's limit and the
// budget allow is granted and counted from then on; if none fits, the
// port keeps what it has, and that is what the phone is told is
// available. It only does arithmetic: safe to call from a packet handler.
func (m *Manager) Negotiate(port string, levelsMW []uint32) (availableMW uint32, granted bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.byName[port]
	if !ok || !p.on || len(levelsMW) == 0 {
		return 0, false
	}
	cur := m.allocation(p)
	used, budget := m.used(), m.budget()
	p.requested = int(levelsMW[0])
	for _, lvl := range levelsMW {
		l := int(lvl)
		if l <= 0 || l > maxPortMW || (p.cfg.LimitMW > 0 && l > p.cfg.LimitMW) {
			continue
		}
		if budget == 0 || used-cur+l <= budget {
			if p.granted != l {
				m.log.Info("power request granted", "port", port, "requestedMW", levelsMW[0], "grantedMW", l)
			}
			p.granted = l
			m.granted++
			return lvl, true
		}
	}
	m.refused++
	m.log.Warn("power request refused: budget short", "port", port, "requestedMW", levelsMW, "availableMW", cur,
		"usedMW", used, "budgetMW", budget)
	return uint32(cur), false
}

// Status is the budget and every managed port as last read (the poll
// keeps it fresh; reading it costs the controller nothing).
func (m *Manager) Status() ManagerStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := ManagerStatus{
		Policy: m.cfg.Policy, Accounting: m.cfg.Accounting, BudgetMW: m.budget(), AllocatedMW: m.used(),
		Ports: make([]ManagedPort, 0, len(m.ports)), RequestsGranted: m.granted, RequestsRefused: m.refused, AdaptiveHolds: m.holds,
	}
	for _, p := range m.ports {
		st.Ports = append(st.Ports, m.view(p))
		if p.status.State == StateDelivering {
			st.DrawnMW += p.status.PowerMW
		}
	}
	return st
}

// Close releases the controller.
func (m *Manager) Close() error { return m.ctrl.Close() }
