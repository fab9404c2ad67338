package poe

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Short protocol delays keep the tests quick; the model checks that the
// host keeps to whatever they are.
const (
	testReplyDelay = 2 * time.Millisecond
	testCommandGap = 5 * time.Millisecond
)

func newTestPD(t *testing.T, m *pdModel, ports map[string]int) *PD69200 {
	t.Helper()
	c, err := NewPD69200(context.Background(), m, PD69200Config{
		Ports: ports, ReplyDelay: testReplyDelay, CommandGap: testCommandGap, RetryDelay: time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, v := range m.violations {
			t.Errorf("protocol violation: %s", v)
		}
	})
	return c
}

func TestPD69200Encode(t *testing.T) {
	// Request, echo 5, port status of channel 3: eight 'N' pads, and the
	// checksum 2+5+5+14+3+8*78 = 653 = 0x028d, big-endian.
	got := pdEncode(pdKeyRequest, 5, pdSubChannel, pdSub1PortStatus, 3)
	want := pdMessage{0x02, 0x05, 0x05, 0x0e, 0x03, 'N', 'N', 'N', 'N', 'N', 'N', 'N', 'N', 0x02, 0x8d}
	if got != want {
		t.Errorf("pdEncode = % x, want % x", got, want)
	}
	if _, err := pdDecode(want[:]); err != nil {
		t.Errorf("pdDecode of a good message: %v", err)
	}
	for _, tc := range []struct {
		name string
		msg  []byte
		want error
	}{
		{"short", want[:14], nil},
		{"long", append(want[:], 0), nil},
		{"zeros", make([]byte, 15), ErrPD69200NoReply},
		{"checksum", append(append([]byte{}, want[:14]...), 0x8e), ErrPD69200Checksum},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pdDecode(tc.msg)
			if err == nil {
				t.Fatal("accepted")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
		})
	}
}

func TestPD69200Operations(t *testing.T) {
	ctx := context.Background()
	m := newPDModel(testReplyDelay, testCommandGap)
	m.channels[0] = pdChannel{pd: true, class: 2, drawMW: 6100, prio: 3, limitMW: 30000}
	m.channels[5] = pdChannel{pd: true, class: 4, drawMW: 24000, prio: 3, limitMW: 30000}
	m.channels[7] = pdChannel{prio: 3, limitMW: 30000} // nothing plugged in
	c := newTestPD(t, m, map[string]int{"swp1": 0, "swp6": 5, "swp8": 7})
	if got := strings.Join(c.Ports(), ","); got != "swp1,swp6,swp8" {
		t.Errorf("Ports = %s", got)
	}
	status := func(port string) PortStatus {
		t.Helper()
		st, err := c.Status(ctx, port)
		if err != nil {
			t.Fatalf("Status(%s): %v", port, err)
		}
		return st
	}
	for _, tc := range []struct {
		name string
		do   func() error
		port string
		want PortStatus
	}{
		{"disabled at first", nil, "swp1", PortStatus{State: StateDisabled, Class: -1}},
		{"enable", func() error { return c.Enable(ctx, "swp1") }, "swp1", PortStatus{State: StateDelivering, Class: 2, PowerMW: 6100}},
		{"enable class 4", func() error { return c.Enable(ctx, "swp6") }, "swp6", PortStatus{State: StateDelivering, Class: 4, PowerMW: 24000}},
		{"enable empty port", func() error { return c.Enable(ctx, "swp8") }, "swp8",
			PortStatus{State: StateSearching, Class: -1, Fault: "underload: the device was disconnected"}},
		{"limit below the draw", func() error { return c.SetLimit(ctx, "swp6", 15400) }, "swp6",
			PortStatus{State: StateFault, Class: -1, Fault: "power limit exceeded"}},
		{"limit back", func() error { return c.SetLimit(ctx, "swp6", 30000) }, "swp6", PortStatus{State: StateDelivering, Class: 4, PowerMW: 24000}},
		{"disable", func() error { return c.Disable(ctx, "swp1") }, "swp1", PortStatus{State: StateDisabled, Class: -1}},
		{"cycle", func() error { return c.PowerCycle(ctx, "swp6", time.Millisecond) }, "swp6", PortStatus{State: StateDelivering, Class: 4, PowerMW: 24000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.do != nil {
				if err := tc.do(); err != nil {
					t.Fatal(err)
				}
			}
			tc.want.Port = tc.port
			if got := status(tc.port); got != tc.want {
				t.Errorf("status:\n got  %+v\n want %+v", got, tc.want)
			}
		})
	}
	for p, want := range map[Priority]byte{PriorityCritical: 1, PriorityHigh: 2, PriorityLow: 3} {
		if err := c.SetPriority(ctx, "swp8", p); err != nil {
			t.Fatal(err)
		}
		if got := m.channels[7].prio; got != want {
			t.Errorf("SetPriority(%v): controller priority %d, want %d", p, got, want)
		}
	}
	if b, err := c.Budget(ctx); err != nil || b != 370000 {
		t.Errorf("Budget = %d, %v; want 370000", b, err)
	}
	for name, err := range map[string]error{
		"enable":   c.Enable(ctx, "swp9"),
		"limit":    c.SetLimit(ctx, "swp9", 1),
		"priority": c.SetPriority(ctx, "swp9", PriorityLow),
		"status":   func() error { _, err := c.Status(ctx, "swp9"); return err }(),
	} {
		if !errors.Is(err, ErrUnknownPort) {
			t.Errorf("%s of an unknown port: %v, want ErrUnknownPort", name, err)
		}
	}
}

