package proxy

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/internal/wiretest"
	"github.com/phoneboot/phoneboot/userspace/privtest"
)

// TestSippRegisterThroughProxy: sipp, as a Cisco SIP phone, registers
// over TCP through the proxy with sipp as the registrar (a 401 digest
// challenge, then 200). Neither end is ours; the proxy records the
// device from the phone's Contact, its AOR and Contact, follows the
// challenge and marks the phone registered on the 200.
func TestSippRegisterThroughProxy(t *testing.T) {
	privtest.RequireNetNS(t)
	wiretest.NeedTool(t, "sipp")
	pip, cmIP := testNet()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	uas := exec.CommandContext(ctx, "sipp", "-sf", filepath.Join("testdata", "sipp-registrar.xml"),
		"-t", "t1", "-i", cmIP(0), "-p", "5060", "-m", "1", "-nostdin", "-trace_err", "-error_file", filepath.Join(dir, "uas.err"))
	uas.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var uasOut bytes.Buffer
	uas.Stdout, uas.Stderr = &uasOut, &uasOut
	if err := uas.Start(); err != nil {
		t.Fatalf("sipp registrar: %v", err)
	}
	// The registrar holds the connection past the phone's end, so it
	// counts its call failed: only the phone's exit status is judged.
	uasDone := make(chan struct{})
	go func() { uas.Wait(); close(uasDone) }()
	t.Cleanup(func() {
		uas.Process.Kill()
		<-uasDone
	})
	waitListen(t, cmIP(0)+":5060")

	p, err := New(Config{
		Listeners:    []Listener{{Protocol: SIP, Addr: pip + ":0", UpstreamPort: 5060}},
		CallManagers: []CallManager{{Name: "cucm", Host: cmIP(0)}},
		// sipp counts every connection; probe rarely, by connect only.
		Health: HealthConfig{Probe: ProbeTCP, Port: 5060, Interval: time.Minute, Timeout: time.Second},
	}, privtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { p.Run(pctx); close(done) }()
	defer func() { pcancel(); <-done }()
	addr := p.Addrs()[0].String()

	uac := exec.CommandContext(ctx, "sipp", "-sf", filepath.Join("testdata", "sipp-phone.xml"),
		"-t", "t1", "-i", pip, "-p", "5070", "-m", "1", "-nostdin", "-timeout", "15s",
		"-trace_err", "-error_file", filepath.Join(dir, "uac.err"), addr)
	var uacOut bytes.Buffer
	uac.Stdout, uac.Stderr = &uacOut, &uacOut
	if err := uac.Start(); err != nil {
		t.Fatal(err)
	}
	// While sipp holds the connection after its 200, the table has it.
	var row Registration
	defer func() {
		if t.Failed() {
			t.Logf("table %+v\nsipp phone:\n%s\nsipp registrar:\n%s", p.Registrations(), uacOut.String(), uasOut.String())
		}
	}()
	waitFor(t, 10*time.Second, "the sipp phone registered in the table", func() bool {
		for _, g := range p.Registrations() {
			if g.State == StateRegistered {
				row = g
				return true
			}
		}
		return false
	})
	if err := uac.Wait(); err != nil {
		t.Fatalf("sipp phone: %v\n%s", err, uacOut.String())
	}
	if row.Device != "SEP001B54ABCDEF" || row.Protocol != SIP || row.CallManager != "cucm" || !strings.HasPrefix(row.Phone, pip+":") ||
		row.AOR != "sip:SEP001B54ABCDEF@"+pip || !strings.HasPrefix(row.Contact, "sip:4001@"+pip+":") || !strings.HasSuffix(row.Contact, ";transport=tcp") {
		t.Errorf("row %+v", row)
	}
	waitFor(t, 5*time.Second, "session closed", func() bool { return p.Stats().Active == 0 })
	st := p.Stats()
	if st.Accepted[SIP] != 1 || st.Registered != 1 || st.Rejected != 0 {
		t.Errorf("stats %+v", st)
	}
}

func waitListen(t *testing.T, addr string) {
	t.Helper()
	waitFor(t, 5*time.Second, addr+" listening", func() bool {
		out, err := exec.Command("ss", "-Htln", "src", addr).Output()
		return err == nil && len(bytes.TrimSpace(out)) > 0
	})
}
