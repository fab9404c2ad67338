// Package lab runs a boot storm on one machine: a virtual switch built
// from network namespaces and veth pairs, the real phoneboot agent serving
// its ports, and simulated phones going through the boot sequence.
package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/agent"
	"github.com/phoneboot/phoneboot/images"
	"github.com/phoneboot/phoneboot/userspace/control"
	"github.com/phoneboot/phoneboot/userspace/phonetag"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// Options are the lab's knobs; the CLI flags map onto them.
type Options struct {
	Phones       int
	Ports        int // 0: one per phone, at most 48
	PowerPolicy  string
	Stagger      time.Duration // interval between stagger and adaptive steps
	StaggerPorts int           // ports powered per stagger or adaptive step
	TimeScale    float64       // multiplies every simulated delay
	Timeout      time.Duration // the storm's limit; phones not done by then fail
	NoXDP        bool
	// Adaptive overrides the agent's thresholds of the adaptive power
	// policy; nil keeps its defaults.
	Adaptive *agent.AdaptiveConfig
	// VoiceVLANs is how many voice VLANs the ports are spread over (port i
	// gets VLAN 100+i%VoiceVLANs, each with its own DHCP pool; at most one
	// per port); 0 leaves the phones untagged. VLANs need the fast path:
	// its XDP and TC programs do the tagging.
	VoiceVLANs int
	// UpgradeFraction is the share of phones that boot an older load
	// (their model's previous_load) and must fetch the new one; the rest
	// run the load their configuration names and skip the download.
	UpgradeFraction float64
	Seed            uint64
	ID              string // names the lab's namespaces and directories; default random
	JSONPath        string
	HTMLPath        string    // the report as an HTML page with plots
	AgentCommand    []string  // the agent to run; default: this binary's "serve"
	AgentLog        io.Writer // also gets the agent's log, if set (it always goes to the run directory)
	Out             io.Writer // the table and live progress
	LiveProgress    bool      // redraw a progress line while the storm runs
	ProgressEvery   time.Duration
	Log             *slog.Logger

	// NoProxy turns the daemon's registration proxy off: the phones'
	// files name the CallManagers, which the phones reach through the
	// appliance (it routes between the bridge and the uplink).
	NoProxy bool
	// ProxyWorkers is how many processes run the daemon's registration
	// proxy (its proxy.workers); 0: one, or as many as the host's hard
	// open-file limit needs for the storm's phones (see fitFileLimit).
	ProxyWorkers int
	// Baseline runs the storm against the stack a user would otherwise
	// deploy (baseline.go): Kea for DHCP, tftpd-hpa for files, the phones
	// registering straight with the CallManagers; the agent keeps only the
	// switch's role (PoE, CDP and LLDP). It runs untagged.
	Baseline bool
	// InTFTPD is tftpd-hpa's in.tftpd for the baseline; empty: the
	// installed one, else unpacked from the Debian package.
	InTFTPD string
	// Faults are injected during the storm (--fault; see faults.go).
	Faults []Fault

	// For tests. damage: once the agent has checked the firmware catalog
	// at start, change a byte of this file among the synthetic loads, so
	// that phones fetching it must fail its SHA-256 check. cmKeepAlive:
	// the CallManagers' keepalive interval instead of cmKeepAlive.
	// beforeReport runs when every phone is done, while the phones stay
	// registered and the agent runs. whileDown runs while a daemon fault
	// has the agent killed, before it is started again.
	damage       string
	cmKeepAlive  time.Duration
	beforeReport func(ctx context.Context, l *lab) error
	whileDown    func(ctx context.Context, l *lab) error
}

// Limits on the flags, so a typo fails fast instead of exhausting the machine.
const (
	maxPhones       = 100000
	maxPorts        = 1024
	defaultMaxPorts = 48
	maxVoiceVLANs   = 8
	firstVoiceVLAN  = 100
)

