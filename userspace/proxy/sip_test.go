package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/privtest"
)

// sipResponder is a tiny SIP registrar over TCP: it answers each
// request with 200 OK, echoing its CSeq, and counts the methods it saw.
type sipResponder struct {
	addr   string
	silent atomic.Bool // read requests, answer none: a hung SIP service
	mu     sync.Mutex
	seen   map[string]int
}

func newSIPResponder(t *testing.T, addr string) *sipResponder {
	t.Helper()
	s := &sipResponder{seen: map[string]int{}}
	s.addr = tcpServer(t, addr, s.serve)
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
		if s.silent.Load() {
			continue
		}
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
	p := runProxy(t, Config{
		Listeners:    []Listener{{Protocol: SIP, Addr: pip + ":0", UpstreamPort: 5060}},
		CallManagers: []CallManager{{Name: "cucm", Host: cmIP(0)}},
		Health:       HealthConfig{Probe: ProbeTCP, Port: 5060},
	})

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

// tcpServer accepts on addr and hands each connection to serve, closing
// it after; all is torn down when the test ends.
func tcpServer(t *testing.T, addr string, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
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
			go func() { defer wg.Done(); defer c.Close(); serve(c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	return ln.Addr().String()
}

// TestSIPOptionsProbe: the sip-options probe passes on any SIP status
// line (a 404 too) and fails on silence (within its timeout), a refused
// connection, an answer that is not SIP, and an endless line (after a
// bounded read, not at the timeout).
func TestSIPOptionsProbe(t *testing.T) {
	privtest.RequireNetNS(t)
	_, cmIP := testNet()
	const timeout = 2 * time.Second
	var mu sync.Mutex
	var got string // the last request the 404 server read
	answer := func(reply string, rec *string) func(net.Conn) {
		return func(c net.Conn) {
			r := bufio.NewReader(c)
			var req strings.Builder
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				req.WriteString(l)
				if l == "\r\n" {
					break
				}
			}
			mu.Lock()
			*rec = req.String()
			mu.Unlock()
			c.Write([]byte(reply))
		}
	}
	ok := newSIPResponder(t, cmIP(0)+":5060")
	for _, tc := range []struct {
		name string
		addr string
		want string // "" passes, else a part of the error
		fast bool   // fails well before the timeout
	}{
		{"200", ok.addr, "", true},
		{"404", tcpServer(t, cmIP(1)+":0", answer("\r\nSIP/2.0 404 Not Found\r\nContent-Length: 0\r\n\r\n", &got)), "", true},
		{"503", tcpServer(t, cmIP(6)+":0", answer("SIP/2.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", new(string))), "503 Service Unavailable", true},
		{"408", tcpServer(t, cmIP(7)+":0", answer("SIP/2.0 408 Request Timeout\r\nContent-Length: 0\r\n\r\n", new(string))), "408 Request Timeout", true},
		{"silent", tcpServer(t, cmIP(2)+":0", func(c net.Conn) { io.Copy(io.Discard, c) }), "timeout", false},
		{"refused", cmIP(3) + ":5060", "refused", true},
		{"not SIP", tcpServer(t, cmIP(4)+":0", answer("HTTP/1.1 400 Bad Request\r\n\r\n", new(string))), "not a SIP status line", true},
		{"endless line", tcpServer(t, cmIP(5)+":0", func(c net.Conn) {
			c.Write([]byte(strings.Repeat("x", 4*maxSIPStatusLine)))
			io.Copy(io.Discard, c)
		}), "no status line", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host, port, _ := net.SplitHostPort(tc.addr)
			portN, _ := strconv.Atoi(port)
			p := &Proxy{cfg: Config{Health: HealthConfig{Timeout: timeout}}}
			start := time.Now()
			err := p.probe(context.Background(), &upstream{cfg: CallManager{Name: "cm", Host: host}}, newCheck("sip", ProbeSIPOptions, portN))
			took := time.Since(start)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("probe: %v, want %q", err, tc.want)
			}
			if tc.fast && took > timeout/2 {
				t.Errorf("took %v, want well within the timeout %v", took, timeout)
			}
			if !tc.fast && took < timeout*9/10 {
				t.Errorf("took %v, before the timeout %v", took, timeout)
			}
		})
	}
	if ok.count("OPTIONS") != 1 {
		t.Errorf("the registrar saw %d OPTIONS, want 1", ok.count("OPTIONS"))
	}
	// What the 404 server read is a whole OPTIONS request.
	mu.Lock()
	defer mu.Unlock()
	head, _, n, err := sipHead([]byte(got))
	if err != nil || n != len(got) {
		t.Fatalf("request %q: %v", got, err)
	}
	m, err := parseSIPHead(head)
	if err != nil || m.method != "OPTIONS" || m.cseqMethod != "OPTIONS" || !strings.HasPrefix(m.to, "sip:"+cmIP(1)+":") {
		t.Errorf("request %+v, %v:\n%s", m, err, got)
	}
	for _, h := range []string{"\r\nVia: SIP/2.0/TCP ", "\r\nMax-Forwards: 70\r\n", "\r\nFrom: <sip:phoneboot@", ";tag=", "\r\nCall-ID: "} {
		if !strings.Contains(got, h) {
			t.Errorf("request without %q:\n%s", h, got)
		}
	}
}

