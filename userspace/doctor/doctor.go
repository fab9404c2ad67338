// Package doctor implements `phoneboot doctor`: it checks that the machine
// has what the appliance needs (kernel, BTF, bpffs, capabilities, a BPF
// program the verifier accepts, XDP attach in both modes) and prints a
// pass/fail table with a hint for every failure.
//
// The checks are independent: one failing never stops the others. Each
// runs under its own time limit and the whole run under a budget of
// about 9 s, so a hanging kernel call shows up as a timed-out check
// instead of a hung command. The XDP checks work only on a throwaway veth
// pair inside a private network namespace; the host's own interfaces are
// never touched, and doctor mounts nothing (beyond the bind mount that
// names the throwaway namespace, removed again afterwards).
package doctor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/fastpath"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// Status is the outcome of one check.
type Status string

const (
	StatusPass Status = "pass"
	StatusFail Status = "fail"
	StatusWarn Status = "warn"
)

// Result is one row of the doctor table.
type Result struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Hint   string `json:"hint"`
}

// Options configures Run.
type Options struct {
	// BPFFS is where the bpf filesystem should be mounted; default /sys/fs/bpf.
	BPFFS string
	// Log receives debug records for each check; nil discards them.
	Log *slog.Logger
}

// Check names, in the order Run reports them.
const (
	CheckKernel       = "kernel"
	CheckBTF          = "btf"
	CheckBPFFS        = "bpffs"
	CheckCapabilities = "capabilities"
	CheckBPFLoad      = "bpf-load"
	CheckNetns        = "netns"
	CheckXDPNative    = "xdp-native"
	CheckXDPGeneric   = "xdp-generic"
)

// DefaultBPFFS is where the appliance expects bpffs.
const DefaultBPFFS = "/sys/fs/bpf"

// nsPrefix starts the names of doctor's throwaway namespaces and veths.
const nsPrefix = "pbdr"

// btfPath is the kernel's own BTF.
const btfPath = "/sys/kernel/btf/vmlinux"

// Time limits. The first group runs concurrently, the netns/XDP stage
// after it, all within runBudget.
var (
	runBudget   = 9 * time.Second
	quickLimit  = 2 * time.Second
	loadLimit   = 4 * time.Second
	xdpLimit    = 6 * time.Second
	maxDetailLn = 6 // lines of a (verifier) error kept in Detail
)

