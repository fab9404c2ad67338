package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/agent"
	"github.com/phoneboot/phoneboot/images"
	"github.com/phoneboot/phoneboot/userspace/cmsim"
	"github.com/phoneboot/phoneboot/userspace/control"
	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// agentBinary is phoneboot built once for the package's tests: the lab
// runs the real agent as a separate process, as `phoneboot lab` does.
var agentBinary string

func TestMain(m *testing.M) {
	// As root the tests run in a network namespace of their own, which
	// privtest.RunInNetNS starts this binary again in (the lab makes its
	// namespaces from there, and the phases' tests serve on its loopback,
	// never the machine's); the agent is built there, not twice.
	code := func() int {
		if os.Geteuid() == 0 && !privtest.InNetNS() {
			return privtest.RunInNetNS(m)
		}
		dir, err := os.MkdirTemp("", "pb-lab-bin-")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		if agentBinary, err = privtest.BuildPhoneboot(dir); err != nil {
			panic(err)
		}
		return privtest.RunInNetNS(m)
	}()
	os.Exit(code)
}

func testOptions(t *testing.T) Options {
	return Options{
		Phones:       24,
		Ports:        6,
		PowerPolicy:  "all",
		Stagger:      50 * time.Millisecond,
		StaggerPorts: 1,
		TimeScale:    0.01,
		Timeout:      time.Minute,
		ID:           vnet.UniqueName(""),
		AgentCommand: []string{agentBinary, "serve"},
		JSONPath:     filepath.Join(t.TempDir(), "report.json"),
		Out:          testWriter{t},
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// assertCleanedUp checks that nothing of lab id is left on the host.
func assertCleanedUp(t *testing.T, id string) {
	t.Helper()
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "pb"+id) {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
	if _, err := os.Stat("/run/phoneboot-lab-" + id); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run directory left behind: %v", err)
	}
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), "phoneboot-lab-"+id) {
		t.Errorf("lab bpffs still mounted")
	}
}

