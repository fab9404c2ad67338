// Package privtest gates tests that need root and a BPF-capable kernel.
// Outside CI such a test skips with a hint; under CI (CI set in the
// environment, as .ci/run does) a missing privilege fails the test, so a
// green CI run can never hide skipped privileged tests.
package privtest

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
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

// envNetNS marks the test binary started again by RunInNetNS.
const envNetNS = "PHONEBOOT_TEST_NETNS"

// RunInNetNS runs a package's tests in a network namespace of their own,
// from TestMain: os.Exit(privtest.RunInNetNS(m)). As root it starts the
// test binary again in a new network namespace (loopback only, brought
// up) and returns that run's exit code, so every goroutine's sockets,
// and those of the processes the tests start, are in the namespace, which
// goes when the process ends. Without root the tests run here, and the
// privileged ones skip (or fail under CI) through Require.
func RunInNetNS(m *testing.M) int {
	if os.Getenv(envNetNS) != "" {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "privtest: bring lo up in the test namespace:", err)
			return 1
		}
		return m.Run()
	}
	if os.Geteuid() != 0 {
		return m.Run()
	}
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envNetNS+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "privtest: run the tests in a new network namespace:", err)
		return 1
	}
	return 0
}

// InNetNS says whether the tests run in the namespace RunInNetNS made.
func InNetNS() bool { return os.Getenv(envNetNS) != "" }

// RequireNetNS is Require for tests that listen and connect on loopback
// addresses: they run only in RunInNetNS's namespace, never in the
// machine's.
func RequireNetNS(tb testing.TB) {
	tb.Helper()
	Require(tb)
	if !InNetNS() {
		tb.Fatal("this test runs only in a network namespace of its own: call privtest.RunInNetNS from TestMain")
	}
}
