package lease

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"
)

// nastyBytes are client-supplied option values that broke CSV lease files
// elsewhere (Kea CVE-2019-6474, ISC DHCP CVE-2021-25217).
var nastyBytes = map[string][]byte{
	"newline":      []byte("SEP001B54\nfake-lease,10.0.0.1"),
	"comma":        []byte("a,b,,c,"),
	"NUL":          {'a', 0, 'b', 0},
	"quotes":       []byte(`"quoted" 'single' \"escaped\"`),
	"0xff":         {0xff, 0xfe, 0xff, 0x00, 0x80},
	"invalid UTF8": {0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1},
	"CRLF":         []byte("x\r\ny\r\n"),
	"255 bytes":    bytes.Repeat([]byte{0xAB}, 255),
	"256 bytes":    bytes.Repeat([]byte{'\n'}, 256),
	"1024 bytes":   bytes.Repeat([]byte{0}, 1024),
	"empty":        nil,
	"all bytes": func() []byte {
		b := make([]byte, 256)
		for i := range b {
			b[i] = byte(i)
		}
		return b
	}(),
}

func TestClientBytesRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTest(t, path, BoltOptions{})
	ctx := context.Background()
	want := map[netip.Addr]Lease{}
	i := 0
	for name, b := range nastyBytes {
		i++
		ip := netip.AddrFrom4([4]byte{10, 3, 0, byte(i)})
		l := Lease{IP: ip, MAC: net.HardwareAddr{2, 3, 0, 0, 0, byte(i)}, Pool: "voice\x00" + string(b), State: StateBound,
			Expires: t0, Port: string(b), VLAN: 4095, ClientID: b, Hostname: b}
		if len(l.Pool) > MaxFieldLen {
			l.Pool = "voice"
		}
		if err := s.Allocate(ctx, l, t0); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want[ip] = l
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, path, BoltOptions{})
	for ip, w := range want {
		got, err := s.ByIP(ctx, ip)
		if err != nil || !sameLease(got, w) {
			t.Fatalf("%s: got %q, %v; want %q", ip, got.Hostname, err, w.Hostname)
		}
		if byMAC, err := s.ByMAC(ctx, w.Pool, w.MAC); err != nil || byMAC.IP != ip {
			t.Fatalf("ByMAC(%q): %v, %v", w.Pool, byMAC.IP, err)
		}
	}
	for _, field := range []string{"hostname", "client ID", "port", "pool"} {
		l := bound(ip4("10.3.1.1"), macA)
		long := bytes.Repeat([]byte{'\n'}, MaxFieldLen+1)
		switch field {
		case "hostname":
			l.Hostname = long
		case "client ID":
			l.ClientID = long
		case "port":
			l.Port = string(long)
		case "pool":
			l.Pool = string(long)
		}
		if err := s.Allocate(ctx, l, t0); !errors.Is(err, ErrInvalid) {
			t.Errorf("1025-byte %s: %v, want ErrInvalid", field, err)
		}
	}
}

