package proxy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/privtest"
)

// sipResponder is a tiny SIP registrar over TCP: it answers each
// request with 200 OK, echoing its CSeq, and counts the methods it saw.
type sipResponder struct {
	ln   *net.TCPListener
	mu   sync.Mutex
	seen map[string]int
}

func newSIPResponder(t *testing.T, addr string) *sipResponder {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &sipResponder{ln: ln.(*net.TCPListener), seen: map[string]int{}}
	var wg sync.WaitGroup
	var conns sync.Map
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(c, true)
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); s.serve(c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	return s
}

func (s *sipResponder) serve(c net.Conn) {
	r := bufio.NewReader(c)
	for {
		var head []string
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return
			}
			l = strings.TrimRight(l, "\r\n")
			if l == "" {
				if len(head) == 0 {
					continue // a CRLF keepalive
				}
				break
			}
			head = append(head, l)
		}
		method, _, _ := strings.Cut(head[0], " ")
		cseq := ""
		for _, h := range head[1:] {
			if name, v, ok := strings.Cut(h, ":"); ok && strings.EqualFold(strings.TrimSpace(name), "cseq") {
				cseq = strings.TrimSpace(v)
			}
		}
		s.mu.Lock()
		s.seen[method]++
		s.mu.Unlock()
		fmt.Fprintf(c, "SIP/2.0 200 OK\r\nCSeq: %s\r\nContent-Length: 0\r\n\r\n", cseq)
	}
}

func (s *sipResponder) count(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[method]
}

// TestSIPRegistrationRecorded: a Cisco phone's REGISTER through the
// proxy is recorded with its device (from Contact), AOR (To) and Contact,
// and the registrar's 200 marks it registered.
func TestSIPRegistrationRecorded(t *testing.T) {
	privtest.RequireNetNS(t)
	pip, cmIP := testNet()
	newSIPResponder(t, cmIP(0)+":5060")
	p, err := New(Config{
		Listeners:    []Listener{{Protocol: SIP, Addr: pip + ":0", UpstreamPort: 5060}},
		CallManagers: []CallManager{{Name: "cucm", Host: cmIP(0)}},
		Health:       HealthConfig{Probe: ProbeTCP, Port: 5060},
	}, privtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	c, err := net.DialTimeout("tcp", p.Addrs()[0].String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte(ciscoRegister))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	status, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "SIP/2.0 200") {
		t.Fatalf("answer %q, %v", status, err)
	}
	var row Registration
	waitFor(t, 5*time.Second, "the phone registered in the table", func() bool {
		rs := p.Registrations()
		if len(rs) == 1 && rs[0].State == StateRegistered {
			row = rs[0]
			return true
		}
		return false
	})
	if row.Device != "SEP001B54ABCDEF" || row.AOR != "sip:4001@10.1.1.1" || row.Contact != "sip:4001@10.1.2.3:51515;transport=tcp" ||
		row.Protocol != SIP || row.CallManager != "cucm" || row.Phone != c.LocalAddr().String() {
		t.Errorf("row %+v", row)
	}
}
