package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/control"
	"github.com/phoneboot/phoneboot/userspace/privtest"
)

func TestPrintPoE(t *testing.T) {
	st := control.PoEStatus{
		Policy: "adaptive", Accounting: "class", BudgetMW: 30000, AllocatedMW: 22400, DrawnMW: 9940,
		RequestsGranted: 3, RequestsRefused: 1, AdaptiveHolds: 7,
		Ports: []control.PoEPort{
			{Port: "swp1", State: "delivering", Class: 2, PowerMW: 6100, LimitMW: 15400, Enabled: true, Priority: "high", AllocatedMW: 7000},
			{Port: "swp2", State: "delivering", Class: 1, PowerMW: 3840, Enabled: true, Priority: "low", AllocatedMW: 15400, RequestedMW: 25500, GrantedMW: 15400},
			{Port: "swp3", State: "disabled", Class: -1, Enabled: true, Priority: "low", Held: "not enough power budget", RequestedMW: 0},
			{Port: "swp4", State: "fault", Class: -1, Enabled: true, Priority: "critical", Fault: "overload"},
			{Port: "swp5", State: "disabled", Class: -1, Priority: "low"},
		},
	}
	var b bytes.Buffer
	if err := printPoE(&b, st); err != nil {
		t.Fatal(err)
	}
	want := `PoE: policy adaptive, accounting class, budget 30.0 W (7.6 W left), allocated 22.4 W, drawn 9.9 W
power requests (CDP/LLDP): 3 granted, 1 refused; adaptive steps held: 7

PORT  STATE       CLASS  DRAW W  ALLOC W  LIMIT W  PRIORITY  WANTED  NOTE
swp1  delivering  2      6.1     7.0      15.4     high      on      
swp2  delivering  1      3.8     15.4     -        low       on      asked 25.5 W, granted 15.4 W
swp3  disabled    -      -       0.0      -        low       on      not enough power budget
swp4  fault       -      -       0.0      -        critical  on      overload
swp5  disabled    -      -       0.0      -        low       off     
`
	if b.String() != want {
		t.Errorf("printPoE:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	st.BudgetMW, st.Ports = 0, nil
	printPoE(&b, st)
	if !strings.Contains(b.String(), "budget no limit,") {
		t.Errorf("without a budget:\n%s", b.String())
	}
	for _, tc := range []struct {
		p    control.PoEPort
		want string
	}{
		{control.PoEPort{Port: "swp1", State: "delivering", Class: 2, PowerMW: 6100, Enabled: true, Priority: "high"},
			"swp1: delivering, class 2, drawing 6.1 W; wanted on, priority high\n"},
		{control.PoEPort{Port: "swp2", State: "disabled", Class: -1, Priority: "low"},
			"swp2: disabled; wanted off, priority low\n"},
		{control.PoEPort{Port: "swp3", State: "disabled", Class: -1, Enabled: true, Priority: "low", Held: "not enough power budget", RequestedMW: 7000},
			"swp3: disabled; wanted on, priority low (not enough power budget; asked 7.0 W, refused)\n"},
	} {
		b.Reset()
		printPoEPort(&b, tc.p)
		if b.String() != tc.want {
			t.Errorf("printPoEPort = %q, want %q", b.String(), tc.want)
		}
	}
}

// TestServePoE drives `phoneboot poe` against a daemon with the lab PSE on
// one port: status, disable, enable, cycle, priority, and the errors.
func TestServePoE(t *testing.T) {
	privtest.Require(t)
	app, phone := privtest.VethPair(t, "swp1", "eth0")
	run, err := os.MkdirTemp("/run", "phoneboot-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	socket := filepath.Join(run, "control.sock")
	cfg := filepath.Join(run, "phoneboot.yaml")
	err = os.WriteFile(cfg, []byte(`
control: {socket: `+socket+`}
metrics: {listen: ""}
fastpath: {enabled: false}
discovery: {cdp: false, lldp: false}
ports: [{name: swp1, lab: {netns: `+phone.Name+`, link: eth0, class: 3}, power: {priority: high}}]
power: {backend: lab, detect_delay: 10ms, poll_interval: 100ms, cycle_off: 100ms, state_file: `+run+`/poe-state.json}
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
	if k, err := notify.Read(buf); err != nil || string(buf[:k]) != "READY=1" {
		t.Fatalf("first notification %q (%v); log:\n%s", buf[:k], err, logs.String())
	}

	poe := func(args ...string) result {
		t.Helper()
		return phoneboot(t, append([]string{"poe", args[0], "--socket", socket}, args[1:]...)...)
	}
	// waitFor waits until swp1's row starts with want's columns.
	waitFor := func(want ...string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			r := poe("status")
			for _, line := range strings.Split(r.stdout, "\n") {
				if f := strings.Fields(line); r.code == 0 && len(f) >= len(want) && slices.Equal(f[:len(want)], want) {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("status never showed %q:\n%s%s", want, r.stdout, r.stderr)
			}
		}
	}
	// PORT STATE CLASS DRAW-W ALLOC-W LIMIT-W PRIORITY WANTED
	waitFor("swp1", "delivering", "3", "12.9", "15.4", "-", "high", "on")
	if r := poe("disable", "swp1"); r.code != 0 || r.stdout != "swp1: disabled; wanted off, priority high\n" {
		t.Errorf("poe disable: exit %d, %q %s", r.code, r.stdout, r.stderr)
	}
	waitFor("swp1", "disabled", "-", "-", "0.0", "-", "high", "off")
	if r := poe("priority", "swp1", "critical"); r.code != 0 || !strings.Contains(r.stdout, "priority critical") {
		t.Errorf("poe priority: exit %d, %q %s", r.code, r.stdout, r.stderr)
	}
	if r := poe("enable", "swp1"); r.code != 0 || !strings.HasPrefix(r.stdout, "swp1: ") || !strings.Contains(r.stdout, "wanted on, priority critical") {
		t.Errorf("poe enable: exit %d, %q %s", r.code, r.stdout, r.stderr)
	}
	waitFor("swp1", "delivering")
	if r := poe("cycle", "swp1"); r.code != 0 || !strings.HasPrefix(r.stdout, "swp1: ") {
		t.Errorf("poe cycle: exit %d, %q %s", r.code, r.stdout, r.stderr)
	}
	if r := poe("status", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"policy": "all"`) || !strings.Contains(r.stdout, `"priority": "critical"`) {
		t.Errorf("poe status --json: exit %d\n%s", r.code, r.stdout)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"enable", "swp9"}, "404 Not Found"},
		{[]string{"priority", "swp1", "urgent"}, `400 Bad Request: bad request: "urgent" is not a priority`},
		{[]string{"enable"}, "poe enable takes PORT"},
		{[]string{"priority", "swp1"}, "poe priority takes PORT LEVEL"},
	} {
		if r := poe(tc.args...); r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("poe %v: exit %d, stderr %q, want %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("serve exited with %v; log:\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop within 10s of SIGTERM")
	}
	state, err := os.ReadFile(filepath.Join(run, "poe-state.json"))
	if err != nil || !strings.Contains(string(state), `"priority": "critical"`) || strings.Contains(string(state), "enabled") {
		t.Errorf("state file %s (%v): want swp1's priority kept, its enable back to the config's", state, err)
	}
}
