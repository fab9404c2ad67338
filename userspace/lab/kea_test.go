package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/phoneboot/phoneboot/userspace/phonetag"
	"github.com/phoneboot/phoneboot/userspace/privtest"
)

// TestPhoneDHCPAgainstKea runs the simulated phone's dhcp phase against
// ISC Kea, so the simulator is held to a server nobody here wrote and is
// not tuned to phoneboot's.
func TestPhoneDHCPAgainstKea(t *testing.T) {
	privtest.Require(t)
	kea, err := exec.LookPath("kea-dhcp4")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("kea-dhcp4 is missing (Debian kea-dhcp4-server; .ci/deps installs it)")
		}
		t.Skip("kea-dhcp4 not installed")
	}
	server, phones := privtest.VethPair(t, "swp1", phoneLink)
	addr, _ := netlink.ParseAddr("10.77.0.1/16")
	l, err := server.Netlink().LinkByName("swp1")
	if err != nil {
		t.Fatal(err)
	}
	if err := server.Netlink().AddrAdd(l, addr); err != nil {
		t.Fatal(err)
	}
	if err := phones.SetUp(phoneLink); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	conf := filepath.Join(dir, "kea.json")
	err = os.WriteFile(conf, []byte(fmt.Sprintf(`{"Dhcp4": {
  "interfaces-config": {"interfaces": ["swp1"], "dhcp-socket-type": "raw"},
  "lease-database": {"type": "memfile", "persist": true, "name": %q},
  "option-def": [{"name": "tftp-servers", "code": 150, "type": "ipv4-address", "array": true, "space": "dhcp4"}],
  "valid-lifetime": 3600,
  "subnet4": [{"id": 1, "subnet": "10.77.0.0/16", "pools": [{"pool": "10.77.0.10 - 10.77.0.200"}],
    "option-data": [{"name": "routers", "data": "10.77.0.1"}, {"name": "tftp-servers", "data": "10.77.0.1"}]}],
  "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "stdout"}], "severity": "WARN"}]
}}`, filepath.Join(dir, "leases.csv"))), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(kea, "-c", conf)
	// Kea keeps a PID file and its sockets here; point both at the test's dir.
	cmd.Env = append(os.Environ(), "KEA_PIDFILE_DIR="+dir, "KEA_LOCKFILE_DIR="+dir)
	out, _ := os.Create(filepath.Join(dir, "kea.log"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := server.Do(cmd.Start); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			log, _ := os.ReadFile(out.Name())
			t.Logf("kea log:\n%s", log)
		}
	})

	tagger, err := phonetag.Load()
	if err != nil {
		t.Fatal(err)
	}
	defer tagger.Close()
	port := &Port{Name: "p1", NS: phones, Link: phoneLink, power: newPortPower()}
	io, err := openPortIO(port, tagger)
	if err != nil {
		t.Fatal(err)
	}
	defer io.close()
	port.io = io
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go io.run(ctx)

	for i := range 3 {
		ph := newPhone(i, modelsForTest[i%len(modelsForTest)], port, 1)
		// Kea may miss the first DISCOVER while it opens its socket; the
		// phone's retransmission (scaled down) covers that, as on a real network.
		if err := (dhcpPhase{timeScale: 0.05}).Run(ctx, ph); err != nil {
			t.Fatalf("phone %s against Kea: %v", ph.Name, err)
		}
		if !netip.MustParsePrefix("10.77.0.0/16").Contains(ph.IP) {
			t.Errorf("phone %s got %v", ph.Name, ph.IP)
		}
		if len(ph.TFTPServers) != 1 || ph.TFTPServers[0] != netip.MustParseAddr("10.77.0.1") {
			t.Errorf("phone %s option 150 = %v", ph.Name, ph.TFTPServers)
		}
	}
}