// Run performs every check and returns one result per check, in a fixed
// order. It returns within about 9 s (sooner if ctx ends); a check still
// running then is reported as timed out and finishes, cleaning up after
// itself, in the background.
func Run(ctx context.Context, opts Options) []Result {
	if opts.BPFFS == "" {
		opts.BPFFS = DefaultBPFFS
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(ctx, runBudget)
	defer cancel()

	first := []stage{
		{names: []string{CheckKernel}, limit: quickLimit, run: single(checkKernel)},
		{names: []string{CheckBTF}, limit: quickLimit, run: single(func(context.Context) Result { return checkBTF(btfPath) })},
		{names: []string{CheckBPFFS}, limit: quickLimit, run: single(func(context.Context) Result { return checkBPFFS(opts.BPFFS) })},
		{names: []string{CheckCapabilities}, limit: quickLimit, run: single(func(context.Context) Result { return checkCapabilities() })},
		{names: []string{CheckBPFLoad}, limit: loadLimit, run: single(func(context.Context) Result { return checkBPFLoad(log) })},
	}
	parts := make([][]Result, len(first))
	var wg sync.WaitGroup
	for i, st := range first {
		wg.Add(1)
		go func() {
			defer wg.Done()
			parts[i] = runStage(ctx, log, st)
		}()
	}
	wg.Wait()
	var results []Result
	for _, p := range parts {
		results = append(results, p...)
	}

	var missing []string
	for _, r := range results {
		if (r.Name == CheckCapabilities || r.Name == CheckBPFLoad) && r.Status == StatusFail {
			missing = append(missing, r.Name)
		}
	}
	results = append(results, runStage(ctx, log, stage{
		names: []string{CheckNetns, CheckXDPNative, CheckXDPGeneric},
		limit: xdpLimit,
		run: func(ctx context.Context, report func(Result)) {
			checkNetnsXDP(ctx, log, missing, report)
		},
	})...)

	for i := range results {
		if results[i].Status != StatusPass && results[i].Hint == "" {
			results[i].Hint = "see the detail above"
		}
	}
	return results
}

// Failed tells whether any check failed (warnings do not count).
func Failed(results []Result) bool {
	for _, r := range results {
		if r.Status != StatusPass && r.Status != StatusWarn {
			return true
		}
	}
	return false
}

// Print writes the results as an aligned table with a hint line under each
// check that did not pass, and a summary line.
func Print(w io.Writer, results []Result) {
	nameW, statusW := len("CHECK"), len("STATUS")
	for _, r := range results {
		nameW = max(nameW, len(r.Name))
		statusW = max(statusW, len(r.Status))
	}
	detailCol := strings.Repeat(" ", nameW+2+statusW+2)
	hintCol := strings.Repeat(" ", nameW+2)
	var b strings.Builder
	row := func(name, status, detail string) {
		line := fmt.Sprintf("%-*s  %-*s  %s", nameW, name, statusW, status, detail)
		b.WriteString(strings.TrimRight(line, " "))
		b.WriteByte('\n')
	}
	row("CHECK", "STATUS", "DETAIL")
	var pass, fail, warn int
	for _, r := range results {
		switch r.Status {
		case StatusPass:
			pass++
		case StatusWarn:
			warn++
		default:
			fail++
		}
		lines := strings.Split(strings.TrimRight(r.Detail, "\n"), "\n")
		row(r.Name, string(r.Status), lines[0])
		for _, l := range lines[1:] {
			b.WriteString(strings.TrimRight(detailCol+l, " "))
			b.WriteByte('\n')
		}
		if r.Status != StatusPass && r.Hint != "" {
			for i, l := range strings.Split(r.Hint, "\n") {
				prefix := "hint: "
				if i > 0 {
					prefix = "      "
				}
				b.WriteString(strings.TrimRight(hintCol+prefix+l, " "))
				b.WriteByte('\n')
			}
		}
	}
	fmt.Fprintf(&b, "%d passed, %d failed, %d warnings\n", pass, fail, warn)
	io.WriteString(w, b.String())
}

// stage is one or more checks run together under one time limit. run
// calls report once per result (a later report for the same name replaces
// the earlier one).
type stage struct {
	names []string
	limit time.Duration
	run   func(ctx context.Context, report func(Result))
}

func single(fn func(context.Context) Result) func(context.Context, func(Result)) {
	return func(ctx context.Context, report func(Result)) { report(fn(ctx)) }
}

// runStage runs st on its own goroutine and returns its results when it is
// done or when its limit (or ctx) runs out, whichever comes first; checks
// without a result by then are reported failed. A panic in the stage
// becomes a failure of the checks it had not reported yet.
func runStage(ctx context.Context, log *slog.Logger, st stage) []Result {
	start := time.Now()
	out := make([]Result, len(st.names))
	got := make([]bool, len(st.names))
	for i, n := range st.names {
		out[i].Name = n
	}
	if err := ctx.Err(); err != nil {
		for i := range out {
			out[i].Status = StatusFail
			out[i].Detail = "not run: " + budgetReason(err)
			out[i].Hint = "the checks before it took too long; run doctor again and look for a hanging kernel call (dmesg)"
		}
		return out
	}

	var mu sync.Mutex
	sealed := false
	report := func(r Result) {
		mu.Lock()
		defer mu.Unlock()
		if sealed {
			log.Debug("doctor check finished after its time limit", "check", r.Name, "status", string(r.Status), "detail", r.Detail)
			return
		}
		for i, n := range st.names {
			if n == r.Name {
				out[i], got[i] = r, true
				return
			}
		}
		log.Debug("doctor: result for an unknown check", "check", r.Name)
	}
	fillMissing := func(detail, hint string) {
		for i := range out {
			if !got[i] {
				out[i] = Result{Name: st.names[i], Status: StatusFail, Detail: detail, Hint: hint}
				got[i] = true
			}
		}
	}

	sctx, cancel := context.WithTimeout(ctx, st.limit)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if p := recover(); p != nil {
				mu.Lock()
				defer mu.Unlock()
				if !sealed {
					fillMissing(fmt.Sprintf("check panicked: %v", p), "this is a bug in phoneboot doctor; please report it with this output")
				}
			}
		}()
		st.run(sctx, report)
	}()
	select {
	case <-done:
	case <-sctx.Done():
	}

	mu.Lock()
	defer mu.Unlock()
	sealed = true
	// A stage that sees its context end stops early without reporting the
	// rest, so an ended context explains missing results before a bug does.
	const hangHint = "something hangs in the kernel (bpf or netlink call); look at dmesg and run doctor again"
	switch {
	case ctx.Err() != nil:
		fillMissing("not finished: "+budgetReason(ctx.Err()), hangHint)
	case sctx.Err() != nil:
		fillMissing(fmt.Sprintf("timed out after %v", st.limit), hangHint)
	default:
		fillMissing("check returned no result", "this is a bug in phoneboot doctor; please report it")
	}
	res := append([]Result(nil), out...)
	for _, r := range res {
		log.Debug("doctor check", "check", r.Name, "status", string(r.Status), "detail", r.Detail, "took", time.Since(start))
	}
	return res
}

