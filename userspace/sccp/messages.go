package sccp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Sizes of a RegisterMessage body at the points where phone loads stop:
// the oldest end after maxStreams (Wireshark dissects no less), older ones
// after maxConferences, newer ones after loadInfo, and loads since CUCM
// 11.5 add configVersionStamp.
const (
	RegisterMinBody   = 40
	RegisterShortBody = 52
	RegisterLoadBody  = 124
	RegisterFullBody  = 172
)

// Register is the RegisterMessage (0x0001) a phone sends first.
type Register struct {
	DeviceName      string // "SEP001F9E266369"; 16 bytes on the wire, NUL-padded
	UserID          uint32
	Instance        uint32
	StationIP       netip.Addr // IPv4; the zero Addr encodes as 0.0.0.0
	DeviceType      uint32     // 115 is a 7941
	MaxStreams      uint32
	ActiveStreams   uint32
	ProtocolVersion uint8
	Unknown         uint8 // the byte between the protocol version and the features
	PhoneFeatures   uint16
	MaxConferences  uint32
	ActiveConfs     uint32
	MAC             [6]byte // in a 12-byte field; the rest is zero
	IPv4Scope       uint32
	MaxLines        uint32
	StationIPv6     [16]byte
	IPv6Scope       uint32
	LoadInfo        string // "SCCP41.8-5-3S"; 32 bytes on the wire
	ConfigVersion   string // configVersionStamp; 48 bytes on the wire
	// BodyLen is how many body bytes the message has on the wire:
	// decoding records it, encoding writes that many (fields cut short
	// by it are absent). 0 encodes RegisterFullBody.
	BodyLen int
}

// DecodeRegister decodes a RegisterMessage body. Fields the body does not
// hold in full are left zero; bytes past configVersionStamp are ignored.
func DecodeRegister(body []byte) (*Register, error) {
	if len(body) < RegisterMinBody {
		return nil, fmt.Errorf("%w: Register body of %d bytes, need %d", ErrMalformed, len(body), RegisterMinBody)
	}
	c := cursor{b: body}
	m := &Register{BodyLen: min(len(body), RegisterFullBody)}
	m.DeviceName = c.str(16)
	m.UserID = c.u32()
	m.Instance = c.u32()
	if ip, ok := c.bytes(4); ok {
		m.StationIP = netip.AddrFrom4([4]byte(ip))
	}
	m.DeviceType = c.u32()
	m.MaxStreams = c.u32()
	m.ActiveStreams = c.u32()
	m.ProtocolVersion = c.u8()
	m.Unknown = c.u8()
	m.PhoneFeatures = c.u16()
	m.MaxConferences = c.u32()
	m.ActiveConfs = c.u32()
	if mac, ok := c.bytes(12); ok {
		copy(m.MAC[:], mac)
	}
	m.IPv4Scope = c.u32()
	m.MaxLines = c.u32()
	if v6, ok := c.bytes(16); ok {
		copy(m.StationIPv6[:], v6)
	}
	m.IPv6Scope = c.u32()
	m.LoadInfo = c.str(32)
	m.ConfigVersion = c.str(48)
	return m, nil
}

// AppendBody appends the message's body (BodyLen bytes of it) to b.
func (m *Register) AppendBody(b []byte) []byte {
	var full [RegisterFullBody]byte
	w := full[:0]
	w = appendStr(w, m.DeviceName, 16)
	w = binary.LittleEndian.AppendUint32(w, m.UserID)
	w = binary.LittleEndian.AppendUint32(w, m.Instance)
	ip := [4]byte{}
	if m.StationIP.Is4() {
		ip = m.StationIP.As4()
	}
	w = append(w, ip[:]...)
	w = binary.LittleEndian.AppendUint32(w, m.DeviceType)
	w = binary.LittleEndian.AppendUint32(w, m.MaxStreams)
	w = binary.LittleEndian.AppendUint32(w, m.ActiveStreams)
	w = append(w, m.ProtocolVersion, m.Unknown)
	w = binary.LittleEndian.AppendUint16(w, m.PhoneFeatures)
	w = binary.LittleEndian.AppendUint32(w, m.MaxConferences)
	w = binary.LittleEndian.AppendUint32(w, m.ActiveConfs)
	w = append(w, m.MAC[:]...)
	w = append(w, make([]byte, 6)...)
	w = binary.LittleEndian.AppendUint32(w, m.IPv4Scope)
	w = binary.LittleEndian.AppendUint32(w, m.MaxLines)
	w = append(w, m.StationIPv6[:]...)
	w = binary.LittleEndian.AppendUint32(w, m.IPv6Scope)
	w = appendStr(w, m.LoadInfo, 32)
	w = appendStr(w, m.ConfigVersion, 48)
	n := m.BodyLen
	if n <= 0 || n > RegisterFullBody {
		n = RegisterFullBody
	}
	return append(b, w[:n]...)
}

// AppendFrame appends the whole message, in the given header version.
func (m *Register) AppendFrame(b []byte, version uint32) []byte {
	return appendMessage(b, version, RegisterID, m.AppendBody)
}

// RegisterAckBody is the size of a RegisterAck body.
const RegisterAckBody = 20

// RegisterAck is the RegisterAckMessage (0x0081): the CallManager accepts
// the phone and tells it how often to send KeepAlive.
type RegisterAck struct {
	KeepAliveInterval          uint32 // seconds
	DateTemplate               string // "M/D/YA"; 6 bytes on the wire, then 2 of padding
	SecondaryKeepAliveInterval uint32 // seconds, for the standby connection
	MaxProtocolVersion         uint8
	Unknown                    uint8
	Features                   uint16
}