func TestPD69200BadAnswers(t *testing.T) {
	repeat := func(f func(*pdMessage), n int) []func(*pdMessage) {
		var fs []func(*pdMessage)
		for range n {
			fs = append(fs, f)
		}
		return fs
	}
	for _, tc := range []struct {
		name     string
		garble   []func(*pdMessage)
		silent   int
		writeErr int
		call     func(*PD69200) error
		wantErr  error // nil: the operation succeeds after retrying
		errText  string
		writes   int // messages the host sent for the call
	}{
		{"checksum once", []func(*pdMessage){badChecksum}, 0, 0, enableSwp1, nil, "", 2},
		{"echo once", []func(*pdMessage){wrongEcho}, 0, 0, enableSwp1, nil, "", 2},
		{"key once", []func(*pdMessage){wrongKey}, 0, 0, statusSwp1, nil, "", 3},
		{"no reply once", nil, 1, 0, enableSwp1, nil, "", 2},
		{"write fails once", nil, 0, 1, enableSwp1, nil, "", 1},
		{"checksum always", repeat(badChecksum, 3), 0, 0, enableSwp1, ErrPD69200Checksum, "after 3 attempts", 3},
		{"echo always", repeat(wrongEcho, 3), 0, 0, enableSwp1, ErrPD69200Echo, "swp1: enable", 3},
		{"no reply always", nil, 3, 0, enableSwp1, ErrPD69200NoReply, "after 3 attempts", 3},
		{"impossible status once", []func(*pdMessage){impossibleStatus}, 0, 0, statusSwp1, nil, "", 4},
		{"impossible status always", []func(*pdMessage){impossibleStatus, nil, impossibleStatus, nil, impossibleStatus}, 0, 0, statusSwp1,
			nil, "impossible enable state 7", 6},
		{"refused", nil, 0, 0, func(c *PD69200) error { return c.SetLimit(context.Background(), "swp1", 40000) },
			&PD69200ReportError{}, "report code 0x0004", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newPDModel(testReplyDelay, testCommandGap)
			m.channels[0] = pdChannel{enabled: true, pd: true, class: 3, drawMW: 9000, prio: 3, limitMW: 30000}
			c := newTestPD(t, m, map[string]int{"swp1": 0})
			m.mu.Lock()
			for _, g := range tc.garble {
				if g == nil {
					g = func(*pdMessage) {}
				}
				m.garble = append(m.garble, g)
			}
			m.silent, m.writeErr = tc.silent, tc.writeErr
			before := len(m.writes)
			m.mu.Unlock()

			err := tc.call(c)
			switch {
			case tc.wantErr == nil && tc.errText == "":
				if err != nil {
					t.Fatalf("failed after a bad answer that a retry should have mended: %v", err)
				}
			default:
				if err == nil {
					t.Fatal("succeeded on answers that stayed bad")
				}
				var re *PD69200ReportError
				if _, isReport := tc.wantErr.(*PD69200ReportError); isReport && !errors.As(err, &re) {
					t.Errorf("error %v is not a PD69200ReportError", err)
				} else if !isReport && tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
					t.Errorf("error %v, want %v", err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.errText) {
					t.Errorf("error %q lacks %q", err, tc.errText)
				}
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			if got := len(m.writes) - before; got != tc.writes {
				t.Errorf("%d messages sent, want %d", got, tc.writes)
			}
		})
	}
}

func enableSwp1(c *PD69200) error { return c.Enable(context.Background(), "swp1") }

func statusSwp1(c *PD69200) error { _, err := c.Status(context.Background(), "swp1"); return err }

