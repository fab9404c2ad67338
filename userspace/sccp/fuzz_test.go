package sccp

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

// FuzzStream: a byte stream cut into messages by NextFrame and by Reader
// gives the same messages, neither panics, a refused header is
// ErrMalformed, and every Register, RegisterAck, RegisterReject and
// UnregisterAck that decodes re-encodes to a body that decodes the same.
// Run: go test -fuzz FuzzStream ./userspace/sccp
func FuzzStream(f *testing.F) {
	f.Add(unhex(f, phone7941))
	f.Add(AppendEmpty(nil, 0, KeepAliveID))
	f.Add((&RegisterAck{KeepAliveInterval: 30, DateTemplate: "M/D/YA"}).AppendFrame(nil, 0))
	f.Add((&RegisterReject{Text: "Device Unknown"}).AppendFrame(nil, 0))
	f.Add((&UnregisterAck{}).AppendFrame(nil, 0))
	full := testRegister()
	full.BodyLen = 0
	f.Add(append(full.AppendFrame(nil, Version22), AppendEmpty(nil, Version22, KeepAliveAckID)...))
	f.Add(unhex(f, "ffffffff 00000000 01000000"))
	f.Fuzz(func(t *testing.T, stream []byte) {
		var viaNext []Frame
		rest := stream
		var nextErr error
		for {
			fr, n, err := NextFrame(rest)
			if err != nil {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("NextFrame error of no known kind: %v", err)
				}
				nextErr = err
				break
			}
			if n == 0 {
				break
			}
			viaNext = append(viaNext, Frame{fr.Version, fr.ID, bytes.Clone(fr.Body)})
			rest = rest[n:]
		}
		r := NewReader(bytes.NewReader(stream))
		for i := 0; ; i++ {
			fr, err := r.ReadFrame()
			if err != nil {
				if i != len(viaNext) {
					t.Fatalf("Reader stopped after %d frames (%v), NextFrame found %d", i, err, len(viaNext))
				}
				switch {
				case nextErr != nil && !errors.Is(err, ErrMalformed):
					t.Fatalf("NextFrame refused a header (%v), Reader: %v", nextErr, err)
				case nextErr == nil && len(rest) == 0 && err != io.EOF:
					t.Fatalf("stream ended between frames, Reader: %v", err)
				case nextErr == nil && len(rest) > 0 && err != io.ErrUnexpectedEOF:
					t.Fatalf("stream ended inside a frame, Reader: %v", err)
				}
				break
			}
			if i >= len(viaNext) || !reflect.DeepEqual(Frame{fr.Version, fr.ID, bytes.Clone(fr.Body)}, viaNext[i]) {
				t.Fatalf("frame %d differs between Reader and NextFrame", i)
			}
		}
		for _, fr := range viaNext {
			checkBody(t, fr)
		}
	})
}

// checkBody decodes a body the way its ID says and checks that the
// re-encoded body decodes to the same message.
func checkBody(t *testing.T, fr Frame) {
	t.Helper()
	switch fr.ID {
	case RegisterID:
		m, err := DecodeRegister(fr.Body)
		if err != nil {
			return
		}
		again, err := DecodeRegister(m.AppendBody(nil))
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("Register round trip\nfirst  %+v\nsecond %+v (%v)", m, again, err)
		}
	case RegisterAckID:
		m, err := DecodeRegisterAck(fr.Body)
		if err != nil {
			return
		}
		again, err := DecodeRegisterAck(m.AppendBody(nil))
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("RegisterAck round trip\nfirst  %+v\nsecond %+v (%v)", m, again, err)
		}
	case RegisterRejectID:
		m, _ := DecodeRegisterReject(fr.Body)
		again, _ := DecodeRegisterReject(m.AppendBody(nil))
		if *again != *m {
			t.Fatalf("RegisterReject round trip %q %q", m.Text, again.Text)
		}
	case UnregisterAckID:
		m, err := DecodeUnregisterAck(fr.Body)
		if err != nil {
			return
		}
		out := m.AppendFrame(nil, fr.Version)
		again, err := DecodeUnregisterAck(out[HeaderLen:])
		if err != nil || *again != *m {
			t.Fatalf("UnregisterAck round trip %+v %+v", m, again)
		}
	}
}