// TestPoisonedLeasesReload is reliability-ops test case 4: thousands of
// leases whose hostnames and client IDs carry newline, comma, NUL, quotes,
// non-UTF-8 and over-255-byte values all reload exactly after a restart.
func TestPoisonedLeasesReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTest(t, path, BoltOptions{})
	ctx := context.Background()
	r := rand.New(rand.NewPCG(4, 4))
	const n = 5000
	alphabet := []byte("\n\r,;\"'\\\x00\xff\xfe\x80 =&#x0a;aZ9")
	want := make(map[netip.Addr]Lease, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, 64) // concurrent writers share commits
	for i := range n {
		host := make([]byte, r.IntN(MaxFieldLen+1))
		for j := range host {
			host[j] = alphabet[r.IntN(len(alphabet))]
		}
		cid := make([]byte, r.IntN(300))
		for j := range cid {
			cid[j] = byte(r.Uint32())
		}
		ip := netip.AddrFrom4([4]byte{10, 4, byte(i >> 8), byte(i)})
		l := Lease{IP: ip, MAC: net.HardwareAddr{2, 4, 0, 0, byte(i >> 8), byte(i)}, Pool: "voice", State: StateBound,
			Expires: t0.Add(time.Duration(i) * time.Second), Port: string(host[:min(len(host), 40)]), ClientID: cid, Hostname: host}
		want[ip] = l
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			errs <- s.Allocate(ctx, l, t0)
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, path, BoltOptions{Log: testLog(t)})
	got := 0
	if err := s.Iterate(ctx, func(l Lease) error {
		w, ok := want[l.IP]
		if !ok || !sameLease(l, w) {
			t.Fatalf("%s reloaded as %q, want %q", l.IP, l.Hostname, w.Hostname)
		}
		got++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got != n {
		t.Fatalf("%d leases reloaded, want %d", got, n)
	}
}

func sampleLeases() []Lease {
	ls := []Lease{
		bound(ipOne, macA),
		{IP: ipTwo, MAC: net.HardwareAddr{1}, Pool: "p", State: StateDeclined},
		{IP: ip4("255.255.255.255"), MAC: make(net.HardwareAddr, 16), Pool: "a\x06\x00", State: StateExpired,
			Expires: time.Unix(-1<<40, 999999999), Updated: time.Unix(1<<40, 1), VLAN: 65535},
	}
	for _, b := range nastyBytes {
		l := bound(ip4("10.0.0.3"), macB)
		l.Hostname, l.ClientID, l.Port = b, b, string(b)
		ls = append(ls, l)
	}
	return ls
}

func equalDecoded(a, b Lease) bool {
	return sameLease(a, b) && a.Updated.Equal(b.Updated)
}

func TestLeaseCodec(t *testing.T) {
	for _, l := range sampleLeases() {
		k := ipKey(l.IP)
		v, err := encodeLease(k[:], &l)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeLease(k[:], v)
		if err != nil || !equalDecoded(got, l) {
			t.Fatalf("round trip of %s: %+v, %v", fmtLease(l), got, err)
		}
		if got.Expires.Location() != time.UTC {
			t.Fatalf("location %v", got.Expires.Location())
		}
		// Every truncation and every single-bit flip is an error, not a
		// panic; the CRC catches flips in the key too.
		for n := range len(v) {
			if _, err := decodeLease(k[:], v[:n]); err == nil {
				t.Fatalf("truncated to %d decoded", n)
			}
		}
		for i := range len(v) * 8 {
			c := bytes.Clone(v)
			c[i/8] ^= 1 << (i % 8)
			if _, err := decodeLease(k[:], c); err == nil || !errors.Is(err, errCorruptValue) {
				t.Fatalf("bit %d flipped: %v", i, err)
			}
		}
		other := ipKey(ip4("10.99.0.1"))
		if _, err := decodeLease(other[:], v); err == nil {
			t.Fatal("value decoded under another key")
		}
	}
	if _, err := decodeLease([]byte{1, 2, 3}, nil); err == nil {
		t.Fatal("3-byte key decoded")
	}
	// Errors name the key.
	k := ipKey(ip4("10.7.7.7"))
	if _, err := decodeLease(k[:], []byte("garbage")); err == nil || !bytes.Contains([]byte(err.Error()), []byte("10.7.7.7")) {
		t.Fatalf("error %v does not name the key", err)
	}
}

func TestMACKey(t *testing.T) {
	for _, tc := range []struct {
		pool string
		mac  net.HardwareAddr
	}{{"voice", macA}, {"a", hw("06:61:00:00:00:01")}, {"a\x06a", hw("00:00:00:00:00:01")}, {"\x00", net.HardwareAddr{0}}} {
		k := macKey(tc.pool, tc.mac)
		pool, mac, err := parseMACKey(k)
		if err != nil || pool != tc.pool || !bytes.Equal(mac, tc.mac) {
			t.Fatalf("%q/%s: %q/%s, %v", tc.pool, tc.mac, pool, mac, err)
		}
	}
	if bytes.Equal(macKey("a", hw("06:61:00:00:00:01")), macKey("a\x06a", hw("00:00:00:00:00:01"))) {
		t.Fatal("keys collide")
	}
	for _, bad := range [][]byte{nil, {0}, {0, 0, 1, 1}, {0, 1, 'a'}, {0, 1, 'a', 0}, {0, 1, 'a', 17}, {0, 1, 'a', 1, 1, 1}, {0xff, 0xff}} {
		if _, _, err := parseMACKey(bad); err == nil {
			t.Errorf("parseMACKey(%x) succeeded", bad)
		}
	}
}

// FuzzDecodeLease: the decoder never panics on any key and value; values
// that decode re-encode to the same bytes; and for any valid lease built
// from the fuzz input, decode(encode(l)) == l.
func FuzzDecodeLease(f *testing.F) {
	for _, l := range sampleLeases() {
		k := ipKey(l.IP)
		v, _ := encodeLease(k[:], &l)
		f.Add(k[:], v)
	}
	f.Add([]byte{10, 0, 0, 1}, []byte{})
	f.Add([]byte{10, 0, 0, 1}, []byte{1, 2, 0, 0})
	f.Fuzz(func(t *testing.T, k, v []byte) {
		// 1. Raw bytes, and the same bytes with a correct CRC appended so
		// that the body parser is exercised past the checksum.
		checkDecoded(t, k, v)
		fixed := binary.BigEndian.AppendUint32(bytes.Clone(v), crc32.Update(crc32.Checksum(k, castagnoli), castagnoli, v))
		checkDecoded(t, k, fixed)

		// 2. A lease made of the fuzz bytes round-trips.
		if len(v) < 20 {
			return
		}
		rest := v[20:]
		take := func(limit int) []byte {
			n := 0
			if len(rest) > 0 {
				n = min(int(rest[0]), len(rest)-1, limit)
				rest = rest[1:]
			}
			b := rest[:n]
			rest = rest[n:]
			return b
		}
		l := Lease{
			IP:      netip.AddrFrom4([4]byte(v[0:4])),
			State:   State(v[4]%5 + 1),
			VLAN:    binary.BigEndian.Uint16(v[5:]),
			Expires: time.Unix(int64(binary.BigEndian.Uint32(v[7:]))-1<<31, int64(binary.BigEndian.Uint32(v[11:])%1e9)),
			Updated: time.Unix(int64(int32(binary.BigEndian.Uint32(v[15:])))<<3, int64(v[19])),
		}
		l.MAC = net.HardwareAddr(bytes.Clone(take(MaxMACLen)))
		l.Pool = string(take(MaxFieldLen))
		l.Port = string(take(MaxFieldLen))
		l.ClientID = bytes.Clone(take(MaxFieldLen))
		l.Hostname = bytes.Clone(rest[:min(len(rest), MaxFieldLen)])
		key := ipKey(l.IP)
		enc, err := encodeLease(key[:], &l)
		if len(l.MAC) == 0 || l.Pool == "" {
			if err == nil {
				t.Fatalf("encoded an invalid lease %+v", l)
			}
			return
		}
		if err != nil {
			t.Fatalf("encode %+v: %v", l, err)
		}
		got, err := decodeLease(key[:], enc)
		if err != nil || !equalDecoded(got, l) {
			t.Fatalf("round trip:\n got %+v, %v\nwant %+v", got, err, l)
		}
	})
}

func checkDecoded(t *testing.T, k, v []byte) {
	l, err := decodeLease(k, v)
	if err != nil {
		if !errors.Is(err, errCorruptValue) {
			t.Fatalf("decode error %v is not a corrupt-record error", err)
		}
		return
	}
	// Decoded values are canonical: they re-encode to the same bytes, and
	// the decoder allocated no more than the value's length for fields.
	if n := len(l.MAC) + len(l.Pool) + len(l.Port) + len(l.ClientID) + len(l.Hostname); n > len(v) {
		t.Fatalf("decoded %d field bytes from a %d-byte value", n, len(v))
	}
	enc, err := encodeLease(k, &l)
	if err != nil || !bytes.Equal(enc, v) {
		t.Fatalf("decoded value re-encodes differently:\n%x\n%x (%v)", v, enc, err)
	}
}

// FuzzKeys: the (pool, MAC) key codec never panics, accepts only
// canonical keys, and is injective.
func FuzzKeys(f *testing.F) {
	f.Add([]byte("voice"), []byte{0, 0x1b, 0x54, 0, 0, 1}, []byte("a"), []byte{6, 0x61})
	f.Add([]byte("a"), []byte{6, 0x61, 0, 0, 0, 1}, []byte("a\x06a"), []byte{0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, p1, m1, p2, m2 []byte) {
		for _, k := range [][]byte{p1, m1, p2, m2} {
			if pool, mac, err := parseMACKey(k); err == nil && !bytes.Equal(macKey(pool, mac), k) {
				t.Fatalf("parseMACKey(%x) accepted a non-canonical key", k)
			}
		}
		valid := func(p, m []byte) bool {
			return len(p) > 0 && len(p) <= MaxFieldLen && len(m) > 0 && len(m) <= MaxMACLen
		}
		if !valid(p1, m1) || !valid(p2, m2) {
			return
		}
		k1, k2 := macKey(string(p1), m1), macKey(string(p2), m2)
		same := bytes.Equal(p1, p2) && bytes.Equal(m1, m2)
		if bytes.Equal(k1, k2) != same {
			t.Fatalf("(%q,%x) and (%q,%x) give keys %x and %x", p1, m1, p2, m2, k1, k2)
		}
		pool, mac, err := parseMACKey(k1)
		if err != nil || pool != string(p1) || !bytes.Equal(mac, m1) {
			t.Fatalf("round trip of (%q,%x): (%q,%x), %v", p1, m1, pool, mac, err)
		}
	})
}
