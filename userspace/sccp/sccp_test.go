package sccp

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func unhex(tb testing.TB, s string) []byte {
	tb.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// phone7941 is a RegisterMessage as a 7941 on SCCP41.8-5-3S sends it
// (header version 0, protocol 11, body up to loadInfo), assembled byte by
// byte from the layout.
const phone7941 = `
80000000 00000000 01000000
5345503030314239453236363336390000 000000 01000000 c0a80924 73000000
05000000 00000000 0b 00 7285 00000000
00000000 001b9e266369000000000000 00000000 02000000
00000000000000000000000000000000 00000000
5343435034312e382d352d335300000000000000000000000000000000000000`

func testRegister() *Register {
	return &Register{
		DeviceName: "SEP001B9E266369", Instance: 1,
		StationIP:  netip.MustParseAddr("192.168.9.36"),
		DeviceType: 115, MaxStreams: 5, ProtocolVersion: 11, PhoneFeatures: 0x8572,
		MAC: [6]byte{0x00, 0x1b, 0x9e, 0x26, 0x63, 0x69}, MaxLines: 2,
		LoadInfo: "SCCP41.8-5-3S", BodyLen: RegisterLoadBody,
	}
}

func TestDecodeRegisterBytes(t *testing.T) {
	wire := unhex(t, phone7941)
	f, n, err := NextFrame(wire)
	if err != nil || n != len(wire) {
		t.Fatalf("NextFrame: n %d of %d, %v", n, len(wire), err)
	}
	if f.ID != RegisterID || f.Version != VersionBasic {
		t.Fatalf("header: %v version %d", f.ID, f.Version)
	}
	got, err := DecodeRegister(f.Body)
	if err != nil {
		t.Fatal(err)
	}
	if want := testRegister(); !reflect.DeepEqual(got, want) {
		t.Errorf("decoded\n got %+v\nwant %+v", got, want)
	}
	if out := got.AppendFrame(nil, VersionBasic); !bytes.Equal(out, wire) {
		t.Errorf("re-encoded\n got %x\nwant %x", out, wire)
	}
}

func TestRoundTrip(t *testing.T) {
	full := testRegister()
	full.BodyLen = 0
	full.ConfigVersion = "1700000000-0"
	full.StationIPv6 = netip.MustParseAddr("2001:db8::36").As16()
	full.UserID, full.ActiveStreams, full.MaxConferences, full.ActiveConfs = 7, 1, 4, 1
	full.IPv4Scope, full.IPv6Scope, full.Unknown = 1, 2, 3
	short := testRegister()
	short.BodyLen = RegisterShortBody
	short.MAC, short.MaxLines, short.LoadInfo = [6]byte{}, 0, ""
	minimal := &Register{DeviceName: "SEP000000000001", DeviceType: 30007, MaxStreams: 1, StationIP: netip.AddrFrom4([4]byte{}), BodyLen: RegisterMinBody}
	for _, tc := range []struct {
		name    string
		m       *Register
		bodyLen int
	}{
		{"full", full, RegisterFullBody},
		{"load", testRegister(), RegisterLoadBody},
		{"short", short, RegisterShortBody},
		{"minimal", minimal, RegisterMinBody},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wire := tc.m.AppendFrame(nil, Version22)
			f, n, err := NextFrame(wire)
			if err != nil || n != len(wire) {
				t.Fatalf("NextFrame: %d of %d, %v", n, len(wire), err)
			}
			if len(f.Body) != tc.bodyLen || f.Version != Version22 {
				t.Fatalf("body %d bytes version %d, want %d bytes version %d", len(f.Body), f.Version, tc.bodyLen, Version22)
			}
			got, err := DecodeRegister(f.Body)
			if err != nil {
				t.Fatal(err)
			}
			want := *tc.m
			want.BodyLen = tc.bodyLen
			if !reflect.DeepEqual(got, &want) {
				t.Errorf("round trip\n got %+v\nwant %+v", got, &want)
			}
		})
	}

	ack := &RegisterAck{KeepAliveInterval: 30, DateTemplate: "M/D/YA", SecondaryKeepAliveInterval: 60, MaxProtocolVersion: 22, Features: 0x8000}
	wire := ack.AppendFrame(nil, Version22)
	if len(wire) != HeaderLen+RegisterAckBody {
		t.Fatalf("RegisterAck is %d bytes", len(wire))
	}
	gotAck, err := DecodeRegisterAck(wire[HeaderLen:])
	if err != nil || !reflect.DeepEqual(gotAck, ack) {
		t.Errorf("RegisterAck round trip: %+v, %v", gotAck, err)
	}
	rej := &RegisterReject{Text: "Device Unknown"}
	wire = rej.AppendFrame(nil, 0)
	gotRej, err := DecodeRegisterReject(wire[HeaderLen:])
	if err != nil || *gotRej != *rej || len(wire) != HeaderLen+RegisterRejectBody {
		t.Errorf("RegisterReject round trip: %d bytes, %+v, %v", len(wire), gotRej, err)
	}
	ua := &UnregisterAck{Status: 2}
	wire = ua.AppendFrame(nil, 0)
	gotUA, err := DecodeUnregisterAck(wire[HeaderLen:])
	if err != nil || *gotUA != *ua {
		t.Errorf("UnregisterAck round trip: %+v, %v", gotUA, err)
	}
	if ka := AppendEmpty(nil, 0, KeepAliveID); !bytes.Equal(ka, unhex(t, "04000000 00000000 00000000")) {
		t.Errorf("KeepAlive = %x", ka)
	}
}

