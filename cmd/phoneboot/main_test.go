package main

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/privtest"
)

// The CLI is tested as users meet it: the built binary, its exit status
// and what it prints.
var binary string

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "pb-cli-")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		// Readable by the unprivileged user TestLabRefusesNonRoot runs as.
		if err := os.Chmod(dir, 0o755); err != nil {
			panic(err)
		}
		if binary, err = privtest.BuildPhoneboot(dir); err != nil {
			panic(err)
		}
		return m.Run()
	}()
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, cmd *exec.Cmd) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

func phoneboot(t *testing.T, args ...string) result {
	t.Helper()
	return run(t, exec.Command(binary, args...))
}

func TestHelpListsCommands(t *testing.T) {
	r := phoneboot(t, "--help")
	for _, c := range []string{"serve", "status", "poe", "doctor", "lab"} {
		if !strings.Contains(r.stdout, c) {
			t.Errorf("--help lacks %s:\n%s", c, r.stdout)
		}
	}
	r = phoneboot(t, "lab", "--help")
	for _, f := range []string{"--phones", "--ports", "--power-policy", "--stagger", "--time-scale", "--json", "--no-xdp", "--fault", "--compare", "--baseline"} {
		if !strings.Contains(r.stdout, f) {
			t.Errorf("lab --help lacks %s", f)
		}
	}
}

func TestBadInputExitsNonZero(t *testing.T) {
	dir := t.TempDir()
	badCfg := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badCfg, []byte("fastpath:\n  xdp_mode: turbo\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"bad config value", []string{"serve", "--config", badCfg}, badCfg + `:2: fastpath.xdp_mode: "turbo" is not one of native, generic, auto`},
		{"missing config", []string{"serve", "--config", filepath.Join(dir, "none.yaml")}, "none.yaml: no such file or directory"},
		{"serve argument", []string{"serve", "extra"}, `serve takes no arguments`},
		{"unknown command", []string{"frobnicate"}, "frobnicate"},
		{"lab no phones", []string{"lab", "--phones", "0"}, "--phones 0: must be 1 to 100000"},
		{"lab bad policy", []string{"lab", "--power-policy", "sometimes"}, `--power-policy "sometimes": must be all, stagger or adaptive`},
		{"lab ports over phones", []string{"lab", "--phones", "2", "--ports", "3"}, "--ports 3: more ports than --phones 2"},
		{"lab bad time scale", []string{"lab", "--time-scale", "-1"}, "--time-scale -1: must be above 0"},
		{"lab bad number", []string{"lab", "--phones", "many"}, "many"},
		{"lab bad proxy workers", []string{"lab", "--proxy-workers", "65"}, "--proxy-workers 65: must be 0 to 64"},
		{"proxy worker run by hand", []string{"proxy-worker"}, "proxy workers are started by the daemon"},
		{"lab unknown variant", []string{"lab", "--compare", "xdp,warp"}, `--compare: unknown variant "warp"`},
		{"lab one variant", []string{"lab", "--compare", "baseline"}, "name at least two variants"},
		{"lab baseline and compare", []string{"lab", "--baseline", "--compare", "xdp,baseline"}, "--baseline with --compare"},
		{"lab tagged baseline", []string{"lab", "--baseline", "--voice-vlans", "2"}, "--voice-vlans 2 with --baseline"},
		{"lab bad fault", []string{"lab", "--fault", "reboot@5s"}, `--fault "reboot@5s": kind "reboot" is not callmanager, daemon, port or port:PORT`},
		{"lab fault on no port", []string{"lab", "--phones", "4", "--fault", "port:p9@dhcp=1"}, `--fault "port:p9@dhcp=1": the lab's ports are p1 to p4`},
		{"status without daemon", []string{"status", "--socket", filepath.Join(dir, "none.sock")}, "is phoneboot running"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := phoneboot(t, tt.args...)
			if r.code == 0 {
				t.Fatalf("exit 0, want failure; stderr: %s", r.stderr)
			}
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr %q lacks %q", r.stderr, tt.want)
			}
			if strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "goroutine ") {
				t.Errorf("stderr shows a panic:\n%s", r.stderr)
			}
		})
	}
}

func TestLabRefusesNonRoot(t *testing.T) {
	privtest.Require(t) // needs root to switch to another user
	cmd := exec.Command(binary, "lab", "--phones", "2")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	r := run(t, cmd)
	if r.code == 0 || !strings.Contains(r.stderr, "phoneboot lab needs root") {
		t.Fatalf("exit %d, stderr %q; want a refusal naming root", r.code, r.stderr)
	}
}

