package rawsock

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/net/bpf"

	"github.com/phoneboot/phoneboot/userspace/privtest"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// udpDstPort67 accepts untagged IPv4/UDP frames to port 67, as DHCP does.
var udpDstPort67 = []bpf.Instruction{
	bpf.LoadAbsolute{Off: 12, Size: 2},
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0x0800, SkipTrue: 6},
	bpf.LoadAbsolute{Off: 23, Size: 1},
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 17, SkipTrue: 4},
	bpf.LoadMemShift{Off: 14},
	bpf.LoadIndirect{Off: 16, Size: 2},
	bpf.JumpIf{Cond: bpf.JumpEqual, Val: 67, SkipFalse: 1},
	bpf.RetConstant{Val: 0xffff},
	bpf.RetConstant{Val: 0},
}

// frame builds Ethernet (+ tags) / IPv4 / UDP to dport with a marker payload.
func frame(vlans []uint16, dport uint16, marker byte) []byte {
	var b bytes.Buffer
	b.Write([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x1e, 0x7a, 0, 0, 1})
	for _, v := range vlans {
		binary.Write(&b, binary.BigEndian, uint16(0x8100))
		binary.Write(&b, binary.BigEndian, v)
	}
	binary.Write(&b, binary.BigEndian, uint16(0x0800))
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], 20+8+4)
	copy(ip[16:], []byte{255, 255, 255, 255})
	b.Write(ip)
	udp := make([]byte, 8)
	binary.BigEndian.PutUint16(udp[0:], 68)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], 12)
	b.Write(udp)
	b.Write([]byte{marker, marker, marker, marker})
	return b.Bytes()
}

func listenIn(t *testing.T, ns *vnet.NS, ifname string) *Conn {
	t.Helper()
	var c *Conn
	if err := ns.Do(func() (err error) { c, err = Listen(ifname, Options{Filter: udpDstPort67}); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestReadReportsVLANAndFilters(t *testing.T) {
	a, b := privtest.VethPair(t, "pba", "pbb")
	if err := b.SetUp("pbb"); err != nil {
		t.Fatal(err)
	}
	rx := listenIn(t, a, "pba")
	tx := listenIn(t, b, "pbb")

	// Sent in this order; the filter must let through only port-67 frames.
	sends := []struct {
		vlans  []uint16
		dport  uint16
		marker byte
	}{
		{nil, 53, 0xee},             // not DHCP: filtered out
		{nil, 67, 1},                // untagged
		{[]uint16{100}, 67, 2},      // one tag: removed by the kernel, reported
		{[]uint16{4094}, 67, 3},     // highest VLAN ID
		{[]uint16{200}, 5060, 0xee}, // tagged, not DHCP
	}
	for _, s := range sends {
		if err := tx.Write(frame(s.vlans, s.dport, s.marker)); err != nil {
			t.Fatal(err)
		}
	}
	want := []struct {
		tagged bool
		vlan   uint16
		marker byte
	}{{false, 0, 1}, {true, 100, 2}, {true, 4094, 3}}
	buf := make([]byte, 2048)
	for i, w := range want {
		rx.SetReadDeadline(time.Now().Add(2 * time.Second))
		fr, err := rx.Read(buf)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if fr.Tagged != w.tagged || fr.VLAN != w.vlan {
			t.Errorf("frame %d: tagged=%v vlan=%d, want %v %d", i, fr.Tagged, fr.VLAN, w.tagged, w.vlan)
		}
		if binary.BigEndian.Uint16(fr.Data[12:]) != 0x0800 {
			t.Errorf("frame %d: ethertype %#x, want the tag removed", i, fr.Data[12:14])
		}
		if got := fr.Data[len(fr.Data)-1]; got != w.marker {
			t.Errorf("frame %d: marker %d, want %d (order or filter wrong)", i, got, w.marker)
		}
	}
	rx.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if fr, err := rx.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("extra frame %x (err %v): the filter let a non-DHCP frame through", fr.Data, err)
	}
	st, err := rx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Received != 3 || st.Dropped != 0 {
		t.Errorf("stats %+v, want 3 received, 0 dropped", st)
	}
	// The sender must not read back its own frames.
	tx.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if fr, err := tx.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("sender read its own frame %x (err %v)", fr.Data, err)
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	a, _ := privtest.VethPair(t, "pba", "pbb")
	c := listenIn(t, a, "pba")
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1500))
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // let Read block; closing first is also fine
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("Read after Close: %v, want os.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Read still blocked after Close")
	}
}

func TestListenErrors(t *testing.T) {
	privtest.Require(t)
	if _, err := Listen("pbnosuch0", Options{Filter: udpDstPort67}); err == nil {
		t.Error("Listen on a missing interface succeeded")
	}
	if _, err := Listen("lo", Options{}); err == nil {
		t.Error("Listen without a filter succeeded")
	}
}

