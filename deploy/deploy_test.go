// Package deploy holds the systemd unit and sysusers file for phoneboot. It has no Go
// code of its own; these tests check the unit statically with systemd-analyze and by
// parsing it. See README.md for what is and is not verified at runtime.
package deploy

import (
	"bufio"
	"context"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	unitFile     = "phoneboot.service"
	sysusersFile = "phoneboot.sysusers"
	// installedBinary is the ExecStart= binary in the shipped unit.
	installedBinary = "/usr/local/bin/phoneboot"

	// Exposure measured with `systemd-analyze security --offline=yes` (systemd 252,
	// Debian 12) on the unit as committed: 2.2. The gate sits a little above it so that
	// any loosening of the sandbox fails the test. --threshold takes exposure*10.
	measuredExposure = 2.2
	maxExposure      = 2.5
)

// wantCaps is the complete capability set: bounding set and ambient set must both be
// exactly this, nothing more.
var wantCaps = []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_PERFMON"}

// systemdAnalyze returns the path of systemd-analyze. If it is missing the test fails in
// CI (the CI environment variable is set; .ci/run installs systemd) and is skipped
// elsewhere.
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("systemd-analyze not found and CI is set: %v", err)
		}
		t.Skipf("systemd-analyze not found (install systemd; set CI to make this fatal): %v", err)
	}
	return p
}

// stageUnit copies the unit into a fresh temp dir as phoneboot.service, after applying
// mutate (nil for none), and returns the copy's path. systemd-analyze verify refuses a
// unit whose ExecStart= binary does not exist, so the copy's ExecStart= points at a stub
// shell script in the same temp dir. Only that path is changed: every other line is the
// shipped unit byte for byte.
func stageUnit(t *testing.T, mutate func(string) string) string {
	t.Helper()
	raw, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	stub := filepath.Join(dir, "phoneboot")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	replaced := 0
	for i, l := range lines {
		if strings.HasPrefix(l, "ExecStart=") && strings.Contains(l, installedBinary) {
			lines[i] = strings.Replace(l, installedBinary, stub, 1)
			replaced++
		}
	}
	if replaced != 1 {
		t.Fatalf("expected exactly one ExecStart= line running %s, found %d", installedBinary, replaced)
	}
	text := strings.Join(lines, "\n")
	if mutate != nil {
		text = mutate(text)
	}
	path := filepath.Join(dir, unitFile)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// run runs systemd-analyze with args and returns stdout, stderr and the exit code.
func run(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	// No pager, no colours: output is parsed below.
	cmd.Env = append(os.Environ(), "SYSTEMD_PAGER=cat", "SYSTEMD_COLORS=0", "LC_ALL=C.UTF-8")
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("running %s %v: %v", bin, args, err)
	}
	return out.String(), errb.String(), code
}

// verifyProblems runs `systemd-analyze verify` on path and returns what it found wrong.
//
// Measured with systemd 252 and no systemd as PID 1: verify works offline and prints
// nothing for a clean unit. Unknown keys, unparsable values and unknown syscall groups
// are only warnings ("<path>:58: Unknown key 'ProtectSytem' in section [Service],
// ignoring.") with exit code 0, so the exit code alone is not enough: every output line
// naming our unit counts as a problem. Lines about other units or the bus are ignored.
func verifyProblems(t *testing.T, bin, path string) []string {
	t.Helper()
	stdout, stderr, code := run(t, bin, "verify", "--man=no", path)
	var problems []string
	if code != 0 {
		problems = append(problems, "exit code "+strconv.Itoa(code))
	}
	for _, l := range strings.Split(stdout+"\n"+stderr, "\n") {
		if strings.Contains(l, filepath.Base(path)) {
			problems = append(problems, l)
		}
	}
	return problems
}

