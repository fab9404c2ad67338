package tftp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"syscall"
	"time"
)

// transfer sends one file to one client on its own connected socket (the
// kernel drops datagrams from any other address or port: the TID check
// of RFC 1350).
type transfer struct {
	s      *Server
	conn   *net.UDPConn
	data   []byte
	neg    Negotiated
	name   string
	client netip.AddrPort
}

// end is how a transfer ended.
type end uint8

const (
	endCompleted end = iota
	endTimedOut
	endClientAborted
	endFaulted
	endFailed
	endCancelled
)

func (t *transfer) run() {
	e, err := t.loop()
	c := &t.s.c
	switch e {
	case endCompleted:
		c.completed.Add(1)
		return
	case endTimedOut:
		c.timedOut.Add(1)
	case endClientAborted:
		c.clientAborted.Add(1)
	case endFaulted:
		c.faulted.Add(1)
		t.conn.Write(AppendError(nil, ErrUndefined, "file changed during the transfer"))
		t.s.log.Warn("tftp: file changed under a transfer", "file", t.name, "client", t.client, "error", err)
		return
	case endFailed:
		c.failed.Add(1)
		t.s.log.Warn("tftp: transfer failed", "file", t.name, "client", t.client, "error", err)
		return
	case endCancelled:
		c.cancelled.Add(1)
		return
	}
	t.s.log.Debug("tftp: transfer ended", "file", t.name, "client", t.client, "error", err)
}

// loop runs the transfer: OACK (if options were accepted) until ACK 0,
// then windows of DATA until the last block is acknowledged.
//
// Block numbers on the wire are 16 bits and roll over to 0 after 65535;
// here they are counted from 1 without limit, and an ACK is mapped to the
// absolute block nearest to the window.
//
// Only a timeout sends anything again. An ACK that acknowledges nothing
// new (a duplicate, or an old one arriving late) is ignored, and does not
// push the timeout back: answering duplicates is the Sorcerer's
// Apprentice bug, where every duplicate doubles the traffic for the rest
// of the transfer.
func (t *transfer) loop() (end, error) {
	cfg := &t.s.cfg
	c := &t.s.c
	rc, err := t.conn.SyscallConn()
	if err != nil {
		return endFailed, err
	}
	stop := context.AfterFunc(t.s.ctx, func() { t.conn.Close() })
	defer stop()

	bs, ws := t.neg.BlockSize, t.neg.WindowSize
	nblocks := len(t.data)/bs + 1 // the last block is short, possibly empty
	timeout := cfg.Timeout
	if t.neg.Timeout > 0 {
		timeout = time.Duration(t.neg.Timeout) * time.Second
	}
	var oack []byte
	if len(t.neg.Options) > 0 {
		oack = (&Packet{Op: OpOACK, Options: t.neg.Options}).Append(nil)
	}
	w := newWindow(rc, ws)
	w.noGSO = cfg.NoGSO
	buf := make([]byte, 1024)
	acked, sent := 0, 0 // absolute blocks acknowledged and sent
	retries := 0
	retransmit := false
	lastProgress := time.Now()

	for {
		if oack != nil {
			if _, err := t.conn.Write(oack); err != nil {
				return t.failure(err)
			}
			c.oacks.Add(1)
		} else if sent == acked {
			n := min(ws, nblocks-acked)
			calls, err := w.send(t.data, bs, acked+1, n)
			c.sendCalls.Add(uint64(calls))
			if err != nil {
				if errors.Is(err, errFault) {
					return endFaulted, err
				}
				return t.failure(err)
			}
			if w.gsoErr != nil {
				c.gsoFallbacks.Add(1)
				t.s.log.Debug("tftp: GSO refused, sending with sendmmsg", "client", t.client, "error", w.gsoErr)
				w.gsoErr = nil
			}
			sent = acked + n
			c.blocks.Add(uint64(n))
			c.bytes.Add(uint64(min(sent*bs, len(t.data)) - min(acked*bs, len(t.data))))
			if retransmit {
				c.retransmitted.Add(uint64(n))
			}
		}
		deadline := time.Now().Add(timeout)
		if idle := lastProgress.Add(cfg.IdleTimeout); idle.Before(deadline) {
			deadline = idle
		}
		if err := t.conn.SetReadDeadline(deadline); err != nil {
			return t.failure(err)
		}
	wait:
		for {
			n, err := t.conn.Read(buf)
			if err != nil {
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					return t.failure(err)
				}
				if time.Since(lastProgress) >= cfg.IdleTimeout {
					return endTimedOut, fmt.Errorf("no progress for %s", cfg.IdleTimeout)
				}
				if retries++; retries > cfg.Retries {
					return endTimedOut, fmt.Errorf("no answer after %d retries", cfg.Retries)
				}
				sent, retransmit = acked, true
				break wait
			}
			p, err := Parse(buf[:n])
			if err != nil {
				if n >= 2 && buf[0] == 0 && buf[1] == byte(OpError) {
					return endClientAborted, errors.New("malformed ERROR from the client")
				}
				c.strayPackets.Add(1)
				continue
			}
			switch p.Op {
			case OpError:
				return endClientAborted, fmt.Errorf("client error %d: %s", p.Code, p.Message)
			case OpAck:
			default:
				c.strayPackets.Add(1)
				continue
			}
			if oack != nil {
				if p.Block != 0 {
					c.strayPackets.Add(1)
					continue
				}
				oack = nil
			} else {
				abs := acked + int(int16(p.Block-uint16(acked)))
				if abs <= acked || abs > sent {
					c.duplicateAcks.Add(1)
					continue
				}
				acked = abs
				if acked == nblocks {
					return endCompleted, nil
				}
				// An ACK inside the window (RFC 7440: the client saw a
				// gap) restarts the window after it.
				retransmit = acked < sent
				sent = acked
			}
			retries, lastProgress = 0, time.Now()
			break wait
		}
	}
}

// failure classifies a socket error.
func (t *transfer) failure(err error) (end, error) {
	if t.s.ctx.Err() != nil {
		return endCancelled, err
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return endClientAborted, errors.New("client port closed")
	}
	return endFailed, err
}

// netascii converts content to netascii (RFC 764): CR LF for each LF, CR
// NUL for each lone CR. It reads the file's mapping in Go, so a file that
// shrank under it faults: SetPanicOnFault turns that into an error for
// this transfer instead of a crash of the daemon.
func netascii(src []byte) (out []byte, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if f, ok := r.(interface{ Addr() uintptr }); ok {
				err = fmt.Errorf("memory fault at %#x reading the file", f.Addr())
				return
			}
			panic(r)
		}
	}()
	extra := 0
	for _, b := range src {
		if b == '\n' || b == '\r' {
			extra++
		}
	}
	out = make([]byte, 0, len(src)+extra)
	for _, b := range src {
		switch b {
		case '\n':
			out = append(out, '\r', '\n')
		case '\r':
			out = append(out, '\r', 0)
		default:
			out = append(out, b)
		}
	}
	return out, nil
}
