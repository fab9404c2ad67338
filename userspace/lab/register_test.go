package lab

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/cmsim"
	"github.com/phoneboot/phoneboot/userspace/privtest"
)

// startCM runs a CallManager simulator on SCCP's port of a loopback
// address (the test's namespace has them all) until the test ends.
func startCM(t *testing.T, name, addr string, known func(string) bool) *cmsim.Server {
	t.Helper()
	s, err := cmsim.New(cmsim.Config{Name: name, Addr: addr + ":2000", KeepAlive: time.Second, Known: known}, privtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

func cmOf(t *testing.T, s *cmsim.Server, priority int) callManager {
	t.Helper()
	ap := netip.MustParseAddrPort(s.Addr())
	return callManager{Priority: priority, Host: ap.Addr().String(), SCCPPort: int(ap.Port()), SIPPort: 5060}
}

func plainDial(*Phone) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	}
}

// TestRegisterPhase: the phone registers with the first CallManager of
// its file that takes it, highest priority first, with its device name,
// type and load, and stays registered after the phase.
func TestRegisterPhase(t *testing.T) {
	privtest.RequireNetNS(t)
	down := startCM(t, "down", "127.0.0.2", nil)
	if err := down.SetMode(cmsim.Stopped); err != nil {
		t.Fatal(err)
	}
	up := startCM(t, "up", "127.0.0.3", nil)
	ph := testPhone(t, 0, "CP-8851")
	ph.Load = "sip88xx.14-2-1-0001-14"
	ph.Config = &phoneConfig{CallManagers: []callManager{cmOf(t, down, 0), cmOf(t, up, 1)}, VersionStamp: strings.Repeat("v", 64)}
	phones, stop := context.WithCancel(context.Background())
	defer stop()
	stats := &registrations{}
	p := registerPhase{phones: phones, dial: plainDial, stats: stats}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Run(ctx, ph); err != nil {
		t.Fatal(err)
	}
	st := up.Stations()
	if len(st) != 1 || st[0].Device != ph.Name || stats.registered.Load() != 1 || stats.failed.Load() != 1 {
		t.Errorf("stations %+v, %d registered, %d failed; want %s on the second after the first failed", st, stats.registered.Load(), stats.failed.Load(), ph.Name)
	}
	// Still registered after the phase: it keeps alive (an interval of 1 s).
	if err := waitFor(ctx, func() bool { return up.Stats().KeepAlives >= 2 }); err != nil {
		t.Errorf("no keepalives after registering: %+v", up.Stats())
	}
	if up.Registered() != 1 {
		t.Errorf("registered %d after keepalives, want 1", up.Registered())
	}
}

func TestRegisterPhaseRejected(t *testing.T) {
	privtest.RequireNetNS(t)
	cm := startCM(t, "strict", "127.0.0.4", func(string) bool { return false })
	ph := testPhone(t, 0, "CP-7821")
	ph.Config = &phoneConfig{CallManagers: []callManager{cmOf(t, cm, 0)}}
	phones, stop := context.WithCancel(context.Background())
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := registerPhase{phones: phones, dial: plainDial, stats: &registrations{}}.Run(ctx, ph)
	if err == nil || !strings.Contains(err.Error(), "rejected it") || !strings.Contains(err.Error(), "Device Unknown") {
		t.Fatalf("got %v, want the rejection", err)
	}
}
