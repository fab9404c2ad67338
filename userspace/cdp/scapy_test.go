package cdp

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"testing"
)

// scapyPython is Debian's interpreter, the one python3-scapy installs into.
const scapyPython = "/usr/bin/python3"

type scapyFrame struct {
	Error       string `json:"error"`
	Vers, TTL   int
	Cksum       int  `json:"cksum"`
	ScapyCksum  int  `json:"scapy_cksum"`
	OddLastByte *int `json:"odd_last_byte"`
	TLVs        []struct {
		Class  string         `json:"class"`
		Fields map[string]any `json:"fields"`
	} `json:"tlvs"`
	Leftover bool `json:"leftover"`
}

// scapyDecode runs scapy's CDP layer over the frames.
func scapyDecode(t *testing.T, frames ...[]byte) []scapyFrame {
	t.Helper()
	if err := exec.Command(scapyPython, "-c", "import scapy.contrib.cdp").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("scapy is missing (Debian python3-scapy; .ci/deps installs it): %v", err)
		}
		t.Skip("scapy not installed")
	}
	var in bytes.Buffer
	for _, f := range frames {
		in.WriteString(hex.EncodeToString(f) + "\n")
	}
	cmd := exec.Command(scapyPython, "testdata/scapy_cdp.py")
	cmd.Stdin = &in
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scapy: %v\n%s", err, stderr.String())
	}
	var res []scapyFrame
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var f scapyFrame
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			t.Fatalf("scapy output %q: %v", sc.Text(), err)
		}
		res = append(res, f)
	}
	if len(res) != len(frames) {
		t.Fatalf("scapy decoded %d frames of %d\n%s", len(res), len(frames), stderr.String())
	}
	return res
}

// TestScapyParsesOurFrames: scapy's CDP layer reads the switch port's
// advertisement and the phone's, TLV by TLV, with our values and nothing
// left over, and computes the checksum we put in (scapy's rule for an
// odd-length PDU differs from Cisco's only when the last byte is 0x80).
func TestScapyParsesOurFrames(t *testing.T) {
	p, err := NewPort(testPortConfig())
	if err != nil {
		t.Fatal(err)
	}
	sw, err := p.Advertisement().AppendFrame(nil)
	if err != nil {
		t.Fatal(err)
	}
	ph, err := PhoneAdvertisement(testPhone()).AppendFrame(nil)
	if err != nil {
		t.Fatal(err)
	}
	got := scapyDecode(t, sw, ph)
	for i, want := range []map[string]map[string]any{
		{ // the switch port
			"CDPMsgDeviceID":         {"val": "phoneboot1"},
			"CDPMsgPortID":           {"iface": "swp1"},
			"CDPMsgSoftwareVersion":  {"val": "phoneboot 1.0"},
			"CDPMsgPlatform":         {"val": "phoneboot"},
			"CDPMsgNativeVLAN":       {"vlan": float64(10)},
			"CDPMsgVoIPVLANReply":    {"vlan": float64(77), "status": float64(VoiceApplianceID)},
			"CDPMsgTrustBitmap":      {"trust_bitmap": float64(0)},
			"CDPMsgUntrustedPortCoS": {"untrusted_port_cos": float64(0)},
		},
		{ // the phone
			"CDPMsgDeviceID":      {"val": "SEP001B54010203"},
			"CDPMsgPortID":        {"iface": "Port 1"},
			"CDPMsgPlatform":      {"val": "Cisco IP Phone 7941"},
			"CDPMsgVoIPVLANQuery": {},
			"CDPMsgPower":         {"power": float64(6300)},
		},
	} {
		f := got[i]
		if f.Error != "" || f.Vers != 2 || f.Leftover {
			t.Errorf("frame %d: %+v", i, f)
			continue
		}
		if f.OddLastByte == nil || *f.OddLastByte != 0x80 {
			if f.ScapyCksum != f.Cksum {
				t.Errorf("frame %d: checksum %#04x, scapy computes %#04x", i, f.Cksum, f.ScapyCksum)
			}
		}
		seen := map[string]bool{}
		for _, tlv := range f.TLVs {
			seen[tlv.Class] = true
			if tlv.Class == "CDPMsgGeneric" || tlv.Class == "CDPMsgUnknown19" {
				continue // a TLV scapy has no class for (Power Requested, Power Available)
			}
			for k, v := range want[tlv.Class] {
				if tlv.Fields[k] != v {
					t.Errorf("frame %d %s.%s: scapy has %v, we sent %v", i, tlv.Class, k, tlv.Fields[k], v)
				}
			}
		}
		for cls := range want {
			if !seen[cls] {
				t.Errorf("frame %d: scapy found no %s", i, cls)
			}
		}
	}
}
