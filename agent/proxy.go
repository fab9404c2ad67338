package agent

import (
	"context"
	"errors"
	"log/slog"

	"github.com/phoneboot/phoneboot/userspace/control"
	"github.com/phoneboot/phoneboot/userspace/proxy"
)

// newProxy opens the registration proxy's listeners (in the calling
// thread's network namespace, as every socket New acquires); Run probes
// the CallManagers and serves.
func (a *Agent) newProxy(cfg Config, log *slog.Logger) error {
	p, err := proxy.New(cfg.Proxy.ServerConfig(), log)
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
