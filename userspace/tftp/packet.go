// Package tftp serves boot files over TFTP (RFC 1350) with the option
// extensions phones and PXE clients use: OACK (RFC 2347), blksize (RFC
// 2348), tsize and timeout (RFC 2349) and windowsize (RFC 7440). It is
// read-only: files come from a bootfiles.Source, and a write request gets
// an ERROR.
//
// The data path does not copy file bytes into Go buffers: a window of
// DATA packets goes to the kernel in one sendmsg whose iovecs alternate
// 4-byte headers and slices of the file's shared mapping, segmented into
// datagrams by the kernel (UDP GSO), with sendmmsg as the fallback where
// GSO is refused. bench/tftp/README.md has the measurements behind that
// choice (BenchmarkSendPath, and the bench end to end).
//
// The package also has a client (Fetch), used by the tests and by
// bench/tftp as its load generator.
package tftp

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Opcode is a TFTP packet type.
type Opcode uint16

// Opcodes of RFC 1350 and RFC 2347.
const (
	OpRRQ   Opcode = 1
	OpWRQ   Opcode = 2
	OpData  Opcode = 3
	OpAck   Opcode = 4
	OpError Opcode = 5
	OpOACK  Opcode = 6
)

func (o Opcode) String() string {
	switch o {
	case OpRRQ:
		return "RRQ"
	case OpWRQ:
		return "WRQ"
	case OpData:
		return "DATA"
	case OpAck:
		return "ACK"
	case OpError:
		return "ERROR"
	case OpOACK:
		return "OACK"
	}
	return "opcode(" + strconv.Itoa(int(o)) + ")"
}

// ErrorCode is the code of an ERROR packet.
type ErrorCode uint16

// Error codes of RFC 1350 and RFC 2347.
const (
	ErrUndefined     ErrorCode = 0
	ErrFileNotFound  ErrorCode = 1
	ErrAccess        ErrorCode = 2
	ErrDiskFull      ErrorCode = 3
	ErrIllegalOp     ErrorCode = 4
	ErrUnknownTID    ErrorCode = 5
	ErrFileExists    ErrorCode = 6
	ErrNoSuchUser    ErrorCode = 7
	ErrOptionRefused ErrorCode = 8
)

// Option is one name/value pair of a request or an OACK, in the order
// sent. Names are compared case-insensitively (RFC 2347).
type Option struct {
	Name, Value string
}

// Packet is one decoded TFTP packet. Which fields are set depends on Op.
type Packet struct {
	Op       Opcode
	Filename string   // RRQ, WRQ
	Mode     string   // RRQ, WRQ, as sent
	Options  []Option // RRQ, WRQ, OACK
	Block    uint16   // DATA, ACK
	Data     []byte   // DATA; aliases the parsed buffer
	Code     ErrorCode
	Message  string // ERROR
}

// Parse errors. Every malformed packet yields one of them, wrapped with
// where it went wrong.
var (
	ErrShort         = errors.New("tftp: packet too short")
	ErrUnknownOpcode = errors.New("tftp: unknown opcode")
	ErrNoNUL         = errors.New("tftp: string not NUL-terminated")
	ErrEmptyField    = errors.New("tftp: empty file name or mode")
	ErrOptionValue   = errors.New("tftp: option without a value")
	ErrTrailing      = errors.New("tftp: bytes after the packet")
)

// Parse decodes b. Data of a DATA packet aliases b.
func Parse(b []byte) (Packet, error) {
	if len(b) < 2 {
		return Packet{}, ErrShort
	}
	p := Packet{Op: Opcode(uint16(b[0])<<8 | uint16(b[1]))}
	body := b[2:]
	switch p.Op {
	case OpRRQ, OpWRQ:
		var err error
		if p.Filename, body, err = cstring(body, "file name"); err != nil {
			return Packet{}, err
		}
		if p.Mode, body, err = cstring(body, "mode"); err != nil {
			return Packet{}, err
		}
		if p.Filename == "" || p.Mode == "" {
			return Packet{}, ErrEmptyField
		}
		if p.Options, err = parseOptions(body); err != nil {
			return Packet{}, err
		}
	case OpOACK:
		var err error
		if p.Options, err = parseOptions(body); err != nil {
			return Packet{}, err
		}
	case OpData, OpAck:
		if len(body) < 2 {
			return Packet{}, fmt.Errorf("%w: %s without a block number", ErrShort, p.Op)
		}
		p.Block = uint16(body[0])<<8 | uint16(body[1])
		if p.Op == OpData {
			p.Data = body[2:]
		} else if len(body) > 2 {
			return Packet{}, fmt.Errorf("%w: %d after an ACK", ErrTrailing, len(body)-2)
		}
	case OpError:
		if len(body) < 2 {
			return Packet{}, fmt.Errorf("%w: ERROR without a code", ErrShort)
		}
		p.Code = ErrorCode(uint16(body[0])<<8 | uint16(body[1]))
		var err error
		var rest []byte
		if p.Message, rest, err = cstring(body[2:], "error message"); err != nil {
			return Packet{}, err
		}
		if len(rest) > 0 {
			return Packet{}, fmt.Errorf("%w: %d after an ERROR", ErrTrailing, len(rest))
		}
	default:
		return Packet{}, fmt.Errorf("%w %d", ErrUnknownOpcode, uint16(p.Op))
	}
	return p, nil
}

// cstring splits a NUL-terminated string off the front of b.
func cstring(b []byte, what string) (string, []byte, error) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], nil
		}
	}
	return "", nil, fmt.Errorf("%w: %s", ErrNoNUL, what)
}

