package tftp

import (
	"bytes"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestWindowFallsBack: where the kernel refuses GSO for a socket (here
// SO_NO_CHECK, which GSO cannot honour; in the field a blksize above the
// path MTU), a window goes out with sendmmsg instead, every packet intact.
func TestWindowFallsBack(t *testing.T) {
	for _, refuse := range []bool{false, true} {
		recv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer recv.Close()
		conn, err := net.DialUDP("udp4", nil, recv.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		rc, _ := conn.SyscallConn()
		if refuse {
			rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, 1) })
		}
		const bs = 1000
		data := randomBytes(t, 10*bs+300)
		w := newWindow(rc, 8)
		calls, err := w.send(data, bs, 4, 8) // blocks 4..11, the last one short
		if err != nil {
			t.Fatal(err)
		}
		if w.noGSO != refuse || (refuse && w.gsoErr == nil) {
			t.Errorf("refuse %v: noGSO %v, gsoErr %v", refuse, w.noGSO, w.gsoErr)
		}
		if !refuse && calls != 1 {
			t.Errorf("%d calls for a GSO window", calls)
		}
		buf := make([]byte, 2000)
		for blk := 4; blk <= 11; blk++ {
			recv.SetReadDeadline(time.Now().Add(time.Second))
			n, err := recv.Read(buf)
			if err != nil {
				t.Fatalf("refuse %v: block %d: %v", refuse, blk, err)
			}
			p, err := Parse(buf[:n])
			want := data[(blk-1)*bs : min(blk*bs, len(data))]
			if err != nil || p.Op != OpData || int(p.Block) != blk || !bytes.Equal(p.Data, want) {
				t.Fatalf("refuse %v: got %+v (%v), want block %d of %d bytes", refuse, p.Block, err, blk, len(want))
			}
		}
	}
}

func TestFetchNoGSO(t *testing.T) {
	file := randomBytes(t, 300000)
	s := startServer(t, map[string][]byte{"f": file}, func(c *Config) { c.NoGSO = true })
	got, _, err := fetch(t, s.v6, "f", FetchOptions{BlockSize: 1428, WindowSize: 32})
	if err != nil || !bytes.Equal(got, file) {
		t.Fatalf("%v", err)
	}
	if st := s.idle(t); st.SendCalls != st.Blocks/32+1 {
		t.Errorf("%d sendmmsg calls for %d blocks in windows of 32", st.SendCalls, st.Blocks)
	}
}
