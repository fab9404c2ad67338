package tftp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// FetchOptions are what a client asks for.
type FetchOptions struct {
	BlockSize  int  // 0: no blksize option (512-byte blocks)
	WindowSize int  // 0: no windowsize option (lock-step)
	TSize      bool // ask for the size
	Netascii   bool // netascii mode (decoded before w sees it)
	// Timeout before a request or ACK is sent again; default 1 s.
	Timeout time.Duration
	// Retries before giving up; default 5.
	Retries int
	// Local address to send from (unspecified: the kernel picks).
	Local netip.Addr
	// Listen opens the transfer's socket (a new one per transfer: the
	// client's TID); nil is net.ListenUDP in the calling thread's network
	// namespace. The lab opens it in a simulated phone's namespace, bound
	// to the phone's interface.
	Listen func(network string, laddr *net.UDPAddr) (*net.UDPConn, error)
}

// FetchResult describes a finished transfer.
type FetchResult struct {
	Bytes      int64
	TSize      int64 // -1: the server sent none
	OACK       bool
	BlockSize  int
	WindowSize int
	Blocks     int // blocks received in order
	Resent     int // requests and ACKs sent again after a timeout
}

// RemoteError is an ERROR packet from the server.
type RemoteError struct {
	Code    ErrorCode
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("tftp: server error %d: %s", e.Code, e.Message)
}

