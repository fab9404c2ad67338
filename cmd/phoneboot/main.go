// Command phoneboot is the boot-services appliance for Cisco IP phones:
// the daemon (serve), its clients (status, leases, neighbors, poe,
// registrations), a host check (doctor) and the boot-storm lab (lab).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf/rlimit"
	"github.com/urfave/cli/v2"

	"github.com/phoneboot/phoneboot/agent"
	"github.com/phoneboot/phoneboot/userspace/control"
	"github.com/phoneboot/phoneboot/userspace/doctor"
	"github.com/phoneboot/phoneboot/userspace/lab"
	"github.com/phoneboot/phoneboot/userspace/proxy"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "phoneboot:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:    "phoneboot",
		Usage:   "boot services for Cisco IP phones, accelerated with XDP",
		Version: agent.Version,
		// Errors are printed once, by main.
		ExitErrHandler: func(*cli.Context, error) {},
		Commands: []*cli.Command{
			serveCommand(),
			statusCommand(),
			leasesCommand(),
			neighborsCommand(),
			poeCommand(),
			registrationsCommand(),
			doctorCommand(),
			labCommand(),
			labCallManagersCommand(),
			proxyWorkerCommand(),
		},
	}
}

// labCallManagersCommand runs the lab's CallManager simulators in a
// process of their own; the lab starts it, people do not.
func labCallManagersCommand() *cli.Command {
	return &cli.Command{
		Name:   "lab-callmanagers",
		Usage:  "the lab's CallManager simulators (started by phoneboot lab)",
		Hidden: true,
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "addr", Usage: "SCCP listen address, highest priority first", Required: true},
			&cli.DurationFlag{Name: "keepalive", Value: 30 * time.Second, Usage: "keepalive interval given in RegisterAck"},
			&cli.StringFlag{Name: "control", Usage: "unix socket of the control API", Required: true},
		},
		Action: func(c *cli.Context) error {
			ctx, stop := signalContext()
			defer stop()
			return lab.RunCallManagers(ctx, lab.CallManagersConfig{
				Addrs: c.StringSlice("addr"), KeepAlive: c.Duration("keepalive"), Control: c.String("control"),
				Log: slog.New(slog.NewTextHandler(os.Stderr, nil)),
			})
		},
	}
}

// proxyWorkerCommand is one process of the registration proxy when
// proxy.workers is above 1; the daemon starts it, people do not.
func proxyWorkerCommand() *cli.Command {
	return &cli.Command{
		Name:   "proxy-worker",
		Usage:  "a registration proxy worker (started by phoneboot serve with proxy.workers above 1)",
		Hidden: true,
		Action: func(c *cli.Context) error {
			ctx, stop := signalContext()
			defer stop()
			return proxy.RunWorker(ctx)
		},
	}
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the daemon",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Value: agent.DefaultConfigPath, Usage: "config file"},
		},
		Action: func(c *cli.Context) error {
			if c.Args().Len() > 0 {
				return fmt.Errorf("serve takes no arguments, got %q", c.Args().Slice())
			}
			cfg, err := agent.LoadConfig(c.String("config"))
			if err != nil {
				return err
			}
			log := agent.NewLogger(cfg.Log, os.Stderr)
			// A no-op on kernels that account BPF memory to memcg (5.11+).
			if err := rlimit.RemoveMemlock(); err != nil {
				return fmt.Errorf("raise RLIMIT_MEMLOCK for BPF maps: %w", err)
			}
			ctx, stop := signalContext()
			defer stop()
			a, err := agent.New(cfg, log)
			if err != nil {
				return err
			}
			runErr := a.Run(ctx)
			return errors.Join(runErr, a.Close())
		},
	}
}

// controlCommand is a client command of the control API: it fetches a
// value from the daemon and prints it as a table, or as JSON with --json.
func controlCommand[T any](name, usage string, fetch func(*control.Client, context.Context) (T, error), table func(io.Writer, T) error) *cli.Command {
	return &cli.Command{
		Name:  name,
		Usage: usage,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "socket", Value: agent.DefaultControlSocket, Usage: "the daemon's control socket"},
			&cli.BoolFlag{Name: "json", Usage: "print the raw JSON"},
		},
		Action: func(c *cli.Context) error {
			ctx, stop := signalContext()
			defer stop()
			v, err := fetch(control.NewClient(c.String("socket")), ctx)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			}
			return table(c.App.Writer, v)
		},
	}
}