func (o *Options) normalize() error {
	if o.Phones < 1 || o.Phones > maxPhones {
		return fmt.Errorf("--phones %d: must be 1 to %d", o.Phones, maxPhones)
	}
	if o.Ports == 0 {
		o.Ports = min(o.Phones, defaultMaxPorts)
	}
	if o.Ports < 1 || o.Ports > maxPorts {
		return fmt.Errorf("--ports %d: must be 1 to %d", o.Ports, maxPorts)
	}
	if o.Ports > o.Phones {
		return fmt.Errorf("--ports %d: more ports than --phones %d leaves ports without a phone", o.Ports, o.Phones)
	}
	if !slices.Contains(powerPolicies, o.PowerPolicy) {
		return fmt.Errorf("--power-policy %q: must be all, stagger or adaptive", o.PowerPolicy)
	}
	if a := o.Adaptive; a != nil && (a.DHCPBacklog < 0 || a.TFTPActive < 0 || a.ProxyQueued < 0) {
		return fmt.Errorf("--adaptive-* thresholds must not be negative (0 ignores the signal): %+v", *a)
	}
	if o.Stagger < 0 || o.Stagger > time.Minute {
		return fmt.Errorf("--stagger %s: must be 0 to 1m", o.Stagger)
	}
	if o.VoiceVLANs < 0 || o.VoiceVLANs > maxVoiceVLANs {
		return fmt.Errorf("--voice-vlans %d: must be 0 to %d", o.VoiceVLANs, maxVoiceVLANs)
	}
	o.VoiceVLANs = min(o.VoiceVLANs, o.Ports) // a VLAN needs a port to be on
	if o.VoiceVLANs > 0 && o.NoXDP {
		return fmt.Errorf("--voice-vlans %d with --no-xdp: the VLAN tagging is done by the XDP and TC programs; use --voice-vlans 0", o.VoiceVLANs)
	}
	if o.VoiceVLANs > 0 && o.Baseline {
		return fmt.Errorf("--voice-vlans %d with --baseline: without phoneboot's XDP and TC programs the appliance tags nothing; the baseline runs with --voice-vlans 0", o.VoiceVLANs)
	}
	if !(o.UpgradeFraction >= 0 && o.UpgradeFraction <= 1) {
		return fmt.Errorf("--upgrade-fraction %v: must be 0 to 1", o.UpgradeFraction)
	}
	if o.StaggerPorts < 1 {
		return fmt.Errorf("--stagger-ports %d: must be at least 1", o.StaggerPorts)
	}
	if !(o.TimeScale > 0 && o.TimeScale <= 10) {
		return fmt.Errorf("--time-scale %v: must be above 0 and at most 10", o.TimeScale)
	}
	if o.ProxyWorkers < 0 || o.ProxyWorkers > agent.MaxProxyWorkers {
		return fmt.Errorf("--proxy-workers %d: must be 0 to %d (0: as the open-file limit needs)", o.ProxyWorkers, agent.MaxProxyWorkers)
	}
	if o.Timeout <= 0 {
		return fmt.Errorf("--timeout %s: must be positive", o.Timeout)
	}
	if err := o.validateFaults(); err != nil {
		return err
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.ID != "" && !labIDPattern.MatchString(o.ID) {
		return fmt.Errorf("lab id %q: must be 1 to 8 lower-case letters or digits", o.ID)
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = 250 * time.Millisecond
	}
	if len(o.AgentCommand) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the phoneboot binary: %w", err)
		}
		o.AgentCommand = []string{exe, "serve"}
	}
	return fitFileLimit(o)
}

// loadSampleEvery is how often the lab samples the appliance's counters
// for the report's load plots: fine enough to show a storm of a second.
const loadSampleEvery = 50 * time.Millisecond

var labIDPattern = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

// Port is one switch port of the lab: the appliance's end of a veth pair,
// and the phone side in a namespace of its own.
type Port struct {
	Index int
	Name  string   // the appliance's interface
	NS    *vnet.NS // the phones' side
	Link  string   // the phones' interface inside NS
	Class int      // the PoE class presented on the port

	power  *portPower   // the phone side's link: up is power
	io     *portIO      // the phones' raw socket on the port
	rt     *rtnl        // the phones' interfaces and addresses
	thread *vnet.Thread // opens the phones' sockets in NS
}

const phoneLink = "eth0"

// The appliance's side of the switch: a bridge whose members are the
// ports, each isolated (bridge port isolation: what a phone sends is not
// flooded to other ports, as on a switch with protected ports), holding the
// appliance's address in every voice subnet, as a switch's SVIs do. The
// daemon's XDP program and its raw sockets on a port see the port's frames
// before the bridge does, and its TC egress program tags what the bridge
// sends out of the port; what XDP passes untagged reaches the bridge's IP
// stack (TFTP, HTTP, the registration proxy). A fixed MAC keeps the bridge
// from taking its ports' as they join.
const bridgeName = "sw0"

var bridgeMAC = net.HardwareAddr{0x02, 0x70, 0x62, 0x00, 0x00, 0x01}

// voiceNet is the phone subnet of the k-th voice VLAN (k = 0 untagged):
// 10.(64+8k).0.0/13, room for every phone the lab allows, the appliance
// at .0.1.
func voiceNet(k int) (subnet netip.Prefix, server, first, last netip.Addr) {
	b := byte(64 + 8*k)
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, b, 0, 0}), 13),
		netip.AddrFrom4([4]byte{10, b, 0, 1}),
		netip.AddrFrom4([4]byte{10, b, 0, 10}),
		netip.AddrFrom4([4]byte{10, b + 7, 255, 250})
}

