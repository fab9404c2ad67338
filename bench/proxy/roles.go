package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/phoneboot/phoneboot/userspace/cmsim"
	"github.com/phoneboot/phoneboot/userspace/proxy"
)

// runCM is the simulator process: one CallManager, 30 s keepalives, every
// device known, answering a Register after delay, until SIGTERM.
func runCM(delay time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	s, err := cmsim.New(cmsim.Config{Name: "cm1", Addr: cmAddr, KeepAlive: 30 * time.Second, RegisterDelay: delay}, slog.Default())
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// runProxy is the proxy process: SCCP on proxyAddr to the simulator, as
// the daemon would run it, with admission pacing and failback off.
func runProxy() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if path := os.Getenv("PHONEBOOT_BENCH_PROXY_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	p, err := proxy.New(proxy.Config{
		Listeners:    []proxy.Listener{{Protocol: proxy.SCCP, Addr: proxyAddr}},
		CallManagers: []proxy.CallManager{{Name: "cm1", Host: "127.0.1.1"}},
		Failback:     proxy.FailbackConfig{Disabled: true},
	}, slog.Default())
	if err != nil {
		return err
	}
	return p.Run(ctx)
}
