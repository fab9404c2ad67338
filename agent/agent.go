// Package agent is the phoneboot daemon: it turns a Config into running
// services, wires them together explicitly, and owns their lifecycle.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sync/errgroup"

	"github.com/phoneboot/phoneboot/userspace/control"
	"github.com/phoneboot/phoneboot/userspace/dhcp"
	"github.com/phoneboot/phoneboot/userspace/discovery"
	"github.com/phoneboot/phoneboot/userspace/fastpath"
	"github.com/phoneboot/phoneboot/userspace/httpboot"
	"github.com/phoneboot/phoneboot/userspace/lease"
	"github.com/phoneboot/phoneboot/userspace/neighbor"
	"github.com/phoneboot/phoneboot/userspace/poe"
	"github.com/phoneboot/phoneboot/userspace/provision"
	"github.com/phoneboot/phoneboot/userspace/tftp"
)

// Version is set at build time with -ldflags -X.
var Version = "dev"

// NewLogger builds the daemon's logger from the log config.
func NewLogger(c LogConfig, w io.Writer) *slog.Logger {
	var level slog.Level
	// validate() has already refused anything UnmarshalText would.
	level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// service is what the agent runs: acquired in its constructor (sockets
// bound, programs attached), served by Run until ctx ends, released by Close.
type service interface {
	Run(ctx context.Context) error
	Close() error
}

type serviceEntry struct {
	name string
	svc  service
}

// Agent is the running daemon.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	started time.Time

	fastpath *fastpath.FastPath
	power    *poe.Manager
	dhcp     *dhcp.Server
	leases   lease.Store

	discovery *discovery.Service
	neighbors *neighbor.Table

	provision *provision.Service
	tftp      *tftp.Server
	http      *httpboot.Server

	proxy registrationProxy

	services []serviceEntry

	mu     sync.Mutex
	states map[string]control.ServiceStatus

	// leaseRecovered is where a corrupt lease database was moved aside at
	// start, if it was.
	leaseRecovered string
}

// New acquires every configured service. When it returns without error the
// appliance is up: ports attached, sockets bound.
func New(cfg Config, log *slog.Logger) (_ *Agent, err error) {
	a := &Agent{cfg: cfg, log: log, started: time.Now(), states: map[string]control.ServiceStatus{}}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()

	// PoE first: with fast PoE the phones boot while the rest loads.
	if cfg.Power.Backend != "none" {
		a.power, err = newPowerManager(cfg, serviceLoad{a}, log.With("service", "power"))
		if err != nil {
			return nil, fmt.Errorf("power: %w", err)
		}
		if cfg.Power.FastPoE && cfg.Power.Policy != "adaptive" {
			a.add("power", startEarly(a.power))
			a.setState("power", "running", nil)
		} else {
			a.add("power", a.power)
		}
	}

	if cfg.FastPath.Enabled && len(cfg.Ports) > 0 {
		a.fastpath, err = fastpath.New(fastpath.Config{
			Ports:         cfg.PortNames(),
			Mode:          fastpath.Mode(cfg.FastPath.XDPMode),
			PinDir:        cfg.FastPath.PinDir,
			DetachOnClose: cfg.FastPath.DetachOnStop,
		}, log.With("service", "fastpath"))
		if err != nil {
			return nil, fmt.Errorf("fastpath: %w", err)
		}
		a.add("fastpath", idleService{close: a.fastpath.Close})
		if err := applyVLANs(cfg, a.fastpath, log.With("service", "fastpath")); err != nil {
			return nil, fmt.Errorf("fastpath: %w", err)
		}
	}

	if cfg.Discovery.Enabled() && len(cfg.Ports) > 0 {
		if err := a.newDiscovery(cfg, log.With("service", "discovery")); err != nil {
			return nil, fmt.Errorf("discovery: %w", err)
		}
	}

	if cfg.Provision.Enabled {
		if err := a.newProvision(cfg, log.With("service", "provision")); err != nil {
			return nil, fmt.Errorf("provision: %w", err)
		}
	}

	if cfg.DHCP.Enabled {
		if err := a.newDHCP(cfg, log.With("service", "dhcp")); err != nil {
			return nil, fmt.Errorf("dhcp: %w", err)
		}
	}

	if cfg.Proxy.Enabled {
		// proxy.New's errors start with "proxy:" already.
		if err := a.newProxy(cfg, log.With("service", "proxy")); err != nil {
			return nil, err
		}
	}

	ctl, err := control.NewServer(cfg.Control.Socket, a, log.With("service", "control"))
	if err != nil {
		return nil, err
	}
	a.add("control", ctl)

	if cfg.Metrics.Listen != "" {
		m, err := newMetricsServer(cfg.Metrics.Listen, a)
		if err != nil {
			return nil, err
		}
		a.add("metrics", m)
	}
	return a, nil
}

