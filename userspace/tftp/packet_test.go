package tftp

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		name string
		in   string
		want Packet
		err  error
	}{
		{"rrq", "\x00\x01SEP.cnf.xml\x00octet\x00", Packet{Op: OpRRQ, Filename: "SEP.cnf.xml", Mode: "octet"}, nil},
		{"rrq options", "\x00\x01f\x00netascii\x00blksize\x001468\x00tsize\x000\x00timeout\x003\x00windowsize\x0016\x00",
			Packet{Op: OpRRQ, Filename: "f", Mode: "netascii", Options: []Option{{"blksize", "1468"}, {"tsize", "0"}, {"timeout", "3"}, {"windowsize", "16"}}}, nil},
		{"rrq empty option value", "\x00\x01f\x00octet\x00x\x00\x00", Packet{Op: OpRRQ, Filename: "f", Mode: "octet", Options: []Option{{"x", ""}}}, nil},
		{"wrq", "\x00\x02up\x00octet\x00", Packet{Op: OpWRQ, Filename: "up", Mode: "octet"}, nil},
		{"data", "\x00\x03\x01\x02abc", Packet{Op: OpData, Block: 0x0102, Data: []byte("abc")}, nil},
		{"data empty", "\x00\x03\xff\xff", Packet{Op: OpData, Block: 0xffff, Data: []byte{}}, nil},
		{"ack", "\x00\x04\x00\x00", Packet{Op: OpAck}, nil},
		{"error", "\x00\x05\x00\x01File not found\x00", Packet{Op: OpError, Code: ErrFileNotFound, Message: "File not found"}, nil},
		{"error empty message", "\x00\x05\x00\x08\x00", Packet{Op: OpError, Code: ErrOptionRefused}, nil},
		{"oack", "\x00\x06blksize\x001468\x00", Packet{Op: OpOACK, Options: []Option{{"blksize", "1468"}}}, nil},
		{"oack empty", "\x00\x06", Packet{Op: OpOACK}, nil},

		{"empty", "", Packet{}, ErrShort},
		{"one byte", "\x00", Packet{}, ErrShort},
		{"opcode 0", "\x00\x00", Packet{}, ErrUnknownOpcode},
		{"opcode 7", "\x00\x07abc", Packet{}, ErrUnknownOpcode},
		{"opcode 0x0101", "\x01\x01f\x00octet\x00", Packet{}, ErrUnknownOpcode},
		{"rrq nothing", "\x00\x01", Packet{}, ErrNoNUL},
		{"rrq name without NUL", "\x00\x01SEP.cnf.xml", Packet{}, ErrNoNUL},
		{"rrq mode without NUL", "\x00\x01f\x00octet", Packet{}, ErrNoNUL},
		{"rrq empty name", "\x00\x01\x00octet\x00", Packet{}, ErrEmptyField},
		{"rrq empty mode", "\x00\x01f\x00\x00", Packet{}, ErrEmptyField},
		{"rrq option without value", "\x00\x01f\x00octet\x00blksize\x00", Packet{}, ErrOptionValue},
		{"rrq option value without NUL", "\x00\x01f\x00octet\x00blksize\x001468", Packet{}, ErrNoNUL},
		{"rrq option name without NUL", "\x00\x01f\x00octet\x00blksize", Packet{}, ErrNoNUL},
		{"data short", "\x00\x03\x01", Packet{}, ErrShort},
		{"ack short", "\x00\x04\x01", Packet{}, ErrShort},
		{"ack trailing", "\x00\x04\x00\x01x", Packet{}, ErrTrailing},
		{"error short", "\x00\x05\x00", Packet{}, ErrShort},
		{"error without NUL", "\x00\x05\x00\x01oops", Packet{}, ErrNoNUL},
		{"error trailing", "\x00\x05\x00\x01oops\x00x", Packet{}, ErrTrailing},
		{"oack without value", "\x00\x06blksize\x00", Packet{}, ErrOptionValue},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Parse([]byte(c.in))
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("error %v, want %v", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %+v\nwant %+v", got, c.want)
			}
			// Every valid packet encodes back to the same bytes.
			if back := got.Append(nil); !bytes.Equal(back, []byte(c.in)) {
				t.Errorf("Append = %q, want %q", back, c.in)
			}
		})
	}
}