func statusCommand() *cli.Command {
	return controlCommand("status", "show the running daemon's state", (*control.Client).Status, printStatus)
}

func leasesCommand() *cli.Command {
	return controlCommand("leases", "list the DHCP leases of the running daemon", (*control.Client).Leases, printLeases)
}

func printLeases(w io.Writer, ls []control.Lease) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "IP\tMAC\tPOOL\tVLAN\tSTATE\tEXPIRES\tPORT\tHOSTNAME")
	for _, l := range ls {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", l.IP, l.MAC, l.Pool, l.VLAN, l.State,
			l.Expires.Local().Format(time.DateTime), l.Port, l.Hostname)
	}
	return tw.Flush()
}

func neighborsCommand() *cli.Command {
	return controlCommand("neighbors", "list the CDP and LLDP neighbours the running daemon hears", (*control.Client).Neighbors, printNeighbors)
}

func printNeighbors(w io.Writer, ns []control.Neighbor) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PORT\tPROTO\tDEVICE ID\tPLATFORM\tMAC\tADDRESSES\tTHEIR PORT\tPOWER W\tEXPIRES")
	for _, n := range ns {
		power := "-"
		if n.PowerRequestedMW > 0 {
			power = fmt.Sprintf("%.2f", float64(n.PowerRequestedMW)/1000)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Port, n.Protocol, n.DeviceID, n.Platform, n.MAC,
			strings.Join(n.Addresses, ","), n.PortID, power, n.Expires.Local().Format(time.TimeOnly))
	}
	return tw.Flush()
}

func registrationsCommand() *cli.Command {
	return controlCommand("registrations", "list the phones registering through the running daemon's registration proxy",
		(*control.Client).Registrations, printRegistrations)
}

func printRegistrations(w io.Writer, rs []control.Registration) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	// AOR and CONTACT are a SIP REGISTER's; "-" on the other rows.
	fmt.Fprintln(tw, "DEVICE\tPHONE\tCALLMANAGER\tPROTO\tSTATE\tSINCE\tAOR\tCONTACT")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", orDash(r.Device), r.Phone, orDash(r.CallManager), r.Protocol, r.State,
			r.Since.Local().Format(time.DateTime), orDash(r.AOR), orDash(r.Contact))
	}
	return tw.Flush()
}

// orDash shows an empty column as "-", so the table stays aligned.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printStatus(w io.Writer, st control.Status) error {
	fmt.Fprintf(w, "phoneboot %s, pid %d, up %s\n\n", st.Version, st.PID, (time.Duration(st.Uptime) * time.Second).Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tSTATE\tERROR")
	for _, s := range st.Services {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, s.State, s.Error)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "PORT\tIFINDEX\tXDP\tPOE\tCLASS\tPOWER W")
	for _, p := range st.Ports {
		poe, class, power := "-", "-", "-"
		if p.PoEState != "" {
			poe = p.PoEState
			if p.PoEFault != "" {
				poe += " (" + p.PoEFault + ")"
			}
			if p.PoEClass >= 0 && p.PoEState == "delivering" {
				class = fmt.Sprint(p.PoEClass)
			}
			power = fmt.Sprintf("%.1f", float64(p.PowerMW)/1000)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", p.Name, p.Ifindex, p.XDPMode, poe, class, power)
	}
	if len(st.Counters) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "XDP COUNTER\tPACKETS\tBYTES")
		for _, k := range st.Counters {
			fmt.Fprintf(tw, "%s\t%d\t%d\n", k.Name, k.Packets, k.Bytes)
		}
	}
	return tw.Flush()
}

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check that this host can run phoneboot",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "bpffs", Value: "/sys/fs/bpf", Usage: "where bpffs should be mounted"},
			&cli.BoolFlag{Name: "json", Usage: "print the results as JSON"},
		},
		Action: func(c *cli.Context) error {
			if err := rlimit.RemoveMemlock(); err != nil {
				slog.Warn("raise RLIMIT_MEMLOCK", "error", err)
			}
			ctx, stop := signalContext()
			defer stop()
			res := doctor.Run(ctx, doctor.Options{BPFFS: c.String("bpffs"), Log: slog.New(slog.DiscardHandler)})
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				if err := enc.Encode(res); err != nil {
					return err
				}
			} else {
				doctor.Print(c.App.Writer, res)
			}
			if doctor.Failed(res) {
				return errors.New("doctor found problems (see the hints above)")
			}
			return nil
		},
	}
}

