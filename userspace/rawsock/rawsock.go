// Package rawsock is an AF_PACKET socket on one interface for the
// protocols phoneboot speaks at layer 2 (DHCP, CDP, LLDP).
//
// It is ours rather than mdlayher/packet because it must read
// PACKET_AUXDATA: the kernel takes the outer 802.1Q tag off a frame before
// packet sockets see it and reports the VLAN only there, and a phone's
// voice VLAN is exactly what the servers need to know.
package rawsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Frame is one received frame.
type Frame struct {
	Data []byte // from the Ethernet header on, outer VLAN tag removed
	// VLAN is the outer 802.1Q VLAN ID the kernel removed; valid only if Tagged.
	VLAN   uint16
	Tagged bool
	// Received is when the kernel received the frame (SO_TIMESTAMPNS,
	// wall clock), so a reader can tell how long it queued. The kernel
	// turns stamping on shortly after the first socket asks for it; a
	// frame that arrived before is stamped when read.
	Received time.Time
}

// Conn is a raw socket bound to one interface.
type Conn struct {
	f       *os.File
	closed  atomic.Bool
	ifindex int
	name    string
	mac     net.HardwareAddr
	reads   atomic.Uint64 // frames taken off the receive queue

	statsMu  sync.Mutex
	total    Stats // the kernel's counters since the socket was made
	reported Stats // total as of the last Stats call
}

// Options for Listen.
type Options struct {
	// Filter is a classic BPF program run by the kernel on each frame (as
	// the socket sees it: outer tag removed); frames it rejects never reach
	// userspace. Required: a raw socket without one copies every frame.
	Filter []bpf.Instruction
	// RecvBuffer is the socket receive buffer in bytes (0: 4 MiB). A boot
	// storm arrives in bursts; drops are counted in Stats.
	RecvBuffer int
}

// Listen opens a raw socket on the interface in the calling thread's
// network namespace.
func Listen(ifname string, opts Options) (_ *Conn, err error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("raw socket on %s: %w", ifname, err)
	}
	if len(opts.Filter) == 0 {
		return nil, fmt.Errorf("raw socket on %s: a filter is required", ifname)
	}
	raw, err := bpf.Assemble(opts.Filter)
	if err != nil {
		return nil, fmt.Errorf("raw socket on %s: filter: %w", ifname, err)
	}
	prog := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		prog[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}

	// Protocol 0 receives nothing until bind, so no frame slips in before
	// the filter is attached.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("raw socket on %s: %w", ifname, err)
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
		}
	}()
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		return nil, fmt.Errorf("raw socket on %s: attach filter: %w", ifname, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
		return nil, fmt.Errorf("raw socket on %s: PACKET_AUXDATA: %w", ifname, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		return nil, fmt.Errorf("raw socket on %s: SO_TIMESTAMPNS: %w", ifname, err)
	}
	// Our own replies would otherwise come back through the tap.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return nil, fmt.Errorf("raw socket on %s: PACKET_IGNORE_OUTGOING: %w", ifname, err)
	}
	rcvbuf := opts.RecvBuffer
	if rcvbuf == 0 {
		rcvbuf = 4 << 20
	}
	// FORCE goes past net.core.rmem_max with CAP_NET_ADMIN, which the
	// daemon has; without it the kernel caps the plain option silently.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
			return nil, fmt.Errorf("raw socket on %s: receive buffer: %w", ifname, err)
		}
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, fmt.Errorf("raw socket on %s: bind: %w", ifname, err)
	}
	return &Conn{
		f:       os.NewFile(uintptr(fd), "packet:"+ifname),
		ifindex: ifi.Index,
		name:    ifname,
		mac:     ifi.HardwareAddr,
	}, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// HardwareAddr is the interface's MAC address.
func (c *Conn) HardwareAddr() net.HardwareAddr { return c.mac }

// Name is the interface's name.
func (c *Conn) Name() string { return c.name }

var oobLen = unix.CmsgSpace(int(unsafe.Sizeof(unix.TpacketAuxdata{}))) + unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{})))

