package cdp

import (
	"errors"
	"math/rand/v2"
	"reflect"
	"testing"
)

// FuzzDecode: Decode never panics, fails only with its three errors, and
// whatever it decodes AppendFrame encodes and Decode gives back unchanged.
// Seeds: the real captures, frames the TestDecodeRejects cases are made
// of, and encoded random messages. Run: go test -fuzz FuzzDecode ./userspace/cdp
func FuzzDecode(f *testing.F) {
	for _, fr := range [][]byte{
		snapFrame(deviceSrc, catalyst2950), snapFrame(deviceSrc, phone7960),
		cisco1601, cisco7206, lldpdCDPv2,
		pdu(tlv(TypeAddresses, 0, 0, 0, 1, 2, 8, 0xaa, 0xaa, 3, 0, 0, 0, 0x86, 0xdd, 0, 16, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1)),
		pdu(tlv(TypeIPPrefix, 10, 0, 0, 0, 8, 192, 168, 0, 0, 16), tlv(TypeIPPrefix, 10, 0, 0, 1)),
		pdu(tlv(TypeVoIPVLANQuery, 0x20, 0x02, 0x00, 0x01), tlv(TypePowerRequested, 0, 1, 0, 1, 0, 0, 0x3c, 0x28)),
	} {
		f.Add(fr)
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 8 {
		fr, err := randomMessage(r).AppendFrame(nil)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(fr)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		m, err := Decode(frame)
		if err != nil && !errors.Is(err, ErrChecksum) {
			if !errors.Is(err, ErrNotCDP) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("error of no known kind: %v", err)
			}
			if m != nil {
				t.Fatalf("message with %v", err)
			}
			return
		}
		out, err := m.AppendFrame(nil)
		if err != nil {
			// A decoded message can grow by a few bytes (a short query
			// is sent with its three), so one that filled a frame may
			// no longer fit.
			if len(frame) <= 1400 {
				t.Fatalf("re-encode: %v\n%+v", err, m)
			}
			return
		}
		again, err := Decode(out)
		if err != nil {
			t.Fatalf("decode re-encoded: %v", err)
		}
		if !reflect.DeepEqual(again, m) {
			t.Fatalf("re-encoded message decodes differently\nfirst  %+v\nsecond %+v", m, again)
		}
	})
}
