package dhcp

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// BOOTP/DHCP layout (RFC 2131 section 2).
const (
	bootpHeaderLen = 236 // op .. file, before the magic cookie
	opRequest      = 1
	opReply        = 2
	htypeEthernet  = 1

	optPad           = 0
	optHostName      = 12
	optRequestedIP   = 50
	optOverload      = 52
	optMessageType   = 53
	optServerID      = 54
	optParamRequest  = 55
	optMaxMsgSize    = 57
	optVendorClass   = 60
	optClientID      = 61
	optClientFQDN    = 81
	optAgentInfo     = 82
	optEnd           = 255
	flagBroadcast    = 0x8000
	maxClientIDLen   = 128 // Kea's ClientId::MAX_CLIENT_ID_LEN (src/lib/dhcp/duid.h)
	minClientIDLen   = 2   // RFC 2132 section 9.14
	maxHostnameLen   = 255
	maxVendorClassLn = 255
)

var magicCookie = [4]byte{99, 130, 83, 99}

var (
	errServerMessage = errors.New("a server's message (BOOTREPLY, OFFER, ACK, NAK) from a client port")
	errUnknownType   = errors.New("unsupported DHCP message type")
)

// message is a request that passed the strict checks, with the fields the
// handler uses. The byte slices alias the decoded options.
type message struct {
	d           *dhcpv4.DHCPv4
	msgType     dhcpv4.MessageType
	xid         [4]byte
	flags       uint16
	ciaddr      netip.Addr // zero-valued (invalid) when 0.0.0.0
	giaddr      netip.Addr // likewise
	chaddr      net.HardwareAddr
	requestedIP netip.Addr
	serverID    netip.Addr
	hostname    []byte
	clientID    []byte
	vendorClass []byte
	agentInfo   []byte // option 82, concatenated (RFC 3396)
	hasAgent    bool
}

// serverTypes are message types only servers send (RFC 2131, RFC 3203
// FORCERENEW, RFC 4388 and RFC 6926 leasequery replies).
func serverType(t byte) bool {
	switch t {
	case 2, 5, 6, 9, 11, 12, 13, 15, 17:
		return true
	}
	return false
}

// parseRequest applies the strict checks the codec lacks and then parses
// with dhcpv4.FromBytes. It never panics on any input. errServerMessage
// and errUnknownType mark packets that are well-formed but not ours to
// answer (with them, a non-nil message holds at least msgType when it is
// known); any other error means the packet is malformed.
func parseRequest(p []byte) (*message, error) {
	if len(p) >= 1 && p[0] == opReply {
		return nil, errServerMessage
	}
	if len(p) < bootpHeaderLen+4 {
		return nil, fmt.Errorf("%d bytes, shorter than a BOOTP header and cookie", len(p))
	}
	if p[0] != opRequest {
		return nil, fmt.Errorf("op %d is not BOOTREQUEST", p[0])
	}
	if p[1] != htypeEthernet || p[2] != 6 {
		return nil, fmt.Errorf("htype %d hlen %d is not Ethernet", p[1], p[2])
	}
	if !bytes.Equal(p[bootpHeaderLen:bootpHeaderLen+4], magicCookie[:]) {
		return nil, errors.New("no DHCP magic cookie")
	}

	// Walk the options: each must fit, END must come.
	var count [256]uint16
	var total [256]int
	var mt byte
	end := false
	for i := bootpHeaderLen + 4; i < len(p); {
		code := p[i]
		if code == optPad {
			i++
			continue
		}
		if code == optEnd {
			end = true
			break
		}
		if i+1 >= len(p) {
			return nil, fmt.Errorf("option %d has no length byte", code)
		}
		n := int(p[i+1])
		if i+2+n > len(p) {
			return nil, fmt.Errorf("option %d of %d bytes runs past the end", code, n)
		}
		count[code]++
		total[code] += n
		if code == optMessageType && n == 1 {
			mt = p[i+2]
		}
		i += 2 + n
	}
	if !end {
		return nil, errors.New("no END option")
	}
	if count[optOverload] != 0 {
		return nil, errors.New("option overload (52) is refused")
	}
	if count[optMessageType] != 1 || total[optMessageType] != 1 {
		return nil, fmt.Errorf("option 53 appears %d times with %d bytes, want once with 1", count[optMessageType], total[optMessageType])
	}
	if err := checkLen("requested IP (50)", count[optRequestedIP], total[optRequestedIP], 4, 4); err != nil {
		return nil, err
	}
	if err := checkLen("server identifier (54)", count[optServerID], total[optServerID], 4, 4); err != nil {
		return nil, err
	}
	if err := checkLen("client identifier (61)", count[optClientID], total[optClientID], minClientIDLen, maxClientIDLen); err != nil {
		return nil, err
	}
	if err := checkLen("host name (12)", count[optHostName], total[optHostName], 1, maxHostnameLen); err != nil {
		return nil, err
	}
	if err := checkLen("vendor class (60)", count[optVendorClass], total[optVendorClass], 1, maxVendorClassLn); err != nil {
		return nil, err
	}
	if err := checkLen("maximum message size (57)", count[optMaxMsgSize], total[optMaxMsgSize], 2, 2); err != nil {
		return nil, err
	}
	if err := checkLen("parameter request list (55)", count[optParamRequest], total[optParamRequest], 1, 1<<16); err != nil {
		return nil, err
	}
	if err := checkLen("client FQDN (81)", count[optClientFQDN], total[optClientFQDN], 3, 255); err != nil {
		return nil, err
	}
	if err := checkLen("relay agent information (82)", count[optAgentInfo], total[optAgentInfo], 2, 1<<16); err != nil {
		return nil, err
	}

	if mt == 0 {
		return nil, errors.New("message type 0")
	}
	if serverType(mt) {
		return &message{msgType: dhcpv4.MessageType(mt)}, errServerMessage
	}

	d, err := dhcpv4.FromBytes(p)
	if err != nil {
		return nil, fmt.Errorf("codec: %w", err)
	}
	m := &message{
		d:           d,
		msgType:     dhcpv4.MessageType(mt),
		xid:         d.TransactionID,
		flags:       d.Flags,
		ciaddr:      ip4(d.ClientIPAddr),
		giaddr:      ip4(d.GatewayIPAddr),
		chaddr:      d.ClientHWAddr,
		requestedIP: ip4(d.Options.Get(dhcpv4.OptionRequestedIPAddress)),
		serverID:    ip4(d.Options.Get(dhcpv4.OptionServerIdentifier)),
		hostname:    d.Options.Get(dhcpv4.OptionHostName),
		clientID:    d.Options.Get(dhcpv4.OptionClientIdentifier),
		vendorClass: d.Options.Get(dhcpv4.OptionClassIdentifier),
	}
	m.agentInfo, m.hasAgent = d.Options[optAgentInfo]
	if len(m.chaddr) != 6 {
		return nil, errors.New("codec returned a short chaddr")
	}
	if m.hostname != nil && !validHostname(m.hostname) {
		return nil, errors.New("host name (12) holds control characters")
	}
	if fq := d.Options[optClientFQDN]; fq != nil && !validFQDN(fq) {
		return nil, errors.New("malformed client FQDN (81)")
	}
	if m.hasAgent && !validAgentInfo(m.agentInfo) {
		return nil, errors.New("malformed relay agent information (82)")
	}
	if mt < 1 || mt > 8 {
		return m, errUnknownType
	}
	return m, nil
}

