package proxy

import (
	"context"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestBucket(t *testing.T) {
	b := newBucket(100, 5, 1000) // 10 ms apart, 5 at once
	now := time.Now()
	for i := range 5 {
		if d := b.reserve(now); d != 0 {
			t.Fatalf("burst slot %d waits %v", i, d)
		}
	}
	for i := 1; i <= 3; i++ {
		if d := b.reserve(now); d != time.Duration(i)*10*time.Millisecond {
			t.Fatalf("slot %d past the burst waits %v, want %d ms", i, d, 10*i)
		}
	}
	// After a quiet spell the burst is back, no more.
	later := now.Add(time.Second)
	for i := range 5 {
		if d := b.reserve(later); d != 0 {
			t.Fatalf("after a second, burst slot %d waits %v", i, d)
		}
	}
	if d := b.reserve(later); d != 10*time.Millisecond {
		t.Fatalf("after the burst: %v", d)
	}

	if q, err := newBucket(0, 1, 1).wait(context.Background()); q || err != nil {
		t.Errorf("rate 0: queued %v, %v; want through at once", q, err)
	}
	full := newBucket(1, 1, 2)
	full.reserve(time.Now()) // the next slot is a second away
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	for range 2 {
		go func() { _, err := full.wait(ctx); errs <- err }()
	}
	deadline := time.Now().Add(2 * time.Second)
	for full.waiting.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if _, err := full.wait(ctx); !errors.Is(err, errQueueFull) {
		t.Errorf("third waiter with a queue of 2: %v, want errQueueFull", err)
	}
	cancel()
	for range 2 {
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Errorf("waiter: %v", err)
		}
	}
	if n := full.waiting.Load(); n != 0 {
		t.Errorf("%d still counted waiting", n)
	}
}

func TestConfigValidate(t *testing.T) {
	good := func() Config {
		return Config{Listeners: []Listener{{Protocol: SCCP, Addr: ":2000"}}, CallManagers: []CallManager{{Name: "a", Host: "10.0.0.1"}}}
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"ok", func(*Config) {}, ""},
		{"no listener", func(c *Config) { c.Listeners = nil }, "no listener"},
		{"four CallManagers", func(c *Config) {
			c.CallManagers = []CallManager{{"a", "1"}, {"b", "2"}, {"c", "3"}, {"d", "4"}}
		}, "4 CallManagers"},
		{"same name", func(c *Config) { c.CallManagers = []CallManager{{"a", "1"}, {"a", "2"}} }, "twice"},
		{"no host", func(c *Config) { c.CallManagers = []CallManager{{Name: "a"}} }, "needs a name and a host"},
		{"protocol", func(c *Config) { c.Listeners[0].Protocol = "h323" }, "unknown protocol"},
		{"address", func(c *Config) { c.Listeners[0].Addr = "2000" }, "missing port"},
		{"probe", func(c *Config) { c.Health.Probe = "icmp" }, "unknown health probe"},
		{"sip-options probe", func(c *Config) { c.Health.Probe = ProbeSIPOptions }, ""},
		{"SIP probe", func(c *Config) { c.Health.SIPProbe = ProbeSIPOptions }, ""},
		{"SIP probe sccp", func(c *Config) { c.Health.SIPProbe = ProbeSCCP }, "SIP health probe"},
		{"timeout over interval", func(c *Config) { c.Health.Interval, c.Health.Timeout = time.Second, 2*time.Second }, "below the interval"},
		{"negative rate", func(c *Config) { c.Admission.Rate = -1 }, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.mod(&c)
			c.setDefaults()
			err := c.validate()
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("validate: %v, want %q", err, tc.want)
			}
		})
	}
}

// ciscoRegister is a REGISTER as a CP-8851 sends it over TCP.
const ciscoRegister = "REGISTER sip:10.1.1.1 SIP/2.0\r\n" +
	"Via: SIP/2.0/TCP 10.1.2.3:51515;branch=z9hG4bK1\r\n" +
	"From: <sip:4001@10.1.1.1>;tag=a1\r\n" +
	"t: <sip:4001@10.1.1.1>\r\n" +
	"Call-ID: 00112233-1@10.1.2.3\r\n" +
	"CSeq: 101 REGISTER\r\n" +
	"Contact: <sip:4001@10.1.2.3:51515;transport=tcp>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-001b54abcdef>\";+u.sip!devicename.ccm.cisco.com=\"SEP001B54ABCDEF\";+u.sip!model.ccm.cisco.com=\"684\"\r\n" +
	"User-Agent: Cisco-CP8851/12.1.1\r\n" +
	"Expires: 3600\r\n" +
	"l: 0\r\n\r\n"

func TestSIPHead(t *testing.T) {
	head, skip, n, err := sipHead([]byte("\r\n\r\n" + ciscoRegister + "OPTIONS"))
	if err != nil || skip != 4 || n != len(ciscoRegister) {
		t.Fatalf("sipHead: skip %d n %d (want %d), %v", skip, n, len(ciscoRegister), err)
	}
	m, err := parseSIPHead(head)
	if err != nil {
		t.Fatal(err)
	}
	if m.method != "REGISTER" || m.to != "sip:4001@10.1.1.1" || m.contact != "sip:4001@10.1.2.3:51515;transport=tcp" ||
		m.device != "SEP001B54ABCDEF" || m.cseqMethod != "REGISTER" || m.bodyLen != 0 {
		t.Errorf("parsed %+v", m)
	}
	if _, _, n, err := sipHead([]byte(ciscoRegister[:100])); n != 0 || err != nil {
		t.Errorf("partial head: n %d, %v", n, err)
	}
	if _, _, _, err := sipHead([]byte(strings.Repeat("x", maxSIPHeader+1))); !errors.Is(err, errSIPMalformed) {
		t.Errorf("endless head: %v", err)
	}
	for _, bad := range []string{"REGISTER\r\n\r\n", "REGISTER sip:x SIP/3.0", "SIP/2.0 abc OK", "SIP/2.0 99 Low", "SIP/2.0 200 OK\r\nContent-Length: -1", "SIP/2.0 200 OK\r\nl: 99999999"} {
		if _, err := parseSIPHead([]byte(bad)); !errors.Is(err, errSIPMalformed) {
			t.Errorf("%q: %v, want errSIPMalformed", bad, err)
		}
	}
}