func TestLabStorm(t *testing.T) {
	privtest.Require(t)
	for _, noXDP := range []bool{false, true} {
		name := map[bool]string{false: "xdp", true: "userspace"}[noXDP]
		t.Run(name, func(t *testing.T) {
			o := testOptions(t)
			o.NoXDP = noXDP
			o.UpgradeFraction = 0.25 // 6 of the 24 phones fetch a new load
			o.HTMLPath = filepath.Join(t.TempDir(), "report.html")
			if !noXDP {
				o.VoiceVLANs = 3 // each phone's address is checked against its VLAN's pool
			}
			rep, err := Run(context.Background(), o)
			assertCleanedUp(t, o.ID)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Phones != 24 || rep.Ports != 6 || rep.Completed != 24 || rep.Failed != 0 || rep.Mode != name {
				t.Errorf("report = %+v", rep)
			}
			var names []string
			for _, p := range rep.Phases {
				names = append(names, p.Name)
				if p.Done != 24 || p.Failed != 0 {
					t.Errorf("phase %+v: want 24 done", p)
				}
				if !(p.P50ms <= p.P95ms && p.P95ms <= p.P99ms && p.P99ms <= p.MaxMs) {
					t.Errorf("phase %s percentiles out of order: %+v", p.Name, p)
				}
				if p.Name == "dhcp" && (rep.Series.LatencyMs["dhcp"][0] <= 0 || p.MaxMs > rep.WallSeconds*1000) {
					t.Errorf("dhcp wire times from %v to %v ms, in a storm of %.1f s", rep.Series.LatencyMs["dhcp"][0], p.MaxMs, rep.WallSeconds)
				}
				if n, m := len(rep.Series.PhaseDone[p.Name]), len(rep.Series.LatencyMs[p.Name]); n != p.Done || m != p.Done {
					t.Errorf("phase %s: %d completion times and %d latencies plotted, want %d", p.Name, n, m, p.Done)
				}
			}
			if !slices.Equal(names, []string{"power", "boot", "cdp", "dhcp", "config", "firmware", "register"}) {
				t.Errorf("phases %v", names)
			}
			if r := rep.registrations; r.Registered != 24 || r.Lost != 0 || r.ByCallManager != "cm1 24, cm2 0, cm3 0" {
				t.Errorf("registrations %+v; want the 24 phones registered on the first CallManager", r)
			}
			// One phone in 20 (index 19) is not in the inventory and takes
			// XMLDefault.cnf.xml; every load is 5 to 30 MB.
			if p := rep.provisioned; p.OwnConfig != 23 || p.DefaultConfig != 1 || p.Older != 6 || p.Upgraded != 6 ||
				p.Bytes < 6*5e6 || p.Bytes > 6*30e6 {
				t.Errorf("provisioning: %+v; want 23 phones on their own file, 1 on XMLDefault, 6 of 6 upgraded with 5-30 MB each", p)
			}
			if !noXDP {
				// The phones' interfaces send tagged (their NIC, the tagger,
				// tags macvlan traffic too), the agent's XDP untags it for
				// the bridge's stack, and its TC tags the answers: each phone
				// made at least 4 read requests and got 4 answers.
				c := rep.agentCounters
				if c["vlan_untagged"] < 24*4 || c["vlan_egress_tagged"] < 24*4 || c["vlan_egress_drop"] != 0 {
					t.Errorf("agent counters %v: want at least 96 frames untagged and 96 tagged, none dropped", c)
				}
			}
			if rep.PowerPolicy != "all" || rep.AllDoneSeconds <= 0 || rep.AllDoneSeconds > rep.WallSeconds || rep.PeakLoad.Samples == 0 {
				t.Errorf("power summary: policy %q, all done after %.3fs of %.3fs, %d load samples", rep.PowerPolicy, rep.AllDoneSeconds, rep.WallSeconds, rep.PeakLoad.Samples)
			}
			// The shortest model boots in 18 s; at time scale 0.01 with
			// -10% jitter no phone can boot in under 162 ms.
			if boot := rep.Phases[1]; boot.P50ms < 162 {
				t.Errorf("boot p50 %.1f ms is shorter than any model's scaled boot time", boot.P50ms)
			}
			checkJSONSchema(t, o.JSONPath)
			checkLoadSampled(t, rep.Series.Load, noXDP)
			page, err := os.ReadFile(o.HTMLPath)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range names {
				if !strings.Contains(string(page), "Latency of the "+p+" phase") {
					t.Errorf("HTML report has no latency chart for %s", p)
				}
			}
		})
	}
}

// checkJSONSchema holds the report file to the documented schema, key by
// key: a single run's, or with extra keys (a comparison's run has "label").
func checkJSONSchema(t *testing.T, path string, extra ...string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]any
	if err := json.Unmarshal(data, &top); err != nil {
		t.Fatal(err)
	}
	keys := func(m map[string]any) []string {
		var k []string
		for key := range m {
			k = append(k, key)
		}
		slices.Sort(k)
		return k
	}
	// A run without faults has no "faults" or "events".
	want := append([]string{"all_done_seconds", "completed", "failed", "failures", "integrity", "mode", "peak_load", "phases", "phones", "ports", "power_policy", "wall_seconds"}, extra...)
	slices.Sort(want)
	if got := keys(top); !reflect.DeepEqual(got, want) {
		t.Errorf("report keys %v, want %v", got, want)
	}
	integrity, _ := top["integrity"].(map[string]any)
	if got, want := keys(integrity), []string{"fast_path", "kernel_bindings", "kernel_queued", "phones", "problems", "store_leases", "violations"}; !reflect.DeepEqual(got, want) {
		t.Errorf("integrity keys %v, want %v", got, want)
	}
	if v, _ := integrity["violations"].(float64); v != 0 {
		t.Errorf("lease integrity: %v violations: %v", v, integrity["problems"])
	}
	phases, _ := top["phases"].([]any)
	if len(phases) == 0 {
		t.Fatal("no phases in the JSON report")
	}
	for _, p := range phases {
		pm, _ := p.(map[string]any)
		if got, want := keys(pm), []string{"done", "failed", "max_ms", "name", "p50_ms", "p95_ms", "p99_ms"}; !reflect.DeepEqual(got, want) {
			t.Errorf("phase keys %v, want %v", got, want)
		}
	}
	peak, _ := top["peak_load"].(map[string]any)
	if got, want := keys(peak), []string{"dhcp_backlog", "proxy_queued", "samples", "tftp_active"}; !reflect.DeepEqual(got, want) {
		t.Errorf("peak_load keys %v, want %v", got, want)
	}
	if _, ok := top["failures"].([]any); !ok {
		t.Errorf("failures is %T, want a list (empty, not null)", top["failures"])
	}
}

