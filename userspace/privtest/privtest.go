// Package privtest gates tests that need root and a BPF-capable kernel.
// Outside CI such a test skips with a hint; under CI (CI set in the
// environment, as .ci/run does) a missing privilege fails the test, so a
// green CI run can never hide skipped privileged tests.
package privtest

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// Require stops the test unless it runs as root on a kernel with BTF.
func Require(tb testing.TB) {
	tb.Helper()
	why := ""
	switch {
	case os.Geteuid() != 0:
		why = "needs root (run: sudo go test ./...)"
	default:
		if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
			why = "needs a kernel with BTF (/sys/kernel/btf/vmlinux)"
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") != "" {
		tb.Fatalf("privileged test cannot run under CI: %s", why)
	}
	tb.Skipf("privileged test skipped: %s", why)
}

// TempBPFFS mounts a private bpffs on a fresh directory for the test and
// unmounts it when the test ends, so tests never pin under /sys/fs/bpf.
func TempBPFFS(tb testing.TB) string {
	tb.Helper()
	Require(tb)
	dir, err := os.MkdirTemp("", "pb-bpffs-")
	if err != nil {
		tb.Fatal(err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(dir)
		tb.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmount %s: %v", dir, err)
		}
		os.Remove(dir)
	})
	return dir
}

// BuildPhoneboot builds cmd/phoneboot into dir for tests that run the real
// binary (as the lab does); call it from TestMain.
func BuildPhoneboot(dir string) (string, error) {
	bin := filepath.Join(dir, "phoneboot")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/phoneboot/phoneboot/cmd/phoneboot").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build phoneboot: %v\n%s", err, out)
	}
	return bin, nil
}

// VethPair makes two throwaway namespaces joined by a veth pair, aName in
// the first (up) and bName in the second (down), removed when the test ends.
func VethPair(tb testing.TB, aName, bName string) (a, b *vnet.NS) {
	tb.Helper()
	Require(tb)
	var nss [2]*vnet.NS
	for i := range nss {
		ns, err := vnet.Create(vnet.UniqueName("pbts"))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() {
			if err := ns.Close(); err != nil {
				tb.Errorf("remove netns: %v", err)
			}
		})
		nss[i] = ns
	}
	if err := vnet.Veth(nss[0], aName, nss[1], bName); err != nil {
		tb.Fatal(err)
	}
	if err := nss[0].SetUp(aName); err != nil {
		tb.Fatal(err)
	}
	return nss[0], nss[1]
}

// Logger is a slog.Logger that writes to the test's log.
func Logger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testLog{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testLog struct{ tb testing.TB }

func (w testLog) Write(p []byte) (int, error) {
	w.tb.Helper()
	w.tb.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
