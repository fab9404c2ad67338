package dhcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Limits on what a pool may configure.
const (
	// MaxRangeSize bounds the addresses of one range (a /12 worth), which
	// keeps the allocator's per-address state at about a megabyte.
	MaxRangeSize = 1 << 20
	// maxOptionText bounds options 15, 43 and 66 to one option instance.
	maxOptionText = 255
	// maxReplyOptions bounds an option block so that a reply to a
	// request without option 82 fits the 548-byte DHCP message every
	// client must accept (RFC 2131 section 2: 576-byte IP datagram): 240
	// bytes of header and cookie, the block, END.
	maxReplyOptions = 548 - 240 - 1
)

// Pool is one validated address pool with its pre-rendered option blocks
// and its allocator. Create pools with NewPools; a Handler fills the
// allocator from the lease store.
type Pool struct {
	cfg        PoolConfig
	name       string
	vlan       uint16
	subnet     netip.Prefix
	broadcast  netip.Addr // the subnet's directed broadcast address
	start, end netip.Addr
	serverIP   netip.Addr
	leaseTime  time.Duration // whole seconds
	t1, t2     time.Duration
	classes    []ClassConfig
	exactClass map[string]int // option 60 -> class number (1-based)

	// blocks[class][kind] is the option section of a reply, without END.
	blocks [][numBlocks][]byte

	resvByMAC map[string]netip.Addr // string(MAC) -> address
	resvByIP  map[netip.Addr]net.HardwareAddr

	alloc *allocator
}

// blockKind names the replies whose options are rendered in advance.
type blockKind uint8

const (
	blockOffer  blockKind = iota // DHCPOFFER
	blockAck                     // DHCPACK to a REQUEST
	blockInform                  // DHCPACK to an INFORM: no 51, 58, 59
	blockNak                     // DHCPNAK: 53 and 54 only
	numBlocks
)

// NewPools validates the configured pools and renders their option
// blocks. The errors name the pool and the field at fault.
func NewPools(cfg Config) ([]*Pool, error) {
	if len(cfg.Pools) == 0 {
		return nil, errors.New("dhcp: no pools configured")
	}
	pools := make([]*Pool, 0, len(cfg.Pools))
	names := map[string]bool{}
	vlans := map[uint16]string{}
	for i, pc := range cfg.Pools {
		p, err := newPool(pc)
		if err != nil {
			if pc.Name == "" {
				return nil, fmt.Errorf("dhcp: pool #%d: %w", i+1, err)
			}
			return nil, fmt.Errorf("dhcp: pool %q: %w", pc.Name, err)
		}
		if names[p.name] {
			return nil, fmt.Errorf("dhcp: pool %q: Name is used by another pool", p.name)
		}
		names[p.name] = true
		if other, ok := vlans[p.vlan]; ok {
			return nil, fmt.Errorf("dhcp: pool %q: VLAN %d is already served by pool %q", p.name, p.vlan, other)
		}
		vlans[p.vlan] = p.name
		for _, q := range pools {
			if q.subnet.Overlaps(p.subnet) {
				return nil, fmt.Errorf("dhcp: pool %q: Subnet %v overlaps subnet %v of pool %q", p.name, p.subnet, q.subnet, q.name)
			}
		}
		pools = append(pools, p)
	}
	return pools, nil
}

