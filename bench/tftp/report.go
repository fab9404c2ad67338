package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

type report struct {
	o       *options
	machine string
	results []stepResult
	wall    time.Duration
}

func (r *report) find(server string, clients int) *stepResult {
	for i := range r.results {
		if r.results[i].server == server && r.results[i].clients == clients {
			return &r.results[i]
		}
	}
	return nil
}

func num(v float64, prec int) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	return fmt.Sprintf("%.*f", prec, v)
}

func (r *report) print(w io.Writer) {
	o := r.o
	fmt.Fprintf(w, "\nbench/tftp: %d MiB file, blksize %d, windowsize %d (phoneboot, atftpd; tftpd-hpa has none), %d run(s) a step, wall %s\n",
		o.fileMiB, o.blksize, o.windowsize, o.repeat, r.wall.Round(time.Second))
	fmt.Fprintln(w, "| server | clients | MB/s | server CPU s/GiB | generator CPU s/GiB | p50 s | p99 s | done | other load | runs MB/s |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
	for _, s := range r.results {
		var runs []string
		for _, v := range s.repeats {
			runs = append(runs, fmt.Sprintf("%.0f", v))
		}
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s | %s | %d/%d | %.0f%% | %s |\n", s.server, s.clients, num(s.mbPerS, 1),
			num(s.cpuSPerGiB, 2), num(s.genSPerGiB, 2), num(s.p50, 2), num(s.p99, 2), s.completed, s.transfers, s.otherBusy, strings.Join(runs, ", "))
	}
	for _, s := range r.results {
		if s.limitedNote != "" || len(s.errors) > 0 {
			fmt.Fprintf(w, "note: %s with %d clients: %s %s\n", s.server, s.clients, s.limitedNote, strings.Join(s.errors, "; "))
		}
	}
	// The targets, at 500 clients against tftpd-hpa.
	pb, hpa := r.find("phoneboot", 500), r.find("tftpd-hpa", 500)
	if pb != nil && hpa != nil {
		tput := pb.mbPerS / hpa.mbPerS
		cpu := pb.cpuSPerGiB / hpa.cpuSPerGiB
		verdict := func(ok bool) string {
			if ok {
				return "met"
			}
			return "NOT MET"
		}
		fmt.Fprintf(w, "target: 500 clients, phoneboot ≥ 3× tftpd-hpa's throughput: %.2f× (%s)\n", tput, verdict(tput >= 3))
		fmt.Fprintf(w, "target: 500 clients, phoneboot ≤ ½ tftpd-hpa's CPU per GiB: %.2f× (%s)\n", cpu, verdict(cpu <= 0.5))
	}
}

// json is the --json document: per server and client count, the issue's
// three keys and a few more.
func (r *report) json() map[string]any {
	results := map[string]any{}
	nullable := func(v float64) any {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil
		}
		return v
	}
	for _, s := range r.results {
		results[fmt.Sprintf("%s/%d", s.server, s.clients)] = map[string]any{
			"server": s.server, "clients": s.clients,
			"mb_per_s": s.mbPerS, "cpu_s_per_gib": nullable(s.cpuSPerGiB), "p99_transfer_s": nullable(s.p99),
			"p50_transfer_s": nullable(s.p50), "generator_cpu_s_per_gib": nullable(s.genSPerGiB),
			"transfers": s.transfers, "completed": s.completed, "bytes": s.bytes, "other_load_percent": s.otherBusy,
			"runs_mb_per_s": s.repeats, "runs_cpu_s_per_gib": s.cpuRepeats,
		}
	}
	return map[string]any{
		"file_mib": r.o.fileMiB, "blksize": r.o.blksize, "windowsize": r.o.windowsize, "quick": r.o.quick,
		"wall_seconds": r.wall.Seconds(), "results": results,
	}
}
