package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/agent"
	"github.com/phoneboot/phoneboot/userspace/lease"
	"github.com/phoneboot/phoneboot/userspace/privtest"
)

func TestParseVariants(t *testing.T) {
	tests := []struct {
		list string
		want []string
		err  string
	}{
		{"xdp,no-xdp,all,stagger,adaptive,baseline", []string{"xdp", "no-xdp", "all", "stagger", "adaptive", "baseline"}, ""},
		{" xdp , baseline ", []string{"xdp", "baseline"}, ""},
		{"no-xdp+stagger,baseline+stagger", []string{"no-xdp+stagger", "baseline+stagger"}, ""},
		{"xdp", nil, "at least two variants"},
		{"xdp,,baseline", nil, "an empty variant"},
		{"xdp,xdp", nil, "xdp twice"},
		{"xdp,fast", nil, `unknown variant "fast"`},
		{"xdp+no-xdp,baseline", nil, "combines xdp and no-xdp"},
		{"baseline+xdp,all", nil, "combines baseline and xdp"},
		{"all+stagger,xdp", nil, "combines all and stagger"},
	}
	for _, tt := range tests {
		got, err := ParseVariants(tt.list)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseVariants(%q) = %v, %v; want error %q", tt.list, got, err, tt.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("ParseVariants(%q) = %v, %v; want %v", tt.list, got, err, tt.want)
		}
	}
}

func TestVariantOptions(t *testing.T) {
	base := Options{PowerPolicy: "all", VoiceVLANs: 4, NoXDP: true}
	for _, tt := range []struct {
		variant string
		want    Options
	}{
		{"xdp", Options{PowerPolicy: "all", VoiceVLANs: 4}},
		{"no-xdp", Options{PowerPolicy: "all", NoXDP: true}},
		{"stagger", Options{PowerPolicy: "stagger", NoXDP: true}}, // the base's --no-xdp: untagged
		{"xdp+adaptive", Options{PowerPolicy: "adaptive", VoiceVLANs: 4}},
		{"baseline", Options{PowerPolicy: "all", NoXDP: true, Baseline: true}},
	} {
		if got := variantOptions(base, tt.variant); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: %+v, want %+v", tt.variant, got, tt.want)
		}
	}
}

// comparedRuns are a comparison's reports as the lab makes them, with the
// figures the summary is computed from.
func comparedRuns() []Report {
	mk := func(label, mode string, storm, dhcpP99 float64, completed int) Report {
		return Report{Label: label, Mode: mode, Phones: 100, Ports: 8, PowerPolicy: "all", Completed: completed,
			Failed: 100 - completed, AllDoneSeconds: storm, WallSeconds: storm + 0.01,
			Phases: []PhaseReport{{Name: "power", P99ms: 5}, {Name: "dhcp", P50ms: dhcpP99 / 2, P99ms: dhcpP99}}}
	}
	runs := []Report{
		mk("xdp", "xdp", 10, 1.5, 100),
		mk("no-xdp", "userspace", 12, 40, 100),
		mk("stagger", "xdp", 30, 1, 99),
		mk("baseline", "baseline", 25, 30, 100),
	}
	runs[0].PeakLoad = PeakLoad{TFTPActive: 47, ProxyQueued: 3, Samples: 200}
	runs[1].PeakLoad = PeakLoad{DHCPBacklog: 20, TFTPActive: 51, Samples: 240}
	return runs
}

