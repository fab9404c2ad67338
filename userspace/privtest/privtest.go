// Package privtest gates tests that need root and a BPF-capable kernel.
// Outside CI such a test skips with a hint; under CI (CI set in the
// environment, as .ci/run does) a missing privilege fails the test, so a
// green CI run can never hide skipped privileged tests.
package privtest

import (
	"os"
	"testing"
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
