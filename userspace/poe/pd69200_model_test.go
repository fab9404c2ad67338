package poe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

// pdModel is a software PD69200 behind the PD69200Bus interface: it
// checks what the host sends (length, checksum, the protocol's timing),
// keeps 48 channels' state, and answers as the controller does. Tests
// make it misbehave on purpose.
type pdModel struct {
	mu sync.Mutex

	replyDelay, commandGap time.Duration
	channels               [pdMaxChannel + 1]pdChannel
	totalW                 int

	pending     *pdMessage // the answer a Read returns; nil: zeros
	lastWrite   time.Time
	lastCommand time.Time
	writes      []pdMessage
	violations  []string
	closed      bool

	// Misbehaviour for the next answers, consumed in order: each entry
	// changes one answer (after its checksum was computed, so that
	// corrupting the checksum is possible too).
	garble []func(*pdMessage)
	// silent: the next answers are zeros (nothing ready).
	silent int
	// writeErr fails the next writes, as a NAK on the bus would.
	writeErr int
}

type pdChannel struct {
	enabled bool
	pd      bool // a device is plugged in
	class   byte
	drawMW  int
	prio    byte // 1-3
	limitMW int
}

func newPDModel(replyDelay, commandGap time.Duration) *pdModel {
	m := &pdModel{replyDelay: replyDelay, commandGap: commandGap, totalW: 370}
	for i := range m.channels {
		m.channels[i] = pdChannel{prio: 3, limitMW: 30000}
	}
	return m
}

func (m *pdModel) violate(format string, args ...any) {
	m.violations = append(m.violations, fmt.Sprintf(format, args...))
}

func (m *pdModel) Write(p []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errors.New("model: closed")
	}
	if m.writeErr > 0 {
		m.writeErr--
		return errors.New("model: write NAKed")
	}
	now := time.Now()
	m.lastWrite = now
	m.pending = nil
	if len(p) != pdMsgLen {
		m.violate("write of %d bytes", len(p))
		return nil
	}
	var req pdMessage
	copy(req[:], p)
	m.writes = append(m.writes, req)
	if binary.BigEndian.Uint16(req[13:]) != pdChecksum(req[:13]) {
		m.violate("request with a bad checksum: % x", req)
		return nil // the controller ignores it: nothing to read
	}
	if req[1] == pdEchoUnsolicited {
		m.violate("request with echo 0xff, which marks unsolicited telemetry")
	}
	if req[0] == pdKeyCommand {
		if !m.lastCommand.IsZero() && now.Sub(m.lastCommand) < m.commandGap {
			m.violate("command %v after the previous one, less than %v", now.Sub(m.lastCommand), m.commandGap)
		}
		m.lastCommand = now
	}
	reply := m.answer(req)
	m.pending = &reply
	return nil
}

func report(echo byte, code uint16) pdMessage {
	return pdEncode(pdKeyReport, echo, byte(code>>8), byte(code))
}

func (m *pdModel) answer(req pdMessage) pdMessage {
	key, echo, sub, sub1, ch := req[0], req[1], req[2], req[3], req[4]
	switch {
	case key == pdKeyRequest && sub == pdSubGlobal && sub1 == pdSub1Versions && req[4] == pdSub2SWVersion:
		return pdEncode(pdKeyTelemetry, echo, 0x4e, 0x4e, 24, 0x01, 0x5f) // product 24, version 351
	case key == pdKeyRequest && sub == pdSubGlobal && sub1 == pdSub1Supply && req[4] == pdSub2SupplyMain:
		drawn := 0
		for _, c := range m.channels {
			if c.on() {
				drawn += c.drawMW
			}
		}
		w := drawn / 1000
		return pdEncode(pdKeyTelemetry, echo, byte(w>>8), byte(w), 0x02, 0x3a, 0x01, 0xb8, 0x4e, 1, byte(m.totalW>>8), byte(m.totalW))
	case sub != pdSubChannel:
		return report(echo, 0xffff)
	case int(ch) >= len(m.channels):
		return report(echo, 0x0002)
	}
	c := &m.channels[ch]
	switch {
	case key == pdKeyCommand && sub1 == pdSub1EnDis:
		if req[5] > 1 {
			return report(echo, 0x0003)
		}
		c.enabled = req[5] == 1
		return report(echo, 0)
	case key == pdKeyCommand && sub1 == pdSub1Supply:
		mw := int(req[5])<<8 | int(req[6])
		if mw > 36000 {
			return report(echo, 0x0004)
		}
		c.limitMW = mw
		return report(echo, 0)
	case key == pdKeyCommand && sub1 == pdSub1Priority:
		if req[5] < 1 || req[5] > 3 {
			return report(echo, 0x0005)
		}
		c.prio = req[5]
		return report(echo, 0)
	case key == pdKeyRequest && sub1 == pdSub1PortStatus:
		endis, code := byte(0), byte(0x1A)
		if c.enabled {
			endis, code = 1, 0x1E
			switch {
			case c.pd && c.drawMW > c.limitMW:
				code = 0x3D
			case c.pd:
				code = 0x00
			}
		}
		return pdEncode(pdKeyTelemetry, echo, endis, code, 0x4e, 0, c.class, 0x4e, 0x4e, 0x4e, 1, 0)
	case key == pdKeyRequest && sub1 == pdSub1Params:
		draw, current := 0, 0
		if c.on() {
			draw, current = c.drawMW, c.drawMW*10/540
		}
		return pdEncode(pdKeyTelemetry, echo, 0x4e, 0x4e, byte(current>>8), byte(current), byte(draw>>8), byte(draw), 0x4e, 0x02, 0x1c)
	case key == pdKeyRequest && sub1 == pdSub1Supply:
		return pdEncode(pdKeyTelemetry, echo, byte(c.limitMW>>8), byte(c.limitMW), byte(c.limitMW>>8), byte(c.limitMW))
	case key == pdKeyRequest && sub1 == pdSub1Priority:
		return pdEncode(pdKeyTelemetry, echo, c.prio)
	}
	return report(echo, 0xffff)
}

func (c pdChannel) on() bool { return c.enabled && c.pd && c.drawMW <= c.limitMW }

func (m *pdModel) Read(p []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errors.New("model: closed")
	}
	if len(p) != pdMsgLen {
		m.violate("read of %d bytes", len(p))
	}
	if d := time.Since(m.lastWrite); d < m.replyDelay {
		m.violate("read %v after the write, less than %v", d, m.replyDelay)
	}
	clear(p)
	if m.silent > 0 {
		m.silent--
		return nil
	}
	if m.pending == nil {
		return nil
	}
	reply := *m.pending
	m.pending = nil // the controller answers once
	if len(m.garble) > 0 {
		m.garble[0](&reply)
		m.garble = m.garble[1:]
	}
	copy(p, reply[:])
	return nil
}

func (m *pdModel) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

// Ways to garble an answer.
func badChecksum(r *pdMessage) { r[14] ^= 0x01 }
func wrongEcho(r *pdMessage)   { r[1]++; fixChecksum(r) }
func wrongKey(r *pdMessage)    { r[0] = pdKeyReport; fixChecksum(r) }
func fixChecksum(r *pdMessage) { binary.BigEndian.PutUint16(r[13:], pdChecksum(r[:13])) }

// impossibleStatus makes a port status answer say enable state 7.
func impossibleStatus(r *pdMessage) {
	if r[0] == pdKeyTelemetry {
		r[2] = 7
		fixChecksum(r)
	}
}
