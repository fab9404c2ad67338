package lease

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// model is a map-based reference implementation of the documented
// semantics (lease.go and the Bolt doc comment). The differential test
// and the crash test compare the store against it.
type model struct {
	leases map[netip.Addr]Lease
	bymac  map[string]netip.Addr // string(macKey(pool, mac))
	resv   map[string]netip.Addr
	resvip map[netip.Addr]string
}

func newModel() *model {
	return &model{
		leases: map[netip.Addr]Lease{},
		bymac:  map[string]netip.Addr{},
		resv:   map[string]netip.Addr{},
		resvip: map[netip.Addr]string{},
	}
}

func (m *model) clone() *model {
	c := &model{
		leases: maps.Clone(m.leases),
		bymac:  maps.Clone(m.bymac),
		resv:   maps.Clone(m.resv),
		resvip: maps.Clone(m.resvip),
	}
	return c
}

func mk(pool string, mac net.HardwareAddr) string { return string(macKey(pool, mac)) }

func holds(l Lease, mac net.HardwareAddr) bool {
	return (l.State == StateOffered || l.State == StateBound) && bytes.Equal(l.MAC, mac)
}

func (m *model) reservedForOther(ip netip.Addr, mac net.HardwareAddr) bool {
	k, ok := m.resvip[ip]
	if !ok {
		return false
	}
	_, rmac, _ := parseMACKey([]byte(k))
	return !bytes.Equal(rmac, mac)
}

func (m *model) allocate(l Lease, now time.Time) error {
	if m.reservedForOther(l.IP, l.MAC) {
		return ErrReserved
	}
	cur, ok := m.leases[l.IP]
	if ok && !cur.Free(now) && !holds(cur, l.MAC) {
		return ErrAddressInUse
	}
	key := mk(l.Pool, l.MAC)
	if old, ok := m.bymac[key]; ok && old != l.IP {
		ol := m.leases[old]
		if holds(ol, l.MAC) && ol.Pool == l.Pool {
			ol.State = StateReleased
			m.leases[old] = ol
		}
	}
	if ok {
		ck := mk(cur.Pool, cur.MAC)
		if ck != key && m.bymac[ck] == l.IP {
			delete(m.bymac, ck)
		}
	}
	l.MAC = bytes.Clone(l.MAC)
	m.leases[l.IP] = l
	m.bymac[key] = l.IP
	return nil
}

func (m *model) renew(ip netip.Addr, mac net.HardwareAddr, exp time.Time) error {
	l, ok := m.leases[ip]
	switch {
	case !ok:
		return ErrNotFound
	case !holds(l, mac):
		return ErrNotOwner
	case m.reservedForOther(ip, mac):
		return ErrReserved
	}
	l.State, l.Expires = StateBound, exp
	m.leases[ip] = l
	return nil
}

func (m *model) release(ip netip.Addr, mac net.HardwareAddr) error {
	l, ok := m.leases[ip]
	switch {
	case !ok:
		return ErrNotFound
	case !bytes.Equal(l.MAC, mac):
		return ErrNotOwner
	case l.State == StateReleased || l.State == StateExpired:
		return nil
	case l.State == StateDeclined:
		return ErrNotOwner
	}
	l.State = StateReleased
	m.leases[ip] = l
	return nil
}

func (m *model) decline(ip netip.Addr, mac net.HardwareAddr, until time.Time) error {
	l, ok := m.leases[ip]
	switch {
	case !ok:
		return ErrNotFound
	case !holds(l, mac):
		return ErrNotOwner
	}
	l.State, l.Expires = StateDeclined, until
	m.leases[ip] = l
	if k := mk(l.Pool, l.MAC); m.bymac[k] == ip {
		delete(m.bymac, k)
	}
	return nil
}

func (m *model) reclaim(now time.Time) []netip.Addr {
	var out []netip.Addr
	for ip, l := range m.leases {
		if reclaimable(l.State, l.Expires, now) {
			l.State = StateExpired
			m.leases[ip] = l
			out = append(out, ip)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

func (m *model) reserve(r Reservation, now time.Time) error {
	key := mk(r.Pool, r.MAC)
	if cur, ok := m.resvip[r.IP]; ok {
		if cur == key {
			return nil
		}
		return ErrReserved
	}
	if l, ok := m.leases[r.IP]; ok && !l.Free(now) && !holds(l, r.MAC) {
		return ErrAddressInUse
	}
	if old, ok := m.resv[key]; ok {
		delete(m.resvip, old)
	}
	m.resv[key] = r.IP
	m.resvip[r.IP] = key
	return nil
}

func (m *model) unreserve(pool string, mac net.HardwareAddr) error {
	key := mk(pool, mac)
	ip, ok := m.resv[key]
	if !ok {
		return ErrNotFound
	}
	delete(m.resv, key)
	delete(m.resvip, ip)
	return nil
}

// snapshot is everything a store holds, in comparable form.
type snapshot struct {
	leases map[netip.Addr]Lease
	bymac  map[string]netip.Addr
	resv   map[string]netip.Addr
}

func (m *model) snapshot() snapshot {
	return snapshot{leases: maps.Clone(m.leases), bymac: maps.Clone(m.bymac), resv: maps.Clone(m.resv)}
}

// leasesOnly is sn without its MAC index.
func (sn snapshot) leasesOnly() snapshot {
	return snapshot{leases: sn.leases, bymac: map[string]netip.Addr{}, resv: sn.resv}
}

// rebuiltIndex is the MAC index a store opened on leases must have (the
// Bolt doc comment): each (pool, MAC)'s offered or bound lease, or else
// its most recently updated released or expired one, the lowest address
// on a tie.
func rebuiltIndex(leases map[netip.Addr]Lease) map[string]netip.Addr {
	idx := map[string]netip.Addr{}
	for _, ip := range slices.SortedFunc(maps.Keys(leases), netip.Addr.Compare) {
		l := leases[ip]
		if l.State == StateDeclined {
			continue
		}
		k := mk(l.Pool, l.MAC)
		cur, seen := idx[k]
		switch {
		case !seen, holds(l, l.MAC):
			idx[k] = ip
		case !holds(leases[cur], l.MAC) && l.Updated.After(leases[cur].Updated):
			idx[k] = ip
		}
	}
	return idx
}

// readSnapshot reads a store's whole content through its public methods
// plus the MAC index (read directly, as ByMAC needs to know which MACs to
// ask for).
func readSnapshot(t testing.TB, s *Bolt) snapshot {
	t.Helper()
	ctx := context.Background()
	sn := snapshot{leases: map[netip.Addr]Lease{}, bymac: map[string]netip.Addr{}, resv: map[string]netip.Addr{}}
	var prev netip.Addr
	if err := s.Iterate(ctx, func(l Lease) error {
		if prev.IsValid() && !prev.Less(l.IP) {
			return fmt.Errorf("Iterate order: %s after %s", l.IP, prev)
		}
		prev = l.IP
		sn.leases[l.IP] = l
		return nil
	}); err != nil {
		t.Fatalf("Iterate: %v", err)
	}
	s.index.mu.RLock()
	for k, ip := range s.index.m {
		sn.bymac[k] = netip.AddrFrom4(ip)
	}
	s.index.mu.RUnlock()
	i := 0
	for k, ip := range sn.bymac {
		// ByMAC must agree with the index; for large stores, check a sample.
		if i++; len(sn.bymac) > 5000 && i%50 != 0 {
			continue
		}
		pool, mac, err := parseMACKey([]byte(k))
		if err != nil {
			t.Fatal(err)
		}
		l, err := s.ByMAC(ctx, pool, mac)
		if err != nil || l.IP != ip {
			t.Fatalf("ByMAC(%q, %s) = %v, %v; index says %s", pool, mac, l.IP, err, ip)
		}
	}
	rs, err := s.Reservations(ctx)
	if err != nil {
		t.Fatalf("Reservations: %v", err)
	}
	for _, r := range rs {
		sn.resv[mk(r.Pool, r.MAC)] = r.IP
	}
	return sn
}

// sameLease compares everything but Updated (which the model does not
// track); times by instant, byte fields with nil == empty.
func sameLease(a, b Lease) bool {
	return a.IP == b.IP && bytes.Equal(a.MAC, b.MAC) && a.Pool == b.Pool && a.State == b.State &&
		a.Expires.Equal(b.Expires) && a.Port == b.Port && a.VLAN == b.VLAN &&
		bytes.Equal(a.ClientID, b.ClientID) && bytes.Equal(a.Hostname, b.Hostname)
}

// diff describes how got differs from want, or returns "".
func (sn snapshot) diff(got snapshot) string {
	want := sn
	var d []string
	for ip, w := range want.leases {
		g, ok := got.leases[ip]
		if !ok {
			d = append(d, fmt.Sprintf("lease %s missing (want %s)", ip, fmtLease(w)))
		} else if !sameLease(w, g) {
			d = append(d, fmt.Sprintf("lease %s: got %s, want %s", ip, fmtLease(g), fmtLease(w)))
		}
	}
	for ip, g := range got.leases {
		if _, ok := want.leases[ip]; !ok {
			d = append(d, fmt.Sprintf("unexpected lease %s", fmtLease(g)))
		}
	}
	for _, x := range []struct {
		name      string
		want, got map[string]netip.Addr
	}{{"MAC index", want.bymac, got.bymac}, {"reservation", want.resv, got.resv}} {
		for k, w := range x.want {
			if g, ok := x.got[k]; !ok || g != w {
				d = append(d, fmt.Sprintf("%s %s: got %v (present %v), want %v", x.name, fmtMACKey(k), g, ok, w))
			}
		}
		for k, g := range x.got {
			if _, ok := x.want[k]; !ok {
				d = append(d, fmt.Sprintf("unexpected %s %s -> %v", x.name, fmtMACKey(k), g))
			}
		}
	}
	slices.Sort(d)
	if len(d) > 20 {
		d = append(d[:20], fmt.Sprintf("... and %d more", len(d)-20))
	}
	return strings.Join(d, "\n")
}

func fmtMACKey(k string) string {
	pool, mac, err := parseMACKey([]byte(k))
	if err != nil {
		return fmt.Sprintf("%x", k)
	}
	return fmt.Sprintf("%q/%s", pool, mac)
}

func fmtLease(l Lease) string {
	return fmt.Sprintf("{%s %s %q %s exp=%s}", l.IP, l.MAC, l.Pool, l.State, l.Expires.UTC().Format(time.RFC3339Nano))
}

// checkInvariants checks the crash-consistency properties on a snapshot:
// no (pool, MAC) holds two offered/bound leases, and the index and the
// leases agree both ways.
func checkInvariants(sn snapshot) error {
	held := map[string]netip.Addr{}
	for ip, l := range sn.leases {
		if l.State != StateOffered && l.State != StateBound {
			continue
		}
		k := mk(l.Pool, l.MAC)
		if other, dup := held[k]; dup {
			return fmt.Errorf("%q/%s holds both %s and %s", l.Pool, l.MAC, other, ip)
		}
		held[k] = ip
		if sn.bymac[k] != ip {
			return fmt.Errorf("lease %s is %s but the index has %v", fmtLease(l), l.State, sn.bymac[k])
		}
	}
	for k, ip := range sn.bymac {
		l, ok := sn.leases[ip]
		if !ok || mk(l.Pool, l.MAC) != k || l.State == StateDeclined {
			return fmt.Errorf("index %s -> %s, lease %s (present %v)", fmtMACKey(k), ip, fmtLease(l), ok)
		}
	}
	return nil
}

// testLog sends slog records to t.Log.
func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// open opens a store in a fresh temp dir (or at path) and closes it at
// the end of the test.
func openTest(t testing.TB, path string, opts BoltOptions) *Bolt {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "leases.db")
	}
	if opts.Log == nil {
		opts.Log = quietLog()
	}
	s, err := OpenBolt(path, opts)
	if err != nil {
		t.Fatalf("OpenBolt(%s): %v", path, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func ip4(s string) netip.Addr { return netip.MustParseAddr(s) }

func hw(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// errClass names the sentinel an error wraps, for comparing outcomes.
func errClass(err error) string {
	for _, e := range []error{ErrNotFound, ErrAddressInUse, ErrReserved, ErrNotOwner, ErrInvalid, ErrClosed,
		context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	if err == nil {
		return "ok"
	}
	return "other: " + err.Error()
}
