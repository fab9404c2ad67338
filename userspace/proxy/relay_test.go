package proxy

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/privtest"
)

// tcpPair is a connected pair of TCP connections on loopback.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestRelay: 8 MiB go through relay intact to a reader slower than the
// writer (so the destination fills and splice waits for it), relay
// returns nil at the source's end, and a pipe goes back to the pool.
func TestRelay(t *testing.T) {
	privtest.RequireNetNS(t)
	srcW, srcR := tcpPair(t) // the test writes srcW; relay reads srcR
	dstW, dstR := tcpPair(t) // relay writes dstW; the test reads dstR
	data := make([]byte, 8<<20)
	rand.Read(data)
	done := make(chan error, 1)
	go func() { done <- relay(dstW, srcR) }()
	go func() {
		srcW.Write(data)
		srcW.CloseWrite()
	}()
	var got bytes.Buffer
	buf := make([]byte, 32<<10)
	for got.Len() < len(data) {
		dstR.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := dstR.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			t.Fatalf("after %d bytes: %v", got.Len(), err)
		}
		if got.Len() < 1<<20 {
			time.Sleep(time.Millisecond) // slow at first: the destination fills
		}
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatal("bytes differ")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("relay at the source's end: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("relay did not end with its source")
	}
	pipes.mu.Lock()
	free := len(pipes.free)
	pipes.mu.Unlock()
	if free == 0 {
		t.Error("no pipe back in the pool")
	}

	// A destination that is gone ends the relay with its error.
	srcW2, srcR2 := tcpPair(t)
	dstW2, dstR2 := tcpPair(t)
	dstR2.SetLinger(0)
	dstR2.Close()
	go io.Copy(io.Discard, srcW2)
	errc := make(chan error, 1)
	go func() { errc <- relay(dstW2, srcR2) }()
	for range 50 {
		if _, err := srcW2.Write(make([]byte, 64<<10)); err != nil {
			break
		}
		select {
		case err := <-errc:
			if err == nil {
				t.Error("relay into a reset destination returned nil")
			}
			return
		default:
		}
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Error("relay into a reset destination returned nil")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("relay into a reset destination never ended")
	}
}