// subnetOf is the subnet whose pool serves a phone in vlan (0: untagged).
func (o *Options) subnetOf(vlan uint16) netip.Prefix {
	k := 0
	if vlan != 0 {
		k = int(vlan) - firstVoiceVLAN
	}
	subnet, _, _, _ := voiceNet(k)
	return subnet
}

// voiceVLAN is the voice VLAN of port index i, 0 when the lab is untagged.
func (o *Options) voiceVLAN(i int) uint16 {
	if o.VoiceVLANs == 0 {
		return 0
	}
	return uint16(firstVoiceVLAN + i%o.VoiceVLANs)
}

// ErrNotRoot is returned when the lab runs without root.
var ErrNotRoot = errors.New("phoneboot lab needs root: it creates network namespaces and veth pairs and loads XDP programs; run it with sudo")

// Run builds the lab, runs the storm and tears everything down again, also
// when ctx is cancelled (Ctrl-C). The report covers what ran; it is
// written (--json, --html, the table) whenever the storm ran.
func Run(ctx context.Context, o Options) (Report, error) {
	if err := o.normalize(); err != nil {
		return Report{}, err
	}
	rep, err := runOnce(ctx, o)
	if rep.Series == nil { // the storm did not run
		return rep, err
	}
	var werr error
	if o.JSONPath != "" {
		werr = rep.WriteJSONFile(o.JSONPath)
	}
	if o.HTMLPath != "" && werr == nil {
		werr = WriteHTMLFile(o.HTMLPath, fmt.Sprintf("phoneboot lab: %d phones on %d ports", o.Phones, o.Ports), []Report{rep})
	}
	if werr == nil {
		werr = rep.WriteTable(o.Out)
	}
	return rep, errors.Join(err, werr)
}

// runOnce builds a lab, runs one storm in it and tears it down: the report
// and an error of the lab itself (an agent that did not stop cleanly, an
// interruption); a report without Series means the storm did not run.
func runOnce(ctx context.Context, o Options) (rep Report, err error) {
	if os.Geteuid() != 0 {
		return Report{}, ErrNotRoot
	}
	models, err := images.Models()
	if err != nil {
		return Report{}, err
	}

	id := o.ID
	if id == "" {
		id = vnet.UniqueName("")
	}
	l := &lab{o: o, id: id}
	defer func() {
		if cerr := l.cleanup(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("lab cleanup: %w", cerr))
		}
	}()

	phones, err := l.build(models)
	if err != nil {
		return Report{}, err
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if err := l.watchPower(watchCtx); err != nil {
		return Report{}, err
	}
	if err := l.openPorts(watchCtx); err != nil {
		return Report{}, err
	}
	if err := l.startCallManagers(); err != nil {
		return Report{}, err
	}
	if o.Baseline || o.NoProxy {
		if err := l.routeToCallManagers(); err != nil {
			return Report{}, err
		}
	}
	if o.Baseline {
		if err := l.prepareBaseline(ctx); err != nil {
			return Report{}, err
		}
	}
	// Registered phones keep alive until the report is taken.
	var stopPhones context.CancelFunc
	l.phonesCtx, stopPhones = context.WithCancel(watchCtx)
	defer stopPhones()
	phases := l.phases()
	names := make([]string, len(phases))
	for i, p := range phases {
		names[i] = p.Name()
	}
	rec := newRecorder(names)
	stormCtx, cancel := context.WithTimeoutCause(ctx, o.Timeout, fmt.Errorf("storm timeout %s reached", o.Timeout))
	defer cancel()
	// The storm starts when the appliance does: phones are plugged in and
	// wait for power while the agent comes up, so the power phase includes
	// the agent's own start-up.
	start := time.Now()
	sampler := newLoadSampler(l.appNS, labMetricsListen, loadSampleEvery)
	sampler.more = l.baselineCounters()
	sampleCtx, stopSampling := context.WithCancel(stormCtx)
	sampled := make(chan struct{})
	go func() { defer close(sampled); sampler.run(sampleCtx, start) }()
	defer stopSampling()
	var wg sync.WaitGroup
	for _, ph := range phones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runPhone(stormCtx, ph, phases, rec, start)
		}()
	}
	if err := l.startAppliance(ctx); err != nil {
		cancel()
		wg.Wait()
		return Report{}, err
	}
	if o.damage != "" {
		if err := damageFile(filepath.Join(l.tftpRoot, o.damage)); err != nil {
			cancel()
			wg.Wait()
			return Report{}, err
		}
	}
	faults := l.startFaults(stormCtx, rec, start)
	l.waitShowingProgress(&wg, rec, names, start)
	faults.wait()
	wall := time.Since(start)
	if o.beforeReport != nil {
		if err := o.beforeReport(stormCtx, l); err != nil {
			return Report{}, err
		}
	}
	stopSampling()
	<-sampled

	rep = rec.report(o.Phones, o.Ports, o.mode(), wall)
	rep.voiceVLANs = o.VoiceVLANs
	faults.addTo(&rep)
	rep.provisioned = l.provisionSummary(phones)
	rep.registrations = l.registrationSummary()
	rep.agentCounters = l.readAgentCounters(ctx)
	rep.baseline = l.baselineSummary()
	l.logAgentMetrics(ctx)
	stopPhones()
	rep.Series.Load = sampler.samples
	rep.PowerPolicy, rep.PeakLoad = o.PowerPolicy, peakLoad(sampler.samples)
	if !rec.lastDone.IsZero() {
		rep.AllDoneSeconds = rec.lastDone.Sub(start).Seconds()
	}
	// An agent that fails to stop cleanly is an error, but the storm's
	// report is still written.
	integrity := l.integrityBeforeStop()
	stopErr := l.stopAgent()
	rep.Integrity = l.integrityAfterStop(ctx, integrity)
	if stopErr != nil {
		return rep, stopErr
	}
	if ctx.Err() != nil {
		return rep, fmt.Errorf("lab interrupted: %w", context.Cause(ctx))
	}
	return rep, nil
}