func TestUnitVerifies(t *testing.T) {
	bin := systemdAnalyze(t)

	t.Run("shipped", func(t *testing.T) {
		if p := verifyProblems(t, bin, stageUnit(t, nil)); len(p) > 0 {
			t.Errorf("systemd-analyze verify flagged %s:\n%s", unitFile, strings.Join(p, "\n"))
		}
	})

	// Each broken copy must be flagged, which proves the filter above is not blind.
	// (A misspelt capability such as CAP_BPFF is NOT flagged by verify in systemd 252;
	// TestUnitCapabilities catches that.)
	broken := []struct{ name, old, new string }{
		{"misspelt directive", "ProtectSystem=strict", "ProtectSytem=strict"},
		{"unknown syscall group", "SystemCallFilter=@system-service bpf", "SystemCallFilter=@nonsense bpf"},
		{"bad time value", "WatchdogSec=30s", "WatchdogSec=thirty"},
		{"unknown address family", "AF_INET6 AF_PACKET", "AF_INET6 AF_PACKETT"},
		{"bad service type", "Type=notify", "Type=notifyy"},
	}
	for _, b := range broken {
		t.Run("broken/"+b.name, func(t *testing.T) {
			path := stageUnit(t, func(s string) string {
				return replaceSetting(t, s, b.old, b.new)
			})
			p := verifyProblems(t, bin, path)
			if len(p) == 0 {
				t.Fatalf("verify did not flag %q -> %q", b.old, b.new)
			}
			t.Logf("flagged as expected: %s", strings.Join(p, " | "))
		})
	}
}

// replaceSetting replaces old by new in the one non-comment line that contains old, so
// that a mutation cannot land in a comment and leave the setting intact.
func replaceSetting(t *testing.T, text, old, new string) string {
	t.Helper()
	lines := strings.Split(text, "\n")
	n := 0
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "#") || !strings.Contains(l, old) {
			continue
		}
		lines[i] = strings.Replace(l, old, new, 1)
		n++
	}
	if n != 1 {
		t.Fatalf("want exactly one setting line containing %q, found %d; update this test case", old, n)
	}
	return strings.Join(lines, "\n")
}

var exposureRE = regexp.MustCompile(`Overall exposure level for ` + regexp.QuoteMeta(unitFile) + `: ([0-9]+(?:\.[0-9]+)?)`)

func TestUnitSecurityExposure(t *testing.T) {
	bin := systemdAnalyze(t)
	path := stageUnit(t, nil)
	threshold := int(math.Round(maxExposure * 10)) // --threshold is exposure*10: 2.5 -> 25
	stdout, stderr, code := run(t, bin, "security", "--offline=yes", "--no-pager",
		"--threshold="+strconv.Itoa(threshold), path)

	m := exposureRE.FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("no exposure line in systemd-analyze security output (exit %d):\n%s\n%s", code, stdout, stderr)
	}
	got, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("exposure %.1f (measured when written: %.1f, gate: %.1f)", got, measuredExposure, maxExposure)
	if got > maxExposure || code != 0 {
		var weak []string
		for _, l := range strings.Split(stdout, "\n") {
			if strings.HasPrefix(l, "✗") {
				weak = append(weak, l)
			}
		}
		t.Fatalf("exposure %.1f exceeds %.1f (systemd-analyze exit %d); the sandbox was loosened. "+
			"Unmet checks:\n%s\n%s", got, maxExposure, code, strings.Join(weak, "\n"), stderr)
	}
}

