package proxy

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/internal/wiretest"
	"github.com/phoneboot/phoneboot/userspace/sccp"
)

// TestRelayIsSpliced: once registered, a session's bytes move by
// splice(2) in the kernel, not through read and write in Go: strace,
// attached to this very process while keepalives pass through the proxy,
// sees the splices and no read or write of a KeepAlive's 12 bytes other
// than the test's own.
func TestRelayIsSpliced(t *testing.T) {
	wiretest.NeedTool(t, "strace")
	r := newRig(t, 1, 30*time.Second, nil)
	c, rd := dialPhone(t, r.addr)
	reg := register(1)
	c.Write(reg.AppendFrame(nil, 0))
	expect(t, c, rd, sccp.RegisterAckID)
	expect(t, c, rd, sccp.CapabilitiesReqID)

	out := t.TempDir() + "/strace"
	st := exec.Command("strace", "-f", "-e", "trace=splice,read,write", "-o", out, "-p", strconv.Itoa(os.Getpid()))
	stderr, err := st.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { st.Wait(); close(done) }()
	t.Cleanup(func() {
		st.Process.Signal(syscall.SIGINT)
		<-done
	})
	// strace says "Process N attached" for each thread; once it has,
	// every thread is traced.
	sc := bufio.NewScanner(stderr)
	if !sc.Scan() || !strings.Contains(sc.Text(), "attached") {
		t.Fatalf("strace: %q", sc.Text())
	}
	go func() {
		for sc.Scan() {
		}
	}()
	time.Sleep(200 * time.Millisecond)

	const n = 20
	ka := sccp.AppendEmpty(nil, 0, sccp.KeepAliveID)
	for range n {
		c.Write(ka)
		expect(t, c, rd, sccp.KeepAliveAckID)
	}
	st.Process.Signal(syscall.SIGINT)
	<-done
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	splices, rw12 := 0, 0
	for _, line := range strings.Split(string(data), "\n") {
		// With -f a call can be split into "<unfinished ...>" and
		// "<... splice resumed>": the result is on the second.
		if !strings.HasSuffix(line, "= 12") {
			continue
		}
		switch {
		case strings.Contains(line, "splice"):
			splices++
		case strings.Contains(line, "read") || strings.Contains(line, "write"):
			rw12++
		}
	}
	// Per round trip: KeepAlive socket->pipe->socket, KeepAliveAck the
	// same way back: four 12-byte splices. Reads and writes of 12 bytes:
	// the test's phone and the simulator, two each per round trip.
	if splices < 4*n {
		t.Errorf("%d splices of 12 bytes for %d keepalive round trips, want %d\n%s", splices, n, 4*n, data)
	}
	if rw12 > 4*n {
		t.Errorf("%d reads/writes of 12 bytes for %d round trips: the proxy copies through Go (the test and the simulator make %d)", rw12, n, 4*n)
	}
	t.Logf("%d round trips: %d splices and %d reads/writes of 12 bytes", n, splices, rw12)
}
