package lldp

import "encoding/hex"

// Frames from elsewhere, as lldpd recorded them for its own tests
// (tests/check_lldp.c). No LLDP-MED capture of a real phone or switch was
// found in public sources.

// nortel is a Nortel switch's minimal LLDPDU (test_recv_min): the three
// mandatory TLVs, End, and padding.
var nortel = mustHex(
	"0180c200000e0017d1a835be88cc0207040017d1a835bf0407030017d1a83602" +
		"06020078000000000000000000000000000000000000000000000000")

// lldpdMED is what lldpd sent from a Linux PC (test_recv_lldpd): system
// TLVs, a management address, IEEE 802.3 TLVs and every LLDP-MED
// inventory TLV (the firmware revision with a trailing space).
var lldpdMED = mustHex(
	"0180c200000e0016172fa1b688cc0207040016172fa1b60407030016172fa1b6" +
		"060200780a1a6e617275746f2e58585858585858585858585858585858585858" +
		"0c3f4c696e757820322e362e32392d322d616d64363420233120534d50205375" +
		"6e204d61792031372031373a31353a3437205554432032303039207838365f36" +
		"340e04001c0014100c05010aee504b020000000300080465746830fe0900120f" +
		"030100000000fe0900120f01036c030010fe0600120f0405dcfe070012bb0100" +
		"0000fe0f0012bb054e44393931373839373032fe0b0012bb0630383030313220" +
		"fe120012bb07322e362e32392d322d616d643634fe100012bb08313035383230" +
		"383530303039fe150012bb094e454320436f6d70757465727320534153fe1300" +
		"12bb0a504f5745524d41544520564c333530fe0d0012bb0b3130303230373132" +
		"300000")

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}
