package lab

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/net/bpf"

	"github.com/phoneboot/phoneboot/userspace/cdp"
	"github.com/phoneboot/phoneboot/userspace/offload"
	"github.com/phoneboot/phoneboot/userspace/phonetag"
	"github.com/phoneboot/phoneboot/userspace/rawsock"
)

// portIO is the phones' side of a lab port: one raw socket that every
// phone behind the port sends through, and a demultiplexer that hands
// each phone the DHCP replies for its transaction IDs; a second socket
// hears the switch's CDP. The phones' VLAN-aware NIC is the phone tagger:
// it removes the tag of what arrives (so the sockets see untagged frames)
// and tags what a phone sends once it knows its voice VLAN. Being an XDP
// program, it also lets the veth deliver the fast path's XDP_TX replies.
type portIO struct {
	port   *Port
	conn   *rawsock.Conn
	cdp    *rawsock.Conn
	tagger *phonetag.Attachment

	mu      sync.Mutex
	waiters map[uint32]chan dhcpReply // DHCP xid -> the phone waiting for it
	// voiceVLAN is the last VoIP VLAN Reply heard on the port (0: none
	// yet); voiceHeard is closed and replaced each time one is heard.
	voiceVLAN  uint16
	voiceHeard chan struct{}
}

// udpDstPort68 keeps IPv4/UDP to port 68 (DHCP replies to clients).
var udpDstPort68 = []bpf.Instruction{
	bpf.LoadAbsolute{Off: 12, Size: 2},
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0x0800, SkipTrue: 8},
	bpf.LoadAbsolute{Off: 23, Size: 1},
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 17, SkipTrue: 6},
	bpf.LoadAbsolute{Off: 20, Size: 2},
	bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x3fff, SkipTrue: 4},
	bpf.LoadMemShift{Off: 14},
	bpf.LoadIndirect{Off: 14 + 2, Size: 2},
	bpf.JumpIf{Cond: bpf.JumpEqual, Val: 68, SkipFalse: 1},
	bpf.RetConstant{Val: 0xffff},
	bpf.RetConstant{Val: 0},
}

func openPortIO(p *Port, tagger *phonetag.Tagger) (*portIO, error) {
	io := &portIO{port: p, waiters: map[uint32]chan dhcpReply{}, voiceHeard: make(chan struct{})}
	err := p.NS.Do(func() error {
		ifi, err := net.InterfaceByName(p.Link)
		if err != nil {
			return err
		}
		// With transmit VLAN offload on, a veth hands the tag to its
		// peer beside the frame, where the appliance's XDP cannot see it.
		if err := offload.SetVLAN(p.Link, false); err != nil {
			return fmt.Errorf("the phones' side of %s: %w", p.Name, err)
		}
		io.tagger, err = tagger.Attach(ifi.Index)
		if err != nil {
			return fmt.Errorf("the phones' side of %s: %w", p.Name, err)
		}
		if io.conn, err = rawsock.Listen(p.Link, rawsock.Options{Filter: udpDstPort68}); err != nil {
			return err
		}
		io.cdp, err = rawsock.Listen(p.Link, rawsock.Options{Filter: cdp.Filter(), RecvBuffer: 256 << 10})
		return err
	})
	if err != nil {
		io.close()
		return nil, fmt.Errorf("port %s: %w", p.Name, err)
	}
	return io, nil
}

// run delivers replies to waiting phones until the socket closes.
func (io *portIO) run(ctx context.Context) {
	buf := make([]byte, 2048)
	for {
		fr, err := io.conn.Read(buf)
		if errors.Is(err, os.ErrClosed) || ctx.Err() != nil {
			return
		}
		if err != nil {
			continue
		}
		payload, ok := udpPayload(fr.Data)
		if !ok || len(payload) < 240 {
			continue
		}
		xid := binary.BigEndian.Uint32(payload[4:8])
		io.mu.Lock()
		ch := io.waiters[xid]
		io.mu.Unlock()
		if ch == nil {
			continue
		}
		at := fr.Received
		if at.IsZero() {
			at = time.Now() // the kernel has not begun stamping yet
		}
		select {
		case ch <- dhcpReply{payload: append([]byte(nil), payload...), at: at}:
		default: // the phone has one reply it has not read yet; a real one would drop this too
		}
	}
}

