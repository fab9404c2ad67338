package doctor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/fastpath"

	"github.com/phoneboot/phoneboot/userspace/privtest"
)

func TestPrintGolden(t *testing.T) {
	results := []Result{
		{Name: "kernel", Status: StatusPass, Detail: "6.18.44-fc-v782", Hint: "not shown for a pass"},
		{Name: "bpffs", Status: StatusFail, Detail: "/sys/fs/bpf is not a bpf filesystem", Hint: "mount -t bpf bpf /sys/fs/bpf"},
		{Name: "capabilities", Status: StatusWarn, Detail: "first line\nsecond line", Hint: "one\ntwo"},
		{Name: "xdp-generic", Status: StatusPass},
		{Name: "bpf-load", Status: StatusFail, Detail: "boom"},
	}
	const want = "" +
		"CHECK         STATUS  DETAIL\n" +
		"kernel        pass    6.18.44-fc-v782\n" +
		"bpffs         fail    /sys/fs/bpf is not a bpf filesystem\n" +
		"              hint: mount -t bpf bpf /sys/fs/bpf\n" +
		"capabilities  warn    first line\n" +
		"                      second line\n" +
		"              hint: one\n" +
		"                    two\n" +
		"xdp-generic   pass\n" +
		"bpf-load      fail    boom\n" +
		"2 passed, 2 failed, 1 warnings\n"
	var b bytes.Buffer
	Print(&b, results)
	if got := b.String(); got != want {
		t.Errorf("Print output differs.\ngot:\n%s\nwant:\n%s", got, want)
	}
}

