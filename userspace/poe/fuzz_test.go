package poe

import (
	"slices"
	"testing"

	"github.com/mdlayher/netlink"
)

// FuzzPSEReply: any PSE_GET_REPLY a kernel (or a broken driver) sends is
// decoded and turned into a status, or refused with an error; never a
// panic, and never a status outside the four states.
func FuzzPSEReply(f *testing.F) {
	seed := func(attrs map[uint16]uint32) []byte {
		ae := netlink.NewAttributeEncoder()
		for _, t := range []uint16{attrC33AdminState, attrC33PowerStatus, attrC33Class, attrC33ActualPower,
			attrC33PowerLimit, attrC33ExtState, attrC33ExtSubstate, attrPoDLAdminState, attrPoDLPowerStatus} {
			if v, ok := attrs[t]; ok {
				ae.Uint32(t, v)
			}
		}
		b, err := ae.Encode()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(seed(map[uint16]uint32{attrC33AdminState: adminEnabled, attrC33PowerStatus: 3, attrC33Class: 4, attrC33ActualPower: 12950}), false)
	f.Add(seed(map[uint16]uint32{attrC33AdminState: adminDisabled}), false)
	f.Add(seed(map[uint16]uint32{attrC33AdminState: adminEnabled, attrC33PowerStatus: 6, attrC33ExtState: 2, attrC33ExtSubstate: 1}), false)
	f.Add(seed(map[uint16]uint32{attrPoDLAdminState: adminEnabled, attrPoDLPowerStatus: 4}), true)
	f.Add([]byte{4, 0, 1, 0}, false)
	f.Fuzz(func(t *testing.T, b []byte, podl bool) {
		r, err := decodePSEReply(b)
		if err != nil {
			return
		}
		n := &Netlink{podl: map[string]bool{"p1": podl}}
		st, err := n.portStatus("p1", r)
		if err != nil {
			return
		}
		if !slices.Contains(States, st.State) {
			t.Fatalf("state %q from %x", st.State, b)
		}
		if checkStatus(st) == nil && (st.Class > 8 || st.PowerMW < 0 || st.PowerMW > maxPortMW) {
			t.Fatalf("impossible status accepted: %+v", st)
		}
	})
}

// FuzzParseEnable: a sysfs enable file's content is read as on, off, or an
// error naming it.
func FuzzParseEnable(f *testing.F) {
	for _, s := range []string{"1", "0", "enabled", "Disabled", "on", "off", "", "2", "enable\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		on, err := parseEnable(s)
		if err != nil && on {
			t.Fatalf("%q: on and an error", s)
		}
	})
}