func newPool(pc PoolConfig) (*Pool, error) {
	if pc.Name == "" {
		return nil, errors.New("Name is empty")
	}
	if len(pc.Name) > 255 {
		return nil, errors.New("Name is longer than 255 bytes")
	}
	if pc.VLAN > 4094 {
		return nil, fmt.Errorf("VLAN %d is outside 0..4094", pc.VLAN)
	}
	sn := pc.Subnet
	switch {
	case !sn.IsValid() || !sn.Addr().Is4():
		return nil, fmt.Errorf("Subnet %v is not an IPv4 prefix", sn)
	case sn.Masked() != sn:
		return nil, fmt.Errorf("Subnet %v has host bits set (did you mean %v?)", sn, sn.Masked())
	case sn.Bits() > 30:
		return nil, fmt.Errorf("Subnet %v leaves no room for a pool (at most /30)", sn)
	}
	p := &Pool{
		cfg:        clonePoolConfig(pc),
		name:       pc.Name,
		vlan:       pc.VLAN,
		subnet:     sn,
		broadcast:  lastAddr(sn),
		start:      pc.RangeStart,
		end:        pc.RangeEnd,
		serverIP:   pc.ServerIP,
		exactClass: map[string]int{},
		resvByMAC:  map[string]netip.Addr{},
		resvByIP:   map[netip.Addr]net.HardwareAddr{},
	}
	// host checks that a is a usable host address of the subnet.
	host := func(field string, a netip.Addr) error {
		switch {
		case !a.Is4():
			return fmt.Errorf("%s %v is not an IPv4 address", field, a)
		case !sn.Contains(a):
			return fmt.Errorf("%s %v is outside Subnet %v", field, a, sn)
		case a == sn.Addr():
			return fmt.Errorf("%s %v is the network address of Subnet %v", field, a, sn)
		case a == p.broadcast:
			return fmt.Errorf("%s %v is the broadcast address of Subnet %v", field, a, sn)
		}
		return nil
	}
	if err := host("RangeStart", p.start); err != nil {
		return nil, err
	}
	if err := host("RangeEnd", p.end); err != nil {
		return nil, err
	}
	if p.end.Less(p.start) {
		return nil, fmt.Errorf("RangeStart %v is after RangeEnd %v", p.start, p.end)
	}
	if n := addrU32(p.end) - addrU32(p.start) + 1; n > MaxRangeSize {
		return nil, fmt.Errorf("range %v-%v holds %d addresses, more than %d", p.start, p.end, n, MaxRangeSize)
	}
	if err := host("ServerIP", p.serverIP); err != nil {
		return nil, err
	}
	if p.inRange(p.serverIP) {
		return nil, fmt.Errorf("ServerIP %v is inside the range %v-%v", p.serverIP, p.start, p.end)
	}
	for _, r := range pc.Routers {
		if err := host("Routers", r); err != nil {
			return nil, err
		}
		if p.inRange(r) {
			return nil, fmt.Errorf("router %v (Routers) is inside the range %v-%v", r, p.start, p.end)
		}
	}
	for _, l := range []struct {
		field string
		ips   []netip.Addr
	}{{"DNS", pc.DNS}, {"NTP", pc.NTP}, {"TFTPServers", pc.TFTPServers}} {
		if err := checkIPv4List(l.field, l.ips); err != nil {
			return nil, err
		}
	}
	if err := checkText("Domain", pc.Domain); err != nil {
		return nil, err
	}
	if err := checkText("TFTPServerName", pc.TFTPServerName); err != nil {
		return nil, err
	}
	if len(pc.VendorInfo) > maxOptionText {
		return nil, fmt.Errorf("VendorInfo is %d bytes, more than %d", len(pc.VendorInfo), maxOptionText)
	}

	// Lease times go on the wire in whole seconds.
	lt := pc.LeaseTime.Truncate(time.Second)
	if lt <= 0 {
		return nil, fmt.Errorf("LeaseTime %v is not at least one second", pc.LeaseTime)
	}
	if lt >= 0xffffffff*time.Second {
		return nil, fmt.Errorf("LeaseTime %v does not fit option 51 (0xffffffff means infinite)", pc.LeaseTime)
	}
	if pc.T1 < 0 || pc.T2 < 0 {
		return nil, fmt.Errorf("T1 %v and T2 %v must not be negative", pc.T1, pc.T2)
	}
	t1, t2 := pc.T1.Truncate(time.Second), pc.T2.Truncate(time.Second)
	if pc.T1 == 0 {
		t1 = (lt / 2).Truncate(time.Second)
	}
	if pc.T2 == 0 {
		t2 = (lt * 7 / 8).Truncate(time.Second)
	}
	if !(t1 > 0 && t1 < t2 && t2 < lt) {
		return nil, fmt.Errorf("T1 %v, T2 %v and LeaseTime %v (in whole seconds) are not 0 < T1 < T2 < LeaseTime", t1, t2, lt)
	}
	p.leaseTime, p.t1, p.t2 = lt, t1, t2

	classNames := map[string]bool{}
	for i, c := range pc.Classes {
		if c.Name == "" {
			return nil, fmt.Errorf("class #%d: Name is empty", i+1)
		}
		if classNames[c.Name] {
			return nil, fmt.Errorf("class %q: Name is used by another class", c.Name)
		}
		classNames[c.Name] = true
		if (c.VendorClass == "") == (c.VendorClassPrefix == "") {
			return nil, fmt.Errorf("class %q: set exactly one of VendorClass and VendorClassPrefix", c.Name)
		}
		if len(c.VendorClass) > 255 || len(c.VendorClassPrefix) > 255 {
			return nil, fmt.Errorf("class %q: vendor class is longer than 255 bytes", c.Name)
		}
		if c.VendorClass != "" {
			if _, dup := p.exactClass[c.VendorClass]; dup {
				return nil, fmt.Errorf("class %q: VendorClass %q is matched by an earlier class", c.Name, c.VendorClass)
			}
			p.exactClass[c.VendorClass] = i + 1
		}
		if err := checkIPv4List(fmt.Sprintf("class %q: TFTPServers", c.Name), c.TFTPServers); err != nil {
			return nil, err
		}
		if err := checkText(fmt.Sprintf("class %q: TFTPServerName", c.Name), c.TFTPServerName); err != nil {
			return nil, err
		}
		if len(c.VendorInfo) > maxOptionText {
			return nil, fmt.Errorf("class %q: VendorInfo is %d bytes, more than %d", c.Name, len(c.VendorInfo), maxOptionText)
		}
	}
	p.classes = p.cfg.Classes

	for i, r := range pc.Reservations {
		if len(r.MAC) != 6 {
			return nil, fmt.Errorf("reservation #%d: MAC %v is not a 6-byte Ethernet address", i+1, r.MAC)
		}
		if err := host(fmt.Sprintf("reservation #%d (%v): IP", i+1, r.MAC), r.IP); err != nil {
			return nil, err
		}
		if r.IP == p.serverIP || slices.Contains(pc.Routers, r.IP) {
			return nil, fmt.Errorf("reservation #%d (%v): IP %v is the server's or a router's address", i+1, r.MAC, r.IP)
		}
		if _, dup := p.resvByMAC[string(r.MAC)]; dup {
			return nil, fmt.Errorf("reservation #%d: MAC %v is reserved twice", i+1, r.MAC)
		}
		if _, dup := p.resvByIP[r.IP]; dup {
			return nil, fmt.Errorf("reservation #%d: IP %v is reserved twice", i+1, r.IP)
		}
		p.resvByMAC[string(r.MAC)] = r.IP
		p.resvByIP[r.IP] = slices.Clone(r.MAC)
	}

	p.blocks = make([][numBlocks][]byte, len(p.classes)+1)
	for c := range p.blocks {
		for k := range numBlocks {
			b, err := renderBlock(p.blockOptions(c, k))
			if err != nil {
				return nil, err
			}
			if len(b) > maxReplyOptions {
				what := "the pool's options"
				if c > 0 {
					what = fmt.Sprintf("class %q's options", p.classes[c-1].Name)
				}
				return nil, fmt.Errorf("%s take %d bytes, more than the %d a 548-byte reply leaves", what, len(b), maxReplyOptions)
			}
			p.blocks[c][k] = b
		}
	}
	p.alloc = newAllocator(p.start, p.end, p.resvByIP)
	return p, nil
}