type lab struct {
	o  Options
	id string

	appNS  *vnet.NS
	app    *applianceSide
	ports  []*Port
	runDir string
	bpffs  string // mounted by the lab, unmounted in cleanup
	pinDir string
	agent  *exec.Cmd
	exited chan struct{}
	// agentThread started the agent and lives until it has exited.
	agentThread *vnet.Thread
	logf        *os.File
	tagger      *phonetag.Tagger
	notify      *net.UnixConn

	phones        []*Phone
	cmNS          *vnet.NS        // the CallManagers'
	cms           []*remoteCM     // the CallManagers, by priority
	cmProc        *cmProcess      // ... and their process
	cmThread      *vnet.Thread    // the thread that started it
	phonesCtx     context.Context // registered phones keep alive under it
	registrations registrations   // their events
	tftpRoot      string          // what the agent serves: the synthetic loads
	catalogPath   string          // their catalog
	firmwareBytes atomic.Int64

	baseline *baselineStack // Kea and tftpd-hpa, in a baseline run
}

// openPorts gives each port's phones their raw socket, and starts
// delivering the replies that arrive on it.
func (l *lab) openPorts(ctx context.Context) error {
	var err error
	if l.tagger, err = phonetag.Load(); err != nil {
		return fmt.Errorf("the phones' VLAN tagger: %w", err)
	}
	for _, p := range l.ports {
		io, err := openPortIO(p, l.tagger)
		if err != nil {
			return err
		}
		p.io = io
		go io.run(ctx)
		go io.runCDP(ctx)
	}
	return nil
}

// build creates the namespaces and links, all down on the phone side (the
// ports are not powered yet), and the phones behind them.
func (l *lab) build(models []images.Model) ([]*Phone, error) {
	var err error
	l.runDir = filepath.Join("/run", "phoneboot-lab-"+l.id)
	if err := os.MkdirAll(l.runDir, 0o700); err != nil {
		return nil, fmt.Errorf("lab run directory: %w", err)
	}
	// A bpffs of the lab's own: the agent pins there, and nothing of the
	// lab shows up in (or needs) the host's /sys/fs/bpf.
	bpffs := filepath.Join(l.runDir, "bpffs")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		return nil, fmt.Errorf("lab bpffs: %w", err)
	}
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		return nil, fmt.Errorf("mount the lab's bpffs: %w", err)
	}
	l.bpffs = bpffs
	l.pinDir = filepath.Join(bpffs, "phoneboot")
	l.appNS, err = vnet.Create("pb" + l.id + "a")
	if err != nil {
		return nil, err
	}
	if err := l.buildBridge(); err != nil {
		return nil, err
	}
	for i := range l.o.Ports {
		ns, err := vnet.Create(fmt.Sprintf("pb%sp%d", l.id, i+1))
		if err != nil {
			return nil, err
		}
		p := &Port{Index: i, Name: fmt.Sprintf("p%d", i+1), NS: ns, Link: phoneLink, power: newPortPower()}
		p.power.flaps = slices.ContainsFunc(l.o.Faults, func(f Fault) bool { return f.Kind == FaultPort && f.Port == p.Name })
		l.ports = append(l.ports, p)
		if err := l.buildPort(p); err != nil {
			return nil, err
		}
	}
	phones := make([]*Phone, l.o.Phones)
	onPort := make([][]*Phone, len(l.ports))
	for i := range phones {
		port := l.ports[i%len(l.ports)]
		ph := newPhone(i, models[i%len(models)], port, l.o.Seed)
		ph.nicIndex = phoneIndexBase + len(onPort[port.Index])
		ph.listen = ph.listenUDP
		onPort[port.Index] = append(onPort[port.Index], ph)
		port.Class = max(port.Class, ph.Model.PoEClass)
		phones[i] = ph
	}
	for _, ph := range pickUpgraders(phones, l.o.UpgradeFraction, l.o.Seed) {
		ph.Load, ph.bootLoad = ph.Model.PreviousLoad, ph.Model.PreviousLoad
	}
	l.phones = phones
	if err := l.writeLoads(); err != nil {
		return nil, err
	}
	for _, p := range l.ports {
		if err := createPhoneNICs(p, onPort[p.Index]); err != nil {
			return nil, err
		}
	}
	// Named so that what a killed lab leaves behind can be found.
	l.o.Log.Info("lab built", "namespaces", "pb"+l.id+"*", "run_dir", l.runDir)
	return phones, nil
}

