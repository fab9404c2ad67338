package proxy

import (
	"errors"
	"net"
	"sync"

	"golang.org/x/sys/unix"
)

// relay moves bytes from src to dst with splice(2) until src ends (nil)
// or either side fails, never through a Go buffer.
//
// io.Copy between two TCP connections splices too, but each direction
// holds a pipe of its own (two more descriptors, sized 1 MiB) for as long
// as the session lasts, idle or not: six descriptors per phone. Here a
// pipe is taken from a shared pool only while bytes are in flight, so an
// idle registered phone costs its two sockets and nothing else.
func relay(dst, src *net.TCPConn) error {
	sr, err := src.SyscallConn()
	if err != nil {
		return err
	}
	dr, err := dst.SyscallConn()
	if err != nil {
		return err
	}
	for {
		var p *pipe
		var n int64
		var serr error
		rerr := sr.Read(func(fd uintptr) bool {
			if p, serr = pipes.get(); serr != nil {
				return true
			}
			for {
				n, serr = unix.Splice(int(fd), nil, p.w, nil, relayChunk, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
				if serr != unix.EINTR {
					break
				}
			}
			if serr == unix.EAGAIN {
				// Nothing to read: wait without holding the pipe.
				pipes.put(p, false)
				p = nil
				return false
			}
			return true
		})
		if err := errors.Join(rerr, serr); err != nil || n == 0 {
			if p != nil {
				pipes.put(p, false)
			}
			return err // n == 0 without an error: src's EOF
		}
		if err := drain(dr, p, n); err != nil {
			pipes.put(p, true) // bytes may be left in it
			return err
		}
		pipes.put(p, false)
	}
}

// relayChunk bounds one splice: a pipe of the default 16 pages holds it.
const relayChunk = 64 << 10

// drain moves n bytes from the pipe to the connection.
func drain(dr interface {
	Write(func(uintptr) bool) error
}, p *pipe, n int64) error {
	for n > 0 {
		var m int64
		var serr error
		werr := dr.Write(func(fd uintptr) bool {
			for {
				m, serr = unix.Splice(p.r, nil, int(fd), nil, int(n), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
				if serr != unix.EINTR {
					break
				}
			}
			// false: wait until writable (the poller is edge-triggered,
			// so only after EAGAIN).
			return serr != unix.EAGAIN
		})
		if err := errors.Join(werr, serr); err != nil {
			return err
		}
		n -= m
	}
	return nil
}

type pipe struct{ r, w int }

// pipePool keeps a few empty pipes for the next transfer; a pipe that may
// hold bytes, and any past the pool's size, is closed.
type pipePool struct {
	mu   sync.Mutex
	free []*pipe
}

var pipes pipePool

const maxFreePipes = 64

func (pp *pipePool) get() (*pipe, error) {
	pp.mu.Lock()
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free = pp.free[:n-1]
		pp.mu.Unlock()
		return p, nil
	}
	pp.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	return &pipe{r: fds[0], w: fds[1]}, nil
}

func (pp *pipePool) put(p *pipe, dirty bool) {
	if !dirty {
		pp.mu.Lock()
		if len(pp.free) < maxFreePipes {
			pp.free = append(pp.free, p)
			pp.mu.Unlock()
			return
		}
		pp.mu.Unlock()
	}
	unix.Close(p.r)
	unix.Close(p.w)
}
