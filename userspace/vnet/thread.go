package vnet

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Thread is one OS thread kept in a network namespace, running the
// functions given to Do one at a time: sockets opened there and processes
// started from it are in that namespace, and no other thread has to
// switch. It lives until Stop. A process started from it with a
// parent-death signal (Pdeathsig) gets that signal when the thread ends,
// not the process, and a Go thread also ends whenever a goroutine that
// locked it returns without unlocking: a child started from an arbitrary
// thread could be killed while its parent runs on, one started from a
// Thread lives until Stop.
type Thread struct {
	calls chan func()
	done  chan struct{}
}

// StartThread starts a Thread in the namespace ns (name is for errors).
// The thread enters it only when it is elsewhere, which needs
// CAP_SYS_ADMIN: a daemon without it can have a Thread in its own
// namespace. ns may be closed once StartThread returns.
func StartThread(ns netns.NsHandle, name string) (*Thread, error) {
	t := &Thread{calls: make(chan func()), done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Never unlocked: when the goroutine returns, its thread (in the
		// namespace) ends with it.
		runtime.LockOSThread()
		if err := enter(ns, name); err != nil {
			started <- err
			return
		}
		started <- nil
		for {
			select {
			case f := <-t.calls:
				f()
			case <-t.done:
				return
			}
		}
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return t, nil
}

// StartThreadHere starts a Thread in the calling goroutine's network
// namespace, which its thread may have entered on its own.
func StartThreadHere() (*Thread, error) {
	runtime.LockOSThread()
	ns, err := netns.Get()
	runtime.UnlockOSThread()
	if err != nil {
		return nil, fmt.Errorf("get current netns: %w", err)
	}
	defer ns.Close()
	return StartThread(ns, "of the caller")
}

// enter moves the calling thread, locked, into ns unless it is there.
func enter(ns netns.NsHandle, name string) error {
	cur, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get current netns: %w", err)
	}
	defer cur.Close()
	if cur.Equal(ns) {
		return nil
	}
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	return nil
}

// ErrThreadStopped is what Do returns once the Thread has stopped.
var ErrThreadStopped = errors.New("namespace thread stopped")

// Do runs f on the thread and returns its error.
func (t *Thread) Do(f func() error) error {
	errc := make(chan error, 1)
	select {
	case t.calls <- func() { errc <- f() }:
		return <-errc
	case <-t.done:
		return ErrThreadStopped
	}
}

// Stop ends the thread once the function it runs, if any, returns.
func (t *Thread) Stop() { close(t.done) }

// StartThread starts a Thread in the namespace.
func (n *NS) StartThread() (*Thread, error) { return StartThread(n.handle, n.Name) }