// buildBridge makes the appliance's bridge with its addresses.
func (l *lab) buildBridge() error {
	if err := l.appNS.Do(func() error { return writeNetSysctls(noIPv6) }); err != nil {
		return fmt.Errorf("appliance namespace: %w", err)
	}
	h := l.appNS.Netlink()
	off := false
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName, HardwareAddr: bridgeMAC}, MulticastSnooping: &off}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("appliance bridge: %w", err)
	}
	link, err := h.LinkByName(bridgeName)
	if err != nil {
		return fmt.Errorf("appliance bridge: %w", err)
	}
	servers := map[netip.Prefix]netip.Addr{}
	for k := range max(l.o.VoiceVLANs, 1) {
		subnet, server, _, _ := voiceNet(k)
		servers[subnet] = server
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: server.AsSlice(), Mask: net.CIDRMask(subnet.Bits(), 32)}}
		if err := h.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("appliance address %s: %w", server, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("appliance bridge: %w", err)
	}
	if err := l.appNS.Do(bridgeWithoutNetfilter); err != nil {
		return fmt.Errorf("appliance namespace: %w", err)
	}
	rt, err := openRTNL(l.appNS)
	if err != nil {
		return err
	}
	l.app = &applianceSide{mac: bridgeMAC, index: link.Attrs().Index, rt: rt,
		server: func(p netip.Prefix) netip.Addr { return servers[p.Masked()] }}
	return nil
}

// buildPort makes port p: its veth pair, the appliance's end an isolated
// member of the bridge, and the phones' namespace set up for their
// interfaces.
func (l *lab) buildPort(p *Port) error {
	if err := vnet.Veth(l.appNS, p.Name, p.NS, phoneLink); err != nil {
		return err
	}
	h := l.appNS.Netlink()
	link, err := h.LinkByName(p.Name)
	if err != nil {
		return fmt.Errorf("port %s: %w", p.Name, err)
	}
	if err := h.LinkSetMasterByIndex(link, l.app.index); err != nil {
		return fmt.Errorf("port %s: join the bridge: %w", p.Name, err)
	}
	if err := h.LinkSetIsolated(link, true); err != nil {
		return fmt.Errorf("port %s: isolate: %w", p.Name, err)
	}
	if err := givePortQueue(h, link); err != nil {
		return fmt.Errorf("port %s: %w", p.Name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("port %s: %w", p.Name, err)
	}
	if p.thread, err = p.NS.StartThread(); err != nil {
		return fmt.Errorf("port %s: %w", p.Name, err)
	}
	if err := p.thread.Do(func() error { return writeNetSysctls(portSysctls) }); err != nil {
		return fmt.Errorf("port %s: %w", p.Name, err)
	}
	p.rt, err = openRTNL(p.NS)
	return err
}

// givePortQueue gives a switch port the queue a real port has. A veth has
// none (noqueue), and the phones' end, which runs an XDP program, takes
// frames into a ring of 256: what the appliance sent while that ring was
// full was dropped. A 10,000-phone storm lost 2.9 million segments so,
// TCP resent them and timed out 13,755 times, and one phone's firmware
// download sat in the backoff until the storm's deadline. With a qdisc
// the veth stops its queue while the ring is full (veth's qdisc
// backpressure, which this 6.18 kernel has) and nothing is dropped:
// 26,758 segments resent, 847 timeouts, the storm 110 s against 107-146 s.
// pfifo_fast, the classic default of a NIC: fq and fq_codel are not built
// into every kernel (this machine's).
func givePortQueue(h *netlink.Handle, link netlink.Link) error {
	q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_ROOT}, QdiscType: "pfifo_fast"}
	if err := h.QdiscReplace(q); err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	return nil
}