// unit is a parsed unit file: section -> key -> values in file order.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	var cont string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cont != "" {
			line = cont + " " + line
			cont = ""
		}
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if before, ok := strings.CutSuffix(line, `\`); ok {
			cont = before
			continue
		}
		if line[0] == '[' && line[len(line)-1] == ']' {
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			t.Fatalf("%s: cannot parse %q", path, line)
		}
		u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// one returns the single value of key, failing if it is missing or repeated.
func (u unit) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Fatalf("[%s] %s: want exactly one assignment, got %q", section, key, v)
	}
	return v[0]
}

// list returns the effective space-separated list of key, with systemd's semantics that
// an empty assignment resets the list.
func (u unit) list(section, key string) []string {
	var out []string
	for _, v := range u[section][key] {
		if v == "" {
			out = nil
			continue
		}
		out = append(out, strings.Fields(v)...)
	}
	return out
}

func sameSet(got, want []string) bool {
	g := slices.Clone(got)
	slices.Sort(g)
	g = slices.Compact(g)
	return len(g) == len(got) && slices.Equal(g, want)
}

func TestUnitCapabilities(t *testing.T) {
	u := parseUnit(t, unitFile)
	const s = "Service"

	for _, key := range []string{"CapabilityBoundingSet", "AmbientCapabilities"} {
		got := u.list(s, key)
		for _, c := range got {
			if strings.HasPrefix(c, "~") {
				t.Errorf("%s uses a deny list (%q); it must list exactly %v", key, c, wantCaps)
			}
		}
		if !sameSet(got, wantCaps) {
			t.Errorf("%s = %v, want exactly %v", key, got, wantCaps)
		}
	}

	filter := u.list(s, "SystemCallFilter")
	if len(filter) == 0 || strings.HasPrefix(filter[0], "~") {
		t.Errorf("SystemCallFilter = %v, want an allow list", filter)
	}
	for _, want := range []string{"@system-service", "bpf"} {
		if !slices.Contains(filter, want) {
			t.Errorf("SystemCallFilter = %v, missing %s (bpf is in @privileged, not @system-service)", filter, want)
		}
	}

	if got := u.one(t, s, "Type"); got != "notify" {
		t.Errorf("Type = %q, want notify", got)
	}
	if got := u.one(t, s, "NotifyAccess"); got != "main" {
		t.Errorf("NotifyAccess = %q, want main", got)
	}
	// The value's syntax is checked by TestUnitVerifies; here it only has to be enabled.
	if wd := u.one(t, s, "WatchdogSec"); wd == "0" || wd == "infinity" {
		t.Errorf("WatchdogSec = %q, want the watchdog enabled", wd)
	}
	if got := u.one(t, s, "NoNewPrivileges"); got != "yes" {
		t.Errorf("NoNewPrivileges = %q, want yes", got)
	}
	if got := u.one(t, s, "User"); got != "phoneboot" {
		t.Errorf("User = %q, want phoneboot", got)
	}
}

// TestUnitBPFPinDir pins down the bpffs details that were found by running the unit
// under a root systemd --user manager (see README.md), so they are not "simplified" away.
func TestUnitBPFPinDir(t *testing.T) {
	u := parseUnit(t, unitFile)
	const s = "Service"
	pre := u[s]["ExecStartPre"]
	for _, want := range []string{
		"+/usr/bin/install -d -o phoneboot -g phoneboot -m 0700 /sys/fs/bpf/phoneboot",
		// /sys/fs/bpf is 0700 root: without o+x the service user gets EACCES on its pins.
		"+/usr/bin/chmod o+x /sys/fs/bpf",
	} {
		if !slices.Contains(pre, want) {
			t.Errorf("ExecStartPre lacks %q (have %q)", want, pre)
		}
	}
	// The "-" is needed: ReadWritePaths= also applies to "+" commands, and the directory
	// does not exist before the first ExecStartPre (status=226/NAMESPACE otherwise).
	if rw := u.list(s, "ReadWritePaths"); !slices.Contains(rw, "-/sys/fs/bpf/phoneboot") {
		t.Errorf("ReadWritePaths = %v, want -/sys/fs/bpf/phoneboot", rw)
	}
	if got := u.one(t, s, "ProtectKernelTunables"); got != "yes" {
		t.Errorf("ProtectKernelTunables = %q, want yes", got)
	}
	// ProcSubset=pid would hide /proc/sys/net, which the daemon reads.
	if v, ok := u[s]["ProcSubset"]; ok {
		t.Errorf("ProcSubset = %q must stay unset", v)
	}
	// PrivateDevices=yes would hide /dev/i2c-* from the PoE backend.
	if v := u[s]["PrivateDevices"]; len(v) > 0 && v[len(v)-1] != "no" {
		t.Errorf("PrivateDevices = %q; use DevicePolicy=closed + DeviceAllow=char-i2c rw instead", v)
	}
	if got := u.one(t, s, "DevicePolicy"); got != "closed" {
		t.Errorf("DevicePolicy = %q, want closed", got)
	}
	if got := u.one(t, s, "DeviceAllow"); got != "char-i2c rw" {
		t.Errorf("DeviceAllow = %q, want char-i2c rw", got)
	}
}

func TestSysusersMatchesUnit(t *testing.T) {
	raw, err := os.ReadFile(sysusersFile)
	if err != nil {
		t.Fatal(err)
	}
	var entries [][]string
	for _, l := range strings.Split(string(raw), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		entries = append(entries, strings.Fields(l))
	}
	want := []string{"u", "phoneboot", "-", `"phoneboot`, `daemon"`, "/var/lib/phoneboot"}
	if len(entries) != 1 || !slices.Equal(entries[0], want) {
		t.Fatalf("%s entries = %q, want one line %q", sysusersFile, entries, strings.Join(want, " "))
	}
	u := parseUnit(t, unitFile)
	if got := u.one(t, "Service", "User"); got != entries[0][1] {
		t.Errorf("unit User=%q does not match sysusers user %q", got, entries[0][1])
	}
}
