package agent

import (
	"context"
	"errors"
	"log/slog"

	"github.com/phoneboot/phoneboot/userspace/control"
	"github.com/phoneboot/phoneboot/userspace/proxy"
)

// registrationProxy is the proxy in the daemon's process (proxy.Proxy) or
// in worker processes (proxy.Workers), as the rest of the agent sees it.
type registrationProxy interface {
	service
	Stats() proxy.Stats
	Registrations() []proxy.Registration
}

// proxyWorkerCommand starts one proxy worker: this binary again, which
// speaks the same private protocol as the daemon (also after the file on
// disk was replaced by an upgrade). Its main must run proxy.RunWorker
// for the argument proxy-worker, as `phoneboot proxy-worker` does.
var proxyWorkerCommand = []string{"/proc/self/exe", "proxy-worker"}

// newProxy opens the registration proxy's listeners (in the calling
// thread's network namespace, as every socket New acquires), in worker
// processes when proxy.workers asks for more than one; Run probes the
// CallManagers and serves.
func (a *Agent) newProxy(cfg Config, log *slog.Logger) error {
	var p registrationProxy
	var err error
	if cfg.Proxy.Workers > 1 {
		p, err = proxy.NewWorkers(cfg.Proxy.ServerConfig(),
			proxy.WorkersConfig{Workers: cfg.Proxy.Workers, Command: proxyWorkerCommand}, log)
	} else {
		p, err = proxy.New(cfg.Proxy.ServerConfig(), log)
	}
	if err != nil {
		return err
	}
	a.proxy = p
	a.add("proxy", p)
	return nil
}

// Registrations answers the control API with the proxy's table.
func (a *Agent) Registrations(context.Context) ([]control.Registration, error) {
	if a.proxy == nil {
		return nil, errors.New("the registration proxy is not enabled")
	}
	rows := a.proxy.Registrations()
	out := make([]control.Registration, 0, len(rows))
	for _, r := range rows {
		out = append(out, control.Registration{
			Device: r.Device, Phone: r.Phone, CallManager: r.CallManager, Protocol: string(r.Protocol),
			State: string(r.State), Since: r.Since, DeviceType: r.DeviceType, Load: r.Load,
			KeepAliveSeconds: r.KeepAlive.Seconds(), AOR: r.AOR, Contact: r.Contact,
		})
	}
	return out, nil
}