func TestSIPWatch(t *testing.T) {
	resp := func(code int, method string, body string) string {
		return "SIP/2.0 " + strconv.Itoa(code) + " X\r\nCSeq: 1 " + method + "\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
	}
	req := "OPTIONS sip:phone SIP/2.0\r\nCSeq: 5 OPTIONS\r\nl: 3\r\n\r\nabc"
	stream := "\r\n" + resp(100, "REGISTER", "") + resp(401, "REGISTER", "") + req + resp(200, "OPTIONS", "x") + resp(200, "REGISTER", "body!") + "SIP/2.0 180"
	// Fed in pieces of every size, the first final answer to REGISTER
	// other than a challenge is found, once, whatever the cuts.
	for step := 1; step <= len(stream); step += 7 {
		var w sipWatch
		var buf []byte
		got := 0
		for off := 0; off < len(stream) && got == 0; off += step {
			buf = append(buf, stream[off:min(off+step, len(stream))]...)
			n, status, err := w.feed(buf)
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			buf = buf[n:]
			got = status
		}
		if got != 200 {
			t.Fatalf("step %d: final status %d, want 200", step, got)
		}
	}
	var w sipWatch
	if _, status, _ := w.feed([]byte(resp(403, "REGISTER", ""))); status != 403 {
		t.Errorf("403: status %d", status)
	}
}

// FuzzSIP: neither the head finder nor the parser nor the watch panics or
// reads past what it was given, and the watch never consumes more than it
// was fed. Run: go test -fuzz FuzzSIP ./userspace/proxy
func FuzzSIP(f *testing.F) {
	f.Add([]byte(ciscoRegister))
	f.Add([]byte("SIP/2.0 401 Unauthorized\r\nCSeq: 1 REGISTER\r\nl: 4\r\n\r\nabcdSIP/2.0 200 OK\r\nCSeq: 2 REGISTER\r\n\r\n"))
	f.Add([]byte("\r\n\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if head, _, n, err := sipHead(b); err == nil && n > 0 {
			if len(head) > maxSIPHeader {
				t.Fatalf("head of %d bytes", len(head))
			}
			if m, err := parseSIPHead(head); err == nil && (len(m.to) > 128 || len(m.device) > 128 || len(m.contact) > 128) {
				t.Fatalf("unbounded fields %+v", m)
			}
		}
		var w sipWatch
		if n, _, _ := w.feed(b); n > len(b) || n < 0 {
			t.Fatalf("consumed %d of %d", n, len(b))
		}
	})
}

func TestPrintable(t *testing.T) {
	if got := printable("SEP\x00\n\x1b[31m\xff"); got != "SEP???[31m?" {
		t.Errorf("printable = %q", got)
	}
	if got := printable(strings.Repeat("a", 500)); len(got) != 128 {
		t.Errorf("not clipped: %d", len(got))
	}
}

// TestFailbackGap: the gaps between failback moves average 1/rate and are
// spread over ±50 % of it, not fixed. Bounds for 2,000 draws of a uniform
// spread: all within [0.5, 1.5] × 1/rate, the extremes within 5 % of the
// ends (each missed with probability 0.9^2000), the mean within 3 % and
// the standard deviation (0.289 × 1/rate) within 15 %.
func TestFailbackGap(t *testing.T) {
	const rate = 200.0
	p := &Proxy{cfg: Config{Failback: FailbackConfig{Rate: rate}}}
	mean := float64(time.Second) / rate
	const n = 2000
	lo, hi, sum, sumSq := math.Inf(1), math.Inf(-1), 0.0, 0.0
	for range n {
		g := float64(p.failbackGap())
		if g < 0.5*mean || g > 1.5*mean {
			t.Fatalf("gap %v outside %v ± 50 %%", time.Duration(g), time.Duration(mean))
		}
		lo, hi = min(lo, g), max(hi, g)
		sum += g
		sumSq += g * g
	}
	avg := sum / n
	sd := math.Sqrt(sumSq/n - avg*avg)
	t.Logf("gaps: min %v, max %v, mean %v, sd %v (1/rate %v)", time.Duration(lo), time.Duration(hi),
		time.Duration(avg), time.Duration(sd), time.Duration(mean))
	if lo > 0.55*mean || hi < 1.45*mean {
		t.Errorf("gaps from %v to %v: not jittered over ±50 %% of %v", time.Duration(lo), time.Duration(hi), time.Duration(mean))
	}
	if math.Abs(avg-mean) > 0.03*mean {
		t.Errorf("mean gap %v, want %v", time.Duration(avg), time.Duration(mean))
	}
	if want := mean / math.Sqrt(12); math.Abs(sd-want) > 0.15*want {
		t.Errorf("gap standard deviation %v, want about %v (uniform over ±50 %%)", time.Duration(sd), time.Duration(want))
	}
}
