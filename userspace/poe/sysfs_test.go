package poe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeTree makes port-<channel>/<file> for every channel, each file holding
// its value from files (a missing key: no such file).
func fakeTree(t *testing.T, channels []int, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for _, ch := range channels {
		d := filepath.Join(dir, fmt.Sprintf("port-%d", ch))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, v := range files {
			if err := os.WriteFile(filepath.Join(d, name), []byte(v+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func readFake(t *testing.T, dir string, ch int, file string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("port-%d", ch), file))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func newTestSysfs(t *testing.T, dir string, files SysfsFiles) *Sysfs {
	t.Helper()
	s, err := NewSysfs(SysfsConfig{
		Path: filepath.Join(dir, "port-{channel}", "{attr}"), Files: files,
		Ports: map[string]int{"swp1": 1, "swp2": 2}, RetryDelay: time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSysfsStatus(t *testing.T) {
	all := DefaultSysfsFiles()
	noStatus := all
	noStatus.Status = ""
	for _, tc := range []struct {
		name    string
		files   SysfsFiles
		values  map[string]string
		want    PortStatus
		wantErr string
	}{
		{"disabled", all, map[string]string{"enable": "0", "status": "off", "class": "-1", "power_mw": "0", "limit_mw": "30000"},
			PortStatus{State: StateDisabled, Class: -1, LimitMW: 30000}, ""},
		{"delivering", all, map[string]string{"enable": "1", "status": "delivering", "class": "2", "power_mw": "6490", "limit_mw": "15400"},
			PortStatus{State: StateDelivering, Class: 2, PowerMW: 6490, LimitMW: 15400}, ""},
		{"words", all, map[string]string{"enable": "Enabled", "status": "Power On", "class": "4", "power_mw": "25000", "limit_mw": "30000"},
			PortStatus{State: StateDelivering, Class: 4, PowerMW: 25000, LimitMW: 30000}, ""},
		{"searching", all, map[string]string{"enable": "1", "status": "searching", "class": "none", "power_mw": "0", "limit_mw": "0"},
			PortStatus{State: StateSearching, Class: -1}, ""},
		{"fault word", all, map[string]string{"enable": "1", "status": "overload", "class": "3", "power_mw": "0", "limit_mw": "0"},
			PortStatus{State: StateFault, Class: -1, Fault: "overload"}, ""},
		{"unknown status word", all, map[string]string{"enable": "1", "status": "wobbly", "class": "3", "power_mw": "0", "limit_mw": "0"},
			PortStatus{State: StateFault, Class: -1, Fault: `status "wobbly", unknown to phoneboot`}, ""},
		{"no status file, drawing", noStatus, map[string]string{"enable": "1", "class": "1", "power_mw": "3500", "limit_mw": "0"},
			PortStatus{State: StateDelivering, Class: 1, PowerMW: 3500}, ""},
		{"no status file, idle", noStatus, map[string]string{"enable": "1", "class": "1", "power_mw": "0", "limit_mw": "0"},
			PortStatus{State: StateSearching, Class: -1}, ""},
		{"only enable", SysfsFiles{Enable: "enable"}, map[string]string{"enable": "on"}, PortStatus{State: StateSearching, Class: -1}, ""},
		{"impossible enable", all, map[string]string{"enable": "2", "status": "on", "class": "2", "power_mw": "1", "limit_mw": "0"},
			PortStatus{}, `impossible enable value "2"`},
		{"impossible class", all, map[string]string{"enable": "1", "status": "on", "class": "11", "power_mw": "1", "limit_mw": "0"},
			PortStatus{}, "impossible class 11"},
		{"impossible power", all, map[string]string{"enable": "1", "status": "on", "class": "2", "power_mw": "-5", "limit_mw": "0"},
			PortStatus{}, "impossible power -5 mW"},
		{"garbage power", all, map[string]string{"enable": "1", "status": "on", "class": "2", "power_mw": "lots", "limit_mw": "0"},
			PortStatus{}, `impossible power_mw value "lots"`},
		{"disabled yet enabled", all, map[string]string{"enable": "1", "status": "disabled", "class": "2", "power_mw": "0", "limit_mw": "0"},
			PortStatus{}, `status "disabled" for an enabled port`},
		{"missing file", all, map[string]string{"enable": "1", "status": "on", "class": "2", "limit_mw": "0"},
			PortStatus{}, "power_mw: no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestSysfs(t, fakeTree(t, []int{1, 2}, tc.values), tc.files)
			st, err := s.Status(context.Background(), "swp1")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Status = %+v, %v; want an error with %q", st, err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), "swp1") {
					t.Errorf("error %q does not name the port", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.want.Port = "swp1"
			if st != tc.want {
				t.Errorf("Status:\n got  %+v\n want %+v", st, tc.want)
			}
		})
	}
}

// TestSysfsRetriesBadReading: a value a driver shows mid-update is read
// again, and the good one that follows is taken.
func TestSysfsRetriesBadReading(t *testing.T) {
	dir := fakeTree(t, []int{1, 2}, map[string]string{"enable": "1", "status": "on", "class": "2", "power_mw": "99999999", "limit_mw": "0"})
	s := newTestSysfs(t, dir, DefaultSysfsFiles())
	s.cfg.RetryDelay = 100 * time.Millisecond
	power := filepath.Join(dir, "port-1", "power_mw")
	done := make(chan error, 1)
	go func() {
		time.Sleep(20 * time.Millisecond) // during the first wait between tries
		done <- os.WriteFile(power, []byte("7000\n"), 0o644)
	}()
	st, err := s.Status(context.Background(), "swp1")
	if werr := <-done; werr != nil {
		t.Fatal(werr)
	}
	if err != nil {
		t.Fatalf("Status after the value was mended: %v", err)
	}
	if st.PowerMW != 7000 {
		t.Errorf("Status %+v, want the mended 7000 mW", st)
	}
}

func TestSysfsWrites(t *testing.T) {
	ctx := context.Background()
	dir := fakeTree(t, []int{1, 2}, map[string]string{"enable": "0", "status": "off", "class": "-1", "power_mw": "0", "limit_mw": "0", "priority": "2"})
	s := newTestSysfs(t, dir, DefaultSysfsFiles())
	for _, tc := range []struct {
		name  string
		do    func() error
		file  string
		value string
	}{
		{"enable", func() error { return s.Enable(ctx, "swp1") }, "enable", "1"},
		{"disable", func() error { return s.Disable(ctx, "swp1") }, "enable", "0"},
		{"cycle ends enabled", func() error { return s.PowerCycle(ctx, "swp1", time.Millisecond) }, "enable", "1"},
		{"limit", func() error { return s.SetLimit(ctx, "swp1", 15400) }, "limit_mw", "15400"},
		{"priority", func() error { return s.SetPriority(ctx, "swp1", PriorityCritical) }, "priority", "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.do(); err != nil {
				t.Fatal(err)
			}
			if got := readFake(t, dir, 1, tc.file); got != tc.value {
				t.Errorf("%s holds %q, want %q", tc.file, got, tc.value)
			}
			if got := readFake(t, dir, 2, "enable"); got != "0" {
				t.Errorf("the other port's enable file changed to %q", got)
			}
		})
	}
	if err := s.Enable(ctx, "swp9"); !errors.Is(err, ErrUnknownPort) {
		t.Errorf("Enable(swp9) = %v, want ErrUnknownPort", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "port-0")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a write for an unknown port created files: %v", err)
	}
	bare := newTestSysfs(t, dir, SysfsFiles{Enable: "enable"})
	if err := bare.SetLimit(ctx, "swp1", 1000); !errors.Is(err, ErrNotSupported) {
		t.Errorf("SetLimit without a limit file = %v, want ErrNotSupported", err)
	}
	if err := bare.SetPriority(ctx, "swp1", PriorityLow); !errors.Is(err, ErrNotSupported) {
		t.Errorf("SetPriority without a priority file = %v, want ErrNotSupported", err)
	}
}

func TestSysfsConfig(t *testing.T) {
	dir := fakeTree(t, []int{1}, map[string]string{"enable": "0"})
	budget := filepath.Join(dir, "total_power")
	if err := os.WriteFile(budget, []byte("740000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tmpl := filepath.Join(dir, "port-{channel}", "{attr}")
	for _, tc := range []struct {
		name string
		cfg  SysfsConfig
		want string
	}{
		{"relative", SysfsConfig{Path: "port-{channel}/{attr}", Files: DefaultSysfsFiles(), Ports: map[string]int{"a": 1}}, "must be absolute"},
		{"no attr", SysfsConfig{Path: filepath.Join(dir, "port-{channel}"), Files: DefaultSysfsFiles(), Ports: map[string]int{"a": 1}}, "contain {attr}"},
		{"shared files", SysfsConfig{Path: filepath.Join(dir, "{attr}"), Files: DefaultSysfsFiles(), Ports: map[string]int{"a": 1, "b": 2}}, "no {port} or {channel}"},
		{"no enable file name", SysfsConfig{Path: tmpl, Ports: map[string]int{"a": 1}}, "enable file is required"},
		{"missing port directory", SysfsConfig{Path: tmpl, Files: DefaultSysfsFiles(), Ports: map[string]int{"a": 1, "b": 7}}, "port b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewSysfs(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewSysfs = %v, want an error with %q", err, tc.want)
			}
		})
	}
	s, err := NewSysfs(SysfsConfig{Path: tmpl, Files: DefaultSysfsFiles(), BudgetFile: budget, Ports: map[string]int{"a": 1}})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := s.Budget(context.Background()); b != 740000 || err != nil {
		t.Errorf("Budget = %d, %v; want 740000", b, err)
	}
	if err := os.WriteFile(budget, []byte("a lot\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Budget(context.Background()); err == nil || !strings.Contains(err.Error(), "impossible") {
		t.Errorf("Budget of garbage = %v", err)
	}
}