func clonePoolConfig(pc PoolConfig) PoolConfig {
	pc.Routers = slices.Clone(pc.Routers)
	pc.DNS = slices.Clone(pc.DNS)
	pc.NTP = slices.Clone(pc.NTP)
	pc.TFTPServers = slices.Clone(pc.TFTPServers)
	pc.VendorInfo = slices.Clone(pc.VendorInfo)
	pc.Classes = slices.Clone(pc.Classes)
	for i := range pc.Classes {
		pc.Classes[i].TFTPServers = slices.Clone(pc.Classes[i].TFTPServers)
		pc.Classes[i].VendorInfo = slices.Clone(pc.Classes[i].VendorInfo)
	}
	pc.Reservations = slices.Clone(pc.Reservations)
	return pc
}

func checkIPv4List(field string, ips []netip.Addr) error {
	if len(ips) > 63 {
		return fmt.Errorf("%s lists %d addresses, more than one option holds (63)", field, len(ips))
	}
	for _, a := range ips {
		if !a.Is4() {
			return fmt.Errorf("%s: %v is not an IPv4 address", field, a)
		}
	}
	return nil
}

func checkText(field, s string) error {
	if len(s) > maxOptionText {
		return fmt.Errorf("%s is %d bytes, more than %d", field, len(s), maxOptionText)
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("%s %q contains control characters", field, s)
	}
	return nil
}