// TestLabRefusesStormPastFileLimit: a storm the open-file limit cannot
// hold is refused at once, naming the way out, not failed minutes in. A
// storm one daemon process cannot proxy gets proxy workers instead
// (userspace/lab's TestFitHardLimit), unless --proxy-workers named too
// few.
func TestLabRefusesStormPastFileLimit(t *testing.T) {
	privtest.Require(t)
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Fatalf("prlimit (util-linux) not found: %v", err)
	}
	for _, tt := range []struct {
		limit string
		args  []string
		want  string
	}{
		{"3000", []string{"--phones", "1000"}, "open files in the lab"}, // 1,000 + a reserve of 4,096
		{"3000", []string{"--phones", "1000", "--no-proxy"}, "open files in the lab"},
		// The lab's 8,096 fit; one proxy process's 9,024 do not.
		{"8500", []string{"--phones", "4000", "--proxy-workers", "1"}, "run with --proxy-workers 0"},
	} {
		args := append([]string{"--nofile=" + tt.limit + ":" + tt.limit, binary, "lab"}, tt.args...)
		r := run(t, exec.Command(prlimit, args...))
		if r.code == 0 || !strings.Contains(r.stderr, tt.want) || !strings.Contains(r.stderr, "hard limit is "+tt.limit) {
			t.Errorf("lab %v under a limit of %s: exit %d, stderr %q; want a refusal with %q", tt.args, tt.limit, r.code, r.stderr, tt.want)
		}
	}
}

// TestLabOutputClosed: a lab whose reader goes away (phoneboot lab
// --verbose 2>&1 | head) stops with an error after removing its
// namespaces and run directory, instead of dying of SIGPIPE with them left
// behind.
func TestLabOutputClosed(t *testing.T) {
	privtest.Require(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "lab", "--phones", "2", "--verbose")
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	// Read up to the line naming the lab's namespaces and directory, then
	// go away as head does.
	var namespaces, runDir string
	lines := bufio.NewScanner(r)
	for lines.Scan() {
		line := lines.Text()
		if strings.Contains(line, `msg="lab built"`) {
			for _, f := range strings.Fields(line) {
				if v, ok := strings.CutPrefix(f, "namespaces="); ok {
					namespaces = strings.TrimSuffix(v, "*")
				}
				if v, ok := strings.CutPrefix(f, "run_dir="); ok {
					runDir = v
				}
			}
			break
		}
	}
	r.Close()
	werr := cmd.Wait()
	if namespaces == "" || runDir == "" {
		t.Fatalf("no \"lab built\" line naming the namespaces and run directory (exit: %v)", werr)
	}
	if st := cmd.ProcessState.Sys().(syscall.WaitStatus); st.Signaled() || st.ExitStatus() == 0 {
		t.Errorf("lab with its output closed: %v; want an exit with an error, not a signal", cmd.ProcessState)
	}
	if _, err := os.Stat(runDir); !os.IsNotExist(err) {
		t.Errorf("%s still there after the lab ended (%v)", runDir, err)
		unix.Unmount(filepath.Join(runDir, "bpffs"), 0)
		os.RemoveAll(runDir)
	}
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), namespaces) {
			t.Errorf("namespace %s left behind", e.Name())
			exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
}

