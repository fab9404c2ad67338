package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/phoneboot/phoneboot/agent"
	"github.com/phoneboot/phoneboot/userspace/control"
)

// poeCommand is `phoneboot poe`: the power manager's status, and the
// operator's actions on a port.
func poeCommand() *cli.Command {
	socket := &cli.StringFlag{Name: "socket", Value: agent.DefaultControlSocket, Usage: "the daemon's control socket"}
	jsonFlag := &cli.BoolFlag{Name: "json", Usage: "print the raw JSON"}
	action := func(name, usage, args string, nargs int) *cli.Command {
		return &cli.Command{
			Name:      name,
			Usage:     usage,
			ArgsUsage: args,
			Flags:     []cli.Flag{socket, jsonFlag},
			Action: func(c *cli.Context) error {
				if c.Args().Len() != nargs {
					return fmt.Errorf("poe %s takes %s, got %q", name, args, c.Args().Slice())
				}
				ctx, stop := signalContext()
				defer stop()
				p, err := control.NewClient(c.String("socket")).PoEAction(ctx, c.Args().Get(0), name, c.Args().Get(1))
				if err != nil {
					return err
				}
				if c.Bool("json") {
					enc := json.NewEncoder(c.App.Writer)
					enc.SetIndent("", "  ")
					return enc.Encode(p)
				}
				return printPoEPort(c.App.Writer, p)
			},
		}
	}
	status := controlCommand("status", "show the power budget and every PoE port", (*control.Client).PoE, printPoE)
	return &cli.Command{
		Name:  "poe",
		Usage: "show and change the running daemon's PoE ports",
		Subcommands: []*cli.Command{
			status,
			action(control.PoEEnable, "power a port (kept across restarts)", "PORT", 1),
			action(control.PoEDisable, "turn a port's power off (kept across restarts)", "PORT", 1),
			action(control.PoECycle, "turn a port off and on again: the phone reboots", "PORT", 1),
			action(control.PoEPriority, "set a port's priority: critical, high or low (kept across restarts)", "PORT LEVEL", 2),
		},
	}
}

func watts(mw int) string { return fmt.Sprintf("%.1f", float64(mw)/1000) }

// poeNote says what a port's state does not: a fault, why it is held,
// and its power negotiation.
func poeNote(p control.PoEPort) string {
	var notes []string
	if p.Fault != "" {
		notes = append(notes, p.Fault)
	}
	if p.Held != "" {
		notes = append(notes, p.Held)
	}
	if p.RequestedMW > 0 {
		if p.GrantedMW > 0 {
			notes = append(notes, fmt.Sprintf("asked %s W, granted %s W", watts(p.RequestedMW), watts(p.GrantedMW)))
		} else {
			notes = append(notes, fmt.Sprintf("asked %s W, refused", watts(p.RequestedMW)))
		}
	}
	return strings.Join(notes, "; ")
}

func printPoE(w io.Writer, st control.PoEStatus) error {
	budget := "no limit"
	if st.BudgetMW > 0 {
		budget = fmt.Sprintf("%s W (%s W left)", watts(st.BudgetMW), watts(st.BudgetMW-st.AllocatedMW))
	}
	fmt.Fprintf(w, "PoE: policy %s, accounting %s, budget %s, allocated %s W, drawn %s W\n",
		st.Policy, st.Accounting, budget, watts(st.AllocatedMW), watts(st.DrawnMW))
	fmt.Fprintf(w, "power requests (CDP/LLDP): %d granted, %d refused; adaptive steps held: %d\n\n",
		st.RequestsGranted, st.RequestsRefused, st.AdaptiveHolds)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PORT\tSTATE\tCLASS\tDRAW W\tALLOC W\tLIMIT W\tPRIORITY\tWANTED\tNOTE")
	for _, p := range st.Ports {
		class, draw, limit := "-", "-", "-"
		if p.Class >= 0 {
			class = fmt.Sprint(p.Class)
		}
		if p.State == "delivering" {
			draw = watts(p.PowerMW)
		}
		if p.LimitMW > 0 {
			limit = watts(p.LimitMW)
		}
		wanted := "off"
		if p.Enabled {
			wanted = "on"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Port, p.State, class, draw, watts(p.AllocatedMW), limit, p.Priority, wanted, poeNote(p))
	}
	return tw.Flush()
}

func printPoEPort(w io.Writer, p control.PoEPort) error {
	fmt.Fprintf(w, "%s: %s", p.Port, p.State)
	if p.State == "delivering" {
		if p.Class >= 0 {
			fmt.Fprintf(w, ", class %d", p.Class)
		}
		fmt.Fprintf(w, ", drawing %s W", watts(p.PowerMW))
	}
	wanted := "off"
	if p.Enabled {
		wanted = "on"
	}
	fmt.Fprintf(w, "; wanted %s, priority %s", wanted, p.Priority)
	if n := poeNote(p); n != "" {
		fmt.Fprintf(w, " (%s)", n)
	}
	_, err := fmt.Fprintln(w)
	return err
}