func TestPrintEmpty(t *testing.T) {
	var b bytes.Buffer
	Print(&b, nil)
	if want := "CHECK  STATUS  DETAIL\n0 passed, 0 failed, 0 warnings\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

func TestFailed(t *testing.T) {
	cases := []struct {
		in   []Status
		want bool
	}{
		{nil, false},
		{[]Status{StatusPass, StatusWarn}, false},
		{[]Status{StatusPass, StatusFail}, true},
		{[]Status{"bogus"}, true},
	}
	for _, c := range cases {
		var rs []Result
		for _, s := range c.in {
			rs = append(rs, Result{Name: "x", Status: s})
		}
		if got := Failed(rs); got != c.want {
			t.Errorf("Failed(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestParseKernelVersion(t *testing.T) {
	cases := []struct {
		release      string
		major, minor int
		ok           bool
		status       Status
	}{
		{"6.18.44-fc-v782", 6, 18, true, StatusPass},
		{"5.10.0-28-amd64", 5, 10, true, StatusWarn},
		{"5.11.0", 5, 11, true, StatusPass},
		{"4.19.0", 4, 19, true, StatusFail},
		{"5.9", 5, 9, true, StatusFail},
		{"10.0-rc1", 10, 0, true, StatusPass},
		{"", 0, 0, false, StatusFail},
		{"garbage", 0, 0, false, StatusFail},
		{"5", 0, 0, false, StatusFail},
		{"5.x.1", 0, 0, false, StatusFail},
		{"v6.1.0", 0, 0, false, StatusFail},
		{"99999999999999999999.1", 0, 0, false, StatusFail},
	}
	for _, c := range cases {
		major, minor, err := parseKernelVersion(c.release)
		if (err == nil) != c.ok {
			t.Errorf("parseKernelVersion(%q) error = %v, want ok=%v", c.release, err, c.ok)
			continue
		}
		if c.ok && (major != c.major || minor != c.minor) {
			t.Errorf("parseKernelVersion(%q) = %d.%d, want %d.%d", c.release, major, minor, c.major, c.minor)
		}
		r := kernelResult(c.release)
		if r.Name != CheckKernel || r.Status != c.status {
			t.Errorf("kernelResult(%q) = %+v, want status %s", c.release, r, c.status)
		}
		if c.ok && !strings.Contains(r.Detail, c.release) {
			t.Errorf("kernelResult(%q).Detail = %q, should show the release", c.release, r.Detail)
		}
		if r.Status != StatusPass && r.Hint == "" {
			t.Errorf("kernelResult(%q) has no hint", c.release)
		}
	}
}

func TestParseCapEff(t *testing.T) {
	const all = "CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_NET_RAW CAP_NET_BIND_SERVICE"
	cases := []struct {
		status  string
		ok      bool
		missing string // space-separated; "" means none
	}{
		// root on a modern kernel: bits 0..40
		{"Name:\tdoctor\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n", true, ""},
		// exactly the five required: 39, 38, 13, 12, 10
		{"CapEff:\t000000c000003400\n", true, ""},
		// the four without CAP_PERFMON
		{"CapEff:\t0000008000003400\n", true, "CAP_PERFMON"},
		// root on a kernel before CAP_BPF and CAP_PERFMON existed (bits 0..37)
		{"CapEff:\t0000003fffffffff", true, "CAP_BPF CAP_PERFMON"},
		// net admin and net raw only
		{"CapEff: 0000000000003000\n", true, "CAP_BPF CAP_PERFMON CAP_NET_BIND_SERVICE"},
		// an ordinary user
		{"CapEff:\t0000000000000000\n", true, all},
		{"CapEff:\tzzzz\n", false, ""},
		{"CapEff:\t\n", false, ""},
		{"CapEff:\t10000000000000000\n", false, ""}, // overflows 64 bits
		{"CapPrm:\t000001ffffffffff\n", false, ""},
		{"", false, ""},
	}
	for _, c := range cases {
		eff, err := parseCapEff(c.status)
		if (err == nil) != c.ok {
			t.Errorf("parseCapEff(%q) error = %v, want ok=%v", c.status, err, c.ok)
			continue
		}
		if !c.ok {
			continue
		}
		missing := strings.Join(missingCaps(eff), " ")
		if missing != c.missing {
			t.Errorf("parseCapEff(%q): missing %q, want %q", c.status, missing, c.missing)
		}
		r := capsResult(eff)
		if c.missing == "" {
			if r.Status != StatusPass {
				t.Errorf("capsResult(%#x) = %+v, want pass", eff, r)
			}
			continue
		}
		if r.Status != StatusFail || r.Detail != "missing "+c.missing || !strings.Contains(r.Hint, "AmbientCapabilities") {
			t.Errorf("capsResult(%#x) = %+v", eff, r)
		}
	}
}

func TestOneLine(t *testing.T) {
	err := errors.Join(errors.New("create netns x: operation not permitted"), errors.New("operation not permitted"), errors.New("operation not permitted"))
	if got, want := oneLine(err), "create netns x: operation not permitted; operation not permitted"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestFirstLines(t *testing.T) {
	if got := firstLines("a\nb\n", 2); got != "a\nb" {
		t.Errorf("got %q", got)
	}
	if got := firstLines("a\nb\nc\nd", 2); got != "a\nb\n... (2 more lines)" {
		t.Errorf("got %q", got)
	}
}

func TestRunStageTimeoutAndPanic(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	ctx := context.Background()

	start := time.Now()
	res := runStage(ctx, quietLog(), stage{
		names: []string{"a", "b"},
		limit: 50 * time.Millisecond,
		run: func(ctx context.Context, report func(Result)) {
			report(Result{Name: "a", Status: StatusPass})
			<-release // hangs past its limit, ignoring ctx
			report(Result{Name: "b", Status: StatusPass})
		},
	})
	if time.Since(start) > 2*time.Second {
		t.Errorf("runStage waited %v for a hanging stage", time.Since(start))
	}
	if len(res) != 2 || res[0].Status != StatusPass || res[1].Status != StatusFail ||
		!strings.Contains(res[1].Detail, "timed out") || res[1].Hint == "" {
		t.Errorf("hanging stage: %+v", res)
	}

	res = runStage(ctx, quietLog(), stage{
		names: []string{"a", "b"},
		limit: time.Second,
		run: func(ctx context.Context, report func(Result)) {
			report(Result{Name: "a", Status: StatusPass})
			panic("kaboom")
		},
	})
	if res[0].Status != StatusPass || res[1].Status != StatusFail || !strings.Contains(res[1].Detail, "kaboom") {
		t.Errorf("panicking stage: %+v", res)
	}

	res = runStage(ctx, quietLog(), stage{
		names: []string{"a"},
		limit: time.Second,
		run: func(ctx context.Context, report func(Result)) {
			report(Result{Name: "a", Status: StatusPass})
			report(Result{Name: "a", Status: StatusFail, Detail: "cleanup failed", Hint: "h"})
		},
	})
	if res[0].Status != StatusFail || res[0].Detail != "cleanup failed" {
		t.Errorf("a later report should replace an earlier one: %+v", res)
	}
}

func TestRunCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	res := Run(ctx, Options{})
	if d := time.Since(start); d > time.Second {
		t.Errorf("Run with a canceled context took %v", d)
	}
	if got, want := names(res), allChecks(); !slices.Equal(got, want) {
		t.Fatalf("checks %v, want %v", got, want)
	}
	for _, r := range res {
		if r.Status != StatusFail || !strings.HasPrefix(r.Detail, "not run") || r.Hint == "" {
			t.Errorf("%+v", r)
		}
	}
	if !Failed(res) {
		t.Error("Failed = false")
	}
}

func TestBPFFSNotMounted(t *testing.T) {
	dir := t.TempDir()
	r := checkBPFFS(dir)
	if r.Status != StatusFail || !strings.Contains(r.Hint, "mount -t bpf bpf "+dir) {
		t.Errorf("plain directory: %+v", r)
	}
	r = checkBPFFS(dir + "/nope")
	if r.Status != StatusFail || !strings.Contains(r.Detail, "does not exist") {
		t.Errorf("missing directory: %+v", r)
	}
}

// TestRunPrivileged runs every check on this machine: all must pass (or
// warn), within the time budget, leaving no namespace and no XDP program
// behind.
func TestRunPrivileged(t *testing.T) {
	privtest.Require(t)
	xdpBefore := hostXDP(t)

	start := time.Now()
	res := Run(context.Background(), Options{BPFFS: testBPFFS(t), Log: quietLog()})
	took := time.Since(start)

	var b bytes.Buffer
	Print(&b, res)
	t.Logf("doctor took %v:\n%s", took, b.String())
	if took > 10*time.Second {
		t.Errorf("Run took %v, want at most 10s", took)
	}
	if got, want := names(res), allChecks(); !slices.Equal(got, want) {
		t.Errorf("checks %v, want %v", got, want)
	}
	for _, r := range res {
		if r.Status != StatusPass && r.Status != StatusWarn {
			t.Errorf("check %s: %s: %s (hint: %s)", r.Name, r.Status, r.Detail, r.Hint)
		}
	}
	if Failed(res) {
		t.Error("Failed = true")
	}
	// Only this run's namespace is checked: a doctor running at the same
	// time in another package's tests may have one of its own.
	var used string
	for _, r := range res {
		if r.Name == CheckNetns {
			used = nsPrefixed.FindString(r.Detail)
		}
	}
	if used == "" {
		t.Errorf("the %s check names no namespace", CheckNetns)
	} else if slices.Contains(doctorNamespaces(t), used) {
		t.Errorf("doctor left its namespace %s", used)
	}
	if after := hostXDP(t); !slices.Equal(xdpBefore, after) {
		t.Errorf("host XDP attachments before %v, after %v", xdpBefore, after)
	}
}

// testBPFFS returns /sys/fs/bpf when it is bpffs. Otherwise (a machine
// where nothing mounted it, which doctor rightly reports as a failure) it
// mounts a private bpffs on a temporary directory for the test's duration,
// leaving /sys/fs/bpf alone.
func testBPFFS(t *testing.T) string {
	t.Helper()
	if ok, _ := fastpath.IsBPFFS(DefaultBPFFS); ok {
		return DefaultBPFFS
	}
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount a test bpffs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount test bpffs %s: %v", dir, err)
		}
	})
	t.Logf("%s is not bpffs here; using a private bpffs on %s", DefaultBPFFS, dir)
	return dir
}

func allChecks() []string {
	return []string{CheckKernel, CheckBTF, CheckBPFFS, CheckCapabilities, CheckBPFLoad, CheckNetns, CheckXDPNative, CheckXDPGeneric}
}

func names(rs []Result) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Name)
	}
	return out
}

// nsPrefixed finds the name of doctor's namespace in a check's detail.
var nsPrefixed = regexp.MustCompile(`\b` + nsPrefix + `[0-9a-f]+\b`)

// doctorNamespaces lists the named namespaces doctor would create.
func doctorNamespaces(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), nsPrefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// hostXDP describes the XDP state of the host namespace's interfaces.
func hostXDP(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		a := l.Attrs()
		if x := a.Xdp; x != nil && x.Attached {
			out = append(out, fmt.Sprintf("%s(%d) mode %d prog %d", a.Name, a.Index, x.AttachMode, x.ProgId))
		}
	}
	slices.Sort(out)
	return out
}

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }
