package lease

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/netip"
	"time"
)

// On-disk encoding of the bbolt store, schema 1.
//
// Keys
//
//   - An address is its 4 IPv4 bytes in network order (netip.Addr.As4), so
//     bbolt's byte order is address order and ByIP is one Get. The store is
//     IPv4 only: DHCPv6 leases are keyed by DUID/IAID, not chaddr, and will
//     get their own buckets (and a schema bump) if they ever come.
//   - A (pool, MAC) pair is uint16 BE len(pool) | pool | uint8 len(mac) |
//     mac. The encoding is prefix-free, so no pool name, however odd its
//     bytes, can produce the key of another (pool, MAC) pair: pool "a" with
//     MAC 06:... and pool "a\x06..." differ in the first two bytes.
//
// Lease values
//
//	0      version (1)
//	1      state
//	2..3   VLAN, BE
//	4..15  Expires: int64 BE Unix seconds, uint32 BE nanoseconds
//	16..27 Updated: the same
//	28     len(MAC), 1..16, then the MAC
//	       uint16 BE length + bytes, in turn: pool (1..1024), port,
//	       client ID, hostname (0..1024 each)
//	last 4 CRC-32C (Castagnoli), BE, over key || value without the CRC
//
// The fields are length-prefixed, so any byte (NUL, newline, comma,
// quotes, 0xff, invalid UTF-8) round-trips. bbolt has no page checksums;
// the CRC covers the key as well, so a flipped bit in a lease's key or
// value is caught by the integrity check at open instead of silently
// moving or altering a lease. Times keep their instant exactly (second and
// nanosecond) and come back in UTC without a monotonic reading; the zero
// time comes back as the zero time.

const (
	leaseEncodingV1 = 1

	// MaxFieldLen is the longest pool name, port, client ID or hostname the
	// store accepts; longer ones fail with ErrInvalid.
	MaxFieldLen = 1024
	// MaxMACLen is the longest chaddr (the DHCP chaddr field is 16 bytes).
	MaxMACLen = 16

	leaseFixedLen = 1 + 1 + 2 + 12 + 12 // up to the MAC length byte
	crcLen        = 4
	// minLeaseValueLen: fixed part, a 1-byte MAC, a 1-byte pool, three
	// empty fields and the CRC.
	minLeaseValueLen = leaseFixedLen + 1 + 1 + 2 + 1 + 3*2 + crcLen
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errCorruptValue marks a key or value that does not decode.
var errCorruptValue = errors.New("corrupt record")

// ipKey is the key of an address in the leases and resvip buckets.
func ipKey(ip netip.Addr) [4]byte { return ip.As4() }

// ipFromKey decodes an address key.
func ipFromKey(k []byte) (netip.Addr, error) {
	if len(k) != 4 {
		return netip.Addr{}, fmt.Errorf("%w: address key %x is %d bytes, want 4", errCorruptValue, k, len(k))
	}
	return netip.AddrFrom4([4]byte(k)), nil
}

// appendMACKey appends the (pool, MAC) key. The caller has validated the
// lengths (validPool, validMAC).
func appendMACKey(dst []byte, pool string, mac []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(pool)))
	dst = append(dst, pool...)
	dst = append(dst, byte(len(mac)))
	return append(dst, mac...)
}

func macKey(pool string, mac []byte) []byte {
	return appendMACKey(make([]byte, 0, 2+len(pool)+1+len(mac)), pool, mac)
}

// parseMACKey decodes a (pool, MAC) key. It accepts exactly what
// appendMACKey produces for a valid pool and MAC, nothing else.
func parseMACKey(k []byte) (pool string, mac net.HardwareAddr, err error) {
	bad := func(why string) (string, net.HardwareAddr, error) {
		return "", nil, fmt.Errorf("%w: pool/MAC key %x: %s", errCorruptValue, k, why)
	}
	if len(k) < 2 {
		return bad("short")
	}
	pl := int(binary.BigEndian.Uint16(k))
	if pl == 0 || pl > MaxFieldLen {
		return bad("bad pool length")
	}
	if len(k) < 2+pl+1 {
		return bad("short")
	}
	pool = string(k[2 : 2+pl])
	rest := k[2+pl:]
	ml := int(rest[0])
	if ml == 0 || ml > MaxMACLen {
		return bad("bad MAC length")
	}
	if len(rest) != 1+ml {
		return bad("length mismatch")
	}
	return pool, net.HardwareAddr(append([]byte(nil), rest[1:]...)), nil
}

func appendTime(dst []byte, t time.Time) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(t.Unix()))
	return binary.BigEndian.AppendUint32(dst, uint32(t.Nanosecond()))
}

func appendField(dst, f []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(f)))
	return append(dst, f...)
}

