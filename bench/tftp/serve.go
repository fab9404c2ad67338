package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/phoneboot/phoneboot/userspace/bootfiles"
	"github.com/phoneboot/phoneboot/userspace/httpboot"
	"github.com/phoneboot/phoneboot/userspace/tftp"
)

// runServe is phoneboot's side, run by the bench inside the server
// namespace: userspace/tftp on port 69 and userspace/httpboot on 6970
// over a bootfiles directory, as the daemon will run them.
func runServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	root := fs.String("root", "", "directory served")
	addr := fs.String("addr", serverIP, "address to listen on")
	noGSO := fs.Bool("no-gso", false, "send with sendmmsg instead of GSO")
	fs.Parse(args)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	src, err := bootfiles.OpenDir(*root)
	if err != nil {
		return err
	}
	defer src.Close()
	ip := netip.MustParseAddr(*addr)
	// Every bench client comes from the one client address, so the
	// per-client limits are lifted; the global ones stay above the
	// bench's 500 clients.
	t, err := tftp.New(tftp.Config{
		Addrs:        []netip.AddrPort{netip.AddrPortFrom(ip, 69)},
		Source:       src,
		MaxTransfers: 2048,
		MaxPerClient: 2048,
		ClientRate:   1e6, ClientBurst: 1e6,
		Rate: 1e6, Burst: 1e6,
		NoGSO: *noGSO,
	}, log)
	if err != nil {
		return err
	}
	defer t.Close()
	h, err := httpboot.New(httpboot.Config{Addr: netip.AddrPortFrom(ip, 6970), Source: src, MaxConns: 2048}, log)
	if err != nil {
		return err
	}
	defer h.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return t.Run(ctx) })
	g.Go(func() error { return h.Run(ctx) })
	err = g.Wait()
	// The counters go to the bench's log of this server, which it
	// prints: retransmissions and timeouts explain a slow step.
	ts, _ := json.Marshal(t.Stats())
	hs, _ := json.Marshal(h.Stats())
	fmt.Fprintf(os.Stderr, "tftp stats: %s\nhttp stats: %s\n", ts, hs)
	return err
}