// blockOptions lists the options of one reply kind for a class.
func (p *Pool) blockOptions(class int, kind blockKind) []dhcpv4.Option {
	srv := net.IP(p.serverIP.AsSlice())
	if kind == blockNak {
		return []dhcpv4.Option{
			dhcpv4.OptMessageType(dhcpv4.MessageTypeNak),
			dhcpv4.OptServerIdentifier(srv),
		}
	}
	tftp, tftpName, vendor := p.cfg.TFTPServers, p.cfg.TFTPServerName, p.cfg.VendorInfo
	if class > 0 {
		c := p.classes[class-1]
		if len(c.TFTPServers) > 0 {
			tftp = c.TFTPServers
		}
		if c.TFTPServerName != "" {
			tftpName = c.TFTPServerName
		}
		if len(c.VendorInfo) > 0 {
			vendor = c.VendorInfo
		}
	}
	mt := dhcpv4.MessageTypeAck
	if kind == blockOffer {
		mt = dhcpv4.MessageTypeOffer
	}
	opts := []dhcpv4.Option{
		dhcpv4.OptSubnetMask(net.CIDRMask(p.subnet.Bits(), 32)),
		dhcpv4.OptMessageType(mt),
		dhcpv4.OptServerIdentifier(srv),
	}
	if len(p.cfg.Routers) > 0 {
		opts = append(opts, dhcpv4.OptRouter(netIPs(p.cfg.Routers)...))
	}
	if len(p.cfg.DNS) > 0 {
		opts = append(opts, dhcpv4.OptDNS(netIPs(p.cfg.DNS)...))
	}
	if p.cfg.Domain != "" {
		opts = append(opts, dhcpv4.OptDomainName(p.cfg.Domain))
	}
	if len(p.cfg.NTP) > 0 {
		opts = append(opts, dhcpv4.OptNTPServers(netIPs(p.cfg.NTP)...))
	}
	if len(vendor) > 0 {
		opts = append(opts, dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, vendor))
	}
	if kind != blockInform {
		opts = append(opts,
			dhcpv4.OptIPAddressLeaseTime(p.leaseTime),
			dhcpv4.OptRenewTimeValue(p.t1),
			dhcpv4.OptRebindingTimeValue(p.t2))
	}
	if tftpName != "" {
		opts = append(opts, dhcpv4.OptTFTPServerName(tftpName))
	}
	if len(tftp) > 0 {
		b := make([]byte, 0, 4*len(tftp))
		for _, a := range tftp {
			b = append(b, a.AsSlice()...)
		}
		opts = append(opts, dhcpv4.OptGeneric(dhcpv4.OptionTFTPServerAddress, b))
	}
	return opts
}

// renderBlock lets the codec marshal the options (so order and splitting
// are exactly its own) and cuts the option section out of the message,
// without END.
func renderBlock(opts []dhcpv4.Option) ([]byte, error) {
	d := &dhcpv4.DHCPv4{Options: dhcpv4.OptionsFromList(opts...)}
	b := d.ToBytes()
	end, err := optionsEnd(b)
	if err != nil {
		return nil, fmt.Errorf("rendering options: %w", err)
	}
	return slices.Clone(b[bootpHeaderLen+4 : end]), nil
}

// optionsEnd walks the options of a well-formed message and returns the
// offset of its END option.
func optionsEnd(b []byte) (int, error) {
	i := bootpHeaderLen + 4
	for i < len(b) {
		switch b[i] {
		case optPad:
			i++
		case optEnd:
			return i, nil
		default:
			if i+1 >= len(b) || i+2+int(b[i+1]) > len(b) {
				return 0, errors.New("option runs past the end")
			}
			i += 2 + int(b[i+1])
		}
	}
	return 0, errors.New("no END option")
}

func netIPs(a []netip.Addr) []net.IP {
	out := make([]net.IP, len(a))
	for i, x := range a {
		out[i] = net.IP(x.AsSlice())
	}
	return out
}

// Name is the pool's name, the Pool of its leases.
func (p *Pool) Name() string { return p.name }

// VLAN is the VLAN whose untagged-relative requests the pool serves.
func (p *Pool) VLAN() uint16 { return p.vlan }

// Subnet is the pool's subnet.
func (p *Pool) Subnet() netip.Prefix { return p.subnet }

// ServerIP is the server identifier (option 54) and reply source.
func (p *Pool) ServerIP() netip.Addr { return p.serverIP }

// LeaseTime is the lease time handed out, in whole seconds.
func (p *Pool) LeaseTime() time.Duration { return p.leaseTime }