func labCommand() *cli.Command {
	adaptive := agent.DefaultConfig().Power.Adaptive
	return &cli.Command{
		Name:  "lab",
		Usage: "run a boot storm of simulated phones against the real agent, in network namespaces",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "phones", Value: 5000, Usage: "number of phones (the default storm takes about a minute on 2 cores)"},
			&cli.IntFlag{Name: "ports", Usage: "number of switch ports (default: one per phone, at most 48)"},
			&cli.StringFlag{Name: "power-policy", Value: "all", Usage: "all: power every port at once; stagger: --stagger-ports ports every --stagger; adaptive: as stagger, holding a step while a service's queue is at its --adaptive-* threshold"},
			&cli.DurationFlag{Name: "stagger", Value: 100 * time.Millisecond, Usage: "interval between stagger and adaptive steps"},
			&cli.IntFlag{Name: "stagger-ports", Value: 1, Usage: "ports powered per stagger or adaptive step"},
			&cli.IntFlag{Name: "adaptive-dhcp-backlog", Value: adaptive.DHCPBacklog, Usage: "adaptive: hold while the DHCP server has this many requests queued or in hand (0: ignore)"},
			&cli.IntFlag{Name: "adaptive-tftp-active", Value: adaptive.TFTPActive, Usage: "adaptive: hold while this many TFTP transfers run (0: ignore)"},
			&cli.IntFlag{Name: "adaptive-proxy-queued", Value: adaptive.ProxyQueued, Usage: "adaptive: hold while this many phones wait for the proxy (0: ignore)"},
			&cli.Float64Flag{Name: "time-scale", Value: 0.1, Usage: "multiplies every simulated delay (phone boot, PoE detection); 1 is real time"},
			&cli.DurationFlag{Name: "timeout", Value: 5 * time.Minute, Usage: "phones not done by then fail"},
			&cli.StringFlag{Name: "json", Usage: "write the report as JSON to this file"},
			&cli.StringFlag{Name: "html", Usage: "write the report as one self-contained HTML page with plots to this file"},
			&cli.BoolFlag{Name: "no-xdp", Usage: "run without the XDP fast path (userspace only; the phones then stay untagged)"},
			&cli.IntFlag{Name: "voice-vlans", Value: 4, Usage: "spread the ports over this many voice VLANs (at most one per port), each with its own DHCP pool; 0: phones stay untagged"},
			&cli.Float64Flag{Name: "upgrade-fraction", Value: 0.1, Usage: "share of phones that boot an older load and download the new one (0 to 1)"},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "seed for per-phone timing jitter and the choice of phones that upgrade"},
			&cli.BoolFlag{Name: "no-proxy", Usage: "turn the daemon's registration proxy off: the phones' files name the CallManagers, which they reach through the appliance (a proxied phone costs the daemon two open files)"},
			&cli.IntFlag{Name: "proxy-workers", Usage: "processes running the daemon's registration proxy (its proxy.workers); 0: one, or as many as the host's hard open-file limit needs for --phones (two per proxied phone)"},
			&cli.BoolFlag{Name: "baseline", Usage: "run the storm against the stack a user would otherwise deploy: Kea for DHCP, tftpd-hpa for files, phones registering straight with the CallManagers; phoneboot keeps only the switch's role (PoE, CDP/LLDP); untagged"},
			&cli.StringFlag{Name: "compare", Usage: "run the same storm once per variant and report them side by side: a comma list of xdp, no-xdp, all, stagger, adaptive, baseline (joined by + to combine, e.g. no-xdp+stagger)"},
			&cli.StringFlag{Name: "tftpd-hpa", Usage: "tftpd-hpa's in.tftpd for the baseline (default: the installed one, else unpacked from the Debian package into /var/cache/phoneboot-lab)"},
			&cli.StringSliceFlag{Name: "fault", Usage: "inject a failure during the storm, KIND@WHEN (repeatable): KIND is callmanager (stop the next CallManager), daemon (kill the daemon with SIGKILL and start it again) or port[:pN] (power-cycle the port through the daemon, p1 by default: its phones reboot); WHEN is a time after the storm's start (8s) or PHASE=COUNT (dhcp=300: when 300 phones have their lease)"},
			&cli.BoolFlag{Name: "verbose", Usage: "log the lab's steps and show the agent's log"},
		},
		Action: func(c *cli.Context) error {
			if c.Args().Len() > 0 {
				return fmt.Errorf("lab takes no arguments, got %q", c.Args().Slice())
			}
			level := slog.LevelWarn
			var agentLog io.Writer
			if c.Bool("verbose") {
				level = slog.LevelInfo
				agentLog = os.Stderr
			}
			var faults []lab.Fault
			for _, s := range c.StringSlice("fault") {
				f, err := lab.ParseFault(s)
				if err != nil {
					return err
				}
				faults = append(faults, f)
			}
			var variants []string
			if list := c.String("compare"); list != "" {
				if c.Bool("baseline") {
					return errors.New("--baseline with --compare: name baseline among the variants instead")
				}
				var err error
				if variants, err = lab.ParseVariants(list); err != nil {
					return err
				}
			}
			if os.Geteuid() != 0 {
				return lab.ErrNotRoot // before anything that would fail less clearly
			}
			if err := rlimit.RemoveMemlock(); err != nil {
				return fmt.Errorf("raise RLIMIT_MEMLOCK for BPF maps: %w", err)
			}
			labGC()
			// A reader that goes away (phoneboot lab --verbose 2>&1 | head)
			// must not kill the lab with SIGPIPE before it has removed its
			// namespaces and stopped the daemon: the write fails instead.
			signal.Ignore(syscall.SIGPIPE)
			voiceVLANs := c.Int("voice-vlans")
			if (c.Bool("no-xdp") || c.Bool("baseline")) && !c.IsSet("voice-vlans") {
				voiceVLANs = 0 // the tagging is XDP's and TC's
			}
			ctx, stop := signalContext()
			defer stop()
			o := lab.Options{
				Phones:       c.Int("phones"),
				Ports:        c.Int("ports"),
				PowerPolicy:  c.String("power-policy"),
				Stagger:      c.Duration("stagger"),
				StaggerPorts: c.Int("stagger-ports"),
				Adaptive: &agent.AdaptiveConfig{
					DHCPBacklog: c.Int("adaptive-dhcp-backlog"), TFTPActive: c.Int("adaptive-tftp-active"),
					ProxyQueued: c.Int("adaptive-proxy-queued"), MaxHold: adaptive.MaxHold,
				},
				TimeScale:       c.Float64("time-scale"),
				Timeout:         c.Duration("timeout"),
				NoXDP:           c.Bool("no-xdp"),
				NoProxy:         c.Bool("no-proxy"),
				ProxyWorkers:    c.Int("proxy-workers"),
				VoiceVLANs:      voiceVLANs,
				UpgradeFraction: c.Float64("upgrade-fraction"),
				Faults:          faults,
				Seed:            c.Uint64("seed"),
				Baseline:        c.Bool("baseline"),
				InTFTPD:         c.String("tftpd-hpa"),
				JSONPath:        c.String("json"),
				HTMLPath:        c.String("html"),
				Out:             c.App.Writer,
				LiveProgress:    lab.IsTerminal(os.Stdout),
				AgentLog:        agentLog,
				Log:             slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
			}
			var reps []lab.Report
			if variants == nil {
				rep, err := lab.Run(ctx, o)
				if err != nil {
					return err
				}
				reps = []lab.Report{rep}
			} else {
				// Each variant decides the VLANs of its own runs: untagged
				// without XDP, --voice-vlans with it.
				o.VoiceVLANs = c.Int("voice-vlans")
				var err error
				if reps, err = lab.Compare(ctx, o, variants); err != nil {
					return err
				}
			}
			var problems []error
			for _, rep := range reps {
				run := ""
				if rep.Label != "" {
					run = rep.Label + ": "
				}
				if rep.Failed > 0 {
					problems = append(problems, fmt.Errorf("%s%d of %d phones failed", run, rep.Failed, rep.Phones))
				}
				if in := rep.Integrity; in != nil && in.Violations > 0 {
					problems = append(problems, fmt.Errorf("%slease integrity: %d violations (listed above and in --json)", run, in.Violations))
				}
			}
			return errors.Join(problems...)
		},
	}
}

// labGC trades the simulator's memory for CPU: its thousands of phones
// allocate fast, and with Go's default GOGC of 100 the collector took a
// fifth of the lab's CPU in a 10,000-phone storm (perf), CPU that the
// phones, the switch and the appliance share on the host. At 400 the same
// storm took 14.4 s instead of 18.1 s. GOGC and GOMEMLIMIT in the
// environment still win; the daemon, a process of its own, keeps its
// defaults.
func labGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(8 << 30) // past it the collector works harder, not the machine's swap
	}
}