// DecodeRegisterAck decodes a RegisterAck body; older CallManagers send
// only the first 16 bytes (no protocol version and features).
func DecodeRegisterAck(body []byte) (*RegisterAck, error) {
	if len(body) < 16 {
		return nil, fmt.Errorf("%w: RegisterAck body of %d bytes, need 16", ErrMalformed, len(body))
	}
	c := cursor{b: body}
	m := &RegisterAck{}
	m.KeepAliveInterval = c.u32()
	m.DateTemplate = c.str(6)
	c.bytes(2)
	m.SecondaryKeepAliveInterval = c.u32()
	m.MaxProtocolVersion = c.u8()
	m.Unknown = c.u8()
	m.Features = c.u16()
	return m, nil
}

// AppendBody appends the 20-byte body to b.
func (m *RegisterAck) AppendBody(b []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, m.KeepAliveInterval)
	b = appendStr(b, m.DateTemplate, 6)
	b = append(b, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, m.SecondaryKeepAliveInterval)
	b = append(b, m.MaxProtocolVersion, m.Unknown)
	return binary.LittleEndian.AppendUint16(b, m.Features)
}

// AppendFrame appends the whole message.
func (m *RegisterAck) AppendFrame(b []byte, version uint32) []byte {
	return appendMessage(b, version, RegisterAckID, m.AppendBody)
}

// RegisterRejectBody is the size of a RegisterReject body.
const RegisterRejectBody = 32

// RegisterReject is the RegisterRejectMessage (0x009d): the CallManager
// refuses the phone, with a reason such as "Device Unknown".
type RegisterReject struct {
	Text string // 32 bytes on the wire
}

// DecodeRegisterReject decodes a RegisterReject body; a shorter text field
// than 32 bytes is accepted as far as it goes.
func DecodeRegisterReject(body []byte) (*RegisterReject, error) {
	c := cursor{b: body}
	return &RegisterReject{Text: c.str(min(len(body), RegisterRejectBody))}, nil
}

// AppendBody appends the 32-byte body to b.
func (m *RegisterReject) AppendBody(b []byte) []byte {
	return appendStr(b, m.Text, RegisterRejectBody)
}

// AppendFrame appends the whole message.
func (m *RegisterReject) AppendFrame(b []byte, version uint32) []byte {
	return appendMessage(b, version, RegisterRejectID, m.AppendBody)
}

// UnregisterAck is the UnregisterAckMessage (0x0118).
type UnregisterAck struct {
	Status uint32 // 0: ok, 1: error, 2: NAK (a call is up)
}

// DecodeUnregisterAck decodes its 4-byte body.
func DecodeUnregisterAck(body []byte) (*UnregisterAck, error) {
	if len(body) < 4 {
		return nil, fmt.Errorf("%w: UnregisterAck body of %d bytes, need 4", ErrMalformed, len(body))
	}
	return &UnregisterAck{Status: binary.LittleEndian.Uint32(body)}, nil
}

// AppendFrame appends the whole message.
func (m *UnregisterAck) AppendFrame(b []byte, version uint32) []byte {
	return appendMessage(b, version, UnregisterAckID, func(b []byte) []byte {
		return binary.LittleEndian.AppendUint32(b, m.Status)
	})
}

// AppendEmpty appends a message without a body: KeepAlive, KeepAliveAck,
// Unregister, CapabilitiesReq.
func AppendEmpty(b []byte, version uint32, id MessageID) []byte {
	return AppendFrame(b, version, id, nil)
}

// appendMessage writes the header with a placeholder length, the body,
// and then the length: no intermediate buffer.
func appendMessage(b []byte, version uint32, id MessageID, body func([]byte) []byte) []byte {
	start := len(b)
	b = AppendFrame(b, version, id, nil)
	b = body(b)
	binary.LittleEndian.PutUint32(b[start:], uint32(len(b)-start-8))
	return b
}

// appendStr writes s into a NUL-padded field of n bytes, cut at n.
func appendStr(b []byte, s string, n int) []byte {
	if len(s) > n {
		s = s[:n]
	}
	b = append(b, s...)
	return append(b, make([]byte, n-len(s))...)
}

// cursor reads fields in order; a field the body does not hold in full
// reads as zero and so does every field after it.
type cursor struct {
	b   []byte
	off int
}

func (c *cursor) bytes(n int) ([]byte, bool) {
	if c.off+n > len(c.b) {
		c.off = len(c.b)
		return nil, false
	}
	v := c.b[c.off : c.off+n]
	c.off += n
	return v, true
}

func (c *cursor) u32() uint32 {
	v, ok := c.bytes(4)
	if !ok {
		return 0
	}
	return binary.LittleEndian.Uint32(v)
}

func (c *cursor) u16() uint16 {
	v, ok := c.bytes(2)
	if !ok {
		return 0
	}
	return binary.LittleEndian.Uint16(v)
}

func (c *cursor) u8() uint8 {
	v, ok := c.bytes(1)
	if !ok {
		return 0
	}
	return v[0]
}

// str reads a NUL-padded string field of n bytes: the bytes before the
// first NUL.
func (c *cursor) str(n int) string {
	v, ok := c.bytes(n)
	if !ok {
		return ""
	}
	if i := bytes.IndexByte(v, 0); i >= 0 {
		v = v[:i]
	}
	return string(v)
}
