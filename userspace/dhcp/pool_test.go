package dhcp

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func TestNewPoolsValidation(t *testing.T) {
	tests := []struct {
		name string
		mut  func(c *Config)
		want string // substring of the error
	}{
		{"no pools", func(c *Config) { c.Pools = nil }, "no pools"},
		{"empty name", func(c *Config) { c.Pools[0].Name = "" }, `pool #1: Name is empty`},
		{"duplicate name", func(c *Config) { c.Pools[1].Name = "voice" }, `pool "voice": Name is used by another pool`},
		{"vlan 4095", func(c *Config) { c.Pools[0].VLAN = 4095 }, `pool "voice": VLAN 4095 is outside 0..4094`},
		{"duplicate vlan", func(c *Config) { c.Pools[1].VLAN = 100 }, `pool "data": VLAN 100 is already served by pool "voice"`},
		{"ipv6 subnet", func(c *Config) { c.Pools[0].Subnet = netip.MustParsePrefix("2001:db8::/64") }, `pool "voice": Subnet 2001:db8::/64 is not an IPv4 prefix`},
		{"no subnet", func(c *Config) { c.Pools[0].Subnet = netip.Prefix{} }, `pool "voice": Subnet invalid Prefix is not an IPv4 prefix`},
		{"host bits", func(c *Config) { c.Pools[0].Subnet = netip.MustParsePrefix("10.1.0.7/24") }, "has host bits set"},
		{"/31", func(c *Config) { c.Pools[0].Subnet = netip.MustParsePrefix("10.1.0.0/31") }, "at most /30"},
		{"overlap", func(c *Config) {
			c.Pools[2] = c.Pools[1]
			c.Pools[2].Name, c.Pools[2].VLAN = "data2", 7
		}, `pool "data2": Subnet 192.168.10.0/24 overlaps subnet 192.168.10.0/24 of pool "data"`},
		{"range start outside", func(c *Config) { c.Pools[0].RangeStart = ip("10.2.0.10") }, `pool "voice": RangeStart 10.2.0.10 is outside Subnet 10.1.0.0/24`},
		{"range end outside", func(c *Config) { c.Pools[0].RangeEnd = ip("10.1.1.10") }, `RangeEnd 10.1.1.10 is outside Subnet`},
		{"range start unset", func(c *Config) { c.Pools[0].RangeStart = netip.Addr{} }, `RangeStart invalid IP is not an IPv4 address`},
		{"range reversed", func(c *Config) { c.Pools[0].RangeStart, c.Pools[0].RangeEnd = ip("10.1.0.200"), ip("10.1.0.10") }, "RangeStart 10.1.0.200 is after RangeEnd 10.1.0.10"},
		{"range has broadcast", func(c *Config) { c.Pools[0].RangeEnd = ip("10.1.0.255") }, "RangeEnd 10.1.0.255 is the broadcast address"},
		{"range has network", func(c *Config) { c.Pools[0].RangeStart = ip("10.1.0.0") }, "RangeStart 10.1.0.0 is the network address"},
		{"range too big", func(c *Config) {
			c.Pools[0].Subnet = netip.MustParsePrefix("10.0.0.0/8")
			c.Pools[0].RangeStart, c.Pools[0].RangeEnd = ip("10.0.0.10"), ip("10.200.0.0")
		}, "more than 1048576"},
		{"server outside", func(c *Config) { c.Pools[0].ServerIP = ip("10.3.0.2") }, `pool "voice": ServerIP 10.3.0.2 is outside Subnet 10.1.0.0/24`},
		{"server in range", func(c *Config) { c.Pools[0].ServerIP = ip("10.1.0.20") }, "ServerIP 10.1.0.20 is inside the range"},
		{"router outside", func(c *Config) { c.Pools[0].Routers = []netip.Addr{ip("10.3.0.1")} }, "Routers 10.3.0.1 is outside Subnet"},
		{"router in range", func(c *Config) { c.Pools[0].Routers = []netip.Addr{ip("10.1.0.20")} }, "router 10.1.0.20 (Routers) is inside the range"},
		{"dns v6", func(c *Config) { c.Pools[0].DNS = []netip.Addr{ip("2001:db8::53")} }, "DNS: 2001:db8::53 is not an IPv4 address"},
		{"ntp unset", func(c *Config) { c.Pools[0].NTP = []netip.Addr{{}} }, "NTP: invalid IP is not an IPv4 address"},
		{"tftp v6", func(c *Config) { c.Pools[0].TFTPServers = []netip.Addr{ip("::1")} }, "TFTPServers: ::1 is not an IPv4 address"},
		{"domain control", func(c *Config) { c.Pools[0].Domain = "a\nb" }, "Domain \"a\\nb\" contains control characters"},
		{"domain long", func(c *Config) { c.Pools[0].Domain = strings.Repeat("a", 256) }, "Domain is 256 bytes"},
		{"tftp name long", func(c *Config) { c.Pools[0].TFTPServerName = strings.Repeat("a", 256) }, "TFTPServerName is 256 bytes"},
		{"vendor long", func(c *Config) { c.Pools[0].VendorInfo = make([]byte, 256) }, "VendorInfo is 256 bytes"},
		{"lease 0", func(c *Config) { c.Pools[0].LeaseTime = 0 }, `pool "voice": LeaseTime 0s is not at least one second`},
		{"lease sub-second", func(c *Config) { c.Pools[0].LeaseTime = time.Millisecond }, "LeaseTime 1ms is not at least one second"},
		{"lease infinite", func(c *Config) { c.Pools[0].LeaseTime = 0xffffffff * time.Second }, "does not fit option 51"},
		{"t1 >= t2", func(c *Config) { c.Pools[1].T1 = 40 * time.Minute }, `pool "data": T1 40m0s, T2 40m0s and LeaseTime 1h0m0s`},
		{"t2 >= lease", func(c *Config) { c.Pools[1].T2 = time.Hour }, "not 0 < T1 < T2 < LeaseTime"},
		{"t1 only, beyond default t2", func(c *Config) { c.Pools[0].T1 = 22 * time.Hour }, "T1 22h0m0s, T2 21h0m0s"},
		{"negative t1", func(c *Config) { c.Pools[0].T1 = -time.Second }, "must not be negative"},
		{"2-second lease", func(c *Config) { c.Pools[0].LeaseTime = 2 * time.Second }, "not 0 < T1 < T2 < LeaseTime"},
		{"class without name", func(c *Config) { c.Pools[0].Classes[0].Name = "" }, `pool "voice": class #1: Name is empty`},
		{"class name twice", func(c *Config) { c.Pools[0].Classes[1].Name = "78xx" }, `class "78xx": Name is used by another class`},
		{"class with both", func(c *Config) { c.Pools[0].Classes[0].VendorClass = "x" }, `class "78xx": set exactly one of VendorClass and VendorClassPrefix`},
		{"class with neither", func(c *Config) { c.Pools[0].Classes[1].VendorClass = "" }, `class "8845": set exactly one of VendorClass and VendorClassPrefix`},
		{"class vendor class twice", func(c *Config) {
			c.Pools[0].Classes = append(c.Pools[0].Classes, ClassConfig{Name: "again", VendorClass: vcPhone8845})
		}, `class "again": VendorClass "Cisco Systems, Inc. IP Phone CP-8845" is matched by an earlier class`},
		{"class tftp v6", func(c *Config) { c.Pools[0].Classes[0].TFTPServers = []netip.Addr{ip("::1")} }, `class "78xx": TFTPServers: ::1 is not an IPv4 address`},
		{"class vendor long", func(c *Config) { c.Pools[0].Classes[0].VendorInfo = make([]byte, 300) }, `class "78xx": VendorInfo is 300 bytes`},
		{"reservation mac short", func(c *Config) { c.Pools[0].Reservations[0].MAC = net.HardwareAddr{1, 2, 3} }, "reservation #1: MAC 01:02:03 is not a 6-byte Ethernet address"},
		{"reservation outside subnet", func(c *Config) { c.Pools[0].Reservations[0].IP = ip("10.2.0.1") }, "reservation #1 (00:11:22:33:44:01): IP 10.2.0.1 is outside Subnet"},
		{"reservation on server", func(c *Config) { c.Pools[0].Reservations[0].IP = ip("10.1.0.2") }, "IP 10.1.0.2 is the server's or a router's address"},
		{"reservation on broadcast", func(c *Config) { c.Pools[0].Reservations[0].IP = ip("10.1.0.255") }, "is the broadcast address"},
		{"mac reserved twice", func(c *Config) { c.Pools[0].Reservations[1].MAC = resvInMAC }, "reservation #2: MAC 00:11:22:33:44:01 is reserved twice"},
		{"ip reserved twice", func(c *Config) { c.Pools[0].Reservations[1].IP = ip("10.1.0.50") }, "reservation #2: IP 10.1.0.50 is reserved twice"},
		{"options too big", func(c *Config) {
			for i := range 60 {
				c.Pools[0].DNS = append(c.Pools[0].DNS, u32Addr(addrU32(ip("10.0.1.0"))+uint32(i)))
			}
			c.Pools[0].NTP = c.Pools[0].DNS
		}, "the pool's options take"},
		{"class options too big", func(c *Config) {
			c.Pools[0].Domain = strings.Repeat("d", 150)
			c.Pools[0].Classes[1].VendorInfo = make([]byte, 200)
		}, `class "8845"'s options take`},
		{"63+ addresses", func(c *Config) { c.Pools[0].DNS = make([]netip.Addr, 64) }, "DNS lists 64 addresses"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig()
			tc.mut(&c)
			_, err := NewPools(c)
			if err == nil {
				t.Fatalf("accepted; want an error with %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestNewPoolsAccepts(t *testing.T) {
	c := testConfig()
	// Reservations in and out of the range, a class-only pool, T1 alone.
	c.Pools[2].T1 = time.Hour
	c.Pools = append(c.Pools, PoolConfig{
		Name: "tiny", VLAN: 4094, Subnet: netip.MustParsePrefix("10.250.0.0/30"),
		RangeStart: ip("10.250.0.2"), RangeEnd: ip("10.250.0.2"), ServerIP: ip("10.250.0.1"), LeaseTime: 3 * time.Second,
	})
	pools, err := NewPools(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != 4 || pools[0].Name() != "voice" || pools[0].VLAN() != 100 || pools[0].Classes() != 2 ||
		pools[0].ClassName(2) != "8845" || pools[0].ClassName(3) != "" || pools[0].LeaseTime() != 24*time.Hour ||
		pools[0].ServerIP() != ip("10.1.0.2") || pools[0].Subnet() != netip.MustParsePrefix("10.1.0.0/24") {
		t.Fatalf("pools %+v", pools)
	}
	if pools[2].t1 != time.Hour || pools[2].t2 != 12*time.Hour*7/8 {
		t.Fatalf("remote T1 %v T2 %v", pools[2].t1, pools[2].t2)
	}
	if p := pools[3]; p.t1 != time.Second || p.t2 != 2*time.Second {
		t.Fatalf("tiny T1 %v T2 %v", p.t1, p.t2)
	}
	// The config is copied: changing it afterwards changes nothing.
	c.Pools[0].TFTPServers[0] = ip("1.2.3.4")
	if pools[0].cfg.TFTPServers[0] != ip("10.0.0.69") {
		t.Fatal("pool shares the caller's slice")
	}
}

// expectedOptions is an independent statement of what a reply carries:
// the pool's options with the class's overrides, option by option.
func expectedOptions(pc PoolConfig, class int, mt dhcpv4.MessageType) dhcpv4.Options {
	o := dhcpv4.Options{}
	srv := net.IP(pc.ServerIP.AsSlice())
	if mt == dhcpv4.MessageTypeNak {
		o.Update(dhcpv4.OptMessageType(dhcpv4.MessageTypeNak))
		o.Update(dhcpv4.OptServerIdentifier(srv))
		return o
	}
	tftp, name, vendor := pc.TFTPServers, pc.TFTPServerName, pc.VendorInfo
	if class > 0 {
		c := pc.Classes[class-1]
		if c.TFTPServers != nil {
			tftp = c.TFTPServers
		}
		if c.TFTPServerName != "" {
			name = c.TFTPServerName
		}
		if c.VendorInfo != nil {
			vendor = c.VendorInfo
		}
	}
	ips := func(a []netip.Addr) []net.IP {
		var out []net.IP
		for _, x := range a {
			out = append(out, net.IP(x.AsSlice()))
		}
		return out
	}
	o.Update(dhcpv4.OptSubnetMask(net.CIDRMask(pc.Subnet.Bits(), 32)))
	if len(pc.Routers) > 0 {
		o.Update(dhcpv4.OptRouter(ips(pc.Routers)...))
	}
	if len(pc.DNS) > 0 {
		o.Update(dhcpv4.OptDNS(ips(pc.DNS)...))
	}
	if pc.Domain != "" {
		o.Update(dhcpv4.OptDomainName(pc.Domain))
	}
	if len(pc.NTP) > 0 {
		o.Update(dhcpv4.OptNTPServers(ips(pc.NTP)...))
	}
	if len(vendor) > 0 {
		o.Update(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, vendor))
	}
	if mt == dhcpv4.MessageTypeInform {
		o.Update(dhcpv4.OptMessageType(dhcpv4.MessageTypeAck))
	} else {
		o.Update(dhcpv4.OptMessageType(mt))
		t1, t2 := pc.T1, pc.T2
		if t1 == 0 {
			t1 = pc.LeaseTime / 2
		}
		if t2 == 0 {
			t2 = pc.LeaseTime * 7 / 8
		}
		o.Update(dhcpv4.OptIPAddressLeaseTime(pc.LeaseTime))
		o.Update(dhcpv4.OptRenewTimeValue(t1))
		o.Update(dhcpv4.OptRebindingTimeValue(t2))
	}
	o.Update(dhcpv4.OptServerIdentifier(srv))
	if name != "" {
		o.Update(dhcpv4.OptTFTPServerName(name))
	}
	if len(tftp) > 0 {
		var b []byte
		for _, x := range tftp {
			b = append(b, x.AsSlice()...)
		}
		o.Update(dhcpv4.OptGeneric(dhcpv4.OptionTFTPServerAddress, b))
	}
	return o
}

// TestReplyIsHeaderPlusOptionBlock checks, for every pool, class and
// reply type, the contract the XDP fast path relies on: the Go server's
// reply to a plain request is the 236-byte header, the cookie,
// OptionBlock, END and zero padding to 300 bytes, which is exactly what
// the codec's ToBytes writes for the same message built independently.
func TestReplyIsHeaderPlusOptionBlock(t *testing.T) {
	cfg := testConfig()
	cfg.Pools[1].Classes = append(cfg.Pools[1].Classes, ClassConfig{Name: "big-vendor", VendorClass: "big", VendorInfo: bytes.Repeat([]byte{0xab}, 255)})
	for pi, pc := range cfg.Pools {
		for class := 0; class <= len(pc.Classes); class++ {
			for _, mt := range []dhcpv4.MessageType{dhcpv4.MessageTypeOffer, dhcpv4.MessageTypeAck, dhcpv4.MessageTypeInform, dhcpv4.MessageTypeNak} {
				t.Run(fmt.Sprintf("%s/class%d/%s", pc.Name, class, mt), func(t *testing.T) {
					hs := newHarness(t, cfg)
					p := hs.h.pools[pi]
					var mods []dhcpv4.Modifier
					if class > 0 {
						c := pc.Classes[class-1]
						vc := c.VendorClass
						if vc == "" {
							vc = c.VendorClassPrefix + "41"
						}
						mods = append(mods, withVendorClass(vc))
					}
					cl := macN(1000 + class)
					var rep Reply
					var out Outcome
					switch mt {
					case dhcpv4.MessageTypeOffer:
						rep, out = hs.discover("p1", pc.VLAN, cl, mods...)
					case dhcpv4.MessageTypeAck:
						r, _ := hs.discover("p1", pc.VLAN, cl, mods...)
						rep, out = hs.selectOffer("p1", pc.VLAN, cl, pc.ServerIP, ip4(parseReply(t, r).YourIPAddr), mods...)
					case dhcpv4.MessageTypeInform:
						mods = append(mods, withCiaddr(pc.ServerIP.Next()))
						rep, out = hs.do(onPort("p1", pc.VLAN, cl, pkt(dhcpv4.MessageTypeInform, cl, mods...)))
					case dhcpv4.MessageTypeNak:
						mods = append(mods, optIP(dhcpv4.OptionRequestedIPAddress, ip("203.0.113.9")))
						rep, out = hs.do(onPort("p1", pc.VLAN, cl, pkt(dhcpv4.MessageTypeRequest, cl, mods...)))
					}
					if out.Action != Answered {
						t.Fatalf("%v", out)
					}
					block := p.OptionBlock(class, mt)
					if block == nil {
						t.Fatal("no block")
					}
					// 1. header + cookie + block + END + padding.
					want := append([]byte(nil), rep.Payload[:bootpHeaderLen]...)
					want = append(want, magicCookie[:]...)
					want = append(want, block...)
					want = append(want, optEnd)
					if len(want) < 300 {
						want = append(want, make([]byte, 300-len(want))...)
					}
					if !bytes.Equal(rep.Payload, want) {
						t.Fatalf("reply is not header+cookie+block+END+pad:\n got %x\nwant %x", rep.Payload, want)
					}
					// 2. The same message built with the codec from an
					// independent statement of its options.
					q, _ := dhcpv4.FromBytes(rep.Payload)
					d := &dhcpv4.DHCPv4{
						OpCode: dhcpv4.OpcodeBootReply, HWType: q.HWType, TransactionID: q.TransactionID, Flags: q.Flags,
						ClientIPAddr: q.ClientIPAddr, YourIPAddr: q.YourIPAddr, GatewayIPAddr: q.GatewayIPAddr,
						ClientHWAddr: cl, Options: expectedOptions(pc, class, mt),
					}
					if got := d.ToBytes(); !bytes.Equal(got, rep.Payload) {
						t.Fatalf("codec builds\n%x\nthe server sent\n%x", got, rep.Payload)
					}
					// 3. The block carries neither END nor 82.
					if rawOption(append(append(make([]byte, 240), block...), optEnd), optAgentInfo) != nil {
						t.Fatal("block holds option 82")
					}
				})
			}
		}
	}
}

func TestOptionBlockAPI(t *testing.T) {
	pools, err := NewPools(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	p := pools[0]
	for _, c := range []struct {
		class int
		mt    dhcpv4.MessageType
	}{{-1, dhcpv4.MessageTypeOffer}, {3, dhcpv4.MessageTypeOffer}, {0, dhcpv4.MessageTypeDiscover}, {0, dhcpv4.MessageTypeRelease}} {
		if b := p.OptionBlock(c.class, c.mt); b != nil {
			t.Errorf("OptionBlock(%d, %v) = %x", c.class, c.mt, b)
		}
	}
	b := p.OptionBlock(0, dhcpv4.MessageTypeOffer)
	b[0] = 0xee
	if p.OptionBlock(0, dhcpv4.MessageTypeOffer)[0] == 0xee {
		t.Fatal("OptionBlock returns its internal slice")
	}
	// Sorted by code, as the codec writes them.
	b = p.OptionBlock(0, dhcpv4.MessageTypeOffer)
	var codes []byte
	for i := 0; i < len(b); i += 2 + int(b[i+1]) {
		codes = append(codes, b[i])
	}
	want := []byte{1, 3, 6, 15, 42, 43, 51, 53, 54, 58, 59, 66, 150}
	if !bytes.Equal(codes, want) {
		t.Fatalf("codes %v, want %v", codes, want)
	}
}

func TestAllocatorLargePool(t *testing.T) {
	a := newAllocator(ip("10.0.0.1"), u32Addr(addrU32(ip("10.0.0.1"))+99_999), nil)
	seen := make(map[netip.Addr]bool, 100_000)
	start := time.Now()
	for range 100_000 {
		x, ok := a.take()
		if !ok || seen[x] {
			t.Fatalf("take: %v %v", x, ok)
		}
		seen[x] = true
	}
	if _, ok := a.take(); ok {
		t.Fatal("took from an empty pool")
	}
	t.Logf("100,000 takes in %v", time.Since(start))
	// Free every 7th address; they come back in cursor order, each once.
	for i := 0; i < 100_000; i += 7 {
		a.set(u32Addr(addrU32(ip("10.0.0.1"))+uint32(i)), stFreeUsed)
	}
	n := 0
	for {
		x, ok := a.take()
		if !ok {
			break
		}
		if (addrU32(x)-addrU32(ip("10.0.0.1")))%7 != 0 {
			t.Fatalf("took %v, not freed", x)
		}
		n++
	}
	if n != (100_000+6)/7 {
		t.Fatalf("took %d back", n)
	}
	st := a.stats()
	if st[stPending] != 100_000 || st[stFree] != 0 {
		t.Fatalf("counts %v", st)
	}
}

func TestBitsetNext(t *testing.T) {
	for _, size := range []int{1, 63, 64, 65, 4095, 4096, 4097, 10_000} {
		s := newBitset(size)
		members := []int{0, size / 3, size / 2, size - 1}
		for _, m := range members {
			s.add(m)
		}
		for i := range size {
			want := -1
			for _, m := range members {
				if m >= i && (want < 0 || m < want) {
					want = m
				}
			}
			if got := s.next(i); got != want {
				t.Fatalf("size %d next(%d) = %d, want %d", size, i, got, want)
			}
		}
		for _, m := range members {
			s.remove(m)
		}
		if s.n != 0 || s.next(0) != -1 {
			t.Fatalf("size %d: not empty after removal", size)
		}
	}
}

func BenchmarkAllocatorTake(b *testing.B) {
	a := newAllocator(ip("10.0.0.1"), u32Addr(addrU32(ip("10.0.0.1"))+99_999), nil)
	b.ReportAllocs()
	for b.Loop() {
		x, ok := a.take()
		if !ok {
			b.Fatal("empty")
		}
		a.set(x, stFreeUsed)
	}
}

// TestOfferAckDifferInTypeOnly: the fast path patches option 53 of the
// OFFER block to answer a REQUEST.
func TestOfferAckDifferInTypeOnly(t *testing.T) {
	pools, err := NewPools(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pools {
		for c := 0; c <= p.Classes(); c++ {
			offer, ack := p.OptionBlock(c, dhcpv4.MessageTypeOffer), p.OptionBlock(c, dhcpv4.MessageTypeAck)
			off := TypeOffset(offer)
			if off < 0 || offer[off] != byte(dhcpv4.MessageTypeOffer) || TypeOffset(ack) != off || ack[off] != byte(dhcpv4.MessageTypeAck) {
				t.Fatalf("%s/%d: type at %d", p.Name(), c, off)
			}
			ack[off] = offer[off]
			if !bytes.Equal(offer, ack) {
				t.Fatalf("%s/%d: OFFER and ACK blocks differ beyond option 53", p.Name(), c)
			}
		}
	}
	if TypeOffset(nil) != -1 || TypeOffset([]byte{1, 4, 255, 255, 255, 0}) != -1 || TypeOffset([]byte{0, 53, 1, 2}) != 3 {
		t.Fatal("TypeOffset on edge cases")
	}
}
