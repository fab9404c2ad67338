package vnet_test

import (
	"errors"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// TestThread: every function given to a namespace's Thread runs in that
// namespace and on one OS thread, the caller stays where it was, and Do
// after Stop fails instead of blocking.
func TestThread(t *testing.T) {
	ns := create(t)
	want := inodeOf(t, int(ns.Handle()))
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	outside := threadNetns(t)
	th, err := ns.StartThread()
	if err != nil {
		t.Fatal(err)
	}
	tids := map[int]bool{}
	errFn := errors.New("fn failed")
	for i := range 3 {
		err := th.Do(func() error {
			tids[unix.Gettid()] = true
			inside, err := os.Readlink("/proc/thread-self/ns/net")
			if err != nil {
				return err
			}
			if inside != want {
				t.Errorf("call %d ran in %s, want %s", i, inside, want)
			}
			if i == 2 {
				return errFn
			}
			return nil
		})
		if i < 2 && err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if i == 2 && !errors.Is(err, errFn) {
			t.Fatalf("call %d: %v, want the function's error", i, err)
		}
	}
	if len(tids) != 1 {
		t.Errorf("calls ran on %d threads, want 1", len(tids))
	}
	if got := threadNetns(t); got != outside {
		t.Errorf("caller moved from %s to %s", outside, got)
	}
	th.Stop()
	if err := th.Do(func() error { return nil }); !errors.Is(err, vnet.ErrThreadStopped) {
		t.Errorf("Do after Stop: %v, want ErrThreadStopped", err)
	}
}

// TestThreadHere: a Thread started without a namespace stays in the
// caller's, also when the caller's thread is in one of its own.
func TestThreadHere(t *testing.T) {
	ns := create(t)
	want := inodeOf(t, int(ns.Handle()))
	var inside string
	err := ns.Do(func() error {
		th, err := vnet.StartThreadHere()
		if err != nil {
			return err
		}
		defer th.Stop()
		return th.Do(func() (err error) {
			inside, err = os.Readlink("/proc/thread-self/ns/net")
			return err
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if inside != want {
		t.Errorf("ran in %s, want the caller's %s", inside, want)
	}
}