// TestPD69200Timing holds the host to the protocol's delays: the model
// records every command that came too soon after another and every read
// too soon after its write (newTestPD fails the test on any).
func TestPD69200Timing(t *testing.T) {
	m := newPDModel(testReplyDelay, testCommandGap)
	c := newTestPD(t, m, map[string]int{"a": 0, "b": 1})
	start := time.Now()
	const commands = 6
	for i := range commands {
		port := []string{"a", "b"}[i%2]
		if err := c.Enable(context.Background(), port); err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(start); took < (commands-1)*testCommandGap {
		t.Errorf("%d commands in %v: faster than the %v gap allows", commands, took, testCommandGap)
	}
	c2, err := NewPD69200(context.Background(), newPDModel(0, 0), PD69200Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if c2.cfg.ReplyDelay != 30*time.Millisecond || c2.cfg.CommandGap != 30*time.Millisecond || c2.cfg.Attempts != 3 {
		t.Errorf("defaults %+v, want the protocol's 30 ms delays and 3 attempts", c2.cfg)
	}
}

// TestPD69200EchoWraps checks the echo sequence: one more per message,
// 0xFE followed by 0x00, never 0xFF (the controller's unsolicited mark).
func TestPD69200EchoWraps(t *testing.T) {
	m := newPDModel(0, 0)
	c, err := NewPD69200(context.Background(), m, PD69200Config{Ports: map[string]int{"a": 0}, ReplyDelay: time.Microsecond, CommandGap: time.Microsecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 300 {
		if _, err := c.Budget(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, w := range m.writes {
		if want := byte(i % 255); w[1] != want {
			t.Fatalf("message %d has echo %#x, want %#x", i, w[1], want)
		}
	}
}

func TestPD69200Config(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ports map[string]int
		want  string
	}{
		{"channel too high", map[string]int{"a": 48}, "channel 48 is not 0-47"},
		{"negative channel", map[string]int{"a": -1}, "channel -1"},
		{"shared channel", map[string]int{"a": 3, "b": 3}, "both on channel 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newPDModel(0, 0)
			_, err := NewPD69200(context.Background(), m, PD69200Config{Ports: tc.ports, ReplyDelay: time.Microsecond})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewPD69200 = %v, want an error with %q", err, tc.want)
			}
			if !m.closed {
				t.Error("the bus was not closed after a failed NewPD69200")
			}
		})
	}
	// A controller that never answers is found out at start.
	m := newPDModel(0, 0)
	m.silent = 1 << 30
	_, err := NewPD69200(context.Background(), m, PD69200Config{ReplyDelay: time.Microsecond, RetryDelay: time.Microsecond})
	if !errors.Is(err, ErrPD69200NoReply) || !strings.Contains(err.Error(), "does not answer") {
		t.Errorf("NewPD69200 on a silent controller = %v", err)
	}
}

func TestOpenI2C(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "not-a-device")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		path string
		addr uint16
		want string
	}{
		{"missing", filepath.Join(dir, "i2c-9"), 0x3c, "no such file"},
		{"not an i2c device", plain, 0x3c, "I2C_SLAVE 0x3c"},
		{"general call address", plain, 0x00, "not a 7-bit device address"},
		{"10-bit address", plain, 0x3ff, "not a 7-bit device address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := openI2CPath(tc.path, tc.addr)
			if err == nil {
				d.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
		})
	}
}

func FuzzPD69200Decode(f *testing.F) {
	good := pdEncode(pdKeyTelemetry, 7, 1, 0x00, 0x4e, 0, 3, 0x4e, 0x4e, 0x4e, 1, 0)
	f.Add(good[:])
	f.Add(make([]byte, pdMsgLen))
	meas := pdEncode(pdKeyTelemetry, 8, 0x4e, 0x4e, 0, 200, 0x27, 0x10, 0x4e, 2, 0x1c)
	f.Add(meas[:])
	f.Add([]byte{0x52})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := pdDecode(b)
		if err != nil {
			return
		}
		if again := pdEncode(m[0], m[1], m[2:13]...); again != m {
			t.Fatalf("decoded % x, re-encoded % x", m, again)
		}
		// Whatever the bytes, a status is sane or an error.
		st, err := pdPortStatus("p", m, m)
		if err == nil {
			if cerr := checkStatus(st); cerr != nil {
				t.Fatalf("pdPortStatus accepted % x as %+v: %v", m, st, cerr)
			}
			if st.State == StateFault && st.Fault == "" {
				t.Fatalf("fault without a reason from % x", m)
			}
		}
	})
}