func TestWriteComparison(t *testing.T) {
	var b strings.Builder
	if err := WriteComparison(&b, comparedRuns()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Log("\n" + out)
	for _, want := range []string{
		"xdp: storm time 0.40× (target met), DHCP p99 0.050× (target met)",
		"no-xdp: storm time 0.48× (target met), DHCP p99 1.333× (no target without XDP)",
		"stagger: no ratio, not every phone completed in both runs",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q", want)
		}
	}
	// The table: storm time per run, "-" for an incomplete one, the DHCP
	// p99, and the peak DHCP backlog, TFTP transfers and proxy queue.
	for _, want := range [][]string{
		{"xdp", "10.0", "1.5", "0", "47", "3"}, {"no-xdp", "12.0", "40.0", "20", "51", "0"},
		{"stagger", "-", "1.0", "0", "0", "0"}, {"baseline", "25.0", "30.0", "0", "0", "0"},
	} {
		found := false
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) > 4 && f[0] == want[0] && slices.Contains(f, want[1]) && slices.Equal(f[len(f)-4:], want[2:]) {
				found = true
			}
		}
		if !found {
			t.Errorf("no table row %v", want)
		}
	}
	runs := comparedRuns()
	runs[0].Phases[1].P99ms = 3.5 // 3.5/30 is above a tenth
	runs[0].AllDoneSeconds = 20
	b.Reset()
	WriteComparison(&b, runs)
	if !strings.Contains(b.String(), "xdp: storm time 0.80× (target NOT met), DHCP p99 0.117× (target NOT met)") {
		t.Errorf("missed targets not reported:\n%s", b.String())
	}
	b.Reset()
	WriteComparison(&b, runs[:2])
	if strings.Contains(b.String(), "against the baseline") {
		t.Errorf("ratios without a baseline run:\n%s", b.String())
	}
}