// Read receives one frame into buf and returns it, with the VLAN the kernel
// stripped. It blocks until a frame arrives, the deadline passes or the
// Conn is closed (os.ErrClosed).
func (c *Conn) Read(buf []byte) (Frame, error) {
	rc, err := c.f.SyscallConn()
	if err != nil {
		return Frame{}, err
	}
	oob := make([]byte, oobLen)
	var n, oobn int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		n, oobn, _, _, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_TRUNC)
		if rerr == nil {
			c.reads.Add(1)
		}
		return rerr != unix.EAGAIN
	})
	if err != nil {
		if c.closed.Load() {
			return Frame{}, os.ErrClosed
		}
		return Frame{}, err
	}
	if rerr != nil {
		return Frame{}, fmt.Errorf("read %s: %w", c.name, rerr)
	}
	if n > len(buf) {
		return Frame{}, fmt.Errorf("read %s: %w: frame of %d bytes, buffer %d", c.name, ErrTruncated, n, len(buf))
	}
	fr := Frame{Data: buf[:n]}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return Frame{}, fmt.Errorf("read %s: control message: %w", c.name, err)
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_PACKET && m.Header.Type == unix.PACKET_AUXDATA &&
			len(m.Data) >= int(unsafe.Sizeof(unix.TpacketAuxdata{})):
			aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&m.Data[0]))
			if aux.Status&unix.TP_STATUS_VLAN_VALID != 0 {
				fr.Tagged = true
				fr.VLAN = aux.Vlan_tci & 0x0fff
			}
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS &&
			len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})):
			ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
			if ts.Sec != 0 || ts.Nsec != 0 {
				fr.Received = time.Unix(ts.Unix())
			}
		}
	}
	return fr, nil
}

// ErrTruncated reports a frame larger than the read buffer.
var ErrTruncated = errors.New("frame truncated")

// Write sends a complete Ethernet frame (tags inline) out of the interface.
func (c *Conn) Write(frame []byte) error { return c.send(frame, nil) }

// Send is Write that also returns when the frame went to the kernel: the
// start of the system call that sent it. Writers of one Conn take turns
// (the descriptor's write lock), so on a busy socket that can be long
// after the call to Send.
func (c *Conn) Send(frame []byte) (time.Time, error) {
	var sent time.Time
	err := c.send(frame, &sent)
	return sent, err
}

// send writes frame, and the time its system call began into sent unless
// sent is nil (Write, the servers' path, reads no clock).
func (c *Conn) send(frame []byte, sent *time.Time) error {
	if len(frame) < 14 {
		return fmt.Errorf("write %s: frame of %d bytes", c.name, len(frame))
	}
	rc, err := c.f.SyscallConn()
	if err != nil {
		return err
	}
	sa := &unix.SockaddrLinklayer{Ifindex: c.ifindex, Halen: 6}
	copy(sa.Addr[:], frame[:6])
	var werr error
	err = rc.Write(func(fd uintptr) bool {
		if sent != nil {
			*sent = time.Now()
		}
		werr = unix.Sendto(int(fd), frame, 0, sa)
		return werr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	if werr != nil {
		return fmt.Errorf("write %s: %w", c.name, werr)
	}
	return nil
}

// SetReadDeadline bounds the next reads.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.f.SetReadDeadline(t) }

// Stats are the kernel's counters for the socket since the last call.
type Stats struct {
	Received uint64 // frames the filter accepted, dropped ones included
	Dropped  uint64 // frames lost because the receive buffer was full
}

// Stats returns the kernel's counters since the last call.
func (c *Conn) Stats() (Stats, error) {
	c.statsMu.Lock()
	defer c.statsMu.Unlock()
	if err := c.readKernelStats(); err != nil {
		return Stats{}, err
	}
	d := Stats{Received: c.total.Received - c.reported.Received, Dropped: c.total.Dropped - c.reported.Dropped}
	c.reported = c.total
	return d, nil
}

// Queued is how many frames wait in the socket's receive queue: those the
// kernel queued (PACKET_STATISTICS, less its drops) and Read has not taken
// yet. Frames arriving while it counts can make it off by those.
func (c *Conn) Queued() (int, error) {
	c.statsMu.Lock()
	defer c.statsMu.Unlock()
	if err := c.readKernelStats(); err != nil {
		return 0, err
	}
	queued := c.total.Received - c.total.Dropped
	if r := c.reads.Load(); r < queued {
		return int(queued - r), nil
	}
	return 0, nil
}

// readKernelStats adds the kernel's counters, which PACKET_STATISTICS
// resets on every read, to the totals; statsMu is held.
func (c *Conn) readKernelStats() error {
	rc, err := c.f.SyscallConn()
	if err != nil {
		return err
	}
	var st *unix.TpacketStats
	var serr error
	err = rc.Control(func(fd uintptr) {
		st, serr = unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS)
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("stats %s: %w", c.name, serr)
	}
	c.total.Received += uint64(st.Packets)
	c.total.Dropped += uint64(st.Drops)
	return nil
}

// Close closes the socket; blocked Reads return os.ErrClosed.
func (c *Conn) Close() error {
	c.closed.Store(true)
	return c.f.Close()
}