// newDHCP opens the lease store, builds the handler and puts the server
// on the ports (and into the fast path's tables when XDP is on).
func (a *Agent) newDHCP(cfg Config, log *slog.Logger) error {
	if cfg.DHCP.LeaseDB == "" {
		log.Warn("leases are kept in memory only (dhcp.lease_db is empty): a restart forgets them")
		a.leases = lease.NewMemory()
	} else {
		store, aside, err := lease.OpenOrRecover(cfg.DHCP.LeaseDB, lease.BoltOptions{Log: log})
		if err != nil {
			return err
		}
		if aside != "" {
			a.leaseRecovered = aside
		}
		a.leases = store
	}
	a.add("leases", idleService{close: a.leases.Close})
	h, err := dhcp.NewHandler(cfg.DHCP.ServerConfig(), a.leases, log)
	if err != nil {
		return err
	}
	sc := dhcp.ServerConfig{Ports: cfg.PortNames(), MaxRequestAge: time.Duration(cfg.DHCP.MaxRequestAge)}
	if a.fastpath != nil {
		sc.FastPath = a.fastpath.DHCP()
		sc.StopFastPathOnClose = cfg.FastPath.DetachOnStop
	}
	a.dhcp, err = dhcp.NewServer(h, sc, log)
	if err != nil {
		return err
	}
	a.add("dhcp", a.dhcp)
	return nil
}

// idleService holds a resource that works without a serving loop (the XDP
// program runs in the kernel) until the agent stops.
type idleService struct{ close func() error }

func (s idleService) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (s idleService) Close() error                  { return s.close() }

func (a *Agent) add(name string, s service) {
	a.services = append(a.services, serviceEntry{name, s})
	a.setState(name, "starting", nil)
}

func (a *Agent) setState(name, state string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := control.ServiceStatus{Name: name, State: state}
	if err != nil {
		st.Error = err.Error()
	}
	a.states[name] = st
}

// Run serves until ctx ends or a service fails, telling systemd about
// readiness, liveness and shutdown along the way.
func (a *Agent) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, e := range a.services {
		// Running from here on: a status query right after READY=1 must
		// not see "starting".
		a.setState(e.name, "running", nil)
		g.Go(func() error {
			err := e.svc.Run(gctx)
			if err != nil {
				a.setState(e.name, "failed", err)
				return fmt.Errorf("%s: %w", e.name, err)
			}
			a.setState(e.name, "stopped", nil)
			return nil
		})
	}
	// Everything was acquired in New, so the appliance serves from here on.
	notify(a.log, daemon.SdNotifyReady)
	a.log.Info("phoneboot ready", "version", Version, "ports", len(a.cfg.Ports))
	if interval, err := daemon.SdWatchdogEnabled(false); err == nil && interval > 0 {
		g.Go(func() error { a.watchdog(gctx, interval/2); return nil })
	}
	<-gctx.Done()
	notify(a.log, daemon.SdNotifyStopping)
	a.log.Info("phoneboot stopping")
	return g.Wait()
}

// watchdog tells systemd the daemon is alive at half the unit's WatchdogSec.
func (a *Agent) watchdog(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		notify(a.log, daemon.SdNotifyWatchdog)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func notify(log *slog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Warn("sd_notify failed", "state", state, "error", err)
	}
}

// Close releases the services in reverse order of acquisition.
func (a *Agent) Close() error {
	var errs []error
	for i := len(a.services) - 1; i >= 0; i-- {
		if err := a.services[i].svc.Close(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.services[i].name, err))
		}
	}
	return errors.Join(errs...)
}

// Status answers the control API.
func (a *Agent) Status(ctx context.Context) control.Status {
	st := control.Status{
		Version:   Version,
		PID:       os.Getpid(),
		StartedAt: a.started,
		Uptime:    time.Since(a.started).Seconds(),
	}
	ports := map[string]*control.PortStatus{}
	for _, p := range a.cfg.Ports {
		st.Ports = append(st.Ports, control.PortStatus{Name: p.Name, XDPMode: "off"})
	}
	for i := range st.Ports {
		ports[st.Ports[i].Name] = &st.Ports[i]
	}
	if a.fastpath != nil {
		for _, at := range a.fastpath.Attachments() {
			if p := ports[at.Port]; p != nil {
				p.Ifindex = at.Ifindex
				p.XDPMode = string(at.Mode)
			}
		}
		if cs, err := a.fastpath.Counters(); err == nil {
			for _, c := range cs {
				st.Counters = append(st.Counters, control.Counter(c))
			}
		} else {
			a.log.Warn("read xdp counters", "error", err)
		}
	}
	if a.power != nil {
		for _, ps := range a.power.Status().Ports {
			if p := ports[ps.Port]; p != nil {
				p.PoEState = string(ps.State)
				p.PoEClass = ps.Class
				p.PowerMW = ps.PowerMW
				p.PoEFault = ps.Fault
			}
		}
	}
	a.mu.Lock()
	for _, e := range a.services {
		st.Services = append(st.Services, a.states[e.name])
	}
	a.mu.Unlock()
	return st
}

// Leases answers the control API's lease listing.
func (a *Agent) Leases(ctx context.Context) ([]control.Lease, error) {
	if a.leases == nil {
		return nil, errors.New("dhcp is not enabled")
	}
	var out []control.Lease
	err := a.leases.Iterate(ctx, func(l lease.Lease) error {
		out = append(out, control.Lease{
			IP: l.IP.String(), MAC: l.MAC.String(), Pool: l.Pool, State: l.State.String(),
			Expires: l.Expires, Port: l.Port, VLAN: l.VLAN, Hostname: printable(l.Hostname),
		})
		return nil
	})
	return out, err
}

// printable shows client-supplied bytes as they are when they are plain
// text, quoted with escapes otherwise, so no client can write control
// characters to an operator's terminal.
func printable(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	for _, c := range b {
		if c < 0x20 || c >= 0x7f {
			return strconv.Quote(string(b))
		}
	}
	return string(b)
}