func TestComparisonHTMLRows(t *testing.T) {
	var b strings.Builder
	if err := WriteHTML(&b, "compare", time.Now(), comparedRuns()); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, want := range []string{
		"<td>storm time / baseline&#39;s (target ≤ 0.5)</td><td>0.400</td><td>0.480</td><td>—</td><td>1</td>",
		"<td>DHCP p99 / baseline&#39;s (target ≤ 0.1 with XDP)</td><td>0.050</td><td>1.333</td><td>—</td><td>1</td>",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

// TestKeaConfig: the lab's pool becomes a Kea subnet with the same range,
// lease time and options, and Kea itself accepts the config.
func TestKeaConfig(t *testing.T) {
	subnet, server, first, last := voiceNet(0)
	pools := []agent.DHCPPoolConfig{{
		Name: "lab", Subnet: subnet, RangeStart: first, RangeEnd: last, ServerIP: server,
		Routers: []netip.Addr{server}, TFTPServers: []netip.Addr{server, netip.MustParseAddr("10.64.0.2")},
		DNS: []netip.Addr{netip.MustParseAddr("10.0.0.53")}, Domain: "lab.example",
		LeaseTime: agent.Duration(time.Hour), T1: agent.Duration(30 * time.Minute),
	}}
	dir := t.TempDir()
	data, err := keaConfig(pools, "sw0", filepath.Join(dir, "leases.csv"), filepath.Join(dir, "kea.log"), filepath.Join(dir, "kea.sock"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Dhcp4 struct {
			Interfaces struct {
				Interfaces []string `json:"interfaces"`
				SocketType string   `json:"dhcp-socket-type"`
			} `json:"interfaces-config"`
			Leases struct {
				Type    string `json:"type"`
				Persist bool   `json:"persist"`
			} `json:"lease-database"`
			Subnets []struct {
				Subnet string `json:"subnet"`
				Pools  []struct {
					Pool string `json:"pool"`
				} `json:"pools"`
				Valid   int                           `json:"valid-lifetime"`
				Renew   int                           `json:"renew-timer"`
				Rebind  int                           `json:"rebind-timer"`
				Options []struct{ Name, Data string } `json:"option-data"`
			} `json:"subnet4"`
		}
	}
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	d := c.Dhcp4
	if !slices.Equal(d.Interfaces.Interfaces, []string{"sw0/10.64.0.1"}) || d.Interfaces.SocketType != "raw" ||
		d.Leases.Type != "memfile" || !d.Leases.Persist || len(d.Subnets) != 1 {
		t.Fatalf("config %+v", d)
	}
	sn := d.Subnets[0]
	if sn.Subnet != "10.64.0.0/13" || len(sn.Pools) != 1 || sn.Pools[0].Pool != "10.64.0.10 - 10.71.255.250" ||
		sn.Valid != 3600 || sn.Renew != 1800 || sn.Rebind != 0 {
		t.Errorf("subnet %+v", sn)
	}
	opts := map[string]string{}
	for _, o := range sn.Options {
		opts[o.Name] = o.Data
	}
	want := map[string]string{"routers": "10.64.0.1", "tftp-server-address": "10.64.0.1, 10.64.0.2",
		"domain-name-servers": "10.0.0.53", "domain-name": "lab.example"}
	if !reflect.DeepEqual(opts, want) {
		t.Errorf("options %v, want %v", opts, want)
	}

	pools[0].Reservations = []agent.DHCPReservation{{IP: first}}
	if _, err := keaConfig(pools, "sw0", "l", "k", "s"); err == nil {
		t.Error("a pool with reservations was carried over without them")
	}

	kea, err := lookSbin("kea-dhcp4")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("kea-dhcp4 is missing (Debian kea-dhcp4-server; .ci/deps installs it)")
		}
		t.Skip("kea-dhcp4 not installed")
	}
	// Kea checks that the interface exists and has the address: the
	// loopback does.
	pools[0].Reservations = nil
	pools[0].ServerIP = netip.MustParseAddr("127.0.0.1")
	if data, err = keaConfig(pools, "lo", filepath.Join(dir, "leases.csv"), filepath.Join(dir, "kea.log"), filepath.Join(dir, "kea.sock")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "kea.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(kea, "-t", path).CombinedOutput(); err != nil {
		t.Errorf("kea-dhcp4 -t rejects the config: %v\n%s", err, out)
	}
}

func TestParseKeaAnswers(t *testing.T) {
	resp := `{"arguments": {"pkt4-ack-sent": [[40, "2026-12-06 03:40:21.130"], [39, "2026-12-06 03:40:21.100"]],
		"pkt4-offer-sent": [[41, "2026-12-06 03:40:21.120"]], "pkt4-nak-sent": [[2, "x"]], "pkt4-received": [[99, "x"]]}, "result": 0}`
	if n, err := parseKeaAnswers([]byte(resp)); err != nil || n != 83 {
		t.Errorf("answers %v, %v; want 83 (the latest of each)", n, err)
	}
	if n, err := parseKeaAnswers([]byte(`{"arguments": {}, "result": 0}`)); err != nil || n != 0 {
		t.Errorf("no statistics yet: %v, %v", n, err)
	}
	for _, bad := range []string{`{"result": 1, "text": "unknown command"}`, `not json`, `{"arguments": {"pkt4-ack-sent": [["x", "y"]]}, "result": 0}`} {
		if _, err := parseKeaAnswers([]byte(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func TestKeaLeaseStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.csv")
	csv := "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context\n" +
		"10.64.0.10,00:1e:7a:00:00:00,,3600,1796000000,1,0,0,SEP001E7A000000,0,\n" +
		"10.64.0.11,00:26:0b:00:00:00,,3600,1796000000,1,0,0,,0,\n" +
		"10.64.0.12,70:db:98:00:00:00,,3600,1796000000,1,0,0,,0,\n" +
		"10.64.0.10,00:1e:7a:00:00:00,,3600,1796000100,1,0,0,SEP001E7A000000,0,\n" + // renewed
		"10.64.0.11,00:26:0b:00:00:00,,0,1796000000,1,0,0,,0,\n" + // deleted
		"10.64.0.12,70:db:98:00:00:00,,3600,1796000000,1,0,0,,1,\n" // declined
	if err := os.WriteFile(path, []byte(csv), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := keaLeaseStore(path)
	if err != nil {
		t.Fatal(err)
	}
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	want := []lease.Lease{
		{IP: netip.MustParseAddr("10.64.0.10"), MAC: mac("00:1e:7a:00:00:00"), State: lease.StateBound, Expires: time.Unix(1796000100, 0)},
		{IP: netip.MustParseAddr("10.64.0.11"), MAC: mac("00:26:0b:00:00:00"), State: lease.StateExpired, Expires: time.Unix(1796000000, 0)},
		{IP: netip.MustParseAddr("10.64.0.12"), MAC: mac("70:db:98:00:00:00"), State: lease.StateExpired, Expires: time.Unix(1796000000, 0)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("leases\n%v\nwant\n%v", got, want)
	}
	for i, bad := range []string{"ip,mac\n", csv + "10.64.0.13,nomac,,3600,1796000000,1,0,0,,0,\n", csv + "10.64.0.13,00:1e:7a:00:00:01,,x,1796000000,1,0,0,,0,\n"} {
		os.WriteFile(path, []byte(bad), 0o600)
		if _, err := keaLeaseStore(path); err == nil {
			t.Errorf("bad lease file %d was read", i)
		}
	}
}

// TestLabCompare runs a comparison of a small storm end to end: phoneboot
// with XDP and the baseline stack, the same phones in each, reported as a
// JSON array and as the HTML report's columns. In the baseline, Kea leased
// the phones their addresses, tftpd-hpa (and nothing else) served their
// files, and the phones registered straight with the CallManagers.
func TestLabCompare(t *testing.T) {
	privtest.Require(t)
	o := testOptions(t)
	o.Phones, o.Ports = 12, 4
	o.VoiceVLANs = 2
	o.UpgradeFraction = 0.25 // 3 phones download a load from each server
	o.HTMLPath = filepath.Join(t.TempDir(), "report.html")
	o.Timeout = 3 * time.Minute
	var servers []int // the baseline's server processes
	o.beforeReport = func(ctx context.Context, l *lab) error {
		direct := 0
		for _, cm := range l.cms {
			for _, st := range cm.Stations() {
				if host, _, _ := net.SplitHostPort(st.Remote); host != applianceUplink.String() {
					direct++
				}
			}
		}
		if !l.o.Baseline {
			if direct != 0 {
				t.Errorf("phoneboot: %d phones registered other than through the proxy", direct)
			}
			return nil
		}
		checkBaselineServed(t, l)
		servers = append(servers, l.baseline.kea.Process.Pid, l.baseline.tftpd.Process.Pid)
		return nil
	}
	reps, err := Compare(context.Background(), o, []string{"xdp", "baseline"})
	assertCleanedUp(t, o.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range servers {
		if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
			t.Errorf("baseline server %d still there after the lab: %v", pid, err)
		}
	}
	if len(servers) != 2 {
		t.Errorf("the baseline's servers %v, want Kea and tftpd-hpa", servers)
	}
	if len(reps) != 2 {
		t.Fatalf("%d reports, want 2", len(reps))
	}
	for i, want := range []struct{ label, mode string }{{"xdp", "xdp"}, {"baseline", "baseline"}} {
		r := reps[i]
		if r.Label != want.label || r.Mode != want.mode || r.Completed != 12 || r.Failed != 0 || r.provisioned.Upgraded != 3 {
			t.Errorf("run %d: label %q mode %q, %d completed, %d failed, %d upgraded; want %s, %s, 12, 0, 3",
				i, r.Label, r.Mode, r.Completed, r.Failed, r.provisioned.Upgraded, want.label, want.mode)
		}
	}
	// The 88xx ask over HTTP 6970 first: phoneboot serves it, the
	// baseline has nothing there, and they fall back to tftpd-hpa.
	if p := reps[0].provisioned; p.HTTPFetches == 0 {
		t.Errorf("phoneboot: no file over HTTP: %+v", p)
	}
	if p := reps[1].provisioned; p.HTTPFetches != 0 || p.HTTPFallbacks == 0 {
		t.Errorf("baseline: %d files over HTTP, %d asked over TFTP after HTTP failed; want none and some", p.HTTPFetches, p.HTTPFallbacks)
	}
	if b := reps[1].baseline; b == nil || b.Leased != 12 || b.Direct != 12 {
		t.Errorf("baseline summary %+v: want 12 phones leased by Kea and 12 registered straight", b)
	}
	// The baseline's load: Kea's answers and the phones' registrations,
	// sampled from Kea's statistics and the phones, and no phoneboot DHCP.
	var kea, fast, goSrv, regs float64
	for _, s := range reps[1].Series.Load {
		kea, fast, goSrv, regs = max(kea, s.DHCPKeaPerS), max(fast, s.DHCPFastPerS), max(goSrv, s.DHCPGoPerS), max(regs, s.RegistrationsPerS)
	}
	if kea <= 0 || regs <= 0 || fast != 0 || goSrv != 0 {
		t.Errorf("baseline load: peak Kea %.0f/s, fast path %.0f/s, Go %.0f/s, registrations %.0f/s; want Kea's answers and registrations only", kea, fast, goSrv, regs)
	}
	// The lease integrity check holds the baseline's phones to Kea's
	// leases, and phoneboot's to its store and fast path.
	for _, r := range reps {
		if in := r.Integrity; in == nil || in.Violations != 0 || in.Phones != 12 || in.StoreLeases < 12 || in.FastPath != (r.Mode == "xdp") {
			t.Errorf("%s: integrity %+v; want 12 phones, their leases, no violation", r.Label, in)
		}
	}
	if reps[0].voiceVLANs != 2 || reps[1].voiceVLANs != 0 {
		t.Errorf("voice VLANs %d and %d; want 2 with XDP, the baseline untagged", reps[0].voiceVLANs, reps[1].voiceVLANs)
	}

	data, err := os.ReadFile(o.JSONPath)
	if err != nil {
		t.Fatal(err)
	}
	var arr []map[string]any
	if err := json.Unmarshal(data, &arr); err != nil {
		t.Fatalf("the JSON report is not an array: %v", err)
	}
	if len(arr) != 2 || arr[0]["label"] != "xdp" || arr[1]["label"] != "baseline" || arr[1]["mode"] != "baseline" {
		t.Fatalf("JSON reports %v", arr)
	}
	for _, r := range arr {
		one, _ := json.Marshal(r)
		path := filepath.Join(t.TempDir(), "one.json")
		os.WriteFile(path, one, 0o600)
		checkJSONSchema(t, path, "label")
	}

	page, err := os.ReadFile(o.HTMLPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{">xdp</th>", ">baseline</th>", "storm time / baseline&#39;s", "<td>mode</td><td>xdp</td><td>baseline</td>"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("HTML report lacks %q", want)
		}
	}
}

// checkBaselineServed checks, while the baseline's phones are registered,
// that Kea leased them their addresses, that tftpd-hpa is what serves
// TFTP on the appliance, and that the phones registered straight with the
// CallManagers their files name.
func checkBaselineServed(t *testing.T, l *lab) {
	t.Helper()
	b := l.baseline
	store, err := keaLeaseStore(b.leaseFile)
	if err != nil {
		t.Fatal(err)
	}
	leases := map[netip.Addr]string{}
	for _, le := range store {
		if le.State == lease.StateBound {
			leases[le.IP] = le.MAC.String()
		}
	}
	keaLog, err := os.ReadFile(b.keaLog)
	if err != nil {
		t.Fatal(err)
	}
	byIP := map[string]*Phone{}
	for _, ph := range l.phones {
		byIP[ph.IP.String()] = ph
		if leases[ph.IP] != ph.MAC.String() {
			t.Errorf("%s has %s; Kea's lease file says %q", ph.Name, ph.IP, leases[ph.IP])
		}
		if !strings.Contains(string(keaLog), fmt.Sprintf("DHCP4_LEASE_ALLOC [hwtype=1 %s]", ph.MAC)) {
			t.Errorf("Kea's log shows no lease for %s (%s)", ph.Name, ph.MAC)
		}
		if cms := ph.Config.CallManagers; len(cms) != len(callManagerAddrs) || cms[0].Host != callManagerAddrs[0].String() {
			t.Errorf("%s: CallManagers %+v, want the simulators, %s first", ph.Name, cms, callManagerAddrs[0])
		}
	}
	if cfg := l.daemonConfig(); cfg.Provision.Enabled || cfg.DHCP.Enabled || cfg.Proxy.Enabled || cfg.FastPath.Enabled {
		t.Errorf("the baseline's agent serves more than the switch's part: %+v", cfg)
	}
	// The one TFTP socket of the appliance is tftpd-hpa's listener's.
	owner, err := udpOwner(l, b.server, tftpPort)
	if err != nil {
		t.Fatal(err)
	}
	if owner != b.tftpd.Process.Pid {
		t.Errorf("the appliance's TFTP socket belongs to process %d, not to in.tftpd (%d)", owner, b.tftpd.Process.Pid)
	}
	registered := 0
	for _, cm := range l.cms {
		for _, st := range cm.Stations() {
			host, _, _ := net.SplitHostPort(st.Remote)
			if ph := byIP[host]; ph == nil || ph.Name != st.Device {
				t.Errorf("%s registered with %s from %s, not from its own address", st.Device, st.Remote, host)
			}
			registered++
		}
	}
	if registered != len(l.phones) {
		t.Errorf("%d phones registered, want %d", registered, len(l.phones))
	}
}

// udpOwner is the process with the UDP socket bound to addr:port in the
// appliance namespace.
func udpOwner(l *lab, addr netip.Addr, port int) (int, error) {
	var table []byte
	err := l.appNS.Do(func() (err error) { table, err = os.ReadFile("/proc/thread-self/net/udp"); return err })
	if err != nil {
		return 0, err
	}
	a := addr.As4()
	local := fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], port)
	inode := ""
	for _, line := range strings.Split(string(table), "\n") {
		if f := strings.Fields(line); len(f) > 9 && f[1] == local {
			inode = f[9]
		}
	}
	if inode == "" {
		return 0, fmt.Errorf("no UDP socket on %s:%d in the appliance namespace", addr, port)
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); link == "socket:["+inode+"]" {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("no process holds the socket on %s:%d (inode %s)", addr, port, inode)
}

// TestLabBaselineInterrupted: Ctrl-C during a baseline storm stops Kea and
// tftpd-hpa with the lab, and leaves nothing behind.
func TestLabBaselineInterrupted(t *testing.T) {
	privtest.Require(t)
	o := testOptions(t)
	o.Phones, o.Ports = 4, 2
	o.Baseline, o.VoiceVLANs = true, 0
	o.TimeScale = 1 // real boot times: 18 s and more
	var servers []int
	o.beforeReport = func(ctx context.Context, l *lab) error {
		servers = append(servers, l.baseline.kea.Process.Pid, l.baseline.tftpd.Process.Pid)
		return nil
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	// Late enough for the appliance to be up, early enough that no phone
	// has booted (as in TestLabInterrupted).
	time.AfterFunc(8*time.Second, func() { cancel(fmt.Errorf("operator pressed Ctrl-C")) })
	rep, err := Run(ctx, o)
	assertCleanedUp(t, o.ID)
	if err == nil || !strings.Contains(err.Error(), "Ctrl-C") {
		t.Fatalf("Run: %v, want the interruption", err)
	}
	if rep.Mode != "baseline" || rep.Failed != 4 {
		t.Errorf("report after interrupt: mode %q, %d failed", rep.Mode, rep.Failed)
	}
	if len(servers) != 2 {
		t.Fatalf("servers %v: want Kea's and tftpd-hpa's", servers)
	}
	for _, pid := range servers {
		if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
			t.Errorf("baseline server %d still there after the lab: %v", pid, err)
		}
	}
}

// TestLabBaselineNotTFTPDHPA: an in.tftpd that is not tftpd-hpa's is
// refused before the storm, and the lab is torn down.
func TestLabBaselineNotTFTPDHPA(t *testing.T) {
	privtest.Require(t)
	o := testOptions(t)
	o.Phones, o.Ports = 2, 2
	o.Baseline, o.VoiceVLANs = true, 0
	o.InTFTPD = "/bin/true"
	_, err := Run(context.Background(), o)
	assertCleanedUp(t, o.ID)
	if err == nil || !strings.Contains(err.Error(), "/bin/true is not tftpd-hpa's in.tftpd") {
		t.Fatalf("Run: %v, want the refusal", err)
	}
}