func TestAppendHelpers(t *testing.T) {
	if got := AppendAck(nil, 0xabcd); string(got) != "\x00\x04\xab\xcd" {
		t.Errorf("AppendAck = %q", got)
	}
	if got := AppendError(nil, ErrAccess, "no"); string(got) != "\x00\x05\x00\x02no\x00" {
		t.Errorf("AppendError = %q", got)
	}
	h := make([]byte, 4)
	dataHeader(h, 0x1234)
	if string(h) != "\x00\x03\x12\x34" {
		t.Errorf("dataHeader = %q", h)
	}
	for op, s := range map[Opcode]string{OpRRQ: "RRQ", OpWRQ: "WRQ", OpData: "DATA", OpAck: "ACK", OpError: "ERROR", OpOACK: "OACK", 9: "opcode(9)"} {
		if op.String() != s {
			t.Errorf("%d.String() = %q", op, op.String())
		}
	}
}

func TestParseMode(t *testing.T) {
	for s, want := range map[string]Mode{"octet": ModeOctet, "OCTET": ModeOctet, "NetAscii": ModeNetascii, "mail": 0, "binary": 0, "": 0} {
		got, ok := ParseMode(s)
		if got != want || ok != (want != 0) {
			t.Errorf("ParseMode(%q) = %v, %v", s, got, ok)
		}
	}
}

