package poe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"
)

// The Microchip PD69200/PD69208 host protocol: every exchange is one
// 15-byte message each way, Key | Echo | Sub | Sub1 | Sub2 | Data(8) |
// Checksum(2), unused bytes 'N' (0x4E), the checksum the 16-bit sum of
// bytes 0-12, big-endian. A Command or Program is answered by a Report
// (success when its first two bytes after the echo are 0), a Request by
// Telemetry; the answer repeats the request's Echo. Sources: the Linux
// driver drivers/net/pse-pd/pd692x0.c and the DENT poe agent's PD69200
// driver (dentproject/poed, poe_driver_pd69200{,_def}.py). The subject
// codes and telemetry layouts below are those of the IEEE 802.3at firmware
// as poed uses them; they are not checked against hardware here.
const (
	pdMsgLen = 15
	pdPad    = 0x4E // 'N'

	pdKeyCommand   = 0x00
	pdKeyProgram   = 0x01
	pdKeyRequest   = 0x02
	pdKeyTelemetry = 0x03
	pdKeyReport    = 0x52 // 'R'

	pdSubChannel = 0x05 // per-port subjects; Sub2 is the logical port
	pdSubGlobal  = 0x07

	pdSub1Priority   = 0x0A // port priority: 1 critical, 2 high, 3 low
	pdSub1Supply     = 0x0B // per port: power limit (mW); global + 0x17: supply
	pdSub1EnDis      = 0x0C // port enable/disable
	pdSub1PortStatus = 0x0E // port status: enabled, status code, class
	pdSub1Versions   = 0x1E // global + 0x21: software version
	pdSub1Params     = 0x25 // port measurements: current, power, voltage

	pdSub2SupplyMain = 0x17
	pdSub2SWVersion  = 0x21

	// pdEchoUnsolicited marks telemetry the controller sends by itself
	// after a reset; host echoes wrap from 0xFE to 0x00 and never use it.
	pdEchoUnsolicited = 0xFF

	// pdMaxChannel: the controller numbers its logical ports 0-47.
	pdMaxChannel = 47
)

// Errors of the message layer; each names what was wrong with an answer.
var (
	ErrPD69200Checksum = errors.New("pd69200: bad checksum")
	ErrPD69200Echo     = errors.New("pd69200: echo does not match the request")
	ErrPD69200NoReply  = errors.New("pd69200: no reply (the controller had no message ready)")
	ErrPD69200Key      = errors.New("pd69200: reply of the wrong kind")
)

// pdMessage is one 15-byte message.
type pdMessage [pdMsgLen]byte

// pdEncode builds a message: key, echo, then up to 11 bytes of subjects and
// data, padded with 'N', then the checksum.
func pdEncode(key, echo byte, body ...byte) pdMessage {
	var m pdMessage
	m[0], m[1] = key, echo
	for i := 2; i < pdMsgLen-2; i++ {
		m[i] = pdPad
	}
	copy(m[2:pdMsgLen-2], body)
	binary.BigEndian.PutUint16(m[pdMsgLen-2:], pdChecksum(m[:pdMsgLen-2]))
	return m
}

func pdChecksum(b []byte) uint16 {
	var sum uint16
	for _, c := range b {
		sum += uint16(c)
	}
	return sum
}

// pdDecode checks a received message: its length, that it is a message at
// all (a controller with nothing to say returns zeros), and its checksum.
func pdDecode(b []byte) (pdMessage, error) {
	var m pdMessage
	if len(b) != pdMsgLen {
		return m, fmt.Errorf("pd69200: message of %d bytes, want %d", len(b), pdMsgLen)
	}
	copy(m[:], b)
	if m[0] == 0 && m == (pdMessage{}) {
		return m, ErrPD69200NoReply
	}
	if got, want := binary.BigEndian.Uint16(m[pdMsgLen-2:]), pdChecksum(m[:pdMsgLen-2]); got != want {
		return m, fmt.Errorf("%w: %#04x, computed %#04x", ErrPD69200Checksum, got, want)
	}
	return m, nil
}

