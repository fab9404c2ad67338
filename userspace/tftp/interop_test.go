package tftp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket/pcapgo"

	"github.com/phoneboot/phoneboot/userspace/internal/wiretest"
	"github.com/phoneboot/phoneboot/userspace/privtest"
)

// loopbackAddr is a random address of 127/8, so that the test server can
// take port 69 (where tshark and every client expect TFTP) without
// meeting another test's.
func loopbackAddr(t testing.TB) netip.Addr {
	var b [3]byte
	rand.Read(b[:])
	return netip.AddrFrom4([4]byte{127, 100 + b[0]%100, b[1], 1 + b[2]%250})
}

// interopFiles: a configuration file with line ends (netascii), a load
// file, and one past 32 MiB so that 512-byte blocks roll over.
func interopFiles(t testing.TB) map[string][]byte {
	return map[string][]byte{
		"SEP001B54ABCDEF.cnf.xml": []byte("<device>\n  <loadInformation>SIP88xx.14-2-1</loadInformation>\r\n</device>\n"),
		"load.sbn":                randomBytes(t, 3<<20+123),
		"big.bin":                 randomBytes(t, 33<<20+77),
	}
}

func startInteropServer(t *testing.T) (*testServer, map[string][]byte, netip.Addr) {
	privtest.Require(t) // port 69
	files := interopFiles(t)
	lo := loopbackAddr(t)
	s := startServer(t, files, func(c *Config) {
		c.Addrs = []netip.AddrPort{netip.AddrPortFrom(lo, 69), netip.MustParseAddrPort("[::1]:0")}
		c.Timeout = time.Second
	})
	return s, files, lo
}

// TestInteropClients: curl, tftp-hpa and atftp, clients nobody here
// wrote, fetch byte-identical files over IPv4 and IPv6, with and without
// options, across the block number rollover.
func TestInteropClients(t *testing.T) {
	for _, tool := range []string{"curl", "tftp", "atftp"} {
		wiretest.NeedTool(t, tool)
	}
	s, files, lo := startInteropServer(t)
	v4 := netip.AddrPortFrom(lo, 69)
	urlHost := func(a netip.AddrPort) string {
		if a.Addr().Is6() {
			return "[" + a.Addr().String() + "]:" + strconv.Itoa(int(a.Port()))
		}
		return a.String()
	}
	type run struct {
		name string
		file string
		args func(out string) []string // the command, writing to out
		want []byte                    // nil: files[file]
	}
	var runs []run
	for _, a := range []netip.AddrPort{v4, s.v6} {
		fam := "v4"
		if a.Addr().Is6() {
			fam = "v6"
		}
		host, port := a.Addr().String(), strconv.Itoa(int(a.Port()))
		runs = append(runs,
			run{"curl/blksize1468/" + fam, "load.sbn", func(out string) []string {
				return []string{"curl", "-sS", "--tftp-blksize", "1468", "-o", out, "tftp://" + urlHost(a) + "/load.sbn"}
			}, nil},
			run{"curl/no-options/" + fam, "SEP001B54ABCDEF.cnf.xml", func(out string) []string {
				return []string{"curl", "-sS", "--tftp-no-options", "-o", out, "tftp://" + urlHost(a) + "/sep001b54abcdef.cnf.xml"}
			}, nil},
			run{"tftp-hpa/octet/" + fam, "load.sbn", func(out string) []string {
				return []string{"tftp", "-" + fam[1:], host, port, "-m", "octet", "-c", "get", "load.sbn", out}
			}, nil},
			run{"tftp-hpa/netascii/" + fam, "SEP001B54ABCDEF.cnf.xml", func(out string) []string {
				return []string{"tftp", "-" + fam[1:], host, port, "-m", "netascii", "-c", "get", "/SEP001B54ABCDEF.cnf.xml", out}
			}, nil},
			run{"atftp/blksize-windowsize-tsize/" + fam, "load.sbn", func(out string) []string {
				return []string{"atftp", "--get", "-r", "load.sbn", "-l", out, "--option", "blksize 1468", "--option", "windowsize 16", "--option", "tsize 0", host, port}
			}, nil},
		)
	}
	runs = append(runs,
		run{"curl/rollover-512/v4", "big.bin", func(out string) []string {
			return []string{"curl", "-sS", "--tftp-blksize", "512", "-o", out, "tftp://" + urlHost(v4) + "/big.bin"}
		}, nil},
		run{"tftp-hpa/rollover-512/v4", "big.bin", func(out string) []string {
			return []string{"tftp", "-4", v4.Addr().String(), "69", "-m", "octet", "-c", "get", "big.bin", out}
		}, nil},
		run{"atftp/rollover-512-window/v6", "big.bin", func(out string) []string {
			return []string{"atftp", "--get", "-r", "big.bin", "-l", out, "--option", "windowsize 8", s.v6.Addr().String(), strconv.Itoa(int(s.v6.Port()))}
		}, nil},
	)
	dir := t.TempDir()
	for i, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			out := filepath.Join(dir, fmt.Sprintf("out%d", i))
			args := r.args(out)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			msg, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, msg)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, msg)
			}
			want := r.want
			if want == nil {
				want = files[r.file]
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s: %d bytes, not the %d of %s\n%s", strings.Join(args, " "), len(got), len(want), r.file, msg)
			}
		})
	}
	st := s.idle(t)
	if st.Completed != uint64(len(runs)) || st.Retransmitted > st.Blocks/100 {
		t.Errorf("stats after %d transfers: %+v", len(runs), st)
	}
}