// TestLongNamesAreCut: strings longer than their field are cut to it, not
// spilled into the next field.
func TestLongNamesAreCut(t *testing.T) {
	m := &Register{DeviceName: strings.Repeat("X", 40), LoadInfo: strings.Repeat("L", 99), ConfigVersion: strings.Repeat("C", 99)}
	got, err := DecodeRegister(m.AppendBody(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got.DeviceName != strings.Repeat("X", 16) || got.LoadInfo != strings.Repeat("L", 32) || got.ConfigVersion != strings.Repeat("C", 48) {
		t.Errorf("got %q %q %q", got.DeviceName, got.LoadInfo, got.ConfigVersion)
	}
	if got.UserID != 0 || got.BodyLen != RegisterFullBody {
		t.Errorf("overflow into the next field: %+v", got)
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"length below 4", unhex(t, "03000000 00000000 01000000")},
		{"length zero", unhex(t, "00000000 00000000 00000000")},
		{"huge length", unhex(t, "ffffffff 00000000 01000000")},
		{"one past MaxBody", AppendFrame(nil, 0, RegisterID, make([]byte, MaxBody+1))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, n, err := NextFrame(tc.in); !errors.Is(err, ErrMalformed) || n != 0 {
				t.Errorf("NextFrame: n %d, err %v; want ErrMalformed", n, err)
			}
			if _, err := NewReader(bytes.NewReader(tc.in)).ReadFrame(); !errors.Is(err, ErrMalformed) {
				t.Errorf("ReadFrame: %v; want ErrMalformed", err)
			}
		})
	}
	if _, err := DecodeRegister(make([]byte, RegisterMinBody-1)); !errors.Is(err, ErrMalformed) {
		t.Errorf("short Register: %v", err)
	}
	if _, err := DecodeRegisterAck(make([]byte, 15)); !errors.Is(err, ErrMalformed) {
		t.Errorf("short RegisterAck: %v", err)
	}
	if _, err := DecodeUnregisterAck(make([]byte, 3)); !errors.Is(err, ErrMalformed) {
		t.Errorf("short UnregisterAck: %v", err)
	}
	// MaxBody itself is fine.
	if _, n, err := NextFrame(AppendFrame(nil, 0, 0x9999, make([]byte, MaxBody))); err != nil || n != HeaderLen+MaxBody {
		t.Errorf("MaxBody: n %d, %v", n, err)
	}
}