func (m pdMessage) word(i int) int { return int(binary.BigEndian.Uint16(m[i : i+2])) }

// PD69200ReportError is a Report that refused a Command: the controller
// understood the message and said no (a bad parameter, say). It is not
// retried.
type PD69200ReportError struct{ Code uint16 }

func (e *PD69200ReportError) Error() string {
	return fmt.Sprintf("pd69200: the controller refused the command (report code 0x%04x)", e.Code)
}

// PD69200Bus carries the controller's messages: /dev/i2c-N in production
// (OpenI2C), a model of the controller in tests. Write sends one message;
// Read receives one message into p.
type PD69200Bus interface {
	Write(p []byte) error
	Read(p []byte) error
	Close() error
}

// PD69200Config configures the controller's protocol.
type PD69200Config struct {
	// Ports maps each port to the controller's logical port (0-47).
	Ports map[string]int
	// ReplyDelay is the wait between a message and reading its answer;
	// CommandGap the least time between two Commands. The protocol asks
	// for 30 ms each (the zero values).
	ReplyDelay, CommandGap time.Duration
	// Attempts is how often a message is sent before its failure is
	// reported (default 3); RetryDelay the wait before sending again
	// (default 100 ms, as the Linux driver's second read).
	Attempts   int
	RetryDelay time.Duration
}

// PD69200 drives a Microchip PD69200/PD69208 PoE controller.
type PD69200 struct {
	cfg   PD69200Config
	ports []string

	mu          sync.Mutex // one exchange at a time on the bus
	bus         PD69200Bus
	echo        byte
	lastCommand time.Time
}

// NewPD69200 checks the config and that the controller answers (it asks
// for the software version). The PD69200 owns bus from then on, also when
// it fails.
func NewPD69200(ctx context.Context, bus PD69200Bus, cfg PD69200Config) (_ *PD69200, err error) {
	defer func() {
		if err != nil {
			bus.Close()
		}
	}()
	if cfg.ReplyDelay == 0 {
		cfg.ReplyDelay = 30 * time.Millisecond
	}
	if cfg.CommandGap == 0 {
		cfg.CommandGap = 30 * time.Millisecond
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 3
	}
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = 100 * time.Millisecond
	}
	c := &PD69200{cfg: cfg, bus: bus}
	used := map[int]string{}
	for port, ch := range cfg.Ports {
		if ch < 0 || ch > pdMaxChannel {
			return nil, fmt.Errorf("pd69200: port %s: channel %d is not 0-%d", port, ch, pdMaxChannel)
		}
		if other, dup := used[ch]; dup {
			return nil, fmt.Errorf("pd69200: ports %s and %s both on channel %d", other, port, ch)
		}
		used[ch] = port
		c.ports = append(c.ports, port)
	}
	sort.Strings(c.ports)
	if _, err := c.transact(ctx, pdKeyRequest, pdSubGlobal, pdSub1Versions, pdSub2SWVersion); err != nil {
		return nil, fmt.Errorf("pd69200: the controller does not answer: %w", err)
	}
	return c, nil
}

// Ports lists the ports in name order.
func (c *PD69200) Ports() []string { return slices.Clone(c.ports) }

func (c *PD69200) channel(port string) (byte, error) {
	ch, ok := c.cfg.Ports[port]
	if !ok {
		return 0, fmt.Errorf("%w %q", ErrUnknownPort, port)
	}
	return byte(ch), nil
}

