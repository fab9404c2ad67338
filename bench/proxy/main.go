// Command proxy benchmarks the registration proxy against connecting
// straight to the CallManager simulator: new SCCP registrations per
// second (a fresh TCP connection each, Register, RegisterAck, close), the
// latency of a registration at a fixed rate, and the round trip of a
// KeepAlive on registered sessions, each through the proxy and direct.
// The proxy, the simulator and the load generator are three processes
// (this binary in three roles) in a network namespace of their own, so
// the CPU each uses is measured apart. Admission pacing is off.
//
//	go run ./bench/proxy [--quick] [--json PATH]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
)

// Addresses inside the bench's namespace (loopback only).
const (
	cmAddr    = "127.0.1.1:2000" // the CallManager simulator
	proxyAddr = "127.0.0.1:2000" // the proxy, in front of it
	envChild  = "PHONEBOOT_BENCH_PROXY_NETNS"
)

func main() {
	role := flag.String("role", "", "internal: run as the cmsim or proxy process")
	quick := flag.Bool("quick", false, "short run (under 3 minutes): fewer and shorter repeats")
	jsonPath := flag.String("json", "", "write the results as JSON to `PATH`")
	workers := flag.Int("workers", 64, "concurrent registrations of the load generator in the rate runs")
	only := flag.String("only", "", "run only this measurement: rate, fixed or keepalive")
	cmDelay := flag.Duration("cm-delay", 0, "the simulator answers a Register after this long (CUCM's own processing time)")
	flag.Parse()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	var err error
	switch *role {
	case "cmsim":
		err = runCM(*cmDelay)
	case "proxy":
		err = runProxy()
	case "":
		err = top(*quick, *jsonPath, *workers, *only, *cmDelay)
	default:
		err = fmt.Errorf("unknown role %q", *role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/proxy:", err)
		os.Exit(1)
	}
}

// top starts the bench again in a new network namespace, where it runs.
func top(quick bool, jsonPath string, workers int, only string, cmDelay time.Duration) error {
	if os.Getenv(envChild) == "" {
		if os.Geteuid() != 0 {
			return errors.New("needs root (a network namespace of its own)")
		}
		if jsonPath != "" {
			abs, err := filepath.Abs(jsonPath)
			if err != nil {
				return err
			}
			jsonPath = abs
		}
		args := []string{fmt.Sprintf("--quick=%v", quick), "--json=" + jsonPath, fmt.Sprintf("--workers=%d", workers), "--only=" + only, "--cm-delay=" + cmDelay.String()}
		cmd := exec.Command("/proc/self/exe", args...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.Env = append(os.Environ(), envChild+"=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
		return cmd.Run()
	}
	if err := setupNetns(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runBench(ctx, quick, jsonPath, workers, only, cmDelay)
}

// setupNetns brings loopback up and lets the namespace make connections
// as fast as the bench does: every port for outgoing connections, and
// TIME_WAIT reuse (the default on loopback, set here so it does not
// depend on the machine).
func setupNetns() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	for k, v := range map[string]string{
		"/proc/sys/net/ipv4/ip_local_port_range": "1024 65535",
		"/proc/sys/net/ipv4/tcp_tw_reuse":        "1",
	} {
		if err := os.WriteFile(k, []byte(v), 0o644); err != nil {
			return fmt.Errorf("namespace sysctl %s: %w", k, err)
		}
	}
	return nil
}

// child is one of the bench's other processes.
type child struct {
	cmd  *exec.Cmd
	done chan error
}

func startChild(role string, args ...string) (*child, error) {
	cmd := exec.Command("/proc/self/exe", append([]string{"--role=" + role}, args...)...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, done: make(chan error, 1)}
	go func() { c.done <- cmd.Wait() }()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

func waitListening(ctx context.Context, addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := dialTCP(addr)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s not listening: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func machineNote() string {
	model := "?"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	return fmt.Sprintf("%s; load average before the run %s", model, strings.Join(strings.Fields(string(load))[:3], " "))
}