func TestDoctorPasses(t *testing.T) {
	// A private bpffs: doctor rightly fails where nothing mounted
	// /sys/fs/bpf, which a fresh machine need not have.
	r := phoneboot(t, "doctor", "--bpffs", privtest.TempBPFFS(t))
	if r.code != 0 || !strings.Contains(r.stdout, " 0 failed") {
		t.Fatalf("doctor exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestServeStatusStop runs the daemon as systemd would (NOTIFY_SOCKET,
// SIGTERM) on a port in a throwaway namespace and asks it for its status.
func TestServeStatusStop(t *testing.T) {
	privtest.Require(t)
	bpffs := privtest.TempBPFFS(t)
	app, _ := privtest.VethPair(t, "swp1", "eth0")
	run, err := os.MkdirTemp("/run", "phoneboot-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	socket := filepath.Join(run, "control.sock")
	cfg := filepath.Join(run, "phoneboot.yaml")
	err = os.WriteFile(cfg, []byte(`
log: {format: json}
control: {socket: `+socket+`}
metrics: {listen: ""}
fastpath: {xdp_mode: generic, pin_dir: `+bpffs+`/pb, detach_on_stop: true}
ports: [{name: swp1}]
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	notifyPath := filepath.Join(run, "notify.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()

	var logs bytes.Buffer
	cmd := exec.Command(binary, "serve", "--config", cfg)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := app.Do(cmd.Start); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	}()

	notify.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 512)
	k, err := notify.Read(buf)
	if err != nil || string(buf[:k]) != "READY=1" {
		t.Fatalf("first notification %q (%v), want READY=1; log:\n%s", buf[:k], err, logs.String())
	}

	r := phoneboot(t, "status", "--socket", socket)
	if r.code != 0 {
		t.Fatalf("status exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{"fastpath", "running", "swp1", "generic", "dhcp"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}
	r = phoneboot(t, "status", "--socket", socket, "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"xdp_mode": "generic"`) {
		t.Errorf("status --json (exit %d):\n%s", r.code, r.stdout)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("serve exited with %v after SIGTERM; log:\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop within 10s of SIGTERM")
	}
	k, err = notify.Read(buf)
	if err != nil || string(buf[:k]) != "STOPPING=1" {
		t.Errorf("notification after SIGTERM %q (%v), want STOPPING=1", buf[:k], err)
	}
	if !strings.Contains(logs.String(), `"msg":"phoneboot ready"`) {
		t.Errorf("log is not JSON as configured:\n%s", logs.String())
	}
	l, err := app.Netlink().LinkByName("swp1")
	if err != nil {
		t.Fatal(err)
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		t.Error("xdp still attached after a stop with detach_on_stop")
	}
}

// unitCapabilities reads AmbientCapabilities= from the systemd unit, so the
// test holds the daemon to exactly what the unit grants.
func unitCapabilities(t *testing.T) map[string]uintptr {
	t.Helper()
	data, err := os.ReadFile("../../deploy/phoneboot.service")
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]uintptr{
		"CAP_BPF": unix.CAP_BPF, "CAP_NET_ADMIN": unix.CAP_NET_ADMIN, "CAP_PERFMON": unix.CAP_PERFMON,
		"CAP_NET_RAW": unix.CAP_NET_RAW, "CAP_NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE,
	}
	caps := map[string]uintptr{}
	for _, line := range strings.Split(string(data), "\n") {
		v, ok := strings.CutPrefix(line, "AmbientCapabilities=")
		if !ok {
			continue
		}
		for _, name := range strings.Fields(v) {
			c, ok := known[name]
			if !ok {
				t.Fatalf("unit grants %s, which this test does not know", name)
			}
			caps[name] = c
		}
	}
	if len(caps) == 0 {
		t.Fatal("no AmbientCapabilities= in the unit")
	}
	return caps
}

// TestServeLeastPrivilege starts the daemon as an unprivileged user with
// exactly the unit's capabilities, then without each capability the XDP
// path needs, to prove the set is enough and nothing in it is spare.
func TestServeLeastPrivilege(t *testing.T) {
	privtest.Require(t)
	const nobody = 65534
	caps := unitCapabilities(t)

	bpffs := privtest.TempBPFFS(t)
	// As the unit's ExecStartPre does: traversal of the bpffs root, a pin
	// directory owned by the service user.
	if err := os.Chmod(bpffs, 0o701); err != nil {
		t.Fatal(err)
	}
	pinDir := filepath.Join(bpffs, "phoneboot")
	if err := os.Mkdir(pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(pinDir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	run, err := os.MkdirTemp("/run", "phoneboot-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	if err := os.Chown(run, nobody, nobody); err != nil {
		t.Fatal(err)
	}

	ns, _ := privtest.VethPair(t, "swp1", "eth0")

	cfg := filepath.Join(run, "phoneboot.yaml")
	err = os.WriteFile(cfg, []byte(`
control: {socket: `+run+`/control.sock}
metrics: {listen: "127.0.0.1:19618"}
fastpath: {xdp_mode: native, pin_dir: `+pinDir+`}
ports: [{name: swp1}]
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}

	// start runs serve as nobody with the given capabilities and reports
	// whether it became ready.
	start := func(t *testing.T, grant []uintptr) (ready bool, log string) {
		notifyPath := filepath.Join(run, "notify.sock")
		os.Remove(notifyPath)
		notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		defer notify.Close()
		os.Chmod(notifyPath, 0o666)

		var logs bytes.Buffer
		cmd := exec.Command(binary, "serve", "--config", cfg)
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
		cmd.Stdout, cmd.Stderr = &logs, &logs
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential:  &syscall.Credential{Uid: nobody, Gid: nobody},
			AmbientCaps: grant,
		}
		if err := ns.Do(cmd.Start); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		got := make(chan string, 1)
		go func() {
			buf := make([]byte, 256)
			if k, err := notify.Read(buf); err == nil {
				got <- string(buf[:k])
			}
		}()
		select {
		case m := <-got:
			ready = m == "READY=1"
			cmd.Process.Signal(syscall.SIGTERM)
			<-exited
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Fatalf("serve neither became ready nor exited in 10s; log:\n%s", logs.String())
		}
		return ready, logs.String()
	}

	var all []uintptr
	for _, c := range caps {
		all = append(all, c)
	}
	if ready, log := start(t, all); !ready {
		t.Fatalf("serve as uid %d with the unit's capabilities did not become ready; log:\n%s", nobody, log)
	}
	for _, name := range []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"} {
		t.Run("without "+name, func(t *testing.T) {
			var fewer []uintptr
			for n, c := range caps {
				if n != name {
					fewer = append(fewer, c)
				}
			}
			if ready, log := start(t, fewer); ready {
				t.Errorf("serve became ready without %s: the unit grants a capability it does not need; log:\n%s", name, log)
			}
		})
	}
}