// Fetch reads name from server into w. It is the client of the tests and
// of bench/tftp's load generator, built to cost little per block: DATA
// comes in with recvmmsg, a window at a time, on a socket connected to
// the server's transfer port once it is known.
func Fetch(ctx context.Context, server netip.AddrPort, name string, o FetchOptions, w io.Writer) (res FetchResult, err error) {
	if o.Timeout == 0 {
		o.Timeout = time.Second
	}
	if o.Retries == 0 {
		o.Retries = 5
	}
	res = FetchResult{TSize: -1, BlockSize: DefaultBlockSize, WindowSize: 1}
	network, local := "udp4", o.Local
	if server.Addr().Is6() {
		network = "udp6"
	}
	var laddr *net.UDPAddr
	if local.IsValid() {
		laddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0))
	}
	listen := o.Listen
	if listen == nil {
		listen = net.ListenUDP
	}
	conn, err := listen(network, laddr)
	if err != nil {
		return res, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	rc, err := conn.SyscallConn()
	if err != nil {
		return res, err
	}

	req := Packet{Op: OpRRQ, Filename: name, Mode: "octet"}
	if o.Netascii {
		req.Mode = "netascii"
	}
	if o.BlockSize > 0 {
		req.Options = append(req.Options, Option{"blksize", strconv.Itoa(o.BlockSize)})
	}
	if o.TSize {
		req.Options = append(req.Options, Option{"tsize", "0"})
	}
	if o.WindowSize > 0 {
		req.Options = append(req.Options, Option{"windowsize", strconv.Itoa(o.WindowSize)})
	}
	rrq := req.Append(nil)

	// Until the first answer: the request, sent again on timeout. The
	// answer's source port is the server's TID for the rest.
	first := make([]byte, 65536+4)
	var n int
	var tid netip.AddrPort
	for tries := 0; !tid.IsValid(); tries++ {
		if tries > o.Retries {
			return res, errors.New("tftp: no answer to the request")
		}
		if tries > 0 {
			res.Resent++
		}
		if _, err := conn.WriteToUDPAddrPort(rrq, server); err != nil {
			return res, err
		}
		conn.SetReadDeadline(time.Now().Add(o.Timeout))
		for {
			var from netip.AddrPort
			n, from, err = conn.ReadFromUDPAddrPort(first)
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return res, err
			}
			if from.Addr().Unmap() == server.Addr().Unmap() && answers(first[:n]) {
				tid = from
				break
			}
		}
	}
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		var sa unix.Sockaddr
		if a := tid.Addr(); a.Is4() || a.Is4In6() && network == "udp4" {
			sa = &unix.SockaddrInet4{Port: int(tid.Port()), Addr: a.Unmap().As4()}
		} else {
			sa = &unix.SockaddrInet6{Port: int(tid.Port()), Addr: a.As16()}
		}
		cerr = unix.Connect(int(fd), sa)
	}); err != nil || cerr != nil {
		return res, errors.Join(err, cerr)
	}

	p, err := Parse(first[:n])
	if err != nil {
		return res, err
	}
	var dec netasciiDecoder
	out := w
	if o.Netascii {
		out = &dec
		dec.w = w
	}
	switch p.Op {
	case OpError:
		return res, &RemoteError{p.Code, p.Message}
	case OpOACK:
		res.OACK = true
		for _, opt := range p.Options {
			v, err := strconv.Atoi(opt.Value)
			name := strings.ToLower(opt.Name)
			ok := err == nil
			switch {
			case name == "blksize" && ok && o.BlockSize > 0 && v >= MinBlockSize && v <= o.BlockSize:
				res.BlockSize = v
			case name == "windowsize" && ok && o.WindowSize > 0 && v >= 1 && v <= o.WindowSize:
				res.WindowSize = v
			case name == "tsize" && ok && o.TSize:
				res.TSize = int64(v)
			default:
				conn.Write(AppendError(nil, ErrOptionRefused, "unexpected option "+opt.Name))
				return res, fmt.Errorf("tftp: OACK with option %s=%s that was not asked for", opt.Name, opt.Value)
			}
		}
		n = 0 // nothing received yet; ACK 0 below
	case OpData:
	default:
		return res, fmt.Errorf("tftp: unexpected %s in answer to a request", p.Op)
	}

	bs, ws := res.BlockSize, res.WindowSize
	bufs := make([][]byte, ws)
	for i := range bufs {
		bufs[i] = make([]byte, bs+4+1) // one spare byte shows an oversized packet
	}
	rb := newRecvBatch(rc, bufs)
	lens := make([]int, ws)
	ack := make([]byte, 4)
	expected := 1  // next block, absolute
	lastAcked := 0 // last block acknowledged, absolute
	sendAck := func() error {
		lastAcked = expected - 1
		_, err := conn.Write(AppendAck(ack[:0], uint16(lastAcked)))
		return err
	}
	// handle takes one DATA packet; it reports the end of the transfer.
	gapAcked := false
	handle := func(b []byte) (bool, error) {
		p, err := Parse(b)
		if err != nil {
			return false, nil
		}
		switch p.Op {
		case OpError:
			return false, &RemoteError{p.Code, p.Message}
		case OpData:
		default:
			return false, nil
		}
		if len(p.Data) > bs {
			return false, fmt.Errorf("tftp: DATA %d of %d bytes, block size %d", p.Block, len(p.Data), bs)
		}
		if p.Block != uint16(expected) {
			// A gap (RFC 7440: acknowledge what came in order, once) or
			// an old block sent again (our ACK was lost: say again
			// where we are, once).
			if !gapAcked {
				gapAcked = true
				return false, sendAck()
			}
			return false, nil
		}
		if _, err := out.Write(p.Data); err != nil {
			return false, err
		}
		res.Bytes += int64(len(p.Data))
		res.Blocks++
		expected++
		gapAcked = false
		if len(p.Data) < bs {
			return true, sendAck()
		}
		if expected-1-lastAcked >= ws {
			return false, sendAck()
		}
		return false, nil
	}
	if p.Op == OpData {
		done, err := handle(first[:n])
		if err != nil || done {
			return res, err
		}
	} else if err := sendAck(); err != nil {
		return res, err
	}
	retries := 0
	for {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		conn.SetReadDeadline(time.Now().Add(o.Timeout))
		k, err := rb.read(lens)
		if err != nil {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return res, err
			}
			if retries++; retries > o.Retries {
				return res, fmt.Errorf("tftp: no data after block %d", expected-1)
			}
			res.Resent++
			if err := sendAck(); err != nil {
				return res, err
			}
			continue
		}
		for i := range k {
			if lens[i] < 0 {
				continue
			}
			done, err := handle(bufs[i][:lens[i]])
			if err != nil || done {
				return res, err
			}
			retries = 0
		}
	}
}

// answers reports whether b can answer a read request: OACK, ERROR or
// DATA 1. Anything else comes from an older transfer to the same port (a
// server still sending to a client that went away), not to this request.
func answers(b []byte) bool {
	p, err := Parse(b)
	if err != nil {
		return false
	}
	return p.Op == OpOACK || p.Op == OpError || p.Op == OpData && p.Block == 1
}

// netasciiDecoder turns netascii back into the file: CR LF is LF, CR NUL
// is CR. A CR at the end of a block waits for the next one.
type netasciiDecoder struct {
	w      io.Writer
	cr     bool
	outBuf []byte
}

func (d *netasciiDecoder) Write(b []byte) (int, error) {
	out := d.outBuf[:0]
	for _, c := range b {
		if d.cr {
			d.cr = false
			switch c {
			case '\n':
				out = append(out, '\n')
				continue
			case 0:
				out = append(out, '\r')
				continue
			}
			out = append(out, '\r')
		}
		if c == '\r' {
			d.cr = true
			continue
		}
		out = append(out, c)
	}
	d.outBuf = out
	if _, err := d.w.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}
