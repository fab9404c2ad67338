// Package fastpath loads phoneboot's XDP program, attaches it to the
// phone-facing ports, pins its state under bpffs so the data path outlives
// a daemon restart, and reads its per-CPU counters.
package fastpath

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// Mode is how the XDP program is attached to a port.
type Mode string

const (
	// ModeNative requires driver (native) XDP and fails where the driver lacks it.
	ModeNative Mode = "native"
	// ModeGeneric uses the kernel's skb-based XDP, available on every netdev.
	ModeGeneric Mode = "generic"
	// ModeAuto tries native first and falls back to generic.
	ModeAuto Mode = "auto"
)

// ParseMode checks a mode name from configuration.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeNative, ModeGeneric, ModeAuto:
		return m, nil
	}
	return "", fmt.Errorf("xdp mode %q is not one of native, generic, auto", s)
}

// Config says where to attach and where to keep pinned state.
type Config struct {
	Ports []string
	Mode  Mode
	// PinDir is a directory on bpffs for maps and links, created if missing
	// (its parent is mounted as bpffs if it is not one already). Empty means
	// nothing is pinned and everything goes away with the process.
	PinDir string
	// DetachOnClose detaches from the ports and removes the pins on Close.
	// Without it the pinned links keep the program attached, so a restarted
	// daemon picks up the same data path without a gap.
	DetachOnClose bool
}

// Attachment is one port with the program on it.
type Attachment struct {
	Port    string `json:"port"`
	Ifindex int    `json:"ifindex"`
	Mode    Mode   `json:"mode"` // native or generic: the mode in use, never auto
}

