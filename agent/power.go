package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/phoneboot/phoneboot/userspace/control"
	"github.com/phoneboot/phoneboot/userspace/poe"
)

// newPowerManager opens the configured PoE controller and puts the power
// manager on it. The controller is acquired here (I2C device opened,
// netlink socket bound, every port's status read once), so a controller
// that does not answer stops the daemon from starting.
func newPowerManager(cfg Config, load poe.LoadSource, log *slog.Logger) (*poe.Manager, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pc := cfg.Power
	ports := cfg.powerPorts()
	var ctrl poe.Controller
	var err error
	switch pc.Backend {
	case "lab":
		labPorts := map[string]poe.LabPort{}
		for _, p := range cfg.Ports {
			if p.PoEEnabled() && p.Lab != nil {
				labPorts[p.Name] = poe.LabPort{Netns: p.Lab.Netns, Link: p.Lab.Link, Class: p.Lab.Class}
			}
		}
		ctrl, err = poe.NewLab(labPorts, time.Duration(pc.DetectDelay), log)
	case "netlink":
		ifnames := map[string]string{}
		for _, p := range ports {
			ifnames[p.name] = p.ifname
		}
		ctrl, err = poe.OpenNetlink(ctx, ifnames)
	case "pd69200":
		channels := map[string]int{}
		for _, p := range ports {
			channels[p.name] = p.channel
		}
		ctrl, err = poe.OpenPD69200(ctx, pc.PD69200.Bus, uint16(pc.PD69200.Address), poe.PD69200Config{Ports: channels})
	case "sysfs":
		channels := map[string]int{}
		for _, p := range ports {
			channels[p.name] = p.channel
		}
		ctrl, err = poe.NewSysfs(poe.SysfsConfig{Path: pc.Sysfs.Path, Files: pc.Sysfs.Files, BudgetFile: pc.Sysfs.BudgetFile, Ports: channels})
	default:
		return nil, fmt.Errorf("power backend %q is not supported", pc.Backend)
	}
	if err != nil {
		return nil, err
	}
	mc := poe.ManagerConfig{
		Policy:          poe.Policy(pc.Policy),
		StaggerPorts:    pc.StaggerPorts,
		StaggerInterval: time.Duration(pc.StaggerInterval),
		Thresholds:      poe.Load{DHCPBacklog: pc.Adaptive.DHCPBacklog, TFTPActive: pc.Adaptive.TFTPActive, ProxyQueued: pc.Adaptive.ProxyQueued},
		MaxHold:         time.Duration(pc.Adaptive.MaxHold),
		Load:            load,
		BudgetMW:        pc.BudgetMW,
		Accounting:      poe.Accounting(pc.Accounting),
		ReserveMW:       pc.ReserveMW,
		PollInterval:    time.Duration(pc.PollInterval),
		CycleOff:        time.Duration(pc.CycleOff),
		StatePath:       pc.StateFile,
	}
	for _, p := range ports {
		mc.Ports = append(mc.Ports, poe.PortConfig{Name: p.name, Enabled: p.enabled, Priority: p.priority, LimitMW: p.limitMW})
	}
	m, err := poe.NewManager(ctx, ctrl, mc, log)
	if err != nil {
		ctrl.Close()
		return nil, err
	}
	return m, nil
}

// serviceLoad is the agent's services as the power manager's load source.
type serviceLoad struct{ a *Agent }

// Load reads the services' queues for the adaptive power policy: the DHCP
// server's backlog, the TFTP transfers running, and the phones waiting in
// the registration proxy's admission queues. A service that is off counts
// 0.
func (s serviceLoad) Load() poe.Load {
	a := s.a
	var l poe.Load
	if a.dhcp != nil {
		l.DHCPBacklog = a.dhcp.Backlog()
	}
	if a.tftp != nil {
		l.TFTPActive = int(a.tftp.Stats().Active)
	}
	if a.proxy != nil {
		for _, cm := range a.proxy.Stats().CallManagers {
			l.ProxyQueued += int(cm.Waiting)
		}
	}
	return l
}

// Load answers the control API's load query.
func (a *Agent) Load(context.Context) control.Load {
	l := serviceLoad{a}.Load()
	return control.Load{DHCPBacklog: l.DHCPBacklog, TFTPActive: l.TFTPActive, ProxyQueued: l.ProxyQueued}
}

// errPowerOff answers PoE requests when power management is off.
var errPowerOff = fmt.Errorf("%w: power management (power.backend is none)", control.ErrUnavailable)

func poePort(p poe.ManagedPort) control.PoEPort {
	return control.PoEPort{
		Port: p.Port, State: string(p.State), Class: p.Class, PowerMW: p.PowerMW, LimitMW: p.LimitMW, Fault: p.Fault,
		Enabled: p.Enabled, Priority: p.Priority.String(), AllocatedMW: p.AllocatedMW, Held: p.Held,
		RequestedMW: p.RequestedMW, GrantedMW: p.GrantedMW,
	}
}

// PoE answers the control API's power status.
func (a *Agent) PoE(context.Context) (control.PoEStatus, error) {
	if a.power == nil {
		return control.PoEStatus{}, errPowerOff
	}
	st := a.power.Status()
	out := control.PoEStatus{
		Policy: string(st.Policy), Accounting: string(st.Accounting), BudgetMW: st.BudgetMW,
		AllocatedMW: st.AllocatedMW, DrawnMW: st.DrawnMW, RequestsGranted: st.RequestsGranted,
		RequestsRefused: st.RequestsRefused, AdaptiveHolds: st.AdaptiveHolds,
	}
	for _, p := range st.Ports {
		out.Ports = append(out.Ports, poePort(p))
	}
	return out, nil
}

