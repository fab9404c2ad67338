package tftp

import (
	"errors"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// window sends runs of DATA packets on a connected UDP socket without
// copying the payload: each packet is two iovecs, its 4-byte header (from
// hdrs, owned here) and its slice of the content (the file's mapping, or
// a netascii conversion). The kernel copies from there into its buffers,
// once, as it would from any buffer.
//
// It tries UDP GSO first: one sendmsg carries up to gsoMaxSegments
// packets laid end to end, with UDP_SEGMENT telling the kernel where to
// cut. Where the kernel refuses GSO for a socket (the packet exceeds the
// path MTU, as a blksize above it must; no GSO for the route), it falls
// back to sendmmsg, one message per packet, for the rest of the transfer.
// bench/tftp/README.md has the measurements that chose this order.
type window struct {
	rc     syscall.RawConn
	hdrs   []byte
	iovs   []unix.Iovec
	msgs   []mmsghdr
	cmsg   []byte
	noGSO  bool
	gsoErr error // why GSO was given up, for the stats
}

// mmsghdr is struct mmsghdr (x/sys's Mmsghdr is defined per architecture
// with the same layout).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

const (
	// gsoMaxSegments: the kernel takes up to 64 segments a send (128 on
	// newer kernels); the whole super-packet must also stay under 64 KiB.
	gsoMaxSegments = 64
	gsoMaxBytes    = 65000
)

func newWindow(rc syscall.RawConn, size int) *window {
	w := &window{
		rc:   rc,
		hdrs: make([]byte, 4*size),
		iovs: make([]unix.Iovec, 2*size),
		msgs: make([]mmsghdr, size),
		cmsg: make([]byte, unix.CmsgSpace(2)),
	}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&w.cmsg[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	return w
}

// errFault is the kernel's EFAULT: it could not read the content, which
// for a mapping means the file shrank under the transfer.
var errFault = errors.New("content unreadable (file truncated during the transfer?)")

// send sends blocks first..first+n-1 (absolute numbers, from 1) of data
// with blksize bs. It returns the number of sendmsg/sendmmsg calls made.
func (w *window) send(data []byte, bs int, first, n int) (calls int, err error) {
	for i := range n {
		blk := first + i
		off := (blk - 1) * bs
		end := min(off+bs, len(data))
		h := w.hdrs[4*i : 4*i+4]
		dataHeader(h, uint16(blk))
		w.iovs[2*i] = unix.Iovec{Base: &h[0], Len: 4}
		w.iovs[2*i+1] = unix.Iovec{Len: uint64(end - off)}
		if end > off {
			w.iovs[2*i+1].Base = &data[off]
		}
	}
	if !w.noGSO && n > 1 {
		seg := 4 + bs
		per := max(1, min(gsoMaxSegments, gsoMaxBytes/seg))
		for done := 0; done < n; {
			k := min(per, n-done)
			err := w.sendGSO(w.iovs[2*done:2*(done+k)], seg, k)
			calls++
			if err == nil {
				done += k
				continue
			}
			if errors.Is(err, unix.EFAULT) {
				return calls, errFault
			}
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EIO) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EMSGSIZE) {
				w.noGSO, w.gsoErr = true, err
				c, err := w.sendMmsg(done, n-done)
				return calls + c, err
			}
			return calls, err
		}
		return calls, nil
	}
	c, err := w.sendMmsg(0, n)
	return calls + c, err
}

// sendGSO sends k packets of seg bytes (the last may be shorter) in one
// sendmsg; with k == 1 it is a plain sendmsg.
func (w *window) sendGSO(iovs []unix.Iovec, seg, k int) error {
	msg := unix.Msghdr{Iov: &iovs[0]}
	msg.SetIovlen(len(iovs))
	if k > 1 {
		*(*uint16)(unsafe.Pointer(&w.cmsg[unix.CmsgLen(0)])) = uint16(seg)
		msg.Control = &w.cmsg[0]
		msg.SetControllen(len(w.cmsg))
	}
	var errno syscall.Errno
	err := w.rc.Write(func(fd uintptr) bool {
		_, _, errno = unix.Syscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&msg)), 0)
		return errno != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// sendMmsg sends packets from..from+n-1 of the prepared iovecs, one
// message each, in as few sendmmsg calls as the socket buffer allows.
func (w *window) sendMmsg(from, n int) (calls int, err error) {
	for i := range n {
		m := &w.msgs[i]
		*m = mmsghdr{}
		m.hdr.Iov = &w.iovs[2*(from+i)]
		m.hdr.SetIovlen(2)
	}
	for done := 0; done < n; {
		var sent uintptr
		var errno syscall.Errno
		err := w.rc.Write(func(fd uintptr) bool {
			sent, _, errno = unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&w.msgs[done])), uintptr(n-done), 0, 0, 0)
			return errno != unix.EAGAIN
		})
		calls++
		if err != nil {
			return calls, err
		}
		if errno == unix.EFAULT {
			return calls, errFault
		}
		if errno != 0 {
			return calls, errno
		}
		done += int(sent)
	}
	return calls, nil
}

// recvBatch reads up to len(bufs) datagrams in one recvmmsg, waiting
// (through the runtime's poller, honouring the read deadline) until at
// least one is there. It returns the lengths read.
type recvBatch struct {
	rc   syscall.RawConn
	iovs []unix.Iovec
	msgs []mmsghdr
}

func newRecvBatch(rc syscall.RawConn, bufs [][]byte) *recvBatch {
	r := &recvBatch{rc: rc, iovs: make([]unix.Iovec, len(bufs)), msgs: make([]mmsghdr, len(bufs))}
	for i, b := range bufs {
		r.iovs[i] = unix.Iovec{Base: &b[0], Len: uint64(len(b))}
		r.msgs[i].hdr.Iov = &r.iovs[i]
		r.msgs[i].hdr.SetIovlen(1)
	}
	return r
}

func (r *recvBatch) read(lens []int) (int, error) {
	var n uintptr
	var errno syscall.Errno
	err := r.rc.Read(func(fd uintptr) bool {
		n, _, errno = unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.msgs[0])), uintptr(len(r.msgs)), unix.MSG_DONTWAIT, 0, 0)
		return errno != unix.EAGAIN
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	for i := range int(n) {
		lens[i] = int(r.msgs[i].len)
		if r.msgs[i].hdr.Flags&unix.MSG_TRUNC != 0 {
			lens[i] = -1
		}
		r.msgs[i].hdr.Flags = 0
	}
	return int(n), nil
}
