package tftp

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/bootfiles"
)

// BenchmarkSendPath compares ways of sending a window of DATA packets
// (16 blocks of 1468 bytes, the bench's settings) from a file's shared
// mapping to a UDP receiver on loopback, per window. cpu-ns/block is the
// sending thread's own CPU time (getrusage RUSAGE_THREAD: user and
// system, which includes the loopback delivery into the receiver's
// socket); syscalls/block is counted. The server keeps "gso" and falls
// back to "sendmmsg"; the others are what was measured against them (see
// bench/tftp/README.md).
func BenchmarkSendPath(b *testing.B) {
	const bs, ws = 1468, 16
	root := b.TempDir()
	content := randomBytes(b, 16<<20)
	if err := os.WriteFile(filepath.Join(root, "load.sbn"), content, 0o644); err != nil {
		b.Fatal(err)
	}
	src, err := bootfiles.OpenDir(root)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	f, err := src.Open(b.Context(), bootfiles.Request{Name: "load.sbn"})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	data := f.Bytes()
	nblocks := len(data) / bs

	for _, m := range []struct {
		name string
		send func(s *sender, first int) (calls int, err error)
	}{
		{"copy-write", (*sender).copyWrite},
		{"sendmsg-per-block", (*sender).sendmsgPerBlock},
		{"sendfile-msg-more", (*sender).sendfileMore},
		{"sendfile-cork", (*sender).sendfileCork},
		{"sendmmsg", func(s *sender, first int) (int, error) { return s.w.sendMmsg(0, s.prepare(first)) }},
		{"gso", func(s *sender, first int) (int, error) { return s.w.send(s.data, bs, first, ws) }},
	} {
		b.Run(m.name, func(b *testing.B) {
			s := newSender(b, data, f.OS(), bs, ws)
			defer s.close()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			cpu0 := threadCPU()
			calls := 0
			first := 1
			b.ResetTimer()
			for b.Loop() {
				if first+ws > nblocks {
					first = 1
				}
				c, err := m.send(s, first)
				if err != nil {
					b.Fatal(err)
				}
				calls += c
				first += ws
			}
			b.StopTimer()
			blocks := float64(b.N * ws)
			b.ReportMetric(float64(threadCPU()-cpu0)/blocks, "cpu-ns/block")
			b.ReportMetric(float64(calls)/blocks, "syscalls/block")
			b.ReportMetric(float64(s.received.Load())/blocks, "delivered")
			if s.w.noGSO && m.name == "gso" {
				b.Errorf("GSO refused: %v", s.w.gsoErr)
			}
		})
	}
}

func threadCPU() int64 {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_THREAD, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

type sender struct {
	b        testing.TB
	conn     *net.UDPConn
	rc       syscall.RawConn
	w        *window
	data     []byte
	file     *os.File
	bs, ws   int
	buf      []byte
	recv     *net.UDPConn
	received atomic.Int64
	done     chan struct{}
}

func newSender(b testing.TB, data []byte, file *os.File, bs, ws int) *sender {
	recv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	rrc, _ := recv.SyscallConn()
	rrc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20) })
	conn, err := net.DialUDP("udp4", nil, recv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		b.Fatal(err)
	}
	rc, _ := conn.SyscallConn()
	s := &sender{b: b, conn: conn, rc: rc, w: newWindow(rc, ws), data: data, file: file, bs: bs, ws: ws,
		buf: make([]byte, 4+bs), recv: recv, done: make(chan struct{})}
	// The receiver drains in batches, as the bench's client does.
	go func() {
		defer close(s.done)
		bufs := make([][]byte, 64)
		for i := range bufs {
			bufs[i] = make([]byte, 4+bs)
		}
		rb := newRecvBatch(rrc, bufs)
		lens := make([]int, len(bufs))
		for {
			n, err := rb.read(lens)
			if err != nil {
				return
			}
			s.received.Add(int64(n))
		}
	}()
	return s
}

func (s *sender) close() {
	s.conn.Close()
	time.Sleep(10 * time.Millisecond)
	s.recv.Close()
	<-s.done
}

// prepare fills the window's iovecs for blocks first.. without sending.
func (s *sender) prepare(first int) int {
	for i := range s.ws {
		blk := first + i
		off := (blk - 1) * s.bs
		h := s.w.hdrs[4*i : 4*i+4]
		dataHeader(h, uint16(blk))
		s.w.iovs[2*i] = unix.Iovec{Base: &h[0], Len: 4}
		s.w.iovs[2*i+1] = unix.Iovec{Base: &s.data[off], Len: uint64(s.bs)}
	}
	return s.ws
}

// copyWrite copies each packet into a Go buffer and writes it: what
// "not zero-copy" means.
func (s *sender) copyWrite(first int) (int, error) {
	for i := range s.ws {
		blk := first + i
		dataHeader(s.buf, uint16(blk))
		copy(s.buf[4:], s.data[(blk-1)*s.bs:blk*s.bs])
		if _, err := s.conn.Write(s.buf); err != nil {
			return i, err
		}
	}
	return s.ws, nil
}

// sendmsgPerBlock: one sendmsg a packet, iovecs into the mapping.
func (s *sender) sendmsgPerBlock(first int) (int, error) {
	s.prepare(first)
	for i := range s.ws {
		if err := s.w.sendGSO(s.w.iovs[2*i:2*i+2], 4+s.bs, 1); err != nil {
			return i, err
		}
	}
	return s.ws, nil
}

// sendfileMore: the header with MSG_MORE, then sendfile of the block
// from the file, which ends the datagram.
func (s *sender) sendfileMore(first int) (int, error) {
	return s.sendfile(first, false)
}

// sendfileCork: the same between UDP_CORK on and off.
func (s *sender) sendfileCork(first int) (int, error) {
	return s.sendfile(first, true)
}

func (s *sender) sendfile(first int, cork bool) (calls int, err error) {
	hdr := make([]byte, 4)
	ffd := int(s.file.Fd())
	for i := range s.ws {
		blk := first + i
		dataHeader(hdr, uint16(blk))
		off := int64(blk-1) * int64(s.bs)
		var serr error
		err := s.rc.Write(func(fd uintptr) bool {
			if cork {
				if serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_CORK, 1); serr != nil {
					return true
				}
				calls++
			}
			flags := unix.MSG_MORE
			if cork {
				flags = 0
			}
			_, _, e := unix.Syscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&hdr[0])), 4, uintptr(flags), 0, 0)
			calls++
			if e == unix.EAGAIN {
				return false
			}
			if e != 0 {
				serr = e
				return true
			}
			_, serr = unix.Sendfile(int(fd), ffd, &off, s.bs)
			calls++
			if cork && serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_CORK, 0)
				calls++
			}
			return true
		})
		if err = errorsJoin(err, serr); err != nil {
			return calls, err
		}
	}
	return calls, nil
}

func errorsJoin(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