func budgetReason(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "doctor's time budget is used up"
	}
	return "canceled"
}

// ---- kernel ----

var kernelRe = regexp.MustCompile(`^(\d+)\.(\d+)`)

// parseKernelVersion reads major and minor from a uname release string
// such as "6.18.44-fc-v782" or "5.10.0-28-amd64".
func parseKernelVersion(release string) (major, minor int, err error) {
	m := kernelRe.FindStringSubmatch(release)
	if m == nil {
		return 0, 0, fmt.Errorf("kernel release %q does not start with MAJOR.MINOR", release)
	}
	if major, err = strconv.Atoi(m[1]); err == nil {
		minor, err = strconv.Atoi(m[2])
	}
	if err != nil {
		return 0, 0, fmt.Errorf("kernel release %q: %w", release, err)
	}
	return major, minor, nil
}

// kernelResult judges a kernel release: 5.11 and newer pass, 5.10 passes
// with a warning (BPF memory still counts against RLIMIT_MEMLOCK), older
// kernels fail.
func kernelResult(release string) Result {
	r := Result{Name: CheckKernel, Detail: release}
	major, minor, err := parseKernelVersion(release)
	switch {
	case err != nil:
		r.Status = StatusFail
		r.Detail = err.Error()
		r.Hint = "could not tell the kernel version; phoneboot needs Linux 5.10 or newer"
	case major < 5 || major == 5 && minor < 10:
		r.Status = StatusFail
		r.Detail = fmt.Sprintf("%s: older than 5.10", release)
		r.Hint = "phoneboot needs Linux 5.10 or newer (XDP attach through bpf_link needs 5.9, 5.10 is the oldest LTS supported); upgrade the kernel"
	case major == 5 && minor == 10:
		r.Status = StatusWarn
		r.Hint = "before 5.11 BPF memory is charged to RLIMIT_MEMLOCK, not memcg: set LimitMEMLOCK=infinity in the systemd unit (or `ulimit -l unlimited`), or use 5.11+"
	default:
		r.Status = StatusPass
	}
	return r
}

func checkKernel(context.Context) Result {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return Result{Name: CheckKernel, Status: StatusFail, Detail: "uname: " + err.Error(), Hint: "phoneboot needs Linux 5.10 or newer"}
	}
	r := kernelResult(unix.ByteSliceToString(u.Release[:]))
	if r.Status == StatusWarn {
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err == nil {
			r.Detail += "; RLIMIT_MEMLOCK " + formatLimit(lim.Cur)
		}
	}
	return r
}

func formatLimit(v uint64) string {
	switch {
	case v == unix.RLIM_INFINITY:
		return "unlimited"
	case v >= 1<<20 && v%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", v>>20)
	case v >= 1<<10 && v%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", v>>10)
	}
	return fmt.Sprintf("%d bytes", v)
}

// ---- btf ----