// TestReadReportsArrival: a frame carries the time the kernel received
// it, not the time it was read, so a reader can tell how long it waited.
func TestReadReportsArrival(t *testing.T) {
	a, b := privtest.VethPair(t, "pba", "pbb")
	if err := b.SetUp("pbb"); err != nil {
		t.Fatal(err)
	}
	rx := listenIn(t, a, "pba")
	tx := listenIn(t, b, "pbb")
	buf := make([]byte, 2048)
	// sendAndRead sends one frame, lets it queue for wait and reads it.
	sendAndRead := func(wait time.Duration) (sent, received, read time.Time) {
		t.Helper()
		sent = time.Now()
		if err := tx.Write(frame(nil, 67, 1)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(wait)
		rx.SetReadDeadline(time.Now().Add(2 * time.Second))
		fr, err := rx.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		return sent, fr.Received, time.Now()
	}
	// The kernel turns software stamping on from a work queue after the
	// first socket on the machine asks for it (net_enable_timestamp), and
	// stamps a frame that arrived before then at read time. On a fresh
	// machine this test's socket is that first one: wait for stamping.
	const probeWait = 20 * time.Millisecond
	for i := 0; ; i++ {
		_, received, read := sendAndRead(probeWait)
		if !received.After(read.Add(-probeWait / 2)) {
			break
		}
		if i == 100 {
			t.Fatalf("the kernel did not stamp arrivals within %d frames", i)
		}
	}
	const wait = 300 * time.Millisecond
	sent, received, read := sendAndRead(wait)
	if received.Before(sent.Add(-time.Second)) || received.After(read.Add(-wait)) {
		t.Errorf("received at %v: sent after %v, read at %v after a wait of %v", received, sent, read, wait)
	}
}

// TestSendReportsItsTurn: Send returns when its frame went to the kernel,
// after the writer ahead of it on the same socket, not when it was
// called.
func TestSendReportsItsTurn(t *testing.T) {
	a, b := privtest.VethPair(t, "pba", "pbb")
	if err := b.SetUp("pbb"); err != nil {
		t.Fatal(err)
	}
	rx := listenIn(t, a, "pba")
	tx := listenIn(t, b, "pbb")
	rc, err := tx.f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	// Another writer holds the socket's turn for hold.
	const hold = 200 * time.Millisecond
	holding, released := make(chan struct{}), make(chan time.Time, 1)
	go rc.Write(func(uintptr) bool {
		close(holding)
		time.Sleep(hold)
		released <- time.Now()
		return true
	})
	<-holding
	called := time.Now()
	sent, err := tx.Send(frame(nil, 67, 2))
	if err != nil {
		t.Fatal(err)
	}
	returned := time.Now()
	if rel := <-released; sent.Before(rel) || sent.After(returned) || sent.Sub(called) < hold/2 {
		t.Errorf("sent at %v after the call, the other writer released at %v: want between that and the return (%v)",
			sent.Sub(called), rel.Sub(called), returned.Sub(called))
	}
	rx.SetReadDeadline(time.Now().Add(2 * time.Second))
	fr, err := rx.Read(make([]byte, 2048))
	if err != nil || !bytes.Equal(fr.Data[len(fr.Data)-4:], []byte{2, 2, 2, 2}) {
		t.Errorf("read %x, %v: want the frame sent", fr.Data, err)
	}
}

// TestQueued counts what waits in the receive queue: frames the kernel
// queued, less those Read took and those it dropped for a full buffer;
// Stats keeps returning what changed since its last call meanwhile.
func TestQueued(t *testing.T) {
	a, b := privtest.VethPair(t, "pba", "pbb")
	if err := b.SetUp("pbb"); err != nil {
		t.Fatal(err)
	}
	var rx *Conn
	// A receive buffer this small (the kernel doubles it to 4 KiB) holds
	// only a few frames: the rest are dropped.
	if err := a.Do(func() (err error) {
		rx, err = Listen("pba", Options{Filter: udpDstPort67, RecvBuffer: 2048})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	tx := listenIn(t, b, "pbb")
	queued := func() int {
		t.Helper()
		n, err := rx.Queued()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := queued(); n != 0 {
		t.Fatalf("Queued = %d on a fresh socket", n)
	}
	const sent = 50
	for i := range sent {
		if err := tx.Write(frame(nil, 67, byte(i))); err != nil {
			t.Fatal(err)
		}
	}
	st, err := rx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Received != sent || st.Dropped == 0 {
		t.Fatalf("stats %+v, want %d received (veth delivers at once) and some dropped", st, sent)
	}
	inQueue := int(st.Received - st.Dropped)
	if n := queued(); n != inQueue {
		t.Errorf("Queued = %d, want %d (received %d, dropped %d)", n, inQueue, st.Received, st.Dropped)
	}
	buf := make([]byte, 2048)
	for i := range 2 {
		rx.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := rx.Read(buf); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	if n := queued(); n != inQueue-2 {
		t.Errorf("Queued after 2 reads = %d, want %d", n, inQueue-2)
	}
	if st, err := rx.Stats(); err != nil || st != (Stats{}) {
		t.Errorf("second Stats = %+v, %v; want nothing new", st, err)
	}
	for range inQueue - 2 {
		rx.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := rx.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	if n := queued(); n != 0 {
		t.Errorf("Queued after reading everything = %d", n)
	}
}