// TestLabFirmwareDamaged: a firmware file damaged after the agent checked
// its catalog fails the SHA-256 check of every phone that fetches it,
// which stops in the firmware phase; the others complete.
func TestLabFirmwareDamaged(t *testing.T) {
	privtest.Require(t)
	o := testOptions(t)
	o.Phones, o.Ports = 8, 4
	o.UpgradeFraction = 1
	o.damage = "rootfs88xx.14-2-1-0001-14.sbn"
	rep, err := Run(context.Background(), o)
	assertCleanedUp(t, o.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Phones take the models in models.yaml's order: four of the eight
	// are 88xx (CP-8811 to CP-8861), whose load has the damaged file.
	if rep.Completed != 4 || rep.Failed != 4 || rep.provisioned.Upgraded != 4 {
		t.Errorf("completed %d, failed %d, upgraded %d; want 4, 4, 4", rep.Completed, rep.Failed, rep.provisioned.Upgraded)
	}
	for _, f := range rep.Failures {
		if f.Phase != "firmware" || !strings.Contains(f.Error, o.damage+": sha256") {
			t.Errorf("failure %+v, want the sha256 check of %s", f, o.damage)
		}
	}
}

// TestLabRegisterFailover: the phones register through the agent's proxy
// (their files name it, at the appliance's address in their subnet), keep
// alive, and when the primary CallManager stops, register again, on the
// secondary, through the proxy.
func TestLabRegisterFailover(t *testing.T) {
	privtest.Require(t)
	o := testOptions(t)
	o.Phones, o.Ports = 8, 4
	o.VoiceVLANs = 2
	o.cmKeepAlive = time.Second
	o.beforeReport = func(ctx context.Context, l *lab) error {
		for _, ph := range l.phones {
			_, server, _, _ := voiceNet(int(ph.VoiceVLAN) - firstVoiceVLAN)
			if cms := ph.Config.CallManagers; len(cms) != 1 || cms[0].Host != server.String() || cms[0].SCCPPort != 2000 {
				t.Errorf("%s (VLAN %d): CallManagers %+v, want the proxy alone at %s:2000", ph.Name, ph.VoiceVLAN, cms, server)
			}
		}
		primary, secondary := l.cms[0], l.cms[1]
		for _, st := range primary.Stations() {
			if host, _, _ := net.SplitHostPort(st.Remote); host != applianceUplink.String() {
				t.Errorf("%s registered from %s, want the proxy at %s", st.Device, st.Remote, applianceUplink)
			}
		}
		// Keepalives: every phone sends one a second.
		if err := waitFor(ctx, func() bool { return primary.Stats().KeepAlives >= 8 }); err != nil {
			return fmt.Errorf("keepalives on the primary: %+v: %w", primary.Stats(), err)
		}
		if err := primary.SetMode(cmsim.Stopped); err != nil {
			return err
		}
		if err := waitFor(ctx, func() bool { return secondary.Registered() == 8 }); err != nil {
			return fmt.Errorf("phones on the secondary: %d: %w", secondary.Registered(), err)
		}
		return nil
	}
	rep, err := Run(context.Background(), o)
	assertCleanedUp(t, o.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Completed != 8 {
		t.Errorf("completed %d of 8", rep.Completed)
	}
	if r := rep.registrations; r.Registered != 16 || r.Lost != 8 || r.ByCallManager != "cm1 0, cm2 8, cm3 0" {
		t.Errorf("registrations %+v; want 8 lost on the primary and registered again on the secondary", r)
	}
}

// TestLabNoProxy: with the registration proxy off the phones' files name
// the CallManagers, and the phones register with them from their own
// addresses, through the appliance's routing.
func TestLabNoProxy(t *testing.T) {
	privtest.Require(t)
	o := testOptions(t)
	o.Phones, o.Ports = 8, 4
	o.VoiceVLANs = 2
	o.NoProxy = true
	o.beforeReport = func(ctx context.Context, l *lab) error {
		byIP := map[string]string{}
		for _, ph := range l.phones {
			byIP[ph.IP.String()] = ph.Name
			if cms := ph.Config.CallManagers; len(cms) == 0 || cms[0].Host != callManagerAddrs[0].String() {
				t.Errorf("%s: CallManagers %+v, want %s first", ph.Name, cms, callManagerAddrs[0])
			}
		}
		stations := l.cms[0].Stations()
		for _, st := range stations {
			host, _, _ := net.SplitHostPort(st.Remote)
			if byIP[host] != st.Device {
				t.Errorf("%s registered from %s, want from its own address", st.Device, st.Remote)
			}
		}
		if len(stations) != 8 {
			t.Errorf("%d phones registered with cm1, want 8", len(stations))
		}
		return nil
	}
	rep, err := Run(context.Background(), o)
	assertCleanedUp(t, o.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Completed != 8 {
		t.Errorf("completed %d of 8: %+v", rep.Completed, rep.Failures)
	}
}

// TestLabProxyWorkers: with the daemon's proxy in two worker processes
// (as the lab picks when the open-file limit is too low for one), every
// phone registers through them and the table lists them all.
func TestLabProxyWorkers(t *testing.T) {
	privtest.Require(t)
	o := testOptions(t)
	o.Phones, o.Ports = 40, 8
	o.ProxyWorkers = 2
	o.beforeReport = func(ctx context.Context, l *lab) error {
		cfg := l.daemonConfig()
		if cfg.Proxy.Workers != 2 {
			t.Errorf("daemon config proxy.workers %d, want 2", cfg.Proxy.Workers)
		}
		workers := 0
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", l.agent.Process.Pid))
		for _, f := range tasks {
			b, _ := os.ReadFile(f)
			for _, pid := range strings.Fields(string(b)) {
				if cmdline, err := os.ReadFile("/proc/" + pid + "/cmdline"); err == nil && strings.Contains(string(cmdline), "proxy-worker") {
					workers++
				}
			}
		}
		if workers != 2 {
			t.Errorf("the agent runs %d proxy workers, want 2", workers)
		}
		rows, err := control.NewClient(filepath.Join(l.runDir, "control.sock")).Registrations(ctx)
		if err != nil {
			return err
		}
		registered := 0
		for _, r := range rows {
			if r.State == "registered" {
				registered++
			}
		}
		if registered != 40 {
			t.Errorf("%d registered of %d rows, want 40", registered, len(rows))
		}
		return nil
	}
	rep, err := Run(context.Background(), o)
	assertCleanedUp(t, o.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Completed != 40 || rep.Failed != 0 {
		t.Errorf("completed %d, failed %d of 40: %+v", rep.Completed, rep.Failed, rep.Failures)
	}
}

// fitHardLimit: a storm one daemon process cannot proxy within the hard
// open-file limit gets as many proxy workers as it needs; the lab refuses
// only what its own process cannot hold, or a number of workers chosen
// too small.
func TestFitHardLimit(t *testing.T) {
	for _, tt := range []struct {
		name    string
		o       Options
		hard    uint64
		workers int
		err     string
	}{
		{"one process holds it", Options{Phones: 5000}, 20000, 1, ""},
		{"9,488 phones in one", Options{Phones: 9488}, 20000, 1, ""},
		{"10,000 phones need two", Options{Phones: 10000}, 20000, 2, ""},
		{"15,000 phones need two", Options{Phones: 15000}, 20000, 2, ""},
		{"three", Options{Phones: 40000}, 45000, 3, ""},
		{"forced", Options{Phones: 100, ProxyWorkers: 4}, 20000, 4, ""},
		{"forced too few", Options{Phones: 10000, ProxyWorkers: 1}, 20000, 0, "run with --proxy-workers 0"},
		{"without the proxy", Options{Phones: 15000, NoProxy: true}, 20000, 1, ""},
		{"the lab's own limit", Options{Phones: 1000}, 3000, 0, "open files in the lab"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n, err := fitHardLimit(tt.o, tt.hard)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %d, %v; want an error with %q", n, err, tt.err)
				}
				return
			}
			if err != nil || n != tt.workers {
				t.Errorf("got %d, %v; want %d workers", n, err, tt.workers)
			}
			if !tt.o.NoProxy && proxyProcessFiles(tt.o.Phones, n) > tt.hard {
				t.Errorf("%d workers need %d files each, above %d", n, proxyProcessFiles(tt.o.Phones, n), tt.hard)
			}
		})
	}
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func TestLabStaggerPacesPower(t *testing.T) {
	privtest.Require(t)
	o := testOptions(t)
	o.Phones, o.Ports = 8, 8
	o.PowerPolicy = "stagger"
	o.StaggerPorts = 2
	o.Stagger = 100 * time.Millisecond
	rep, err := Run(context.Background(), o)
	assertCleanedUp(t, o.ID)
	if err != nil {
		t.Fatal(err)
	}
	// 8 ports, 2 per step: the last pair is powered 3 steps after the first.
	if power := rep.Phases[0]; power.MaxMs < 300 {
		t.Errorf("power max %.1f ms: stagger of 2 ports per 100ms must take at least 300 ms for 8 ports", power.MaxMs)
	}
	if rep.Completed != 8 {
		t.Errorf("completed %d of 8", rep.Completed)
	}
}

// TestLabAdaptive: the adaptive policy powers every port and reports the
// load it paced by. A DHCP backlog threshold of 1 holds a step whenever the
// Go server has a request in hand (the storm runs without the fast path,
// so every request is Go's).
func TestLabAdaptive(t *testing.T) {
	privtest.Require(t)
	o := testOptions(t)
	o.Phones, o.Ports = 16, 8
	o.NoXDP = true
	o.PowerPolicy = "adaptive"
	o.StaggerPorts = 2
	o.Stagger = 20 * time.Millisecond
	o.Adaptive = &agent.AdaptiveConfig{DHCPBacklog: 1, MaxHold: agent.Duration(time.Second)}
	rep, err := Run(context.Background(), o)
	assertCleanedUp(t, o.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Completed != 16 || rep.PowerPolicy != "adaptive" || rep.PeakLoad.Samples == 0 {
		t.Errorf("report %+v", rep)
	}
	// 8 ports, 2 per step: 3 steps after the first, each 20 ms after the
	// last (longer while a step is held), so the power-ups span about 60
	// ms, counted from the first port powered (adaptive starts only once
	// the daemon is up); 50 leaves the lab PSE's detection its jitter (a
	// run measured 59.99). Everything at once would span a few ms.
	if done := rep.Series.PhaseDone["power"]; len(done) != 16 || done[15]-done[0] < 0.050 {
		t.Errorf("ports powered at %v s: 4 steps 20 ms apart span about 60 ms", done)
	}
	checkJSONSchema(t, o.JSONPath)
}

func TestReportPowerSummary(t *testing.T) {
	rep := Report{Phones: 3, Completed: 3, PowerPolicy: "stagger", AllDoneSeconds: 4.25,
		PeakLoad: PeakLoad{DHCPBacklog: 12, TFTPActive: 30, ProxyQueued: 2, Samples: 420}}
	var b strings.Builder
	rep.writePowerSummary(&b)
	if want := "power policy stagger: every phone done after 4.2s; peak load: DHCP backlog 12, TFTP transfers 30, proxy queue 2 (420 samples)\n"; b.String() != want {
		t.Errorf("summary %q, want %q", b.String(), want)
	}
	rep.Completed = 2
	b.Reset()
	rep.writePowerSummary(&b)
	if !strings.Contains(b.String(), "not every phone completed") {
		t.Errorf("summary with a failed phone: %q", b.String())
	}
}

func TestLabInterrupted(t *testing.T) {
	privtest.Require(t)
	o := testOptions(t)
	o.Phones, o.Ports = 4, 2
	o.TimeScale = 1 // real boot times: 18 s and more
	ctx, cancel := context.WithCancelCause(context.Background())
	// Late enough for the agent to be up (loading and verifying the XDP
	// program takes seconds on a busy machine), early enough that no phone
	// (18 s and more, -10%) has booted.
	time.AfterFunc(8*time.Second, func() { cancel(errors.New("operator pressed Ctrl-C")) })
	rep, err := Run(ctx, o)
	assertCleanedUp(t, o.ID)
	if err == nil || !strings.Contains(err.Error(), "Ctrl-C") {
		t.Fatalf("Run: %v, want the interruption", err)
	}
	if rep.Failed != 4 || rep.Completed != 0 {
		t.Errorf("report after interrupt: %+v", rep)
	}
	for _, f := range rep.Failures {
		if f.Phase != "boot" || !strings.HasPrefix(f.Phone, "SEP") {
			t.Errorf("failure %+v, want each phone failed in boot", f)
		}
	}
}

func TestLabAgentFailsToStart(t *testing.T) {
	privtest.Require(t)
	o := testOptions(t)
	o.Phones, o.Ports = 2, 2
	o.AgentCommand = []string{agentBinary, "serve", "--no-such-flag"}
	_, err := Run(context.Background(), o)
	assertCleanedUp(t, o.ID)
	if err == nil || !strings.Contains(err.Error(), "agent exited before it was ready") || !strings.Contains(err.Error(), "no-such-flag") {
		t.Fatalf("Run: %v, want the agent's failure and its log", err)
	}
}

func TestOptionsValidation(t *testing.T) {
	base := Options{Phones: 10, PowerPolicy: "all", StaggerPorts: 1, TimeScale: 0.1, Timeout: time.Minute}
	tests := []struct {
		name   string
		modify func(*Options)
		want   string
	}{
		{"no phones", func(o *Options) { o.Phones = 0 }, "--phones 0: must be 1 to 100000"},
		{"too many phones", func(o *Options) { o.Phones = 100001 }, "--phones 100001: must be 1 to 100000"},
		{"more ports than phones", func(o *Options) { o.Ports = 11 }, "--ports 11: more ports than --phones 10"},
		{"negative ports", func(o *Options) { o.Ports = -1 }, "--ports -1: must be 1 to 1024"},
		{"bad policy", func(o *Options) { o.PowerPolicy = "random" }, `--power-policy "random": must be all, stagger or adaptive`},
		{"negative threshold", func(o *Options) { o.Adaptive = &agent.AdaptiveConfig{DHCPBacklog: -1} }, "--adaptive-* thresholds must not be negative"},
		{"zero time scale", func(o *Options) { o.TimeScale = 0 }, "--time-scale 0: must be above 0"},
		{"negative stagger", func(o *Options) { o.Stagger = -time.Second }, "--stagger -1s: must be 0 to 1m"},
		{"zero stagger ports", func(o *Options) { o.StaggerPorts = 0 }, "--stagger-ports 0: must be at least 1"},
		{"bad id", func(o *Options) { o.ID = "../x" }, `lab id "../x"`},
		{"tagged baseline", func(o *Options) { o.Baseline, o.VoiceVLANs = true, 2 }, "--voice-vlans 2 with --baseline"},
		{"negative upgrade fraction", func(o *Options) { o.UpgradeFraction = -0.1 }, "--upgrade-fraction -0.1: must be 0 to 1"},
		{"upgrade fraction above 1", func(o *Options) { o.UpgradeFraction = 1.5 }, "--upgrade-fraction 1.5: must be 0 to 1"},
		{"negative proxy workers", func(o *Options) { o.ProxyWorkers = -1 }, "--proxy-workers -1: must be 0 to 64"},
		{"too many proxy workers", func(o *Options) { o.ProxyWorkers = 65 }, "--proxy-workers 65: must be 0 to 64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base
			tt.modify(&o)
			err := o.normalize()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
	o := base
	if err := o.normalize(); err != nil {
		t.Fatal(err)
	}
	if o.Ports != 10 {
		t.Errorf("default ports for 10 phones = %d, want 10", o.Ports)
	}
	o = base
	o.Phones = 1000
	if err := o.normalize(); err != nil || o.Ports != 48 {
		t.Errorf("default ports for 1000 phones = %d (%v), want 48", o.Ports, err)
	}
}

func TestPercentiles(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var d []time.Duration
		for _, x := range v {
			d = append(d, time.Duration(x)*time.Millisecond)
		}
		return d
	}
	var hundred []time.Duration
	for i := 1; i <= 100; i++ {
		hundred = append(hundred, time.Duration(i)*time.Millisecond)
	}
	tests := []struct {
		in   []time.Duration
		p    float64
		want float64
	}{
		{nil, 50, 0},
		{ms(7), 50, 7},
		{ms(7), 99, 7},
		{ms(1, 2), 50, 1},
		{ms(1, 2), 51, 2},
		{hundred, 50, 50},
		{hundred, 95, 95},
		{hundred, 99, 99},
		{hundred, 100, 100},
	}
	for _, tt := range tests {
		if got := percentileMs(tt.in, tt.p); got != tt.want {
			t.Errorf("percentile %v of %v = %v, want %v", tt.p, tt.in, got, tt.want)
		}
	}
}

func TestPhoneIdentity(t *testing.T) {
	seen := map[string]bool{}
	for i := range 5000 {
		ph := newPhone(i, modelsForTest[i%len(modelsForTest)], nil, 1)
		if len(ph.Name) != 15 || !strings.HasPrefix(ph.Name, "SEP") || strings.ToUpper(ph.Name) != ph.Name {
			t.Fatalf("phone %d name %q is not SEP + 12 upper-case hex digits", i, ph.Name)
		}
		if seen[ph.Name] {
			t.Fatalf("phone %d repeats name %s", i, ph.Name)
		}
		seen[ph.Name] = true
		if ph.MAC[0]&1 != 0 {
			t.Fatalf("phone %d has a multicast MAC %s", i, ph.MAC)
		}
	}
}

var modelsForTest = func() []images.Model {
	m, err := images.Models()
	if err != nil {
		panic(err)
	}
	return m
}()

func TestPickUpgraders(t *testing.T) {
	phones := make([]*Phone, 1000)
	for i := range phones {
		phones[i] = newPhone(i, modelsForTest[i%len(modelsForTest)], nil, 1)
	}
	for _, tt := range []struct {
		fraction float64
		want     int
	}{{0, 0}, {0.1, 100}, {0.0004, 0}, {0.0005, 1}, {1, 1000}} {
		got := pickUpgraders(phones, tt.fraction, 7)
		seen := map[*Phone]bool{}
		for _, ph := range got {
			seen[ph] = true
		}
		if len(got) != tt.want || len(seen) != tt.want {
			t.Errorf("fraction %v: %d phones (%d distinct), want %d", tt.fraction, len(got), len(seen), tt.want)
		}
	}
	a, b := pickUpgraders(phones, 0.1, 7), pickUpgraders(phones, 0.1, 7)
	if !slices.Equal(a, b) {
		t.Error("the same seed picks other phones")
	}
	if c := pickUpgraders(phones, 0.1, 8); slices.Equal(a, c) {
		t.Error("another seed picks the same phones")
	}
}

// checkLoadSampled: the lab sampled the agent's counters during the storm,
// and the DHCP answers show up on the path that gave them.
func checkLoadSampled(t *testing.T, load []LoadSample, noXDP bool) {
	t.Helper()
	var fast, slow, power float64
	for _, s := range load {
		fast, slow, power = max(fast, s.DHCPFastPerS), max(slow, s.DHCPGoPerS), max(power, s.PowerW)
	}
	if len(load) < 2 || power <= 0 {
		t.Errorf("%d load samples, peak power %.1f W; want samples and power drawn", len(load), power)
	}
	if noXDP && (fast != 0 || slow <= 0) {
		t.Errorf("without XDP: peak fast path %.0f/s, Go %.0f/s; want only Go answers", fast, slow)
	}
	if !noXDP && fast <= 0 {
		t.Errorf("with XDP: no fast-path answers sampled (Go %.0f/s)", slow)
	}
}