func (c *PD69200) nextEcho() byte {
	e := c.echo
	c.echo++
	if c.echo == pdEchoUnsolicited {
		c.echo = 0
	}
	return e
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// transact sends one message and returns the controller's answer. A
// garbled, missing or mismatched answer is sent again, with a fresh echo so
// that a late answer to the earlier try cannot pass for this one; after
// Attempts the last problem is returned.
func (c *PD69200) transact(ctx context.Context, key byte, body ...byte) (pdMessage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	want := byte(pdKeyTelemetry)
	if key == pdKeyCommand || key == pdKeyProgram {
		want = pdKeyReport
	}
	var last error
	for attempt := range c.cfg.Attempts {
		if attempt > 0 {
			if err := sleepCtx(ctx, c.cfg.RetryDelay); err != nil {
				return pdMessage{}, errors.Join(last, err)
			}
		}
		if key == pdKeyCommand {
			if err := sleepCtx(ctx, time.Until(c.lastCommand.Add(c.cfg.CommandGap))); err != nil {
				return pdMessage{}, err
			}
		}
		echo := c.nextEcho()
		msg := pdEncode(key, echo, body...)
		if err := c.bus.Write(msg[:]); err != nil {
			last = fmt.Errorf("pd69200: write: %w", err)
			continue
		}
		if key == pdKeyCommand {
			c.lastCommand = time.Now()
		}
		if err := sleepCtx(ctx, c.cfg.ReplyDelay); err != nil {
			return pdMessage{}, err
		}
		var buf [pdMsgLen]byte
		if err := c.bus.Read(buf[:]); err != nil {
			last = fmt.Errorf("pd69200: read: %w", err)
			continue
		}
		reply, err := pdDecode(buf[:])
		if err != nil {
			last = err
			continue
		}
		if reply[1] != echo {
			last = fmt.Errorf("%w: sent %#02x, got %#02x", ErrPD69200Echo, echo, reply[1])
			continue
		}
		if reply[0] != want {
			last = fmt.Errorf("%w: key %#02x, want %#02x", ErrPD69200Key, reply[0], want)
			continue
		}
		if want == pdKeyReport && (reply[2] != 0 || reply[3] != 0) {
			return reply, &PD69200ReportError{Code: uint16(reply[2])<<8 | uint16(reply[3])}
		}
		return reply, nil
	}
	return pdMessage{}, fmt.Errorf("%w (after %d attempts)", last, c.cfg.Attempts)
}

func (c *PD69200) command(ctx context.Context, port, what string, body ...byte) error {
	if _, err := c.transact(ctx, pdKeyCommand, body...); err != nil {
		return fmt.Errorf("pd69200: port %s: %s: %w", port, what, err)
	}
	return nil
}

func (c *PD69200) setEnabled(ctx context.Context, port string, on bool) error {
	ch, err := c.channel(port)
	if err != nil {
		return err
	}
	v, what := byte(0), "disable"
	if on {
		v, what = 1, "enable"
	}
	// Data: enable/disable, then the port type (1: IEEE 802.3af/at).
	return c.command(ctx, port, what, pdSubChannel, pdSub1EnDis, ch, v, 1)
}

// Enable enables the port's detection and power.
func (c *PD69200) Enable(ctx context.Context, port string) error {
	return c.setEnabled(ctx, port, true)
}

// Disable turns the port off.
func (c *PD69200) Disable(ctx context.Context, port string) error {
	return c.setEnabled(ctx, port, false)
}

// PowerCycle disables the port, waits off, and enables it again.
func (c *PD69200) PowerCycle(ctx context.Context, port string, off time.Duration) error {
	return cycle(ctx, c, port, off)
}

// SetLimit sets the port's power limit (PPL), in mW.
func (c *PD69200) SetLimit(ctx context.Context, port string, mw int) error {
	ch, err := c.channel(port)
	if err != nil {
		return err
	}
	if mw < 0 || mw > 0xffff {
		return fmt.Errorf("pd69200: port %s: limit %d mW is outside 0-65535", port, mw)
	}
	return c.command(ctx, port, "power limit", pdSubChannel, pdSub1Supply, ch, byte(mw>>8), byte(mw))
}

// SetPriority sets the port's priority in the controller's own power
// management: critical 1, high 2, low 3.
func (c *PD69200) SetPriority(ctx context.Context, port string, p Priority) error {
	ch, err := c.channel(port)
	if err != nil {
		return err
	}
	if p < PriorityCritical || p > PriorityLow {
		return fmt.Errorf("pd69200: port %s: %v", port, p)
	}
	return c.command(ctx, port, "priority", pdSubChannel, pdSub1Priority, ch, byte(p)+1)
}

// Port status codes of the 802.3at firmware (poed's table and the Linux
// driver's, which maps them to the kernel's extended states). Codes 0x00
// to 0x04 are "port on". The searching ones mean nothing (valid) is
// plugged in; the others are faults.
var (
	pdSearching = map[byte]string{
		0x1A: "off by user setting",
		0x1B: "detection in progress",
		0x1C: "device is not an 802.3af/at PD",
		0x1E: "underload: the device was disconnected",
		0xA8: "open port",
	}
	pdFaults = map[byte]string{
		0x06: "main supply voltage too high", 0x07: "main supply voltage too low",
		0x08: "disable pin active", 0x0C: "non-existing port", 0x11: "port undefined",
		0x12: "internal hardware fault", 0x1F: "overload", 0x20: "power budget exceeded",
		0x21: "internal hardware fault", 0x24: "voltage injection", 0x25: "improper capacitor detection",
		0x26: "discharged load", 0x34: "short circuit", 0x35: "over temperature", 0x36: "over temperature",
		0x37: "unknown port status", 0x3C: "power limit exceeds the budget", 0x3D: "power limit exceeded",
		0x41: "power error", 0x43: "class error", 0x47: "power error",
	}
)

// pdPortStatus turns the port status and measurement telemetry into a
// status, or says why they make no sense.
func pdPortStatus(port string, status, meas pdMessage) (PortStatus, error) {
	st := PortStatus{Port: port, Class: -1}
	endis, code, class := status[2], status[3], status[6]
	on := code <= 0x04
	switch {
	case endis > 1:
		return st, fmt.Errorf("impossible enable state %d", endis)
	case endis == 0 && on:
		return st, fmt.Errorf("port status %#02x (on) for a disabled port", code)
	case endis == 0:
		st.State = StateDisabled
	case on:
		if class > 4 {
			return st, fmt.Errorf("impossible class %d for a powered port", class)
		}
		st.State, st.Class = StateDelivering, int(class)
	default:
		if why, ok := pdSearching[code]; ok {
			st.State = StateSearching
			if code != 0x1B && code != 0xA8 {
				st.Fault = why
			}
		} else {
			st.State, st.Fault = StateFault, pdFaults[code]
			if st.Fault == "" {
				st.Fault = fmt.Sprintf("port status %#02x, unknown to phoneboot", code)
			}
		}
	}
	power := meas.word(6)
	if power > maxPortMW {
		return st, fmt.Errorf("impossible power %d mW", power)
	}
	if st.State == StateDelivering {
		st.PowerMW = power
	}
	return st, nil
}

// Status reads the port's status and its measurements: two exchanges,
// 60 ms with the protocol's delays, so a 48-port sweep takes about 3 s
// (the Manager polls in the background). Answers that make no sense are
// asked again, then reported.
func (c *PD69200) Status(ctx context.Context, port string) (PortStatus, error) {
	ch, err := c.channel(port)
	if err != nil {
		return PortStatus{}, err
	}
	var st PortStatus
	err = retry(ctx, c.cfg.Attempts, c.cfg.RetryDelay, func() error {
		status, err := c.transact(ctx, pdKeyRequest, pdSubChannel, pdSub1PortStatus, ch)
		if err != nil {
			return err
		}
		meas, err := c.transact(ctx, pdKeyRequest, pdSubChannel, pdSub1Params, ch)
		if err != nil {
			return err
		}
		if st, err = pdPortStatus(port, status, meas); err != nil {
			return err
		}
		return checkStatus(st)
	})
	if err != nil {
		return PortStatus{}, fmt.Errorf("pd69200: port %s: status: %w", port, err)
	}
	return st, nil
}

// Budget is the power the controller's active power bank allows, in mW
// (the supply parameters' total power, in W).
func (c *PD69200) Budget(ctx context.Context) (int, error) {
	m, err := c.transact(ctx, pdKeyRequest, pdSubGlobal, pdSub1Supply, pdSub2SupplyMain)
	if err != nil {
		return 0, fmt.Errorf("pd69200: supply parameters: %w", err)
	}
	return m.word(10) * 1000, nil
}

// Close closes the bus.
func (c *PD69200) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bus.Close()
}