// PoEAction carries out `phoneboot poe enable|disable|cycle|priority`.
func (a *Agent) PoEAction(ctx context.Context, port, action, arg string) (control.PoEPort, error) {
	if a.power == nil {
		return control.PoEPort{}, errPowerOff
	}
	var p poe.ManagedPort
	var err error
	switch action {
	case control.PoEEnable:
		p, err = a.power.SetEnabled(ctx, port, true)
	case control.PoEDisable:
		p, err = a.power.SetEnabled(ctx, port, false)
	case control.PoECycle:
		p, err = a.power.Cycle(ctx, port)
	case control.PoEPriority:
		prio, perr := poe.ParsePriority(arg)
		if perr != nil {
			return control.PoEPort{}, fmt.Errorf("%w: %v", control.ErrBadRequest, perr)
		}
		p, err = a.power.SetPriority(ctx, port, prio)
	default:
		return control.PoEPort{}, fmt.Errorf("%w: unknown PoE action %q", control.ErrBadRequest, action)
	}
	if errors.Is(err, poe.ErrUnknownPort) {
		return control.PoEPort{}, fmt.Errorf("%w: %v", control.ErrNotFound, err)
	}
	if err != nil {
		return control.PoEPort{}, err
	}
	return poePort(p), nil
}

// powerRequest answers a phone's CDP or LLDP power request through the
// power manager's budget.
func (a *Agent) powerRequest(port string, levelsMW []uint32) uint32 {
	mw, _ := a.power.Negotiate(port, levelsMW)
	return mw
}

var (
	descPoEBudget = prometheus.NewDesc("phoneboot_poe_budget_watts",
		"The power budget in force (0: no limit).", nil, nil)
	descPoEAllocated = prometheus.NewDesc("phoneboot_poe_allocated_watts",
		"Power the ports count against the budget (by class, negotiation or measured draw).", nil, nil)
	descPoEBudgetLeft = prometheus.NewDesc("phoneboot_poe_budget_remaining_watts",
		"Budget not allocated to a port; absent without a budget.", nil, nil)
	descPoEDrawn = prometheus.NewDesc("phoneboot_poe_drawn_watts",
		"Power the delivering ports draw now, in total.", nil, nil)
	descPoEPortState = prometheus.NewDesc("phoneboot_poe_port_state",
		"1 for the port's current state (disabled, searching, delivering, fault), 0 for the others.", []string{"port", "state"}, nil)
	descPoEPortHeld = prometheus.NewDesc("phoneboot_poe_port_held",
		"1 while a port wanted on is not powered (sequencing, budget, controller error).", []string{"port"}, nil)
	descPoERequests = prometheus.NewDesc("phoneboot_poe_power_requests_total",
		"CDP and LLDP power requests, by result (granted, refused).", []string{"result"}, nil)
	descPoEHolds = prometheus.NewDesc("phoneboot_poe_adaptive_holds_total",
		"Adaptive power-up steps held because a service queue was at its threshold.", nil, nil)
	descLoad = prometheus.NewDesc("phoneboot_service_load",
		"The services' queues the adaptive power policy watches: dhcp_backlog, tftp_active, proxy_queued.", []string{"signal"}, nil)
)

// powerCollector exports the power manager's budget and port states, and
// the services' load.
type powerCollector struct{ a *Agent }

func (c powerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPoEBudget, descPoEAllocated, descPoEBudgetLeft, descPoEDrawn, descPoEPortState, descPoEPortHeld, descPoERequests, descPoEHolds, descLoad} {
		ch <- d
	}
}

func (c powerCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	l := serviceLoad(c).Load()
	gauge(descLoad, float64(l.DHCPBacklog), "dhcp_backlog")
	gauge(descLoad, float64(l.TFTPActive), "tftp_active")
	gauge(descLoad, float64(l.ProxyQueued), "proxy_queued")
	if c.a.power == nil {
		return
	}
	st := c.a.power.Status()
	watts := func(mw int) float64 { return float64(mw) / 1000 }
	gauge(descPoEBudget, watts(st.BudgetMW))
	gauge(descPoEAllocated, watts(st.AllocatedMW))
	gauge(descPoEDrawn, watts(st.DrawnMW))
	if st.BudgetMW > 0 {
		gauge(descPoEBudgetLeft, watts(st.BudgetMW-st.AllocatedMW))
	}
	for _, p := range st.Ports {
		for _, s := range poe.States {
			v := 0.0
			if p.State == s {
				v = 1
			}
			gauge(descPoEPortState, v, p.Port, string(s))
		}
		held := 0.0
		if p.Held != "" {
			held = 1
		}
		gauge(descPoEPortHeld, held, p.Port)
	}
	ch <- prometheus.MustNewConstMetric(descPoERequests, prometheus.CounterValue, float64(st.RequestsGranted), "granted")
	ch <- prometheus.MustNewConstMetric(descPoERequests, prometheus.CounterValue, float64(st.RequestsRefused), "refused")
	ch <- prometheus.MustNewConstMetric(descPoEHolds, prometheus.CounterValue, float64(st.AdaptiveHolds))
}

// earlyService runs a service from the moment it is acquired rather than
// from the agent's Run (fast PoE). Its Run stops it with the agent, and
// its Close stops it if the agent never ran, then closes it.
type earlyService struct {
	svc    service
	cancel context.CancelFunc
	done   chan struct{}
	err    error // the service's Run's, once done is closed
}

func startEarly(svc service) *earlyService {
	ctx, cancel := context.WithCancel(context.Background())
	e := &earlyService{svc: svc, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		e.err = svc.Run(ctx)
	}()
	return e
}

func (e *earlyService) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		e.cancel()
	case <-e.done:
	}
	<-e.done
	return e.err
}

func (e *earlyService) Close() error {
	e.cancel()
	<-e.done
	return e.svc.Close()
}
