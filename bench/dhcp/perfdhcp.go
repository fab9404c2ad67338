package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// perfdhcp's final report, per exchange type.
type pdExchange struct {
	Sent, Recv, Drops, Rejected  int
	MinDelay, AvgDelay, MaxDelay float64 // ms; NaN-free: 0 when n/a
	haveDelay                    bool
}

type pdResult struct {
	Rate     float64 // "Rate: X 4-way exchanges/second"
	DO, RA   pdExchange
	Took     time.Duration // avalanche: "It took HH:MM:SS.frac to provision N clients."
	Clients  int
	Resent   int
	Output   string
	ExitCode int
}

var (
	reRate = regexp.MustCompile(`^Rate: ([0-9.]+)`)
	reTook = regexp.MustCompile(`^It took (\d+):(\d+):([0-9.]+) to provision (\d+) clients`)
)

func parsePerfdhcp(out string) pdResult {
	r := pdResult{Output: out}
	var cur *pdExchange
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "***Statistics for: DISCOVER-OFFER"):
			cur = &r.DO
			continue
		case strings.HasPrefix(line, "***Statistics for: REQUEST-ACK"):
			cur = &r.RA
			continue
		}
		if m := reRate.FindStringSubmatch(line); m != nil {
			r.Rate, _ = strconv.ParseFloat(m[1], 64)
			continue
		}
		if m := reTook.FindStringSubmatch(line); m != nil {
			h, _ := strconv.Atoi(m[1])
			mi, _ := strconv.Atoi(m[2])
			s, _ := strconv.ParseFloat(m[3], 64)
			r.Took = time.Duration((float64(h*3600+mi*60) + s) * float64(time.Second))
			r.Clients, _ = strconv.Atoi(m[4])
			continue
		}
		if v, ok := strings.CutPrefix(line, "Requests resent: "); ok {
			r.Resent, _ = strconv.Atoi(v)
			continue
		}
		if cur == nil {
			continue
		}
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(val), "ms"))
		switch key {
		case "sent packets":
			cur.Sent, _ = strconv.Atoi(val)
		case "received packets":
			cur.Recv, _ = strconv.Atoi(val)
		case "drops":
			cur.Drops, _ = strconv.Atoi(val)
		case "rejected leases":
			cur.Rejected, _ = strconv.Atoi(val)
		case "min delay", "avg delay", "max delay":
			f, err := strconv.ParseFloat(val, 64)
			if err != nil {
				continue // "n/a"
			}
			cur.haveDelay = true
			switch key {
			case "min delay":
				cur.MinDelay = f
			case "avg delay":
				cur.AvgDelay = f
			case "max delay":
				cur.MaxDelay = f
			}
		}
	}
	return r
}

// runPerfdhcp runs perfdhcp in the client namespace; after limit (if
// non-zero) it is interrupted with SIGINT, as a user would stop it, which
// makes it print its report.
func (b *bench) runPerfdhcp(ctx context.Context, ns *vnet.NS, limit time.Duration, args ...string) (pdResult, time.Duration, error) {
	argv := append([]string{"-4", "-l", "eth0"}, args...)
	cmd := b.pinned(generatorCPU, append([]string{b.perfdhcp}, argv...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := ns.Do(cmd.Start); err != nil {
		return pdResult{}, 0, fmt.Errorf("start perfdhcp: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var timer <-chan time.Time
	if limit > 0 {
		timer = time.After(limit)
	}
	var err error
	var cpu time.Duration
	pid := cmd.Process.Pid
	sample := time.NewTicker(100 * time.Millisecond)
	defer sample.Stop()
wait:
	for {
		select {
		case err = <-done:
			break wait
		case <-sample.C:
			// The last sample before exit: /proc/<pid> is gone after Wait.
			if c := cpuTime(pid); c > 0 {
				cpu = c
			}
		case <-timer:
			cmd.Process.Signal(syscall.SIGINT)
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				err = <-done
			}
			break wait
		case <-ctx.Done():
			cmd.Process.Kill()
			<-done
			return pdResult{}, 0, ctx.Err()
		}
	}
	r := parsePerfdhcp(out.String())
	if ee, ok := err.(*exec.ExitError); ok {
		r.ExitCode = ee.ExitCode()
		err = nil
	}
	if err != nil {
		return r, cpu, fmt.Errorf("perfdhcp: %w", err)
	}
	if r.DO.Sent == 0 && r.Rate == 0 {
		return r, cpu, fmt.Errorf("perfdhcp %s printed no report (exit %d):\n%s", strings.Join(argv, " "), r.ExitCode, lastLines(out.String(), 20))
	}
	return r, cpu, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// udpRcvbufErrors reads the UDP RcvbufErrors counter of namespace ns:
// datagrams dropped because their socket's receive buffer was full.
// perfdhcp receives on a UDP socket, so in the client namespace these
// are replies that arrived and that perfdhcp did not read in time.
func udpRcvbufErrors(ns *vnet.NS) (int, error) {
	var snmp []byte
	err := ns.Do(func() (err error) {
		// thread-self: /proc/self/net is the namespace of the process's
		// main thread, not of this one.
		snmp, err = os.ReadFile("/proc/thread-self/net/snmp")
		return err
	})
	if err != nil {
		return 0, err
	}
	var names []string
	for line := range strings.SplitSeq(string(snmp), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f[1:]
			continue
		}
		for i, name := range names {
			if name == "RcvbufErrors" && i+1 < len(f) {
				return strconv.Atoi(f[i+1])
			}
		}
	}
	return 0, fmt.Errorf("no Udp RcvbufErrors in /proc/net/snmp")
}