// watchPower follows each port's power (see watchPort).
func (l *lab) watchPower(ctx context.Context) error {
	for _, p := range l.ports {
		if err := l.watchPort(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// agentConfig is the config the lab's agent runs with: the same schema and
// code path as `phoneboot serve`.
func (l *lab) agentConfig() agent.Config {
	cfg := agent.DefaultConfig()
	cfg.Control.Socket = filepath.Join(l.runDir, "control.sock")
	cfg.Metrics.Listen = labMetricsListen // the lab samples the appliance's load there
	cfg.FastPath.Enabled = !l.o.NoXDP
	cfg.FastPath.PinDir = l.pinDir
	cfg.FastPath.DetachOnStop = true
	l.applyPower(&cfg)
	// A pool per voice VLAN (one untagged pool without VLANs); in each the
	// appliance is .1 and the TFTP server phones are sent to.
	cfg.DHCP.Enabled = true
	cfg.DHCP.LeaseDB = filepath.Join(l.runDir, leaseDBName)
	for k := range max(l.o.VoiceVLANs, 1) {
		subnet, server, first, last := voiceNet(k)
		pool := agent.DHCPPoolConfig{
			Name:        "lab",
			Subnet:      subnet,
			RangeStart:  first,
			RangeEnd:    last,
			ServerIP:    server,
			Routers:     []netip.Addr{server},
			TFTPServers: []netip.Addr{server},
			LeaseTime:   agent.Duration(time.Hour),
		}
		if l.o.VoiceVLANs > 0 {
			pool.VLAN = l.o.voiceVLAN(k)
			pool.Name = fmt.Sprintf("voice%d", pool.VLAN)
		}
		cfg.DHCP.Pools = append(cfg.DHCP.Pools, pool)
	}
	l.provisionConfig(&cfg, l.phones)
	l.proxyConfig(&cfg)
	for _, p := range l.ports {
		cfg.Ports = append(cfg.Ports, agent.PortConfig{
			Name:      p.Name,
			Lab:       &agent.LabPortConfig{Netns: p.NS.Name, Link: p.Link, Class: p.Class},
			VoiceVLAN: l.o.voiceVLAN(p.Index),
		})
	}
	return cfg
}

// startAgent runs the agent inside the appliance namespace and waits for
// its sd_notify READY=1, just as systemd would.
func (l *lab) startAgent(ctx context.Context) error {
	data, err := yaml.Marshal(l.daemonConfig())
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(l.runDir, "phoneboot.yaml")
	if err := os.WriteFile(cfgPath, data, 0o600); err != nil {
		return fmt.Errorf("write agent config: %w", err)
	}
	notifyPath := filepath.Join(l.runDir, "notify.sock")
	notify, err := listenNotify(notifyPath)
	if err != nil {
		return err
	}
	// Kept open while the agent runs: it reports STOPPING=1 there too.
	l.notify = notify

	l.logf, err = os.Create(filepath.Join(l.runDir, "agent.log"))
	if err != nil {
		return err
	}
	return l.spawnAgent(ctx)
}

// spawnAgent starts the agent process with the config startAgent wrote
// and waits for its READY=1 (again after a restart, on the same socket).
func (l *lab) spawnAgent(ctx context.Context) error {
	cfgPath := filepath.Join(l.runDir, "phoneboot.yaml")
	args := append(append([]string(nil), l.o.AgentCommand[1:]...), "--config", cfgPath)
	cmd := exec.Command(l.o.AgentCommand[0], args...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+filepath.Join(l.runDir, "notify.sock"))
	var logw io.Writer = l.logf
	if l.o.AgentLog != nil {
		logw = io.MultiWriter(l.logf, l.o.AgentLog)
	}
	cmd.Stdout, cmd.Stderr = logw, logw
	// If the lab dies, the agent goes with it rather than serving on. The
	// kernel sends Pdeathsig when the thread that started the child ends,
	// not the process: the agent is started from a thread of the lab's
	// own that stays until the agent has stopped (a pooled thread may end
	// whenever a goroutine that locked it returns without unlocking).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var err error
	if l.agentThread, err = l.appNS.StartThread(); err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	if err := l.agentThread.Do(cmd.Start); err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	l.agent = cmd
	exited := make(chan struct{})
	l.exited = exited
	go func() { cmd.Wait(); close(exited) }()

	ready := make(chan error, 1)
	go func() { ready <- waitReady(l.notify) }()
	select {
	case err := <-ready:
		if err != nil {
			return fmt.Errorf("agent readiness: %w", err)
		}
		l.o.Log.Info("agent ready", "pid", cmd.Process.Pid)
		return nil
	case <-exited:
		return fmt.Errorf("agent exited before it was ready (%s); its log:\n%s", cmd.ProcessState, l.agentLogTail())
	case <-time.After(30 * time.Second):
		return fmt.Errorf("agent not ready after 30s; its log:\n%s", l.agentLogTail())
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// readAgentCounters asks the agent for its data-path counters, as
// `phoneboot status` does.
func (l *lab) readAgentCounters(ctx context.Context) map[string]uint64 {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := control.NewClient(filepath.Join(l.runDir, "control.sock")).Status(ctx)
	if err != nil {
		l.o.Log.Warn("agent status", "error", err)
		return nil
	}
	counters := map[string]uint64{}
	for _, c := range st.Counters {
		counters[c.Name] = c.Packets
	}
	return counters
}

// agentMetricsShown are the metric families logged at the end of a storm
// (--verbose): how the file servers and the DHCP server fared.
var agentMetricsShown = regexp.MustCompile(`^phoneboot_(tftp|http|dhcp_(dropped|silent|socket_drops|sent))_`)

// logAgentMetrics logs the agent's file-server and DHCP metrics.
func (l *lab) logAgentMetrics(ctx context.Context) {
	if !l.o.Log.Enabled(ctx, slog.LevelInfo) {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = l.appNS.Do(func() error {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+labMetricsListen+"/metrics", nil)
	if err != nil {
		return
	}
	resp, err := client.Do(req)
	if err != nil {
		l.o.Log.Warn("agent metrics", "error", err)
		return
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if agentMetricsShown.MatchString(line) && !strings.HasSuffix(line, " 0") {
			l.o.Log.Info("agent metric", "sample", line)
		}
	}
}

func (l *lab) agentLogTail() string {
	data, err := os.ReadFile(l.logf.Name())
	if err != nil {
		return err.Error()
	}
	const keep = 4096
	if len(data) > keep {
		data = data[len(data)-keep:]
	}
	return string(data)
}

// stopAgent asks the agent to stop, as systemd does, and waits for it.
func (l *lab) stopAgent() error {
	if l.agent == nil {
		return nil
	}
	cmd := l.agent
	l.agent = nil
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-l.exited:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-l.exited
		return fmt.Errorf("agent did not stop within 15s of SIGTERM; killed")
	}
	if !cmd.ProcessState.Success() {
		return fmt.Errorf("agent exited with %s; its log:\n%s", cmd.ProcessState, l.agentLogTail())
	}
	// Where the machine's time went: the agent's CPU, and the lab's own
	// (the simulated phones, their kernel interfaces, the taggers).
	var self unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &self)
	l.o.Log.Info("cpu", "agent_user", cmd.ProcessState.UserTime().Round(time.Millisecond),
		"agent_sys", cmd.ProcessState.SystemTime().Round(time.Millisecond),
		"lab_user", time.Duration(self.Utime.Nano()).Round(time.Millisecond),
		"lab_sys", time.Duration(self.Stime.Nano()).Round(time.Millisecond))
	return nil
}

func (l *lab) waitShowingProgress(wg *sync.WaitGroup, rec *recorder, phases []string, start time.Time) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	if !l.o.LiveProgress {
		<-done
		return
	}
	t := time.NewTicker(l.o.ProgressEvery)
	defer t.Stop()
	draw := func() {
		per, completed, failed := rec.progress()
		fmt.Fprintf(l.o.Out, "\r\033[K%s", progressLine(time.Since(start), phases, per, l.o.Phones, completed, failed))
	}
	for {
		select {
		case <-done:
			draw()
			fmt.Fprintln(l.o.Out)
			return
		case <-t.C:
			draw()
		}
	}
}

// cleanup removes everything the lab made; it is safe on a half-built lab.
func (l *lab) cleanup() error {
	var errs []error
	errs = append(errs, l.stopBaseline())
	if l.agent != nil {
		l.agent.Process.Kill()
		<-l.exited
	}
	if l.agentThread != nil {
		l.agentThread.Stop()
	}
	if l.logf != nil {
		l.logf.Close()
	}
	if l.notify != nil {
		l.notify.Close()
	}
	for _, p := range l.ports {
		if p.io != nil {
			p.io.close()
		}
		if p.rt != nil {
			p.rt.close()
		}
		if p.thread != nil {
			p.thread.Stop()
		}
		errs = append(errs, p.NS.Close())
	}
	if l.app != nil {
		l.app.rt.close()
	}
	if l.cmProc != nil {
		l.cmProc.close()
	}
	if l.cmThread != nil {
		l.cmThread.Stop()
	}
	if l.cmNS != nil {
		errs = append(errs, l.cmNS.Close())
	}
	if l.tagger != nil {
		l.tagger.Close()
	}
	if l.appNS != nil {
		errs = append(errs, l.appNS.Close())
	}
	// The agent unpins on a clean stop; unmounting catches a crash, and the
	// ports its links were on are gone with the namespaces anyway.
	if l.bpffs != "" {
		if err := unix.Unmount(l.bpffs, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount lab bpffs: %w", err))
		}
	}
	if l.runDir != "" {
		errs = append(errs, os.RemoveAll(l.runDir))
	}
	return errors.Join(errs...)
}

// fitFileLimit makes room for the storm's file descriptors, and refuses a
// storm the host's limit cannot hold rather than fail its last phones
// minutes into it. The lab holds a TCP connection per registered phone,
// or while the phone fetches, a transfer's socket (the CallManagers run in
// a process of their own); the agent, started from here, inherits the
// limit, and its registration proxy holds two per registered phone (the
// phone's side and the CallManager's). Raising the hard limit needs
// CAP_SYS_RESOURCE; without it, see fitHardLimit.
func fitFileLimit(o *Options) error {
	need := uint64(labFilesPerPhone*o.Phones + labFilesReserve)
	if !o.Baseline && !o.NoProxy {
		need = max(need, proxyProcessFiles(o.Phones, max(o.ProxyWorkers, 1)))
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= need {
		return nil
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: need, Max: max(lim.Max, need)}); err == nil {
		return nil
	}
	// Without CAP_SYS_RESOURCE: as far as the hard limit goes.
	lim.Cur = lim.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raise the open file limit to %d: %w", lim.Max, err)
	}
	workers, err := fitHardLimit(*o, lim.Max)
	if err != nil {
		return err
	}
	if workers != max(o.ProxyWorkers, 1) {
		o.Log.Info("the daemon's registration proxy runs in worker processes: one cannot hold the phones within the hard open-file limit",
			"proxy_workers", workers, "hard_limit", lim.Max)
		o.ProxyWorkers = workers
	}
	return nil
}

// fitHardLimit is how many processes the daemon's proxy needs for the
// storm's phones under a hard open-file limit of hard (each process has
// the limit to itself): o.ProxyWorkers if it names a number, else the
// fewest that hold the phones. It refuses a storm the lab's own process
// cannot hold, and too few workers named.
func fitHardLimit(o Options, hard uint64) (int, error) {
	labNeeds := uint64(labFilesPerPhone*o.Phones + labFilesReserve)
	if hard < labNeeds {
		return 0, fmt.Errorf("--phones %d need about %d open files in the lab, and this host's hard limit is %d (raising it needs CAP_SYS_RESOURCE): "+
			"run with at most %d phones, or with a higher limit", o.Phones, labNeeds, hard, (hard-labFilesReserve)/labFilesPerPhone)
	}
	workers := max(o.ProxyWorkers, 1)
	if o.Baseline || o.NoProxy || proxyProcessFiles(o.Phones, workers) <= hard {
		return workers, nil
	}
	if o.ProxyWorkers != 0 {
		return 0, fmt.Errorf("--phones %d through %d proxy workers need about %d open files in each, and this host's hard limit is %d "+
			"(raising it needs CAP_SYS_RESOURCE): run with --proxy-workers 0 (as many as the limit needs), or with --no-proxy",
			o.Phones, o.ProxyWorkers, proxyProcessFiles(o.Phones, workers), hard)
	}
	// The fewest that hold the phones: at most 3, since the lab's own
	// process holds one file per phone within the same limit.
	n := 2
	for proxyProcessFiles(o.Phones, n) > hard {
		n++
	}
	return n, nil
}

// proxyProcessFiles is what each of n processes running the proxy holds
// for phones proxied phones: the kernel spreads connections over the
// workers by a hash, not evenly, so with more than one each is given
// room for a tenth more than its even share.
func proxyProcessFiles(phones, n int) uint64 {
	share := phones
	if n > 1 {
		share = (phones*11/10 + n - 1) / n
	}
	return uint64(proxyFilesPerPhone*share + agentFilesReserve)
}

// Descriptors per phone and besides, in the lab and in the daemon.
const (
	labFilesPerPhone   = 1    // its registered connection, or while it fetches, a transfer's socket
	labFilesReserve    = 4096 // raw sockets, netlink, namespaces; a fetching phone's kept HTTP connection
	proxyFilesPerPhone = 2    // the phone's side and the CallManager's side
	agentFilesReserve  = 1024 // the ports' sockets, listeners, maps, files, transfers in flight
)

// IsTerminal reports whether f is a terminal, for live progress.
func IsTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
