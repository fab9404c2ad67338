// Package wiretest judges our frames by decoders nobody here wrote: it
// writes frames to a pcap file and reads back what tshark (Wireshark's
// dissectors) makes of them. Tests only.
package wiretest

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// NeedTool stops the test unless the program is installed: it skips
// outside CI and fails under CI, where .ci/deps must have installed it.
func NeedTool(tb testing.TB, name string) {
	tb.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("test needs %s (.ci/deps installs it): %v", name, err)
		}
		tb.Skipf("test needs %s (bash .ci/deps installs it): %v", name, err)
	}
}

// WritePcap writes frames, Ethernet from the destination address on, to a
// new pcap file at path.
func WritePcap(tb testing.TB, path string, frames [][]byte) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		tb.Fatal(err)
	}
	ts := time.Unix(1_700_000_000, 0)
	for i, fr := range frames {
		ci := gopacket.CaptureInfo{Timestamp: ts.Add(time.Duration(i) * time.Millisecond), CaptureLength: len(fr), Length: len(fr)}
		if err := w.WritePacket(ci, fr); err != nil {
			tb.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
}

// Fields are the values tshark gave each requested field in one frame, in
// the order they occur (a field a frame repeats has several values).
type Fields map[string][]string

// One is the field's only value, or "" if the frame lacks it; a field
// with several values fails the test.
func (f Fields) One(tb testing.TB, name string) string {
	tb.Helper()
	switch v := f[name]; len(v) {
	case 0:
		return ""
	case 1:
		return v[0]
	default:
		tb.Errorf("%s: %d values %q, want one", name, len(v), v)
		return v[0]
	}
}

// Problems are what tshark found wrong with the frame: a malformed
// packet, or expert infos of severity warning or worse (bad checksums
// among them).
func (f Fields) Problems() []string {
	var out []string
	if len(f["_ws.malformed"]) > 0 {
		out = append(out, "malformed packet")
	}
	msgs, sevs := f["_ws.expert.message"], f["_ws.expert.severity"]
	for i, msg := range msgs {
		// Wireshark's PI_WARN is 0x00600000, PI_ERROR 0x00800000.
		if i < len(sevs) {
			if sev, err := strconv.ParseUint(sevs[i], 0, 32); err == nil && sev < 0x00600000 {
				continue
			}
		}
		out = append(out, msg)
	}
	return out
}

// Tshark decodes frames with tshark and returns the requested fields of
// each, plus those Problems reads. Preferences are tshark's defaults.
func Tshark(tb testing.TB, frames [][]byte, fields ...string) []Fields {
	tb.Helper()
	NeedTool(tb, "tshark")
	path := filepath.Join(tb.TempDir(), "frames.pcap")
	WritePcap(tb, path, frames)
	args := []string{"-n", "-r", path, "-T", "json"}
	for _, f := range append(fields, "_ws.malformed", "_ws.expert.message", "_ws.expert.severity") {
		args = append(args, "-e", f)
	}
	cmd := exec.Command("tshark", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("tshark: %v\n%s", err, stderr.String())
	}
	var pkts []struct {
		Source struct {
			Layers Fields `json:"layers"`
		} `json:"_source"`
	}
	if err := json.Unmarshal(out, &pkts); err != nil {
		tb.Fatalf("tshark output: %v\n%s", err, out)
	}
	if len(pkts) != len(frames) {
		tb.Fatalf("tshark read %d frames, wrote %d", len(pkts), len(frames))
	}
	res := make([]Fields, len(pkts))
	for i, p := range pkts {
		res[i] = p.Source.Layers
		if res[i] == nil {
			res[i] = Fields{}
		}
	}
	return res
}

// Verbose is tshark's full text dissection of the frames, for failure
// messages.
func Verbose(tb testing.TB, frames [][]byte) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "verbose.pcap")
	WritePcap(tb, path, frames)
	cmd := exec.Command("tshark", "-n", "-V", "-r", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("tshark -V: %v\n%s", err, stderr.String())
	}
	return string(out)
}