func parseOptions(b []byte) ([]Option, error) {
	var opts []Option
	for len(b) > 0 {
		name, rest, err := cstring(b, "option name")
		if err != nil {
			return nil, err
		}
		if len(rest) == 0 {
			return nil, fmt.Errorf("%w: %q", ErrOptionValue, name)
		}
		value, rest, err := cstring(rest, "option value of "+strconv.Quote(name))
		if err != nil {
			return nil, err
		}
		opts = append(opts, Option{Name: name, Value: value})
		b = rest
	}
	return opts, nil
}

// Append encodes p after dst. It does not check that p makes sense (a
// test builds malformed packets with it).
func (p *Packet) Append(dst []byte) []byte {
	dst = append(dst, byte(p.Op>>8), byte(p.Op))
	switch p.Op {
	case OpRRQ, OpWRQ:
		dst = append(append(dst, p.Filename...), 0)
		dst = append(append(dst, p.Mode...), 0)
		dst = appendOptions(dst, p.Options)
	case OpOACK:
		dst = appendOptions(dst, p.Options)
	case OpData:
		dst = append(dst, byte(p.Block>>8), byte(p.Block))
		dst = append(dst, p.Data...)
	case OpAck:
		dst = append(dst, byte(p.Block>>8), byte(p.Block))
	case OpError:
		dst = append(dst, byte(p.Code>>8), byte(p.Code))
		dst = append(append(dst, p.Message...), 0)
	}
	return dst
}

func appendOptions(dst []byte, opts []Option) []byte {
	for _, o := range opts {
		dst = append(append(dst, o.Name...), 0)
		dst = append(append(dst, o.Value...), 0)
	}
	return dst
}

// AppendAck encodes an ACK of block.
func AppendAck(dst []byte, block uint16) []byte {
	return append(dst, 0, byte(OpAck), byte(block>>8), byte(block))
}

// AppendError encodes an ERROR.
func AppendError(dst []byte, code ErrorCode, msg string) []byte {
	p := Packet{Op: OpError, Code: code, Message: msg}
	return p.Append(dst)
}

// dataHeader writes the 4-byte header of DATA block into h.
func dataHeader(h []byte, block uint16) {
	h[0], h[1], h[2], h[3] = 0, byte(OpData), byte(block>>8), byte(block)
}

// Limits of the options (RFC 2348, 2349, 7440).
const (
	DefaultBlockSize = 512
	MinBlockSize     = 8
	MaxBlockSize     = 65464
	MinTimeout       = 1   // seconds
	MaxTimeout       = 255 // seconds
	MaxWindowSize    = 65535
)

// Mode is a transfer mode.
type Mode uint8

// Modes a server serves. "mail" (RFC 1350) is obsolete and refused.
const (
	ModeOctet Mode = iota + 1
	ModeNetascii
)

// ParseMode reads a request's mode, case-insensitively.
func ParseMode(s string) (Mode, bool) {
	switch strings.ToLower(s) {
	case "octet":
		return ModeOctet, true
	case "netascii":
		return ModeNetascii, true
	}
	return 0, false
}

// Negotiated is what a transfer runs with after option negotiation.
type Negotiated struct {
	BlockSize  int
	WindowSize int
	Timeout    int  // seconds; 0: the server's own retransmission timeout
	TSize      bool // the client asked for the size
	// Options is the OACK to send, in the order the client asked; empty
	// means no OACK (DATA 1 answers the request).
	Options []Option
}

// OptionLimits is what a server accepts.
type OptionLimits struct {
	MaxBlockSize  int // at most MaxBlockSize
	MaxWindowSize int // at most MaxWindowSize
}

// NegotiateError refuses a request's options with ERROR 8.
type NegotiateError struct{ Msg string }

func (e *NegotiateError) Error() string { return "tftp: option negotiation: " + e.Msg }

// Negotiate answers a read request's options (RFC 2347): size is the
// transfer size for tsize. Unknown options and values out of an option's
// range are left out of the OACK, as RFC 2347 lets a server do; a
// blksize or windowsize above the server's limit is lowered to it (RFC
// 2348, 7440); an option given twice refuses the request (which of the
// two would the client expect?).
func Negotiate(opts []Option, size int64, lim OptionLimits) (Negotiated, error) {
	n := Negotiated{BlockSize: DefaultBlockSize, WindowSize: 1}
	seen := map[string]bool{}
	for _, o := range opts {
		name := strings.ToLower(o.Name)
		switch name {
		case "blksize", "tsize", "timeout", "windowsize":
		default:
			continue // RFC 2347: unrecognised options are ignored
		}
		if seen[name] {
			return Negotiated{}, &NegotiateError{"option " + name + " given twice"}
		}
		seen[name] = true
		v, err := strconv.ParseInt(o.Value, 10, 64)
		if err != nil || v < 0 {
			continue
		}
		switch name {
		case "blksize":
			if v < MinBlockSize {
				continue
			}
			v = min(v, MaxBlockSize, int64(lim.MaxBlockSize))
			n.BlockSize = int(v)
		case "windowsize":
			if v < 1 || v > MaxWindowSize {
				continue
			}
			v = min(v, int64(lim.MaxWindowSize))
			n.WindowSize = int(v)
		case "timeout":
			if v < MinTimeout || v > MaxTimeout {
				continue
			}
			n.Timeout = int(v)
		case "tsize":
			// A client reading sends 0; any value asks for the size.
			n.TSize = true
			v = size
		}
		n.Options = append(n.Options, Option{Name: o.Name, Value: strconv.FormatInt(v, 10)})
	}
	return n, nil
}
