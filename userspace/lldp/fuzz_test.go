package lldp

import (
	"errors"
	"math/rand/v2"
	"reflect"
	"testing"
)

// FuzzDecode: Decode never panics, fails only with its two errors, and
// whatever it decodes AppendFrame encodes and Decode gives back unchanged.
// Seeds: lldpd's captures, hand-made frames and encoded random messages.
// Run: go test -fuzz FuzzDecode ./userspace/lldp
func FuzzDecode(f *testing.F) {
	for _, fr := range [][]byte{
		nortel, lldpdMED,
		frame(chassis, port, ttl),
		frame(chassis, port, ttl, tlv(tlvManagementAddress, 17, 2, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 3, 2, 0x2b, 6), end),
		frame(chassis, port, ttl, tia(medCapabilities, 0, 0x33, 3), tia(medNetworkPolicy, 1, 0x40, 0x9b, 0x6e), tia(medExtendedPower, 0x52, 0, 0x9a), end),
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
		if err != nil {
			if !errors.Is(err, ErrNotLLDP) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("error of no known kind: %v", err)
			}
			if m != nil {
				t.Fatalf("message with %v", err)
			}
			return
		}
		out, err := m.AppendFrame(nil)
		if err != nil {
			// Only the End TLV can be added (when the frame had none),
			// so only a frame that filled its 1500 bytes may not fit.
			if len(frame) < ethHeaderLen+maxPDU-2 {
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