// TestSIPSessionsFollowSIPCheck: with the sip-options check on, a
// CallManager whose SIP service hangs is taken down for SIP sessions
// only (its main check, TCP on the SCCP port, stays up): its SIP phone's
// session is closed, a new SIP phone goes to the next CallManager, and
// when the SIP service answers again the phone is moved back.
func TestSIPSessionsFollowSIPCheck(t *testing.T) {
	privtest.RequireNetNS(t)
	pip, cmIP := testNet()
	var sips []*sipResponder
	for i := range 2 {
		tcpServer(t, cmIP(i)+":2000", func(c net.Conn) { io.Copy(io.Discard, c) })
		sips = append(sips, newSIPResponder(t, cmIP(i)+":5060"))
	}
	p := runProxy(t, Config{
		Listeners:    []Listener{{Protocol: SIP, Addr: pip + ":0", UpstreamPort: 5060}},
		CallManagers: []CallManager{{Name: "cm1", Host: cmIP(0)}, {Name: "cm2", Host: cmIP(1)}},
		Health: HealthConfig{Probe: ProbeTCP, Port: 2000, SIPProbe: ProbeSIPOptions, SIPPort: 5060,
			Interval: 300 * time.Millisecond, Timeout: 250 * time.Millisecond, Rise: 1, Fall: 1},
		Failback: FailbackConfig{Delay: -1},
	})
	addr := p.Addrs()[0].String()
	register := func(user string) (net.Conn, Registration) {
		t.Helper()
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		reg := strings.ReplaceAll(ciscoRegister, "4001", user)
		reg = strings.ReplaceAll(reg, "SEP001B54ABCDEF", "SEP001B54AB"+user)
		c.Write([]byte(reg))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if status, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.HasPrefix(status, "SIP/2.0 200") {
			t.Fatalf("%s: answer %q, %v", user, status, err)
		}
		var row Registration
		waitFor(t, 5*time.Second, user+" registered in the table", func() bool {
			for _, r := range p.Registrations() {
				if r.AOR == "sip:"+user+"@10.1.1.1" && r.State == StateRegistered {
					row = r
					return true
				}
			}
			return false
		})
		return c, row
	}
	a, row := register("4001")
	if row.CallManager != "cm1" {
		t.Fatalf("first phone on %s, want cm1", row.CallManager)
	}
	sips[0].silent.Store(true)
	waitFor(t, 10*time.Second, "cm1 down for SIP", func() bool { return !p.Stats().CallManagers[0].SIP.Healthy })
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := a.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("the SIP phone on cm1: %v, want its session closed", err)
	}
	st := p.Stats()
	if c := st.CallManagers[0]; !c.Healthy || c.Failovers != 0 || c.SIP.Failovers != 1 || st.Closed["upstream_down"] != 1 {
		t.Errorf("cm1 %+v (SIP %+v), closed %v; want its main check up, the SIP one down once", c, *c.SIP, st.Closed)
	}
	_, row = register("4002")
	if row.CallManager != "cm2" {
		t.Errorf("a new SIP phone went to %s, want cm2", row.CallManager)
	}
	sips[0].silent.Store(false)
	waitFor(t, 10*time.Second, "the SIP phone moved back to cm1", func() bool { return p.Stats().Closed["failback"] == 1 })
	if c := p.Stats().CallManagers[0]; !c.SIP.Healthy || c.SIP.Transitions != 2 {
		t.Errorf("cm1 after its SIP service returned: %+v", *c.SIP)
	}
}