func checkBTF(path string) Result {
	r := Result{Name: CheckBTF}
	hint := "the fast path needs kernel BTF: use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.x are)"
	f, err := os.Open(path)
	if err != nil {
		r.Status, r.Detail, r.Hint = StatusFail, err.Error(), hint
		if errors.Is(err, os.ErrPermission) {
			r.Hint = "run doctor as root (or with the appliance's capabilities) so it can read " + path
		}
		return r
	}
	defer f.Close()
	var magic [2]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil {
		r.Status, r.Detail, r.Hint = StatusFail, fmt.Sprintf("read %s: %v", path, err), hint
		return r
	}
	// BTF magic 0xeB9F, in either byte order.
	if magic != [2]byte{0x9f, 0xeb} && magic != [2]byte{0xeb, 0x9f} {
		r.Status, r.Detail, r.Hint = StatusFail, fmt.Sprintf("%s does not hold BTF (magic %#x)", path, magic[:]), hint
		return r
	}
	r.Status, r.Detail = StatusPass, path+" readable"
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		r.Detail += fmt.Sprintf(" (%d KiB)", fi.Size()>>10)
	}
	return r
}

// ---- bpffs ----

func checkBPFFS(path string) Result {
	r := Result{Name: CheckBPFFS}
	hint := fmt.Sprintf("mount it: mount -t bpf bpf %s (to keep it across reboots add `bpf %s bpf defaults 0 0` to /etc/fstab)", path, path)
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		r.Status, r.Detail, r.Hint = StatusFail, err.Error(), hint
		if errors.Is(err, os.ErrNotExist) {
			r.Detail = path + " does not exist"
			r.Hint = fmt.Sprintf("mkdir -p %s && mount -t bpf bpf %s", path, path)
		}
		return r
	case !fi.IsDir():
		r.Status, r.Detail, r.Hint = StatusFail, path+" is not a directory", "point --bpffs at a directory where bpffs is mounted"
		return r
	}
	ok, err := fastpath.IsBPFFS(path)
	switch {
	case err != nil:
		r.Status, r.Detail, r.Hint = StatusFail, err.Error(), hint
	case !ok:
		r.Status, r.Detail, r.Hint = StatusFail, path+" is not a bpf filesystem", hint
	default:
		r.Status, r.Detail = StatusPass, path+" is bpffs"
	}
	return r
}

// ---- capabilities ----

// requiredCaps are the capabilities the daemon needs, in report order.
var requiredCaps = []struct {
	bit  uint
	name string
}{
	{unix.CAP_BPF, "CAP_BPF"},
	{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN"},
	// The verifier allows variable-offset packet-pointer arithmetic only
	// with CAP_PERFMON (see deploy/README.md).
	{unix.CAP_PERFMON, "CAP_PERFMON"},
	{unix.CAP_NET_RAW, "CAP_NET_RAW"},
	{unix.CAP_NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"},
}

// parseCapEff returns the effective capability set from the text of
// /proc/<pid>/status (its "CapEff:" line, 16 hex digits).
func parseCapEff(status string) (uint64, error) {
	for _, line := range strings.Split(status, "\n") {
		v, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if v == "" {
			return 0, errors.New("empty CapEff line")
		}
		caps, err := strconv.ParseUint(v, 16, 64)
		if err != nil {
			return 0, fmt.Errorf("CapEff %q is not a hex number", v)
		}
		return caps, nil
	}
	return 0, errors.New("no CapEff line")
}

// missingCaps names the required capabilities absent from eff.
func missingCaps(eff uint64) []string {
	var missing []string
	for _, c := range requiredCaps {
		if eff&(1<<c.bit) == 0 {
			missing = append(missing, c.name)
		}
	}
	return missing
}

func capsResult(eff uint64) Result {
	r := Result{Name: CheckCapabilities}
	missing := missingCaps(eff)
	if len(missing) == 0 {
		r.Status = StatusPass
		r.Detail = "have " + requiredCapNames()
		return r
	}
	r.Status = StatusFail
	r.Detail = "missing " + strings.Join(missing, " ")
	r.Hint = "run as root, or give the systemd unit AmbientCapabilities=" + requiredCapNames() + " (and the same CapabilityBoundingSet)"
	return r
}

func requiredCapNames() string {
	names := make([]string, len(requiredCaps))
	for i, c := range requiredCaps {
		names[i] = c.name
	}
	return strings.Join(names, " ")
}

func checkCapabilities() Result {
	b, err := os.ReadFile("/proc/self/status")
	var eff uint64
	if err == nil {
		eff, err = parseCapEff(string(b))
	}
	if err != nil {
		return Result{Name: CheckCapabilities, Status: StatusFail, Detail: "read effective capabilities: " + err.Error(), Hint: "doctor reads /proc/self/status; is /proc mounted?"}
	}
	return capsResult(eff)
}

// ---- bpf-load ----

func checkBPFLoad(log *slog.Logger) Result {
	r := Result{Name: CheckBPFLoad}
	objs, err := fastpath.LoadObjects("", log)
	if err != nil {
		log.Warn("doctor: loading the BPF objects failed", "error", err)
		r.Status, r.Detail = StatusFail, firstLines(err.Error(), maxDetailLn)
		var verr *ebpf.VerifierError
		switch {
		case errors.As(err, &verr):
			r.Hint = "the kernel's verifier rejected the XDP program: report it with `uname -r` and this output (run with debug logging for the full verifier log)"
		case errors.Is(err, unix.EPERM):
			r.Hint = "not permitted: needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (run as root); on kernels before 5.11 also LimitMEMLOCK=infinity; a seccomp filter must allow bpf(2)"
		default:
			r.Hint = "the embedded BPF object could not be loaded on this kernel; see the detail"
		}
		return r
	}
	id := ""
	if info, ierr := objs.Program().Info(); ierr == nil {
		if pid, ok := info.ID(); ok {
			id = fmt.Sprintf(" (prog id %d)", pid)
		}
	}
	if err := objs.Close(); err != nil {
		r.Status, r.Detail, r.Hint = StatusWarn, "loaded, but closing failed: "+err.Error(), "see the detail"
		return r
	}
	r.Status, r.Detail = StatusPass, "xdp_phone_port loaded and verified"+id
	return r
}

// firstLines keeps the first n lines of s and says how many were left out.
func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) <= n {
		return strings.Join(lines, "\n")
	}
	return strings.Join(lines[:n], "\n") + fmt.Sprintf("\n... (%d more lines)", len(lines)-n)
}

