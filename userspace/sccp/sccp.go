// Package sccp is the part of Cisco's Skinny Client Control Protocol that a
// registration proxy, a CallManager simulator and a simulated phone need:
// the framing (a 12-byte little-endian header: length, header version,
// message ID) and the registration messages (Register, RegisterAck,
// RegisterReject, KeepAlive and its ack, Unregister and its ack,
// CapabilitiesReq).
//
// Decoding is bounded: a header whose length is below 4 or whose body
// would exceed MaxBody is refused before anything is read or allocated,
// and every field is read only if the body holds all of it.
package sccp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Port is SCCP's TCP port; SecurePort is SCCP over TLS.
const (
	Port       = 2000
	SecurePort = 2443
)

// HeaderLen is the size of the header every message starts with.
const HeaderLen = 12

// MaxBody bounds a message's body. The largest messages in the protocol
// (UserToDeviceDataVersion1: 2,000 bytes of data plus a few header fields)
// fit with room; anything longer is a broken or hostile peer.
const MaxBody = 4096

// Header versions ("reserved" in older documents); Wireshark calls them
// Basic, V10, V11 ... The phone sends its own; a CallManager answers in the
// version the phone registered with.
const (
	VersionBasic uint32 = 0x00
	Version10    uint32 = 0x0a
	Version11    uint32 = 0x0b
	Version15    uint32 = 0x0f
	Version16    uint32 = 0x10
	Version22    uint32 = 0x16
)

// MessageID names a message.
type MessageID uint32

// The messages this package knows. Others pass through Frame untouched.
const (
	KeepAliveID       MessageID = 0x0000
	RegisterID        MessageID = 0x0001
	UnregisterID      MessageID = 0x0027
	RegisterAckID     MessageID = 0x0081
	CapabilitiesReqID MessageID = 0x009b
	RegisterRejectID  MessageID = 0x009d
	KeepAliveAckID    MessageID = 0x0100
	UnregisterAckID   MessageID = 0x0118
)

var messageNames = map[MessageID]string{
	KeepAliveID:       "KeepAlive",
	RegisterID:        "Register",
	UnregisterID:      "Unregister",
	RegisterAckID:     "RegisterAck",
	CapabilitiesReqID: "CapabilitiesReq",
	RegisterRejectID:  "RegisterReject",
	KeepAliveAckID:    "KeepAliveAck",
	UnregisterAckID:   "UnregisterAck",
}

func (id MessageID) String() string {
	if n, ok := messageNames[id]; ok {
		return n
	}
	return fmt.Sprintf("0x%04x", uint32(id))
}

// Errors. Every decoding failure wraps ErrMalformed.
var (
	ErrMalformed = errors.New("sccp: malformed message")
	ErrTooLong   = fmt.Errorf("%w: body longer than %d bytes", ErrMalformed, MaxBody)
)

// Header is a message's header. Length counts the message ID and the
// body, so the whole message is Length+8 bytes.
type Header struct {
	Length  uint32
	Version uint32
	ID      MessageID
}

// ParseHeader reads the header at the start of b, which must hold
// HeaderLen bytes, and checks the length against MaxBody.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, fmt.Errorf("%w: %d bytes, header needs %d", ErrMalformed, len(b), HeaderLen)
	}
	h := Header{
		Length:  binary.LittleEndian.Uint32(b[0:]),
		Version: binary.LittleEndian.Uint32(b[4:]),
		ID:      MessageID(binary.LittleEndian.Uint32(b[8:])),
	}
	if h.Length < 4 {
		return Header{}, fmt.Errorf("%w: length %d below 4", ErrMalformed, h.Length)
	}
	if h.Length-4 > MaxBody {
		return Header{}, ErrTooLong
	}
	return h, nil
}

// BodyLen is the length of the body that follows the header.
func (h Header) BodyLen() int { return int(h.Length) - 4 }

// FrameLen is the length of the whole message, header included.
func (h Header) FrameLen() int { return int(h.Length) + 8 }

// Frame is one message: its header version, ID and body.
type Frame struct {
	Version uint32
	ID      MessageID
	Body    []byte
}

// AppendFrame appends a message with the given body to b.
func AppendFrame(b []byte, version uint32, id MessageID, body []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(body)+4))
	b = binary.LittleEndian.AppendUint32(b, version)
	b = binary.LittleEndian.AppendUint32(b, uint32(id))
	return append(b, body...)
}

// NextFrame looks for a whole message at the start of b. It returns the
// message and its length on the wire, or n == 0 if b holds only part of
// one; a header that cannot start a valid message is an error. The
// frame's body aliases b.
func NextFrame(b []byte) (f Frame, n int, err error) {
	if len(b) < HeaderLen {
		return Frame{}, 0, nil
	}
	h, err := ParseHeader(b)
	if err != nil {
		return Frame{}, 0, err
	}
	if len(b) < h.FrameLen() {
		return Frame{}, 0, nil
	}
	return Frame{Version: h.Version, ID: h.ID, Body: b[HeaderLen:h.FrameLen()]}, h.FrameLen(), nil
}

// Reader reads whole messages from a stream into a buffer of its own of
// at most HeaderLen+MaxBody bytes. A read that fails (a deadline passing,
// say) keeps what it had read, so ReadFrame can be called again and
// carries on where it stopped.
type Reader struct {
	r   io.Reader
	buf []byte
	n   int // bytes of the current message read so far
}

// NewReader reads messages from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{r: r, buf: make([]byte, 256)}
}

// ReadFrame reads the next message. Its body is valid until the next call.
// A stream that ends inside a message gives io.ErrUnexpectedEOF; one that
// ends between messages gives io.EOF.
func (r *Reader) ReadFrame() (Frame, error) {
	if err := r.fill(HeaderLen); err != nil {
		return Frame{}, err
	}
	h, err := ParseHeader(r.buf[:HeaderLen])
	if err != nil {
		return Frame{}, err
	}
	if len(r.buf) < h.FrameLen() {
		r.buf = append(r.buf, make([]byte, h.FrameLen()-len(r.buf))...)
	}
	if err := r.fill(h.FrameLen()); err != nil {
		return Frame{}, err
	}
	r.n = 0
	return Frame{Version: h.Version, ID: h.ID, Body: r.buf[HeaderLen:h.FrameLen()]}, nil
}

// fill reads until the buffer holds want bytes of the current message.
func (r *Reader) fill(want int) error {
	for r.n < want {
		k, err := r.r.Read(r.buf[r.n:want])
		r.n += k
		if err != nil {
			if r.n >= want {
				return nil
			}
			if errors.Is(err, io.EOF) && r.n > 0 {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}