// TestTsharkDecodesTransfers captures transfers on the loopback device
// (only the test server's own address) and has Wireshark's TFTP dissector
// read them: RRQs with options, OACK, windows of DATA, ACKs and ERRORs,
// without a malformed packet or a warning.
func TestTsharkDecodesTransfers(t *testing.T) {
	wiretest.NeedTool(t, "tshark")
	s, files, lo := startInteropServer(t)
	pcap := filepath.Join(t.TempDir(), "lo.pcap")
	cap := exec.Command("tshark", "-n", "-i", "lo", "-f", "host "+lo.String(), "-F", "pcap", "-w", pcap)
	errPipe, err := cap.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cap.Start(); err != nil {
		t.Fatal(err)
	}
	defer cap.Process.Kill()
	started := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(errPipe)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Capturing on") {
				close(started)
			}
		}
	}()
	select {
	case <-started:
	case <-time.After(20 * time.Second):
		t.Fatal("tshark did not start capturing")
	}
	time.Sleep(time.Second) // "Capturing on" comes before the capture runs
	v4 := netip.AddrPortFrom(lo, 69)
	small := files["SEP001B54ABCDEF.cnf.xml"]
	if got, _, err := fetch(t, v4, "SEP001B54ABCDEF.cnf.xml", FetchOptions{BlockSize: 16, WindowSize: 3, TSize: true}); err != nil || !bytes.Equal(got, small) {
		t.Fatalf("window fetch: %v", err)
	}
	if got, _, err := fetch(t, v4, "SEP001B54ABCDEF.cnf.xml", FetchOptions{}); err != nil || !bytes.Equal(got, small) {
		t.Fatalf("plain fetch: %v", err)
	}
	if _, _, err := fetch(t, v4, "CTLSEP001B54ABCDEF.tlv", FetchOptions{}); err == nil {
		t.Fatal("missing file fetched")
	}
	time.Sleep(500 * time.Millisecond)
	cap.Process.Signal(syscall.SIGINT)
	cap.Wait()

	f, err := os.Open(pcap)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var frames [][]byte
	for {
		data, _, err := r.ReadPacketData()
		if err != nil {
			break
		}
		frames = append(frames, append([]byte(nil), data...))
	}
	if len(frames) < 10 {
		t.Fatalf("captured %d frames", len(frames))
	}
	decoded := wiretest.Tshark(t, frames, "tftp.opcode", "tftp.block", "tftp.option.name", "tftp.error.code")
	ops := map[string]int{}
	for i, d := range decoded {
		var p []string
		for _, msg := range d.Problems() {
			// Wireshark flags every ERROR packet as a warning: that is
			// the packet, not a decoding problem.
			if msg != "TFTP ERROR packet" {
				p = append(p, msg)
			}
		}
		if len(p) > 0 {
			t.Errorf("frame %d: %v\n%s", i, p, wiretest.Verbose(t, frames[i:i+1]))
		}
		op := d.One(t, "tftp.opcode")
		if op == "" {
			t.Errorf("frame %d not decoded as TFTP", i)
		}
		ops[op]++
	}
	for op, what := range map[string]string{"1": "RRQ", "3": "DATA", "4": "ACK", "5": "ERROR", "6": "OACK"} {
		if ops[op] == 0 {
			t.Errorf("no %s decoded (opcodes seen: %v)", what, ops)
		}
	}
	if st := s.idle(t); st.Completed != 2 || st.NotFound != 1 {
		t.Errorf("stats: %+v", st)
	}
}
