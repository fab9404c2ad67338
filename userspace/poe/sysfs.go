package poe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// SysfsFiles names a port's attribute files; an empty name is an
// attribute the driver does not have.
type SysfsFiles struct {
	// Enable is read and written: 1 (or enable, enabled, on) powers the
	// port, 0 (disable, disabled, off) does not. Required.
	Enable string `yaml:"enable"`
	// Status is read: delivering/on/powered, searching/detecting/enabled/
	// idle, disabled/off, or a fault word (fault, error, overload, short,
	// ...). Without it, the state follows from Enable and Power.
	Status string `yaml:"status"`
	// Class is read: the detected class 0-8, or -1/none while unknown.
	Class string `yaml:"class"`
	// Power is read: the power drawn, in mW.
	Power string `yaml:"power"`
	// Limit is read and written: the port's power limit, in mW.
	Limit string `yaml:"limit"`
	// Priority is written: 0 critical, 1 high, 2 low.
	Priority string `yaml:"priority"`
}

// DefaultSysfsFiles are the names used unless the config says otherwise.
func DefaultSysfsFiles() SysfsFiles {
	return SysfsFiles{Enable: "enable", Status: "status", Class: "class", Power: "power_mw", Limit: "limit_mw", Priority: "priority"}
}

// SysfsConfig places a vendor driver's files.
type SysfsConfig struct {
	// Path is the template of a port's attribute file: {attr} is replaced
	// by the file's name (Files), {port} by the port's name and {channel}
	// by its channel, e.g. /sys/bus/i2c/devices/1-0020/port-{channel}/{attr}.
	Path  string
	Files SysfsFiles
	// BudgetFile, if set, holds the controller's total power in mW.
	BudgetFile string
	// Ports maps each port to its channel.
	Ports map[string]int
	// Attempts at reading a sane status before reporting (default 3), and
	// the wait between them (default 50 ms).
	Attempts   int
	RetryDelay time.Duration
}

// Sysfs drives a PoE controller through per-port files a vendor's kernel
// driver exposes (as ONL's and other whitebox platforms' PoE modules do).
type Sysfs struct {
	cfg   SysfsConfig
	ports []string
}

// NewSysfs checks the template and that every port's Enable file exists.
func NewSysfs(cfg SysfsConfig) (*Sysfs, error) {
	if !strings.HasPrefix(cfg.Path, "/") || !strings.Contains(cfg.Path, "{attr}") {
		return nil, fmt.Errorf("poe sysfs: path %q must be absolute and contain {attr}", cfg.Path)
	}
	if len(cfg.Ports) > 1 && !strings.Contains(cfg.Path, "{port}") && !strings.Contains(cfg.Path, "{channel}") {
		return nil, fmt.Errorf("poe sysfs: path %q names no {port} or {channel}: every port would share its files", cfg.Path)
	}
	if cfg.Files.Enable == "" {
		return nil, errors.New("poe sysfs: the enable file is required")
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 3
	}
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = 50 * time.Millisecond
	}
	s := &Sysfs{cfg: cfg}
	for port := range cfg.Ports {
		s.ports = append(s.ports, port)
	}
	sort.Strings(s.ports)
	for _, port := range s.ports {
		p := s.path(port, cfg.Files.Enable)
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("poe sysfs: port %s: %w", port, err)
		}
	}
	return s, nil
}

func (s *Sysfs) path(port, file string) string {
	r := strings.NewReplacer("{attr}", file, "{port}", port, "{channel}", strconv.Itoa(s.cfg.Ports[port]))
	return r.Replace(s.cfg.Path)
}

// Ports lists the ports in name order.
func (s *Sysfs) Ports() []string { return slices.Clone(s.ports) }

func (s *Sysfs) known(port string) error {
	if _, ok := s.cfg.Ports[port]; !ok {
		return fmt.Errorf("%w %q", ErrUnknownPort, port)
	}
	return nil
}

