// Package privtest gates tests that need root and a BPF-capable kernel.
// Outside CI such a test skips with a hint; under CI (CI set in the
// environment, as .ci/run does) a missing privilege fails the test, so a
// green CI run can never hide skipped privileged tests.
package privtest

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
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