// dhcpReply is a reply for a phone, and when it reached the phone's
// kernel.
type dhcpReply struct {
	payload []byte
	at      time.Time
}

func (io *portIO) register(xid uint32) chan dhcpReply {
	ch := make(chan dhcpReply, 4)
	io.mu.Lock()
	io.waiters[xid] = ch
	io.mu.Unlock()
	return ch
}

func (io *portIO) unregister(xid uint32) {
	io.mu.Lock()
	delete(io.waiters, xid)
	io.mu.Unlock()
}

// runCDP records the voice VLAN the switch announces until the socket closes.
func (io *portIO) runCDP(ctx context.Context) {
	buf := make([]byte, 9216)
	for {
		fr, err := io.cdp.Read(buf)
		if errors.Is(err, os.ErrClosed) || ctx.Err() != nil {
			return
		}
		if err != nil {
			continue
		}
		m, err := cdp.Decode(fr.Data)
		if err != nil && !errors.Is(err, cdp.ErrChecksum) {
			continue
		}
		if m.TTL == 0 {
			continue
		}
		// An announcement without a voice VLAN tells the phone to stay
		// untagged, as a switch port without one does.
		var vlan uint16
		if m.VoIPVLANReply != nil {
			vlan = m.VoIPVLANReply.VLAN
		}
		io.mu.Lock()
		io.voiceVLAN = vlan
		close(io.voiceHeard)
		io.voiceHeard = make(chan struct{})
		io.mu.Unlock()
	}
}

// voice returns the voice VLAN heard so far (0: none) and a channel
// closed when the next announcement arrives.
func (io *portIO) voice() (uint16, <-chan struct{}) {
	io.mu.Lock()
	defer io.mu.Unlock()
	return io.voiceVLAN, io.voiceHeard
}

func (io *portIO) close() {
	for _, c := range []*rawsock.Conn{io.conn, io.cdp} {
		if c != nil {
			c.Close()
		}
	}
	if io.tagger != nil {
		io.tagger.Close()
	}
}

// udpPayload returns the UDP payload of an untagged IPv4 frame.
func udpPayload(f []byte) ([]byte, bool) {
	if len(f) < 14+20+8 || binary.BigEndian.Uint16(f[12:]) != 0x0800 {
		return nil, false
	}
	ihl := int(f[14]&0x0f) * 4
	if ihl < 20 || len(f) < 14+ihl+8 {
		return nil, false
	}
	udp := f[14+ihl:]
	n := int(binary.BigEndian.Uint16(udp[4:6]))
	if n < 8 || n > len(udp) {
		return nil, false
	}
	return udp[8:n], true
}

// clientFrame is what a phone's IP stack sends for DHCP before it has an
// address: from its MAC and 0.0.0.0 (or its address when renewing) to
// the broadcast address, UDP 68 -> 67, checksums filled in.
func clientFrame(src net.HardwareAddr, srcIP, dstIP netip.Addr, payload []byte) []byte {
	b := make([]byte, 14+20+8+len(payload))
	copy(b[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	ip[8], ip[9] = 64, 17
	s, d := srcIP.As4(), dstIP.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:], ^onesSum(0, ip))
	udp := b[34:]
	binary.BigEndian.PutUint16(udp[0:], 68)
	binary.BigEndian.PutUint16(udp[2:], 67)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(udp[8:], payload)
	sum := onesSum(0, ip[12:20])
	sum = onesSumAdd(sum, uint32(17)+uint32(8+len(payload)))
	sum = onesSum(sum, udp)
	c := ^sum
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
	return b
}

func onesSum(s uint16, b []byte) uint16 {
	acc := uint32(s)
	for len(b) >= 2 {
		acc += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint32(b[0]) << 8
	}
	return onesSumAdd(0, acc)
}

func onesSumAdd(s uint16, v uint32) uint16 {
	acc := uint32(s) + v
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return uint16(acc)
}