func (s *Sysfs) read(port, file string) (string, error) {
	b, err := os.ReadFile(s.path(port, file))
	if err != nil {
		return "", fmt.Errorf("poe sysfs: port %s: %w", port, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// write writes value to an existing attribute file (never creates one:
// a wrong path must fail, not leave a stray file).
func (s *Sysfs) write(port, file, value string) error {
	if err := s.known(port); err != nil {
		return err
	}
	p := s.path(port, file)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("poe sysfs: port %s: %w", port, err)
	}
	_, werr := f.WriteString(value)
	// sysfs reports a refused value at write or at close.
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("poe sysfs: port %s: write %q to %s: %w", port, value, p, werr)
	}
	return nil
}

// Enable writes 1 to the port's enable file.
func (s *Sysfs) Enable(ctx context.Context, port string) error {
	return s.write(port, s.cfg.Files.Enable, "1")
}

// Disable writes 0 to the port's enable file.
func (s *Sysfs) Disable(ctx context.Context, port string) error {
	return s.write(port, s.cfg.Files.Enable, "0")
}

// PowerCycle disables the port, waits off, and enables it again.
func (s *Sysfs) PowerCycle(ctx context.Context, port string, off time.Duration) error {
	return cycle(ctx, s, port, off)
}

// SetLimit writes the limit in mW.
func (s *Sysfs) SetLimit(ctx context.Context, port string, mw int) error {
	if s.cfg.Files.Limit == "" {
		return fmt.Errorf("poe sysfs: port %s: limit: %w (no limit file configured)", port, ErrNotSupported)
	}
	if mw < 0 || mw > maxPortMW {
		return fmt.Errorf("poe sysfs: port %s: limit %d mW out of range", port, mw)
	}
	return s.write(port, s.cfg.Files.Limit, strconv.Itoa(mw))
}

// SetPriority writes 0 (critical), 1 (high) or 2 (low).
func (s *Sysfs) SetPriority(ctx context.Context, port string, p Priority) error {
	if s.cfg.Files.Priority == "" {
		return fmt.Errorf("poe sysfs: port %s: priority: %w (no priority file configured)", port, ErrNotSupported)
	}
	return s.write(port, s.cfg.Files.Priority, strconv.Itoa(int(p)))
}

var sysfsStates = map[string]State{
	"delivering": StateDelivering, "on": StateDelivering, "powered": StateDelivering,
	"power on": StateDelivering, "power-on": StateDelivering,
	"searching": StateSearching, "detecting": StateSearching, "detection": StateSearching,
	"enabled": StateSearching, "idle": StateSearching, "no device": StateSearching,
	"disabled": StateDisabled, "off": StateDisabled,
	"fault": StateFault, "error": StateFault, "overload": StateFault, "short": StateFault,
	"short circuit": StateFault, "over temperature": StateFault, "overtemp": StateFault,
	"budget exceeded": StateFault, "denied": StateFault,
}

func parseEnable(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "1", "enable", "enabled", "on":
		return true, nil
	case "0", "disable", "disabled", "off":
		return false, nil
	}
	return false, fmt.Errorf("impossible enable value %q", v)
}

// Status reads the port's files; values no port can have are read again
// and then reported.
func (s *Sysfs) Status(ctx context.Context, port string) (PortStatus, error) {
	if err := s.known(port); err != nil {
		return PortStatus{}, err
	}
	var st PortStatus
	err := retry(ctx, s.cfg.Attempts, s.cfg.RetryDelay, func() error {
		var err error
		if st, err = s.readStatus(port); err != nil {
			return err
		}
		return checkStatus(st)
	})
	if err != nil {
		return PortStatus{}, fmt.Errorf("poe sysfs: port %s: %w", port, err)
	}
	return st, nil
}

func (s *Sysfs) readInt(port, file string, unknown ...string) (int, bool, error) {
	if file == "" {
		return 0, false, nil
	}
	v, err := s.read(port, file)
	if err != nil {
		return 0, false, err
	}
	if slices.Contains(unknown, strings.ToLower(v)) {
		return 0, false, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, false, fmt.Errorf("impossible %s value %q", file, v)
	}
	return n, true, nil
}

func (s *Sysfs) readStatus(port string) (PortStatus, error) {
	f := s.cfg.Files
	st := PortStatus{Port: port, Class: -1}
	v, err := s.read(port, f.Enable)
	if err != nil {
		return st, err
	}
	enabled, err := parseEnable(v)
	if err != nil {
		return st, err
	}
	power, _, err := s.readInt(port, f.Power)
	if err != nil {
		return st, err
	}
	class, hasClass, err := s.readInt(port, f.Class, "", "-1", "none", "n/a", "unknown")
	if err != nil {
		return st, err
	}
	limit, _, err := s.readInt(port, f.Limit)
	if err != nil {
		return st, err
	}
	switch {
	case !enabled:
		st.State = StateDisabled
	case f.Status == "" && power > 0:
		st.State = StateDelivering
	case f.Status == "":
		st.State = StateSearching
	default:
		word, err := s.read(port, f.Status)
		if err != nil {
			return st, err
		}
		state, ok := sysfsStates[strings.ToLower(word)]
		switch {
		case !ok:
			st.State, st.Fault = StateFault, fmt.Sprintf("status %q, unknown to phoneboot", word)
		case state == StateDisabled:
			return st, fmt.Errorf("status %q for an enabled port", word)
		case state == StateFault:
			st.State, st.Fault = StateFault, word
		default:
			st.State = state
		}
	}
	if st.State == StateDelivering {
		st.PowerMW = power
		if hasClass {
			st.Class = class
		}
	} else if power < 0 {
		st.PowerMW = power // checkStatus refuses it
	}
	st.LimitMW = limit
	return st, nil
}

// Budget reads BudgetFile (mW), or is 0 without one.
func (s *Sysfs) Budget(context.Context) (int, error) {
	if s.cfg.BudgetFile == "" {
		return 0, nil
	}
	b, err := os.ReadFile(s.cfg.BudgetFile)
	if err != nil {
		return 0, fmt.Errorf("poe sysfs: budget: %w", err)
	}
	v := strings.TrimSpace(string(b))
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("poe sysfs: budget: impossible value %q in %s", v, s.cfg.BudgetFile)
	}
	return n, nil
}

// Close has nothing to release.
func (s *Sysfs) Close() error { return nil }