// Classes is the number of classes; class numbers run from 1 to Classes,
// 0 being the pool's own options.
func (p *Pool) Classes() int { return len(p.classes) }

// ClassName is the name of class c (1-based); "" for 0 or out of range.
func (p *Pool) ClassName(c int) string {
	if c < 1 || c > len(p.classes) {
		return ""
	}
	return p.classes[c-1].Name
}

// ClassFor returns the class number that option 60 selects: the class
// whose VendorClass equals it, else the one with the longest matching
// VendorClassPrefix, else 0.
func (p *Pool) ClassFor(vendorClass []byte) int {
	if len(vendorClass) == 0 || len(p.classes) == 0 {
		return 0
	}
	if c, ok := p.exactClass[string(vendorClass)]; ok {
		return c
	}
	best, bestLen := 0, 0
	for i, c := range p.classes {
		if c.VendorClassPrefix != "" && len(c.VendorClassPrefix) > bestLen &&
			len(vendorClass) >= len(c.VendorClassPrefix) &&
			string(vendorClass[:len(c.VendorClassPrefix)]) == c.VendorClassPrefix {
			best, bestLen = i+1, len(c.VendorClassPrefix)
		}
	}
	return best
}

// OptionBlock returns the exact bytes of the options section of the
// server's reply of type msgType for class (0: no class), without END:
// the options in the order (*dhcpv4.DHCPv4).ToBytes writes them (by
// code; 82, echoed only for requests that carry it, would come last).
// A reply to a request without option 82 is the 236-byte BOOTP header,
// the magic cookie, this block, END and zero padding up to 300 bytes.
//
// msgType is dhcpv4.MessageTypeOffer, MessageTypeAck (an ACK to a
// REQUEST), MessageTypeNak, or MessageTypeInform for the ACK that answers
// an INFORM (option 53 says ACK; no 51, 58, 59). Any other type, or a
// class out of range, returns nil. The result is a copy.
func (p *Pool) OptionBlock(class int, msgType dhcpv4.MessageType) []byte {
	if class < 0 || class >= len(p.blocks) {
		return nil
	}
	k, ok := kindOf(msgType)
	if !ok {
		return nil
	}
	return slices.Clone(p.blocks[class][k])
}

func kindOf(mt dhcpv4.MessageType) (blockKind, bool) {
	switch mt {
	case dhcpv4.MessageTypeOffer:
		return blockOffer, true
	case dhcpv4.MessageTypeAck:
		return blockAck, true
	case dhcpv4.MessageTypeInform:
		return blockInform, true
	case dhcpv4.MessageTypeNak:
		return blockNak, true
	}
	return 0, false
}

func (p *Pool) inRange(a netip.Addr) bool {
	return a.Is4() && !a.Less(p.start) && !p.end.Less(a)
}

// reservedFor returns the address reserved for mac, if any.
func (p *Pool) reservedFor(mac net.HardwareAddr) (netip.Addr, bool) {
	a, ok := p.resvByMAC[string(mac)]
	return a, ok
}

// reservedForOther reports whether a is reserved for a MAC other than mac.
func (p *Pool) reservedForOther(a netip.Addr, mac net.HardwareAddr) bool {
	owner, ok := p.resvByIP[a]
	return ok && string(owner) != string(mac)
}

// assignable reports whether mac may be given a: a reserved for mac, or
// a in the range and not reserved for anyone else.
func (p *Pool) assignable(a netip.Addr, mac net.HardwareAddr) bool {
	if owner, ok := p.resvByIP[a]; ok {
		return string(owner) == string(mac)
	}
	return p.inRange(a)
}

func addrU32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func u32Addr(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func lastAddr(p netip.Prefix) netip.Addr {
	return u32Addr(addrU32(p.Addr()) | (1<<(32-p.Bits()) - 1))
}

// TypeOffset returns the offset within an option block of option 53's
// value (the message type byte), or -1 if the block has none. A pool's
// OFFER and ACK blocks for one class differ in that byte only, so a fast
// path can keep one block and patch the type.
func TypeOffset(block []byte) int {
	for i := 0; i+1 < len(block); {
		switch block[i] {
		case optPad:
			i++
			continue
		case optEnd:
			return -1
		}
		if block[i] == optMessageType && block[i+1] == 1 && i+2 < len(block) {
			return i + 2
		}
		i += 2 + int(block[i+1])
	}
	return -1
}