func TestNextFramePartial(t *testing.T) {
	wire := append(AppendEmpty(nil, 0, KeepAliveID), testRegister().AppendFrame(nil, 0)...)
	for cut := range len(wire) {
		f, n, err := NextFrame(wire[:cut])
		switch {
		case err != nil:
			t.Fatalf("cut %d: %v", cut, err)
		case cut < HeaderLen && n != 0:
			t.Fatalf("cut %d: n %d", cut, n)
		case cut >= HeaderLen && (n != HeaderLen || f.ID != KeepAliveID):
			t.Fatalf("cut %d: n %d id %v", cut, n, f.ID)
		}
		if cut >= HeaderLen {
			if _, n2, err := NextFrame(wire[n:cut]); err != nil || (n2 != 0) != (cut == len(wire)) {
				t.Fatalf("cut %d: second frame n %d, %v", cut, n2, err)
			}
		}
	}
}

func TestReader(t *testing.T) {
	var stream []byte
	stream = AppendEmpty(stream, 0, KeepAliveID)
	stream = testRegister().AppendFrame(stream, 0)
	stream = AppendFrame(stream, 0, 0x1234, make([]byte, 3000))
	r := NewReader(bytes.NewReader(stream))
	for _, want := range []struct {
		id  MessageID
		len int
	}{{KeepAliveID, 0}, {RegisterID, RegisterLoadBody}, {0x1234, 3000}} {
		f, err := r.ReadFrame()
		if err != nil || f.ID != want.id || len(f.Body) != want.len {
			t.Fatalf("frame %v with %d bytes, %v; want %v with %d", f.ID, len(f.Body), err, want.id, want.len)
		}
	}
	if _, err := r.ReadFrame(); err != io.EOF {
		t.Errorf("at the end: %v, want EOF", err)
	}
	r = NewReader(bytes.NewReader(stream[:20]))
	if _, err := r.ReadFrame(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadFrame(); err != io.ErrUnexpectedEOF {
		t.Errorf("cut inside a frame: %v, want ErrUnexpectedEOF", err)
	}
}

func TestMessageIDString(t *testing.T) {
	if s := RegisterAckID.String(); s != "RegisterAck" {
		t.Errorf("RegisterAckID = %q", s)
	}
	if s := MessageID(0x4242).String(); s != "0x4242" {
		t.Errorf("unknown = %q", s)
	}
}

func BenchmarkDecodeRegister(b *testing.B) {
	body := testRegister().AppendBody(nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeRegister(body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendRegister(b *testing.B) {
	m := testRegister()
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = m.AppendFrame(buf[:0], 0)
	}
}

// flakyReader hands out a few bytes at a time and fails every other read,
// as a connection with a read deadline does.
type flakyReader struct {
	b    []byte
	fail bool
}

var errFlaky = errors.New("deadline")

func (f *flakyReader) Read(p []byte) (int, error) {
	f.fail = !f.fail
	if f.fail {
		return 0, errFlaky
	}
	if len(f.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 5)], f.b)
	f.b = f.b[n:]
	return n, nil
}

// TestReaderResumes: a read error inside a message loses nothing; the
// next call carries on.
func TestReaderResumes(t *testing.T) {
	stream := testRegister().AppendFrame(nil, 0)
	stream = AppendEmpty(stream, 0, KeepAliveAckID)
	r := NewReader(&flakyReader{b: stream})
	var ids []MessageID
	for {
		f, err := r.ReadFrame()
		if errors.Is(err, errFlaky) {
			continue
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if f.ID == RegisterID {
			if m, err := DecodeRegister(f.Body); err != nil || m.DeviceName != testRegister().DeviceName {
				t.Fatalf("Register after resumed reads: %+v, %v", m, err)
			}
		}
		ids = append(ids, f.ID)
	}
	if !reflect.DeepEqual(ids, []MessageID{RegisterID, KeepAliveAckID}) {
		t.Errorf("frames %v", ids)
	}
}