func TestNegotiate(t *testing.T) {
	lim := OptionLimits{MaxBlockSize: MaxBlockSize, MaxWindowSize: 64}
	o := func(kv ...string) []Option {
		var out []Option
		for i := 0; i < len(kv); i += 2 {
			out = append(out, Option{kv[i], kv[i+1]})
		}
		return out
	}
	for _, c := range []struct {
		name string
		opts []Option
		lim  *OptionLimits
		want Negotiated
		err  bool
	}{
		{"none", nil, nil, Negotiated{BlockSize: 512, WindowSize: 1}, false},
		{"all", o("blksize", "1468", "tsize", "0", "timeout", "3", "windowsize", "16"), nil,
			Negotiated{1468, 16, 3, true, o("blksize", "1468", "tsize", "1000", "timeout", "3", "windowsize", "16")}, false},
		{"case kept", o("BLKSIZE", "1024"), nil, Negotiated{1024, 1, 0, false, o("BLKSIZE", "1024")}, false},
		{"blksize min", o("blksize", "8"), nil, Negotiated{8, 1, 0, false, o("blksize", "8")}, false},
		{"blksize max", o("blksize", "65464"), nil, Negotiated{65464, 1, 0, false, o("blksize", "65464")}, false},
		{"blksize 0 ignored", o("blksize", "0"), nil, Negotiated{BlockSize: 512, WindowSize: 1}, false},
		{"blksize 7 ignored", o("blksize", "7"), nil, Negotiated{BlockSize: 512, WindowSize: 1}, false},
		{"blksize 65465 lowered", o("blksize", "65465"), nil, Negotiated{65464, 1, 0, false, o("blksize", "65464")}, false},
		{"blksize huge lowered", o("blksize", "99999999999"), nil, Negotiated{65464, 1, 0, false, o("blksize", "65464")}, false},
		{"blksize server cap", o("blksize", "9000"), &OptionLimits{1468, 8}, Negotiated{1468, 1, 0, false, o("blksize", "1468")}, false},
		{"blksize not a number", o("blksize", "1k"), nil, Negotiated{BlockSize: 512, WindowSize: 1}, false},
		{"blksize negative", o("blksize", "-512"), nil, Negotiated{BlockSize: 512, WindowSize: 1}, false},
		{"blksize overflow", o("blksize", "999999999999999999999"), nil, Negotiated{BlockSize: 512, WindowSize: 1}, false},
		{"timeout 0 ignored", o("timeout", "0"), nil, Negotiated{BlockSize: 512, WindowSize: 1}, false},
		{"timeout 256 ignored", o("timeout", "256"), nil, Negotiated{BlockSize: 512, WindowSize: 1}, false},
		{"timeout 255", o("timeout", "255"), nil, Negotiated{512, 1, 255, false, o("timeout", "255")}, false},
		{"windowsize 0 ignored", o("windowsize", "0"), nil, Negotiated{BlockSize: 512, WindowSize: 1}, false},
		{"windowsize 65536 ignored", o("windowsize", "65536"), nil, Negotiated{BlockSize: 512, WindowSize: 1}, false},
		{"windowsize 65535 lowered", o("windowsize", "65535"), nil, Negotiated{512, 64, 0, false, o("windowsize", "64")}, false},
		{"tsize huge", o("tsize", "99999999999999"), nil, Negotiated{512, 1, 0, true, o("tsize", "1000")}, false},
		{"tsize not a number", o("tsize", "x"), nil, Negotiated{BlockSize: 512, WindowSize: 1}, false},
		{"unknown ignored", o("multicast", "", "rollover", "1", "blksize2", "1024"), nil, Negotiated{BlockSize: 512, WindowSize: 1}, false},
		{"duplicate refused", o("blksize", "1024", "blksize", "512"), nil, Negotiated{}, true},
		{"duplicate other case refused", o("tsize", "0", "TSIZE", "0"), nil, Negotiated{}, true},
		{"duplicate unknown fine", o("x", "1", "x", "2"), nil, Negotiated{BlockSize: 512, WindowSize: 1}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := lim
			if c.lim != nil {
				l = *c.lim
			}
			got, err := Negotiate(c.opts, 1000, l)
			if c.err {
				var ne *NegotiateError
				if !errors.As(err, &ne) {
					t.Fatalf("error %v, want a NegotiateError", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %+v\nwant %+v", got, c.want)
			}
		})
	}
}

func TestNetascii(t *testing.T) {
	for in, want := range map[string]string{
		"":               "",
		"a\nb\n":         "a\r\nb\r\n",
		"a\r\nb":         "a\r\x00\r\nb",
		"\r":             "\r\x00",
		"plain":          "plain",
		"<x/>\n\n\r\r\n": "<x/>\r\n\r\n\r\x00\r\x00\r\n",
	} {
		got, err := netascii([]byte(in))
		if err != nil || string(got) != want {
			t.Errorf("netascii(%q) = %q, %v, want %q", in, got, err, want)
		}
		// The client's decoder undoes it, whatever the block boundaries.
		for cut := 0; cut <= len(want); cut++ {
			var out bytes.Buffer
			d := netasciiDecoder{w: &out}
			d.Write([]byte(want[:cut]))
			d.Write([]byte(want[cut:]))
			if out.String() != in {
				t.Errorf("decode %q cut at %d = %q", want, cut, out.String())
			}
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"\x00\x01SEP.cnf.xml\x00octet\x00blksize\x001468\x00tsize\x000\x00",
		"\x00\x02f\x00octet\x00", "\x00\x03\x00\x01data", "\x00\x04\x00\x01",
		"\x00\x05\x00\x01nope\x00", "\x00\x06windowsize\x0016\x00", "\x00\x01f\x00octet\x00blksize\x00",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		// What parses encodes back to the same bytes and negotiates
		// within the RFCs' ranges.
		if back := p.Append(nil); !bytes.Equal(back, b) {
			t.Fatalf("Append(Parse(%q)) = %q", b, back)
		}
		n, err := Negotiate(p.Options, 1<<40, OptionLimits{MaxBlockSize: MaxBlockSize, MaxWindowSize: 64})
		if err != nil {
			return
		}
		if n.BlockSize < MinBlockSize || n.BlockSize > MaxBlockSize || n.WindowSize < 1 || n.WindowSize > 64 || n.Timeout < 0 || n.Timeout > MaxTimeout {
			t.Fatalf("Negotiate(%q) = %+v", p.Options, n)
		}
		for _, o := range n.Options {
			if strings.ContainsRune(o.Name, 0) || strings.ContainsRune(o.Value, 0) {
				t.Fatalf("OACK option with a NUL: %q", o)
			}
		}
	})
}