// checkLen checks the concatenated length of an option that appears.
func checkLen(name string, count uint16, n, lo, hi int) error {
	if count == 0 {
		return nil
	}
	if n < lo || n > hi {
		return fmt.Errorf("%s is %d bytes, want %d to %d", name, n, lo, hi)
	}
	return nil
}

// ip4 converts a 4-byte address, returning the zero Addr for 0.0.0.0 and
// anything that is not 4 bytes.
func ip4(b []byte) netip.Addr {
	if len(b) != 4 {
		if ip := net.IP(b).To4(); len(b) == 16 && ip != nil {
			b = ip
		} else {
			return netip.Addr{}
		}
	}
	a := netip.AddrFrom4([4]byte(b))
	if a.IsUnspecified() {
		return netip.Addr{}
	}
	return a
}

// validHostname accepts any bytes but control characters; NULs are
// tolerated at the end only, where some clients put a C terminator.
func validHostname(b []byte) bool {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// validFQDN checks option 81 (RFC 4702): flags, two RCODEs, then a name.
// With the E flag the name is in DNS wire format: labels of 1 to 63 bytes,
// no compression, ending at the option's end (partial) or with a root
// label. Without it the name is ASCII text without control characters.
func validFQDN(b []byte) bool {
	if len(b) < 3 || b[0]&0xf0 != 0 {
		return false
	}
	name := b[3:]
	if b[0]&0x04 == 0 {
		for _, c := range name {
			if c < 0x20 || c == 0x7f {
				return false
			}
		}
		return true
	}
	for i := 0; i < len(name); {
		l := int(name[i])
		if l == 0 {
			return i == len(name)-1
		}
		if l > 63 || i+1+l > len(name) {
			return false
		}
		i += 1 + l
	}
	return true
}

// validAgentInfo checks that option 82 is a list of whole sub-options
// (RFC 3046 section 2.0).
func validAgentInfo(b []byte) bool {
	if len(b) < 2 {
		return false
	}
	for i := 0; i < len(b); {
		if i+2 > len(b) || i+2+int(b[i+1]) > len(b) {
			return false
		}
		i += 2 + int(b[i+1])
	}
	return true
}
