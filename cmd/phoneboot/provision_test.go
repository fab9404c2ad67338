package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestInteropProvisioning runs `phoneboot serve` with provisioning on and
// fetches with clients nobody here wrote: tftp-hpa's tftp and curl (TFTP
// with a block size, and HTTP on 6970) get the phone's generated
// SEP<MAC>.cnf.xml, byte for byte the same over both protocols and in any
// letter case, a firmware file from the root intact, and "file not found"
// for a trust list that is not there.
func TestInteropProvisioning(t *testing.T) {
	ioNeedTools(t, "tftp", "curl")
	root := t.TempDir()
	firmware := bytes.Repeat([]byte("phoneboot firmware "), 200000) // 3.8 MB: 7,422 blocks of 512
	if err := os.WriteFile(filepath.Join(root, "sip88xx.14-2-1-0001-14.loads"), firmware, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	l := newIOLab(t, ioLabOptions{clientAddr: "10.99.0.2", extra: fmt.Sprintf(`
provision:
  enabled: true
  root: %s
  callmanager_groups: [{name: main, members: [{host: 10.99.0.10, priority: 0}]}]
  phones:
    - {mac: 00:1e:7a:12:34:56, model: CP-8851, lines: [{number: "1001"}]}
tftp: {listen: ["%s:69"]}
http: {listen: "%s:6970"}
`, root, ioServer, ioServer)})
	dir := t.TempDir()
	get := func(tool string, args ...string) (string, error) {
		return ioRun(t, l.client, 20*time.Second, tool, args...)
	}
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	// tftp-hpa, lock-step 512-byte blocks.
	if out, err := get("tftp", "-m", "octet", ioServer, "-c", "get", "SEP001E7A123456.cnf.xml", filepath.Join(dir, "hpa.xml")); err != nil {
		t.Fatalf("tftp-hpa: %v\n%s\n%s", err, out, l.daemon.logs.String())
	}
	cnf := read("hpa.xml")
	if !bytes.Contains(cnf, []byte("<processNodeName>10.99.0.10</processNodeName>")) {
		t.Errorf("the generated config does not name the CallManager:\n%s", cnf)
	}
	// curl over TFTP with a block size, the name in lower case.
	if out, err := get("curl", "-sS", "--tftp-blksize", "1428", "-o", filepath.Join(dir, "curl.xml"), "tftp://"+ioServer+"/sep001e7a123456.cnf.xml"); err != nil {
		t.Fatalf("curl tftp: %v\n%s", err, out)
	}
	if !bytes.Equal(read("curl.xml"), cnf) {
		t.Error("curl over TFTP got another config than tftp-hpa")
	}
	// curl over HTTP 6970.
	if out, err := get("curl", "-sS", "-f", "-o", filepath.Join(dir, "http.xml"), "http://"+ioServer+":6970/SEP001E7A123456.cnf.xml"); err != nil {
		t.Fatalf("curl http: %v\n%s", err, out)
	}
	if !bytes.Equal(read("http.xml"), cnf) {
		t.Error("HTTP served another config than TFTP")
	}
	// Firmware from the root, over both.
	if out, err := get("tftp", "-m", "octet", ioServer, "-c", "get", "/SIP88XX.14-2-1-0001-14.loads", filepath.Join(dir, "fw.tftp")); err != nil {
		t.Fatalf("tftp-hpa firmware: %v\n%s", err, out)
	}
	if out, err := get("curl", "-sS", "-f", "-o", filepath.Join(dir, "fw.http"), "http://"+ioServer+":6970/sip88xx.14-2-1-0001-14.loads"); err != nil {
		t.Fatalf("curl http firmware: %v\n%s", err, out)
	}
	for _, f := range []string{"fw.tftp", "fw.http"} {
		if !bytes.Equal(read(f), firmware) {
			t.Errorf("%s differs from the file served", f)
		}
	}
	// A trust list that is not there: TFTP error 1, HTTP 404.
	out, err := get("tftp", "-m", "octet", ioServer, "-c", "get", "CTLSEP001E7A123456.tlv", filepath.Join(dir, "ctl"))
	if !strings.Contains(out, "Error code 1") {
		t.Errorf("missing trust list over TFTP: %v %q, want error code 1 (file not found)", err, out)
	}
	out, _ = get("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://"+ioServer+":6970/CTLSEP001E7A123456.tlv")
	if out != "404" {
		t.Errorf("missing trust list over HTTP: status %q, want 404", out)
	}
}