// oneLine flattens a (joined) error to one line, dropping repeated parts.
func oneLine(err error) string {
	var parts []string
	for _, l := range strings.Split(err.Error(), "\n") {
		if l = strings.TrimSpace(l); l != "" && !slices.Contains(parts, l) {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// ---- netns, xdp-native, xdp-generic ----

// checkNetnsXDP builds a namespace with a veth pair in it, then attaches
// the program to one veth end in driver and in generic mode. Everything it
// creates is removed before it returns, also on a panic.
func checkNetnsXDP(ctx context.Context, log *slog.Logger, missing []string, report func(Result)) {
	xdpNames := []string{CheckXDPNative, CheckXDPGeneric}
	skip := func(detail string) {
		for _, n := range xdpNames {
			report(Result{Name: n, Status: StatusFail, Detail: detail, Hint: "fix the failed checks above first"})
		}
	}

	name := vnet.UniqueName(nsPrefix)
	vethA, vethB := name+"a", name+"b"
	netnsHint := "doctor could not create a throwaway network namespace: it needs CAP_SYS_ADMIN (run as root) and a writable /run/netns (as `ip netns add` from iproute2 uses)"
	needsNetns := "skipped: needs " + strings.Join(append(missing[:len(missing):len(missing)], CheckNetns), ", ")
	ns, err := vnet.Create(name)
	if err != nil {
		report(Result{Name: CheckNetns, Status: StatusFail, Detail: oneLine(err), Hint: netnsHint})
		skip(needsNetns)
		return
	}
	created := fmt.Sprintf("namespace %s with veth pair %s/%s", name, vethA, vethB)
	defer func() {
		if err := ns.Close(); err != nil {
			log.Warn("doctor: removing the throwaway namespace failed", "netns", name, "error", err)
			report(Result{Name: CheckNetns, Status: StatusFail,
				Detail: created + " created, but removing it failed: " + oneLine(err),
				Hint:   "remove it by hand: ip netns delete " + name})
		}
	}()
	if err := vnet.Veth(ns, vethA, ns, vethB); err != nil {
		report(Result{Name: CheckNetns, Status: StatusFail, Detail: oneLine(err),
			Hint: "veth pairs need the veth driver (CONFIG_VETH, `modprobe veth`) and CAP_NET_ADMIN"})
		skip(needsNetns)
		return
	}
	for _, v := range []string{vethA, vethB} {
		if err := ns.SetUp(v); err != nil {
			report(Result{Name: CheckNetns, Status: StatusFail, Detail: oneLine(err), Hint: "could not bring the throwaway veth up; see the detail"})
			skip(needsNetns)
			return
		}
	}
	report(Result{Name: CheckNetns, Status: StatusPass, Detail: created + " created and removed"})

	if len(missing) > 0 {
		skip("skipped: needs " + strings.Join(missing, ", "))
		return
	}
	if err := ctx.Err(); err != nil {
		return // reported as timed out
	}
	objs, err := fastpath.LoadObjects("", log)
	if err != nil {
		for _, n := range xdpNames {
			report(Result{Name: n, Status: StatusFail, Detail: firstLines(err.Error(), maxDetailLn), Hint: "loading the BPF objects failed here though bpf-load passed; run doctor again"})
		}
		return
	}
	defer objs.Close()
	for _, m := range []fastpath.Mode{fastpath.ModeNative, fastpath.ModeGeneric} {
		if ctx.Err() != nil {
			return
		}
		report(checkAttach(ns, vethA, objs.Program(), m))
	}
}

// checkAttach attaches prog to veth ifname in ns in the given mode, checks
// over netlink that it is attached in that mode, and detaches it.
func checkAttach(ns *vnet.NS, ifname string, prog *ebpf.Program, mode fastpath.Mode) (r Result) {
	r.Name = CheckXDPGeneric
	flags, wantMode, modeName := link.XDPGenericMode, uint32(nl.XDP_ATTACHED_SKB), "generic (skb)"
	hint := "generic XDP works on every netdev; if it fails, XDP attach itself is blocked (capabilities, seccomp allowing bpf(2), or an LSM): see the detail"
	if mode == fastpath.ModeNative {
		r.Name = CheckXDPNative
		flags, wantMode, modeName = link.XDPDriverMode, uint32(nl.XDP_ATTACHED_DRV), "driver (native)"
		hint = "driver-mode XDP failed even on veth: the kernel's veth lacks native XDP; set the xdp mode to generic (slower) or upgrade the kernel. Check the phone-facing NICs with `xdp-loader features <if>`"
	}
	fail := func(format string, args ...any) Result {
		return Result{Name: r.Name, Status: StatusFail, Detail: fmt.Sprintf(format, args...), Hint: hint}
	}

	nlh := ns.Netlink()
	nlink, err := nlh.LinkByName(ifname)
	if err != nil {
		return fail("find %s in netns %s: %v", ifname, ns.Name, err)
	}
	ifindex := nlink.Attrs().Index
	var wantID uint32
	if info, err := prog.Info(); err == nil {
		if id, ok := info.ID(); ok {
			wantID = uint32(id)
		}
	}

	var l link.Link
	err = doSafe(ns, func() error {
		var err error
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: flags})
		return err
	})
	if err != nil {
		return fail("attach in %s mode to veth %s: %v", modeName, ifname, err)
	}
	closed := false
	defer func() {
		if !closed {
			l.Close()
		}
	}()

	nlink, err = nlh.LinkByName(ifname)
	if err != nil {
		return fail("read back %s: %v", ifname, err)
	}
	x := nlink.Attrs().Xdp
	switch {
	case x == nil || !x.Attached:
		return fail("attach returned no error but netlink shows no XDP program on %s", ifname)
	case x.AttachMode != wantMode:
		return fail("asked for %s mode, netlink reports attach mode %d on %s", modeName, x.AttachMode, ifname)
	case wantID != 0 && x.ProgId != wantID:
		return fail("netlink shows prog id %d on %s, expected %d", x.ProgId, ifname, wantID)
	}
	progID := x.ProgId

	closed = true
	if err := l.Close(); err != nil {
		return fail("detach from %s: %v", ifname, err)
	}
	nlink, err = nlh.LinkByName(ifname)
	if err != nil {
		return fail("read back %s after detach: %v", ifname, err)
	}
	if after := nlink.Attrs().Xdp; after != nil && after.Attached {
		return fail("XDP program still attached to %s after detach", ifname)
	}
	return Result{Name: r.Name, Status: StatusPass,
		Detail: fmt.Sprintf("attached in %s mode to throwaway veth %s (prog id %d) and detached", modeName, ifname, progID)}
}

// doSafe runs fn inside ns, turning a panic in fn into an error (fn runs on
// another goroutine, where a panic could not be recovered by the caller).
func doSafe(ns *vnet.NS, fn func() error) error {
	return ns.Do(func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("panic: %v", p)
			}
		}()
		return fn()
	})
}