// encodeLease returns the value for l stored under key. l must have passed
// validateLease (lengths are only checked, not trusted, here).
func encodeLease(key []byte, l *Lease) ([]byte, error) {
	if len(l.MAC) == 0 || len(l.MAC) > MaxMACLen || len(l.Pool) == 0 || len(l.Pool) > MaxFieldLen ||
		len(l.Port) > MaxFieldLen || len(l.ClientID) > MaxFieldLen || len(l.Hostname) > MaxFieldLen {
		return nil, fmt.Errorf("%w: field length out of range", ErrInvalid)
	}
	n := leaseFixedLen + 1 + len(l.MAC) + 4*2 + len(l.Pool) + len(l.Port) + len(l.ClientID) + len(l.Hostname) + crcLen
	b := make([]byte, 0, n)
	b = append(b, leaseEncodingV1, byte(l.State))
	b = binary.BigEndian.AppendUint16(b, l.VLAN)
	b = appendTime(b, l.Expires)
	b = appendTime(b, l.Updated)
	b = append(b, byte(len(l.MAC)))
	b = append(b, l.MAC...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(l.Pool)))
	b = append(b, l.Pool...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(l.Port)))
	b = append(b, l.Port...)
	b = appendField(b, l.ClientID)
	b = appendField(b, l.Hostname)
	crc := crc32.Update(crc32.Checksum(key, castagnoli), castagnoli, b)
	return binary.BigEndian.AppendUint32(b, crc), nil
}

// decodeLease decodes the value v stored under the address key k. Every
// length is checked against what is left, so a damaged value yields an
// error naming the key, never a panic, and it allocates no more than
// len(v) bytes for the variable fields.
func decodeLease(k, v []byte) (Lease, error) {
	ip, err := ipFromKey(k)
	if err != nil {
		return Lease{}, err
	}
	fail := func(why string) (Lease, error) {
		return Lease{}, fmt.Errorf("%w: lease %s: %s", errCorruptValue, ip, why)
	}
	if len(v) < minLeaseValueLen {
		return fail(fmt.Sprintf("value is %d bytes, shorter than any valid one", len(v)))
	}
	if v[0] != leaseEncodingV1 {
		return fail(fmt.Sprintf("unknown value encoding %d", v[0]))
	}
	body := v[:len(v)-crcLen]
	want := binary.BigEndian.Uint32(v[len(v)-crcLen:])
	if got := crc32.Update(crc32.Checksum(k, castagnoli), castagnoli, body); got != want {
		return fail(fmt.Sprintf("checksum mismatch (stored %08x, computed %08x)", want, got))
	}
	l, why := decodeLeaseBody(body)
	if why != "" {
		return fail(why)
	}
	l.IP = ip
	return l, nil
}

// decodeLeaseBody decodes a value without its CRC. It returns a reason
// instead of an error so that the fuzzer can drive it directly.
func decodeLeaseBody(b []byte) (l Lease, why string) {
	if len(b) < leaseFixedLen+1 {
		return Lease{}, "short fixed part"
	}
	if b[0] != leaseEncodingV1 {
		return Lease{}, "unknown value encoding"
	}
	l.State = State(b[1])
	if l.State < StateOffered || l.State > StateExpired {
		return Lease{}, fmt.Sprintf("invalid state %d", b[1])
	}
	l.VLAN = binary.BigEndian.Uint16(b[2:])
	var ok bool
	if l.Expires, ok = readTime(b[4:16]); !ok {
		return Lease{}, "invalid expiry time"
	}
	if l.Updated, ok = readTime(b[16:28]); !ok {
		return Lease{}, "invalid update time"
	}
	b = b[leaseFixedLen:]
	ml := int(b[0])
	b = b[1:]
	if ml == 0 || ml > MaxMACLen || ml > len(b) {
		return Lease{}, fmt.Sprintf("invalid MAC length %d", ml)
	}
	l.MAC = net.HardwareAddr(append([]byte(nil), b[:ml]...))
	b = b[ml:]
	var fields [4][]byte
	for i := range fields {
		if len(b) < 2 {
			return Lease{}, "truncated field length"
		}
		n := int(binary.BigEndian.Uint16(b))
		b = b[2:]
		if n > MaxFieldLen || n > len(b) {
			return Lease{}, fmt.Sprintf("field %d length %d out of range", i, n)
		}
		fields[i] = b[:n]
		b = b[n:]
	}
	if len(b) != 0 {
		return Lease{}, fmt.Sprintf("%d trailing bytes", len(b))
	}
	if len(fields[0]) == 0 {
		return Lease{}, "empty pool"
	}
	l.Pool = string(fields[0])
	l.Port = string(fields[1])
	if len(fields[2]) > 0 {
		l.ClientID = append([]byte(nil), fields[2]...)
	}
	if len(fields[3]) > 0 {
		l.Hostname = append([]byte(nil), fields[3]...)
	}
	return l, ""
}

func readTime(b []byte) (time.Time, bool) {
	sec := int64(binary.BigEndian.Uint64(b))
	nsec := binary.BigEndian.Uint32(b[8:])
	if nsec >= 1e9 {
		return time.Time{}, false
	}
	return time.Unix(sec, int64(nsec)).UTC(), true
}