// Counter is one counter summed over all CPUs.
type Counter struct {
	Name    string `json:"name"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// counterNames maps the C enum pb_counter to the names Go exports. Its
// length is tied to PB_CNT__MAX at compile time and TestCounterNamesMatchBTF
// checks every name against the enum in the object's BTF.
var counterNames = [phonePortPbCounterPB_CNT__MAX]string{
	phonePortPbCounterPB_CNT_CDP:                     "cdp",
	phonePortPbCounterPB_CNT_LLDP:                    "lldp",
	phonePortPbCounterPB_CNT_DHCP:                    "dhcp",
	phonePortPbCounterPB_CNT_OTHER:                   "other",
	phonePortPbCounterPB_CNT_TRUNCATED:               "truncated",
	phonePortPbCounterPB_CNT_MALFORMED:               "malformed",
	phonePortPbCounterPB_CNT_UNCONFIGURED:            "unconfigured",
	phonePortPbCounterPB_CNT_VLAN_TAGGED:             "vlan_tagged",
	phonePortPbCounterPB_CNT_VLAN_DOUBLE_TAGGED:      "vlan_double_tagged",
	phonePortPbCounterPB_CNT_VLAN_TOO_DEEP:           "vlan_too_deep",
	phonePortPbCounterPB_CNT_DHCP_FAST_OFFER:         "dhcp_fast_offer",
	phonePortPbCounterPB_CNT_DHCP_FAST_ACK:           "dhcp_fast_ack",
	phonePortPbCounterPB_CNT_DHCP_FAST_NO_FREE:       "dhcp_fast_no_free",
	phonePortPbCounterPB_CNT_VLAN_HOP_DROP:           "vlan_hop_drop",
	phonePortPbCounterPB_CNT_VLAN_UNTAGGED:           "vlan_untagged",
	phonePortPbCounterPB_CNT_VLAN_AUTO_VOICE:         "vlan_auto_voice",
	phonePortPbCounterPB_CNT_VLAN_EGRESS_TAGGED:      "vlan_egress_tagged",
	phonePortPbCounterPB_CNT_VLAN_EGRESS_PRIORITY:    "vlan_egress_priority",
	phonePortPbCounterPB_CNT_VLAN_EGRESS_DROP:        "vlan_egress_drop",
	phonePortPbCounterPB_CNT_DHCP_FAST_RING_FULL:     "dhcp_fast_ring_full",
	phonePortPbCounterPB_CNT_DHCP_FAST_BINDINGS_FULL: "dhcp_fast_bindings_full",
}

// CounterNames lists the counters in enum order.
func CounterNames() []string { return append([]string(nil), counterNames[:]...) }

// Objects is the loaded program and its maps, not attached anywhere.
type Objects struct {
	objs   phonePortObjects
	egress phoneEgressObjects
}

// LoadObjects loads the program and its maps, reusing maps pinned in pinDir
// (if not empty), and writes the program's configuration.
func LoadObjects(pinDir string, log *slog.Logger) (*Objects, error) {
	spec, err := loadPhonePort()
	if err != nil {
		return nil, fmt.Errorf("read embedded BPF object: %w", err)
	}
	opts := &ebpf.CollectionOptions{}
	spec.Maps[phonePortMapPbDhcpEvents].MaxEntries = DHCPEventRingSize
	if pinDir != "" {
		if err := ensurePinDir(pinDir); err != nil {
			return nil, err
		}
		opts.Maps.PinPath = pinDir
		keepPinnedRingSize(spec, pinDir)
	} else {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	o := &Objects{}
	err = spec.LoadAndAssign(&o.objs, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) && pinDir != "" {
		// A pinned map from an older build with another layout: its
		// contents cannot be read by this program, so it starts afresh.
		// Only it: the others keep what they hold, the event ring above
		// all, whose unread events are leases the kernel handed out while
		// no daemon ran.
		replaced, rerr := removeIncompatiblePins(spec, pinDir)
		if rerr != nil {
			return nil, rerr
		}
		log.Warn("pinned BPF maps have an old layout; replacing them", "pinDir", pinDir, "maps", replaced, "error", err)
		err = spec.LoadAndAssign(&o.objs, opts)
	}
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("BPF verifier rejected xdp_phone_port: %+v", verr)
		}
		return nil, fmt.Errorf("load BPF objects: %w", err)
	}
	if err := o.loadEgress(); err != nil {
		o.objs.Close()
		return nil, err
	}
	cfg := phonePortPbConfig{Version: uint32(phonePortPbConfigVersionPB_CONFIG_VERSION)}
	if err := o.objs.PbConfigMap.Put(uint32(0), cfg); err != nil {
		o.Close()
		return nil, fmt.Errorf("write BPF config map: %w", err)
	}
	return o, nil
}

// removeIncompatiblePins removes the pinned maps in pinDir that the
// spec's maps cannot use (another type, key, value size, size or flags)
// and returns their names.
func removeIncompatiblePins(spec *ebpf.CollectionSpec, pinDir string) ([]string, error) {
	var removed []string
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		path := filepath.Join(pinDir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return removed, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		err = ms.Compatible(m)
		m.Close()
		if err == nil {
			continue
		}
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return removed, fmt.Errorf("remove stale pinned map %s: %w", name, rerr)
		}
		removed = append(removed, name)
	}
	slices.Sort(removed)
	return removed, nil
}

// keepPinnedRingSize gives the event ring a pinned earlier run left the
// size it has: a ring of another size would count as an incompatible map,
// and replacing it would lose the events in it, leases the kernel handed
// out while no daemon ran. The size changes when the pins go (detach on
// stop, a reboot).
func keepPinnedRingSize(spec *ebpf.CollectionSpec, pinDir string) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, phonePortMapPbDhcpEvents), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return // none, or unusable: loading reports what is wrong with it
	}
	defer m.Close()
	if m.Type() == ebpf.RingBuf {
		spec.Maps[phonePortMapPbDhcpEvents].MaxEntries = m.MaxEntries()
	}
}

// Program is the XDP entry program.
func (o *Objects) Program() *ebpf.Program { return o.objs.XdpPhonePort }

// ReadCounters sums every counter over the possible CPUs.
func (o *Objects) ReadCounters() ([]Counter, error) {
	out := make([]Counter, len(counterNames))
	var perCPU []phonePortPbCounterValue
	for i, name := range counterNames {
		if err := o.objs.PbCounters.Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("read counter %s: %w", name, err)
		}
		out[i].Name = name
		for _, v := range perCPU {
			out[i].Packets += v.Packets
			out[i].Bytes += v.Bytes
		}
	}
	return out, nil
}

// Close releases the file descriptors; pinned maps stay.
func (o *Objects) Close() error { return errors.Join(o.egress.Close(), o.objs.Close()) }

// FastPath is the program attached to the configured ports.
type FastPath struct {
	cfg         Config
	log         *slog.Logger
	objs        *Objects
	links       []link.Link
	attachments []Attachment
}

// New loads the program and attaches it to every configured port. It fails
// as a whole: on error nothing it attached stays attached.
func New(cfg Config, log *slog.Logger) (_ *FastPath, err error) {
	if _, err := ParseMode(string(cfg.Mode)); err != nil {
		return nil, err
	}
	objs, err := LoadObjects(cfg.PinDir, log)
	if err != nil {
		return nil, err
	}
	f := &FastPath{cfg: cfg, log: log, objs: objs}
	var created []link.Link // attached by this call, as opposed to taken over from pins
	defer func() {
		if err != nil {
			// Undo what this call attached; links taken over from an
			// earlier run stay pinned and keep serving.
			for _, l := range created {
				if f.cfg.PinDir != "" {
					l.Unpin()
				}
			}
			// Not Close's DetachOnClose path: that would unpin the taken-over
			// links and the maps too, taking down the earlier run's ports.
			f.cfg.DetachOnClose = false
			f.Close()
		}
	}()
	if cfg.PinDir != "" {
		if err := f.removeStaleLinks(); err != nil {
			return nil, err
		}
	}
	// Ports are attached side by side: on a veth each attach waits for
	// RCU grace periods (8-16 ms each here), which attaches in flight at
	// once share, so 48 ports no longer take most of a second of the
	// daemon's start. Each worker runs in the caller's network namespace:
	// the kernel resolves interface indexes in the calling thread's.
	origin, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("the network namespace to attach in: %w", err)
	}
	defer origin.Close()
	type portLinks struct {
		a              Attachment
		xdp, egress    link.Link
		freshX, freshE bool
		err            error
	}
	results := make([]portLinks, len(cfg.Ports))
	var wg sync.WaitGroup
	sem := make(chan struct{}, attachConcurrency)
	for i, port := range cfg.Ports {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			r := &results[i]
			r.err = vnet.RunIn(origin, "of the daemon", func() error {
				var err error
				if r.a, r.xdp, r.freshX, err = f.attach(port); err != nil {
					return err
				}
				r.egress, r.freshE, err = f.attachEgress(port, r.a.Ifindex)
				return err
			})
			if r.err != nil {
				r.err = fmt.Errorf("port %s: %w", port, r.err)
			}
		}()
	}
	wg.Wait()
	var errs []error
	for i, r := range results {
		// Every link made is kept for Close, and the fresh ones for the
		// cleanup above, whether or not its port failed.
		for _, l := range []struct {
			l     link.Link
			fresh bool
		}{{r.xdp, r.freshX}, {r.egress, r.freshE}} {
			if l.l == nil {
				continue
			}
			f.links = append(f.links, l.l)
			if l.fresh {
				created = append(created, l.l)
			}
		}
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		f.attachments = append(f.attachments, r.a)
		log.Info("xdp attached", "port", cfg.Ports[i], "ifindex", r.a.Ifindex, "mode", string(r.a.Mode), "requested", string(cfg.Mode))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return f, nil
}

// attachConcurrency bounds the ports being attached at once.
const attachConcurrency = 16

func linkPinPath(pinDir, port string) string {
	return filepath.Join(pinDir, "link_"+port)
}

// attach puts the program on one port: it takes over a link pinned by an
// earlier run when there is one in the requested mode (the program is
// swapped atomically, no frame goes unprocessed), or attaches afresh.
func (f *FastPath) attach(port string) (a Attachment, l link.Link, fresh bool, err error) {
	nlink, err := netlink.LinkByName(port)
	if err != nil {
		return a, nil, false, fmt.Errorf("find interface: %w", err)
	}
	ifindex := nlink.Attrs().Index
	a = Attachment{Port: port, Ifindex: ifindex}

	var dropped Mode // mode of a pinned link dropped to attach afresh
	if f.cfg.PinDir != "" {
		l, mode, droppedMode, err := f.reusePinnedLink(port, ifindex)
		if err != nil {
			return a, nil, false, err
		}
		if l != nil {
			a.Mode = mode
			return a, l, false, nil
		}
		dropped = droppedMode
	}

	l, mode, err := attachXDP(f.objs.Program(), ifindex, f.cfg.Mode)
	if err != nil {
		if dropped != "" {
			// The kernel refuses two modes on one device, so the old link had
			// to go first; put the port back as it was rather than dark.
			err = errors.Join(err, f.restoreLink(port, ifindex, dropped))
		}
		return a, nil, false, err
	}
	if f.cfg.PinDir != "" {
		if err := l.Pin(linkPinPath(f.cfg.PinDir, port)); err != nil {
			l.Close()
			return a, nil, false, fmt.Errorf("pin xdp link: %w", err)
		}
	}
	a.Mode = mode
	return a, l, true, nil
}

// attachXDP attaches in the requested mode; auto tries native, then generic.
func attachXDP(prog *ebpf.Program, ifindex int, mode Mode) (link.Link, Mode, error) {
	try := func(m Mode) (link.Link, error) {
		flags := link.XDPDriverMode
		if m == ModeGeneric {
			flags = link.XDPGenericMode
		}
		return link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: flags})
	}
	switch mode {
	case ModeNative, ModeGeneric:
		l, err := try(mode)
		if err != nil {
			return nil, "", fmt.Errorf("attach xdp in %s mode: %w", mode, err)
		}
		return l, mode, nil
	case ModeAuto:
		l, nerr := try(ModeNative)
		if nerr == nil {
			return l, ModeNative, nil
		}
		l, gerr := try(ModeGeneric)
		if gerr != nil {
			return nil, "", fmt.Errorf("attach xdp: native: %v; generic: %w", nerr, gerr)
		}
		return l, ModeGeneric, nil
	}
	return nil, "", fmt.Errorf("xdp mode %q is not one of native, generic, auto", mode)
}

// reusePinnedLink returns the pinned link for port, updated to this run's
// program, or nil when there is none usable. A pinned link in a mode other
// than the configured one is removed so the caller attaches afresh; its
// mode is returned as dropped so the caller can restore it on failure.
func (f *FastPath) reusePinnedLink(port string, ifindex int) (l link.Link, mode, dropped Mode, err error) {
	path := linkPinPath(f.cfg.PinDir, port)
	l, err = link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, "", "", nil
	}
	if err != nil {
		return nil, "", "", fmt.Errorf("open pinned link %s: %w", path, err)
	}
	mode, err = attachedMode(ifindex)
	stale := err != nil || (f.cfg.Mode != ModeAuto && mode != f.cfg.Mode)
	if !stale {
		info, ierr := l.Info()
		stale = ierr != nil || info.XDP() == nil || int(info.XDP().Ifindex) != ifindex
	}
	if stale {
		// Wrong interface (recreated with a new index) or wrong mode.
		f.log.Info("replacing pinned xdp link", "port", port, "pinnedMode", string(mode), "requested", string(f.cfg.Mode))
		if err := l.Unpin(); err != nil {
			l.Close()
			return nil, "", "", fmt.Errorf("unpin stale link %s: %w", path, err)
		}
		l.Close()
		return nil, "", mode, nil
	}
	if err := l.Update(f.objs.Program()); err != nil {
		l.Close()
		return nil, "", "", fmt.Errorf("update pinned link %s: %w", path, err)
	}
	f.log.Info("xdp program replaced in pinned link", "port", port, "mode", string(mode))
	return l, mode, "", nil
}

// restoreLink re-attaches this run's program in the mode an earlier run
// had and pins it, so a failed mode change leaves the port serving.
func (f *FastPath) restoreLink(port string, ifindex int, mode Mode) error {
	l, _, err := attachXDP(f.objs.Program(), ifindex, mode)
	if err != nil {
		return fmt.Errorf("restore %s mode: %w", mode, err)
	}
	defer l.Close() // the pin keeps it attached
	if err := l.Pin(linkPinPath(f.cfg.PinDir, port)); err != nil {
		return fmt.Errorf("restore %s mode: pin: %w", mode, err)
	}
	f.log.Warn("mode change failed; port restored to its earlier xdp mode", "port", port, "mode", string(mode))
	return nil
}

// attachedMode reads the XDP attach mode of an interface from netlink.
func attachedMode(ifindex int) (Mode, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return "", err
	}
	x := l.Attrs().Xdp
	if x == nil || !x.Attached {
		return "", fmt.Errorf("no xdp program attached to ifindex %d", ifindex)
	}
	switch x.AttachMode {
	case nl.XDP_ATTACHED_DRV:
		return ModeNative, nil
	case nl.XDP_ATTACHED_SKB:
		return ModeGeneric, nil
	}
	return "", fmt.Errorf("ifindex %d has xdp attach mode %d", ifindex, x.AttachMode)
}

// removeStaleLinks detaches pinned links of ports no longer configured.
func (f *FastPath) removeStaleLinks() error {
	entries, err := os.ReadDir(f.cfg.PinDir)
	if err != nil {
		return fmt.Errorf("read pin dir: %w", err)
	}
	want := map[string]bool{}
	for _, p := range f.cfg.Ports {
		want["link_"+p] = true
		want["tcx_"+p] = true
	}
	for _, e := range entries {
		isLink := strings.HasPrefix(e.Name(), "link_") || strings.HasPrefix(e.Name(), "tcx_")
		if !isLink || want[e.Name()] {
			continue
		}
		path := filepath.Join(f.cfg.PinDir, e.Name())
		f.log.Info("detaching from a port no longer configured", "pin", path)
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("remove stale link pin: %w", err)
		}
	}
	return nil
}

// Attachments lists the ports and the mode in use on each.
func (f *FastPath) Attachments() []Attachment {
	return append([]Attachment(nil), f.attachments...)
}

// Counters reads the program's counters.
func (f *FastPath) Counters() ([]Counter, error) { return f.objs.ReadCounters() }

// Close releases the program. With DetachOnClose it also detaches from the
// ports and removes the pins; otherwise the pinned links keep it running.
func (f *FastPath) Close() error {
	var errs []error
	for _, l := range f.links {
		if f.cfg.DetachOnClose && f.cfg.PinDir != "" {
			if err := l.Unpin(); err != nil {
				errs = append(errs, err)
			}
		}
		errs = append(errs, l.Close())
	}
	f.links = nil
	if f.cfg.DetachOnClose && f.cfg.PinDir != "" {
		// Everything in the pin dir is ours: map pins (links were unpinned above).
		entries, err := os.ReadDir(f.cfg.PinDir)
		errs = append(errs, err)
		for _, e := range entries {
			errs = append(errs, os.Remove(filepath.Join(f.cfg.PinDir, e.Name())))
		}
		// The directory may belong to someone else (the systemd unit creates
		// it and the daemon cannot write its parent): leaving it empty is fine.
		if err := os.Remove(f.cfg.PinDir); err != nil && !errors.Is(err, os.ErrNotExist) &&
			!errors.Is(err, os.ErrPermission) && !errors.Is(err, unix.EROFS) {
			errs = append(errs, fmt.Errorf("remove pin dir: %w", err))
		}
	}
	errs = append(errs, f.objs.Close())
	return errors.Join(errs...)
}

// ensurePinDir creates dir on bpffs, mounting bpffs on its parent when the
// parent is not one (as on a host where nothing mounted /sys/fs/bpf).
func ensurePinDir(dir string) error {
	parent := filepath.Dir(dir)
	ok, err := IsBPFFS(parent)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if !ok {
		if err := os.MkdirAll(parent, 0o700); err != nil {
			return fmt.Errorf("create bpffs mount point %s: %w", parent, err)
		}
		// Mounting over a directory with files in it would hide them.
		if entries, err := os.ReadDir(parent); err != nil || len(entries) > 0 {
			return fmt.Errorf("pin dir %s: %s is not on bpffs and not an empty directory to mount it on", dir, parent)
		}
		if err := unix.Mount("bpf", parent, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs on %s: %w", parent, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin dir: %w", err)
	}
	return nil
}

// IsBPFFS tells whether path is on a bpf filesystem.
func IsBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Type == unix.BPF_FS_MAGIC, nil
}
