package dhcp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/phoneboot/phoneboot/userspace/lease"
)

func TestDORA(t *testing.T) {
	hs := newHarness(t, testConfig())
	m := mac("00:de:ad:00:00:01")
	hostname := []byte("SEP00DEAD000001")
	clientID := []byte{0x01, 0x00, 0xde, 0xad, 0x00, 0x00, 0x01}
	mods := []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptHostName(string(hostname))),
		dhcpv4.WithOption(dhcpv4.OptClientIdentifier(clientID)),
	}
	rep, out := hs.discover("ge-0/0/1", 100, m, mods...)
	if out != (Outcome{Answered, ReasonOffer}) {
		t.Fatalf("DISCOVER: %v", out)
	}
	offer := parseReply(t, rep)
	yi := ip4(offer.YourIPAddr)
	if offer.MessageType() != dhcpv4.MessageTypeOffer || !hs.h.pools[0].inRange(yi) {
		t.Fatalf("offer %v of %v", offer.MessageType(), yi)
	}
	if got := hs.leaseAt(yi); got.State != lease.StateOffered || !got.Expires.Equal(t0.Add(30*time.Second)) {
		t.Fatalf("after OFFER the lease is %s until %v", got.State, got.Expires)
	}
	if lt := offer.IPAddressLeaseTime(0); lt != 24*time.Hour {
		t.Errorf("lease time %v", lt)
	}
	if t1, t2 := offer.IPAddressRenewalTime(0), offer.IPAddressRebindingTime(0); t1 != 12*time.Hour || t2 != 21*time.Hour {
		t.Errorf("T1 %v T2 %v, want 50%% and 87.5%%", t1, t2)
	}
	hs.now = hs.now.Add(time.Second)
	rep, out = hs.selectOffer("ge-0/0/1", 100, m, ip("10.1.0.2"), yi, mods...)
	if out != (Outcome{Answered, ReasonAck}) {
		t.Fatalf("REQUEST: %v", out)
	}
	ack := parseReply(t, rep)
	if ack.MessageType() != dhcpv4.MessageTypeAck || ip4(ack.YourIPAddr) != yi {
		t.Fatalf("ack %v of %v", ack.MessageType(), ack.YourIPAddr)
	}
	l := hs.leaseAt(yi)
	want := lease.Lease{IP: yi, MAC: m, Pool: "voice", State: lease.StateBound, Expires: hs.now.Add(24 * time.Hour),
		Port: "ge-0/0/1", VLAN: 100, ClientID: clientID, Hostname: hostname}
	if l.IP != want.IP || !bytes.Equal(l.MAC, want.MAC) || l.Pool != want.Pool || l.State != want.State ||
		!l.Expires.Equal(want.Expires) || l.Port != want.Port || l.VLAN != want.VLAN ||
		!bytes.Equal(l.ClientID, want.ClientID) || !bytes.Equal(l.Hostname, want.Hostname) {
		t.Fatalf("lease\n got %+v\nwant %+v", l, want)
	}
	hs.checkStore()
}

// TestClientBytesStoredAsIs: hostname and client-id bytes reach the lease
// unchanged, including non-ASCII and binary client-ids.
func TestClientBytesStoredAsIs(t *testing.T) {
	hs := newHarness(t, testConfig())
	m := macN(7)
	host := []byte("t\xc3\xa9l\xc3\xa9phone,x;y'\"$(id)\xff")
	cid := append([]byte{0xff}, bytes.Repeat([]byte{0, '\n', ',', 0xfe}, 32)...) // 129 bytes would be too long
	cid = cid[:128]
	a := hs.dora("p1", 100, m,
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionHostName, host)),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientIdentifier, cid)))
	l := hs.leaseAt(a)
	if !bytes.Equal(l.Hostname, host) || !bytes.Equal(l.ClientID, cid) {
		t.Fatalf("stored hostname %q client-id %x", l.Hostname, l.ClientID)
	}
}

func TestRequestStates(t *testing.T) {
	voice := ip("10.1.0.2")
	type step struct {
		name   string
		mac    net.HardwareAddr
		msg    []byte
		port   string
		want   Outcome
		wantYI netip.Addr // for answered
	}
	a, b := macN(1), macN(2)
	req := func(m net.HardwareAddr, mods ...dhcpv4.Modifier) []byte {
		return pkt(dhcpv4.MessageTypeRequest, m, mods...)
	}
	sid := func(x netip.Addr) dhcpv4.Modifier { return optIP(dhcpv4.OptionServerIdentifier, x) }
	rq := func(x netip.Addr) dhcpv4.Modifier { return optIP(dhcpv4.OptionRequestedIPAddress, x) }
	ack, nak := Outcome{Answered, ReasonAck}, Outcome{Answered, ReasonNak}

	tests := []struct {
		name  string
		setup func(hs *harness) (aAddr netip.Addr) // a holds aAddr
		steps func(aAddr netip.Addr) []step
	}{{
		name: "selecting/ours-offered",
		setup: func(hs *harness) netip.Addr {
			rep, _ := hs.discover("p1", 100, a)
			return ip4(parseReply(t, rep).YourIPAddr)
		},
		steps: func(x netip.Addr) []step {
			return []step{{name: "ack", mac: a, msg: req(a, sid(voice), rq(x)), want: ack, wantYI: x}}
		},
	}, {
		name:  "selecting/ours-bound",
		setup: func(hs *harness) netip.Addr { return hs.dora("p1", 100, a) },
		steps: func(x netip.Addr) []step {
			return []step{{name: "ack again", mac: a, msg: req(a, sid(voice), rq(x)), want: ack, wantYI: x}}
		},
	}, {
		name: "selecting/not-offered",
		setup: func(hs *harness) netip.Addr {
			rep, _ := hs.discover("p1", 100, a)
			return ip4(parseReply(t, rep).YourIPAddr)
		},
		steps: func(x netip.Addr) []step {
			return []step{
				{name: "other address", mac: a, msg: req(a, sid(voice), rq(x.Next())), want: nak},
				{name: "other client", mac: b, msg: req(b, sid(voice), rq(x)), want: nak},
			}
		},
	}, {
		name: "selecting/missing-50",
		setup: func(hs *harness) netip.Addr {
			hs.discover("p1", 100, a)
			return netip.Addr{}
		},
		steps: func(netip.Addr) []step {
			return []step{{name: "drop", mac: a, msg: req(a, sid(voice)), want: drop(ReasonNotRequestingAddr)}}
		},
	}, {
		name: "selecting/other-server",
		setup: func(hs *harness) netip.Addr {
			rep, _ := hs.discover("p1", 100, a)
			return ip4(parseReply(t, rep).YourIPAddr)
		},
		steps: func(x netip.Addr) []step {
			return []step{
				{name: "silent", mac: a, msg: req(a, sid(ip("10.1.0.3")), rq(ip("10.1.0.99"))), want: silent(ReasonNotOurServer)},
				// The offer was freed: the address is no longer a's.
				{name: "late request", mac: a, msg: req(a, sid(voice), rq(x)), want: nak},
			}
		},
	}, {
		name:  "init-reboot",
		setup: func(hs *harness) netip.Addr { return hs.dora("p1", 100, a) },
		steps: func(x netip.Addr) []step {
			return []step{
				{name: "own address", mac: a, msg: req(a, rq(x)), want: ack, wantYI: x},
				{name: "outside subnet", mac: a, msg: req(a, rq(ip("192.168.10.150"))), want: nak},
				{name: "held by another", mac: b, msg: req(b, rq(x)), want: nak},
				{name: "in subnet outside range", mac: b, msg: req(b, rq(ip("10.1.0.201"))), want: nak},
				{name: "reserved for another", mac: b, msg: req(b, rq(ip("10.1.0.50"))), want: nak},
				{name: "free, no record: authoritative ACK", mac: b, msg: req(b, rq(ip("10.1.0.150"))), want: ack, wantYI: ip("10.1.0.150")},
			}
		},
	}, {
		name:  "renewing",
		setup: func(hs *harness) netip.Addr { return hs.dora("p1", 100, a) },
		steps: func(x netip.Addr) []step {
			return []step{
				{name: "own", mac: a, msg: req(a, withCiaddr(x)), want: ack, wantYI: x},
				{name: "other's", mac: b, msg: req(b, withCiaddr(x)), want: nak},
				{name: "unknown", mac: b, msg: req(b, withCiaddr(ip("10.1.0.180"))), want: nak},
				{name: "outside subnet", mac: a, msg: req(a, withCiaddr(ip("192.168.10.150"))), want: nak},
				{name: "rebinding (broadcast)", mac: a, msg: req(a, withCiaddr(x), dhcpv4.WithBroadcast(true)), want: ack, wantYI: x},
			}
		},
	}, {
		name:  "no-address",
		setup: func(*harness) netip.Addr { return netip.Addr{} },
		steps: func(netip.Addr) []step {
			return []step{{name: "drop", mac: a, msg: req(a), want: drop(ReasonNotRequestingAddr)}}
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHarness(t, testConfig())
			x := tc.setup(hs)
			for _, s := range tc.steps(x) {
				port := s.port
				if port == "" {
					port = "p1"
				}
				rep, out := hs.do(onPort(port, 100, s.mac, s.msg))
				if out != s.want {
					t.Fatalf("%s: %v, want %v", s.name, out, s.want)
				}
				if out.Action == Answered && s.wantYI.IsValid() {
					if got := ip4(parseReply(t, rep).YourIPAddr); got != s.wantYI {
						t.Fatalf("%s: yiaddr %v, want %v", s.name, got, s.wantYI)
					}
				}
				if out == ack {
					if l := hs.leaseAt(s.wantYI); l.State != lease.StateBound || !bytes.Equal(l.MAC, s.mac) {
						t.Fatalf("%s: after ACK the lease is %+v", s.name, l)
					}
				}
			}
			hs.checkStore()
		})
	}
}

// TestRenewExtends: a RENEW moves the expiry and keeps the address.
func TestRenewExtends(t *testing.T) {
	hs := newHarness(t, testConfig())
	m := macN(3)
	a := hs.dora("p1", 100, m)
	hs.now = hs.now.Add(12 * time.Hour)
	r := onPort("p1", 100, m, pkt(dhcpv4.MessageTypeRequest, m, withCiaddr(a)))
	r.DstIP, r.SrcIP = ip("10.1.0.2"), a
	if _, out := hs.do(r); out.Reason != ReasonAck {
		t.Fatalf("renew: %v", out)
	}
	if l := hs.leaseAt(a); !l.Expires.Equal(hs.now.Add(24 * time.Hour)) {
		t.Fatalf("expires %v", l.Expires)
	}
}

func TestAddressing(t *testing.T) {
	relayMAC := mac("00:00:5e:00:01:01")
	cl := mac("00:de:ad:be:ef:01")
	giaddr := ip("172.16.5.1")
	tests := []struct {
		name    string
		setup   func(hs *harness) netip.Addr
		msg     func(x netip.Addr) []byte
		src     net.HardwareAddr
		vlan    uint16
		want    Outcome
		dstIP   func(x netip.Addr) netip.Addr
		dstMAC  net.HardwareAddr
		dstPort uint16
		ciaddr  func(x netip.Addr) netip.Addr // echoed ciaddr; invalid means 0
		bflag   bool                          // broadcast flag in the reply
	}{{
		name:    "relayed discover",
		msg:     func(netip.Addr) []byte { return pkt(dhcpv4.MessageTypeDiscover, cl, withGiaddr(giaddr)) },
		src:     relayMAC,
		want:    Outcome{Answered, ReasonOffer},
		dstIP:   func(netip.Addr) netip.Addr { return giaddr },
		dstMAC:  relayMAC,
		dstPort: 67,
	}, {
		name: "relayed nak keeps the relay and sets the broadcast bit",
		msg: func(netip.Addr) []byte {
			return pkt(dhcpv4.MessageTypeRequest, cl, withGiaddr(giaddr), optIP(dhcpv4.OptionRequestedIPAddress, ip("10.1.0.77")))
		},
		src:     relayMAC,
		want:    Outcome{Answered, ReasonNak},
		dstIP:   func(netip.Addr) netip.Addr { return giaddr },
		dstMAC:  relayMAC,
		dstPort: 67,
		bflag:   true,
	}, {
		name:    "plain discover: unicast to yiaddr and chaddr",
		msg:     func(netip.Addr) []byte { return pkt(dhcpv4.MessageTypeDiscover, cl) },
		src:     cl,
		vlan:    100,
		want:    Outcome{Answered, ReasonOffer},
		dstIP:   func(x netip.Addr) netip.Addr { return x },
		dstMAC:  cl,
		dstPort: 68,
	}, {
		name:    "broadcast flag",
		msg:     func(netip.Addr) []byte { return pkt(dhcpv4.MessageTypeDiscover, cl, dhcpv4.WithBroadcast(true)) },
		src:     cl,
		vlan:    100,
		want:    Outcome{Answered, ReasonOffer},
		dstIP:   func(netip.Addr) netip.Addr { return broadcastIP },
		dstMAC:  broadcastMAC,
		dstPort: 68,
		bflag:   true,
	}, {
		name:  "renew: unicast to ciaddr, ciaddr echoed",
		setup: func(hs *harness) netip.Addr { return hs.dora("p1", 100, cl) },
		msg: func(x netip.Addr) []byte {
			return pkt(dhcpv4.MessageTypeRequest, cl, withCiaddr(x), dhcpv4.WithBroadcast(true))
		},
		src:     cl,
		vlan:    100,
		want:    Outcome{Answered, ReasonAck},
		dstIP:   func(x netip.Addr) netip.Addr { return x },
		dstMAC:  cl,
		dstPort: 68,
		ciaddr:  func(x netip.Addr) netip.Addr { return x },
		bflag:   true,
	}, {
		name:    "inform: unicast to ciaddr",
		msg:     func(netip.Addr) []byte { return pkt(dhcpv4.MessageTypeInform, cl, withCiaddr(ip("10.1.0.3"))) },
		src:     cl,
		vlan:    100,
		want:    Outcome{Answered, ReasonAck},
		dstIP:   func(netip.Addr) netip.Addr { return ip("10.1.0.3") },
		dstMAC:  cl,
		dstPort: 68,
		ciaddr:  func(netip.Addr) netip.Addr { return ip("10.1.0.3") },
	}, {
		name: "nak: broadcast",
		msg: func(netip.Addr) []byte {
			return pkt(dhcpv4.MessageTypeRequest, cl, optIP(dhcpv4.OptionRequestedIPAddress, ip("192.168.10.150")))
		},
		src:     cl,
		vlan:    100,
		want:    Outcome{Answered, ReasonNak},
		dstIP:   func(netip.Addr) netip.Addr { return broadcastIP },
		dstMAC:  broadcastMAC,
		dstPort: 68,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHarness(t, testConfig())
			var x netip.Addr
			if tc.setup != nil {
				x = tc.setup(hs)
			}
			req := onPort("p1", tc.vlan, tc.src, tc.msg(x))
			rep, out := hs.do(req)
			if out != tc.want {
				t.Fatalf("outcome %v, want %v", out, tc.want)
			}
			d := parseReply(t, rep)
			if !x.IsValid() {
				x = ip4(d.YourIPAddr)
			}
			if rep.DstIP != tc.dstIP(x) || !bytes.Equal(rep.DstMAC, tc.dstMAC) || rep.DstPort != tc.dstPort {
				t.Errorf("to %v %v:%d, want %v %v:%d", rep.DstMAC, rep.DstIP, rep.DstPort, tc.dstMAC, tc.dstIP(x), tc.dstPort)
			}
			pool := hs.h.selectPool(mustParse(t, req.Payload), req)
			if rep.Port != "p1" || rep.VLAN != tc.vlan || rep.SrcIP != pool.serverIP {
				t.Errorf("port %q vlan %d src %v", rep.Port, rep.VLAN, rep.SrcIP)
			}
			q, _ := dhcpv4.FromBytes(req.Payload)
			wantCi := netip.Addr{}
			if tc.ciaddr != nil {
				wantCi = tc.ciaddr(x)
			}
			switch {
			case d.OpCode != dhcpv4.OpcodeBootReply, d.HWType != q.HWType, len(d.ClientHWAddr) != 6:
				t.Errorf("op %v htype %v hlen %d", d.OpCode, d.HWType, len(d.ClientHWAddr))
			case d.HopCount != 0, d.NumSeconds != 0, d.TransactionID != q.TransactionID:
				t.Errorf("hops %d secs %d xid %v", d.HopCount, d.NumSeconds, d.TransactionID)
			case !bytes.Equal(d.ClientHWAddr, q.ClientHWAddr), !d.GatewayIPAddr.Equal(q.GatewayIPAddr):
				t.Errorf("chaddr %v giaddr %v", d.ClientHWAddr, d.GatewayIPAddr)
			case ip4(d.ClientIPAddr) != wantCi:
				t.Errorf("ciaddr %v, want %v", d.ClientIPAddr, wantCi)
			case !d.ServerIPAddr.IsUnspecified(), d.ServerHostName != "", d.BootFileName != "":
				t.Errorf("siaddr %v sname %q file %q", d.ServerIPAddr, d.ServerHostName, d.BootFileName)
			case d.IsBroadcast() != tc.bflag:
				t.Errorf("broadcast flag %v", d.IsBroadcast())
			}
		})
	}
}

func mustParse(tb testing.TB, p []byte) *message {
	tb.Helper()
	m, err := parseRequest(p)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// rawOption returns the bytes of the first instance of option code.
func rawOption(p []byte, code byte) []byte {
	for i := bootpHeaderLen + 4; i < len(p); {
		switch p[i] {
		case optPad:
			i++
			continue
		case optEnd:
			return nil
		}
		if p[i] == code {
			return p[i : i+2+int(p[i+1])]
		}
		i += 2 + int(p[i+1])
	}
	return nil
}

func TestRelayOption82Echoed(t *testing.T) {
	hs := newHarness(t, testConfig())
	cl := macN(82)
	// Circuit-id "Gi1/0/7:300", remote-id 6 bytes, and an unknown sub-option.
	agent := []byte{1, 11, 'G', 'i', '1', '/', '0', '/', '7', ':', '3', '0', '0', 2, 6, 0, 1, 2, 3, 4, 5, 151, 2, 0xff, 0}
	giaddr := ip("172.16.5.1")
	for _, mt := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest} {
		mods := []dhcpv4.Modifier{withGiaddr(giaddr), dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionRelayAgentInformation, agent))}
		if mt == dhcpv4.MessageTypeRequest {
			a := hs.leaseAtMAC("remote", cl)
			mods = append(mods, optIP(dhcpv4.OptionServerIdentifier, ip("172.16.5.2")), optIP(dhcpv4.OptionRequestedIPAddress, a))
		}
		req := onPort("uplink", 0, mac("00:00:5e:00:01:01"), pkt(mt, cl, mods...))
		req.SrcPort = 67
		rep, out := hs.do(req)
		if out.Action != Answered {
			t.Fatalf("%v: %v", mt, out)
		}
		want := rawOption(req.Payload, optAgentInfo)
		got := rawOption(rep.Payload, optAgentInfo)
		if !bytes.Equal(got, want) {
			t.Fatalf("%v: option 82 echoed as %x, want %x", mt, got, want)
		}
		// It comes last, right before END.
		end, _ := optionsEnd(rep.Payload)
		if !bytes.Equal(rep.Payload[end-len(want):end], want) {
			t.Fatalf("%v: option 82 is not last", mt)
		}
		// Everything before it is the pool's option block.
		kind := blockOffer
		if mt == dhcpv4.MessageTypeRequest {
			kind = blockAck
		}
		block := hs.h.byName["remote"].blocks[0][kind]
		if !bytes.Equal(rep.Payload[240:end-len(want)], block) {
			t.Fatalf("%v: options before 82 are not the block", mt)
		}
	}
}

func (hs *harness) leaseAtMAC(pool string, m net.HardwareAddr) netip.Addr {
	hs.tb.Helper()
	l, err := hs.store.ByMAC(context.Background(), pool, m)
	if err != nil {
		hs.tb.Fatalf("ByMAC(%s, %v): %v", pool, m, err)
	}
	return l.IP
}

// TestOption82WithoutGiaddr: a snooping switch may add 82 without giaddr;
// it is echoed too and the reply goes to the client.
func TestOption82WithoutGiaddr(t *testing.T) {
	hs := newHarness(t, testConfig())
	cl := macN(83)
	agent := []byte{1, 3, 'p', '1', '7'}
	rep, out := hs.discover("p1", 100, cl, dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionRelayAgentInformation, agent)))
	if out.Reason != ReasonOffer || !bytes.Equal(rawOption(rep.Payload, optAgentInfo), append([]byte{82, 5}, agent...)) {
		t.Fatalf("%v, 82 = %x", out, rawOption(rep.Payload, optAgentInfo))
	}
	if !bytes.Equal(rep.DstMAC, cl) || rep.DstPort != 68 {
		t.Fatalf("to %v:%d", rep.DstMAC, rep.DstPort)
	}
}

func TestReservations(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	// A stale reservation in a configured pool goes; one in an unknown pool stays.
	stale := lease.Reservation{Pool: "voice", MAC: macN(900), IP: ip("10.1.0.60")}
	other := lease.Reservation{Pool: "elsewhere", MAC: macN(901), IP: ip("10.200.0.1")}
	for _, r := range []lease.Reservation{stale, other} {
		if err := st.Reserve(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	hs := newHarnessStore(t, testConfig(), st)
	got, err := st.Reservations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range got {
		names = append(names, fmt.Sprintf("%s/%v/%v", r.Pool, r.MAC, r.IP))
	}
	want := []string{"voice/00:11:22:33:44:02/10.1.0.5", "voice/00:11:22:33:44:01/10.1.0.50", "elsewhere/02:aa:00:00:03:85/10.200.0.1"}
	if !slices.Equal(names, want) {
		t.Fatalf("store reservations %v, want %v", names, want)
	}

	for _, c := range []struct {
		m net.HardwareAddr
		a netip.Addr
	}{{resvInMAC, ip("10.1.0.50")}, {resvOutMAC, ip("10.1.0.5")}} {
		if got := hs.dora("p1", 100, c.m); got != c.a {
			t.Fatalf("%v got %v, want its reservation %v", c.m, got, c.a)
		}
		// Asking for another address is refused.
		if _, out := hs.do(onPort("p1", 100, c.m, pkt(dhcpv4.MessageTypeRequest, c.m, optIP(dhcpv4.OptionRequestedIPAddress, ip("10.1.0.99"))))); out.Reason != ReasonNak {
			t.Fatalf("reserved client asking for another address: %v", out)
		}
	}
	// Nobody else gets 10.1.0.50, even when the pool runs dry.
	for i := range 200 {
		rep, out := hs.discover("p1", 100, macN(1000+i))
		if out.Reason == ReasonPoolExhausted {
			if i != 190 {
				t.Fatalf("exhausted after %d clients, want 190 (191 addresses, one reserved)", i)
			}
			break
		}
		if a := ip4(parseReply(t, rep).YourIPAddr); a == ip("10.1.0.50") || a == ip("10.1.0.5") {
			t.Fatalf("client %d offered reserved %v", i, a)
		}
	}
	hs.checkStore()
}

// TestReservationHeldByAnother: a reservation for an address another
// client holds is written when that lease ends; meanwhile the reserved
// client gets a dynamic address.
func TestReservationHeldByAnother(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	squatter := macN(5)
	if err := st.Allocate(ctx, lease.Lease{IP: ip("10.1.0.50"), MAC: squatter, Pool: "voice", State: lease.StateBound,
		Expires: time.Now().Add(time.Hour), Port: "p9"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	hs := newHarnessStore(t, testConfig(), st)
	hs.now = time.Now()
	a := hs.dora("p1", 100, resvInMAC)
	if a == ip("10.1.0.50") {
		t.Fatal("got the address another client holds")
	}
	if hs.h.Stats().ReservationConflicts != 1 {
		t.Fatalf("conflicts %d", hs.h.Stats().ReservationConflicts)
	}
	// While the squatter holds it, the reserved client renews its dynamic address.
	renew := onPort("p1", 100, resvInMAC, pkt(dhcpv4.MessageTypeRequest, resvInMAC, withCiaddr(a)))
	if _, out := hs.do(renew); out.Reason != ReasonAck {
		t.Fatalf("renew while the reserved address is taken: %v", out)
	}
	// The squatter releases; the reservation is written and honoured.
	r := onPort("p9", 100, squatter, pkt(dhcpv4.MessageTypeRelease, squatter, withCiaddr(ip("10.1.0.50"))))
	if _, out := hs.do(r); out != silent(ReasonReleased) {
		t.Fatalf("release: %v", out)
	}
	// Now renewing the dynamic address is refused, to move the client.
	if _, out := hs.do(renew); out.Reason != ReasonNak {
		t.Fatalf("renew once the reserved address is free: %v", out)
	}
	rs, _ := st.Reservations(ctx)
	if len(rs) != 2 {
		t.Fatalf("reservations %v", rs)
	}
	if a := hs.dora("p1", 100, resvInMAC); a != ip("10.1.0.50") {
		t.Fatalf("after release got %v", a)
	}
	hs.checkStore()
}

func TestAffinity(t *testing.T) {
	hs := newHarness(t, smallPool(10))
	m := macN(1)
	a := hs.dora("p1", 0, m)
	rel := pkt(dhcpv4.MessageTypeRelease, m, withCiaddr(a))
	if _, out := hs.do(onPort("p1", 0, m, rel)); out != silent(ReasonReleased) {
		t.Fatalf("release: %v", out)
	}
	if l := hs.leaseAt(a); l.State != lease.StateReleased {
		t.Fatalf("after release: %s", l.State)
	}
	// Others get fresh addresses while there are any.
	for i := 2; i <= 9; i++ {
		if got := hs.dora("p1", 0, macN(i)); got == a {
			t.Fatalf("client %d got %v, the released address of client 1, while fresh ones were left", i, got)
		}
	}
	if got := hs.dora("p1", 0, m); got != a {
		t.Fatalf("returning client got %v, want its previous %v", got, a)
	}
	// After expiry and reclaim, the same.
	hs.now = hs.now.Add(2 * time.Hour)
	if n, err := hs.h.Reclaim(context.Background(), hs.now); err != nil || n != 9 {
		t.Fatalf("Reclaim: %d, %v", n, err)
	}
	if got := hs.dora("p1", 0, m); got != a {
		t.Fatalf("after expiry got %v, want %v", got, a)
	}
	hs.checkStore()
}

// TestDiscoverRequestedAddress: option 50 in a DISCOVER is honoured when
// the address is free.
func TestDiscoverRequestedAddress(t *testing.T) {
	hs := newHarness(t, testConfig())
	want := ip("10.1.0.123")
	rep, out := hs.discover("p1", 100, macN(9), optIP(dhcpv4.OptionRequestedIPAddress, want))
	if out.Reason != ReasonOffer || ip4(parseReply(t, rep).YourIPAddr) != want {
		t.Fatalf("%v %v", out, parseReply(t, rep).YourIPAddr)
	}
	// Taken: another client asking for it gets something else.
	rep, _ = hs.discover("p1", 100, macN(10), optIP(dhcpv4.OptionRequestedIPAddress, want))
	if got := ip4(parseReply(t, rep).YourIPAddr); got == want {
		t.Fatalf("offered %v twice", got)
	}
}

// TestBoundClientRediscovers: a DISCOVER from a bound client is offered
// its address and does not demote its lease to offered.
func TestBoundClientRediscovers(t *testing.T) {
	hs := newHarness(t, testConfig())
	m := macN(4)
	a := hs.dora("p1", 100, m)
	rep, out := hs.discover("p1", 100, m)
	if out.Reason != ReasonOffer || ip4(parseReply(t, rep).YourIPAddr) != a {
		t.Fatalf("%v", out)
	}
	if l := hs.leaseAt(a); l.State != lease.StateBound || !l.Expires.Equal(t0.Add(24*time.Hour)) {
		t.Fatalf("lease became %s until %v", l.State, l.Expires)
	}
}

func TestPoolExhaustion(t *testing.T) {
	hs := newHarness(t, smallPool(3))
	for i := range 3 {
		hs.dora("p1", 0, macN(i))
	}
	if _, out := hs.discover("p1", 0, macN(3)); out != drop(ReasonPoolExhausted) {
		t.Fatalf("4th client: %v", out)
	}
	// A release frees one.
	a := hs.leaseAtMAC("small", macN(0))
	hs.do(onPort("p1", 0, macN(0), pkt(dhcpv4.MessageTypeRelease, macN(0), withCiaddr(a))))
	if got := hs.dora("p1", 0, macN(3)); got != a {
		t.Fatalf("got %v, want the released %v", got, a)
	}
	if _, out := hs.discover("p1", 0, macN(4)); out != drop(ReasonPoolExhausted) {
		t.Fatalf("5th client: %v", out)
	}
	// Leases run out; nobody called Reclaim, yet the next DISCOVER finds
	// the pool refilled because exhaustion triggers a rebuild.
	hs.now = hs.now.Add(2 * time.Hour)
	if got := hs.dora("p1", 0, macN(4)); !got.IsValid() {
		t.Fatal("no address after expiry")
	}
	st := hs.h.Stats()
	if st.DroppedBy[ReasonPoolExhausted] != 2 || st.Pools[0].Total != 3 {
		t.Fatalf("stats %+v", st)
	}
}

// TestExpiredOffersComeBack: offers that were never requested are
// reclaimed after OfferTimeout.
func TestExpiredOffersComeBack(t *testing.T) {
	hs := newHarness(t, smallPool(2))
	hs.discover("p1", 0, macN(1))
	hs.discover("p1", 0, macN(2))
	if _, out := hs.discover("p1", 0, macN(3)); out.Reason != ReasonPoolExhausted {
		t.Fatalf("%v", out)
	}
	hs.now = hs.now.Add(31 * time.Second)
	if n, _ := hs.h.Reclaim(context.Background(), hs.now); n != 2 {
		t.Fatalf("reclaimed %d", n)
	}
	if _, out := hs.discover("p1", 0, macN(3)); out.Reason != ReasonOffer {
		t.Fatalf("%v", out)
	}
	if ps := hs.h.Stats().Pools[0]; ps.Assigned != 1 || ps.Free != 1 {
		t.Fatalf("pool stats %+v", ps)
	}
}

func TestConcurrentDiscover(t *testing.T) {
	const clients = 1000
	cfg := smallPool(1200)
	hs := newHarness(t, cfg)
	hs.h.log = testLogger(t)
	var wg sync.WaitGroup
	got := make([]netip.Addr, clients)
	acked := make([]netip.Addr, clients)
	errs := make(chan error, clients)
	for i := range clients {
		wg.Go(func() {
			m := macN(i)
			// Each client sends its DISCOVER twice at once, as a retransmit would.
			var inner sync.WaitGroup
			var offers [2]netip.Addr
			for k := range 2 {
				inner.Go(func() {
					rep, out := hs.h.Handle(context.Background(), Request{Port: fmt.Sprintf("p%d", i%48), Received: t0,
						Payload: pkt(dhcpv4.MessageTypeDiscover, m)})
					if out.Reason != ReasonOffer {
						errs <- fmt.Errorf("client %d: %v", i, out)
						return
					}
					d, err := dhcpv4.FromBytes(rep.Payload)
					if err != nil {
						errs <- err
						return
					}
					offers[k] = ip4(d.YourIPAddr)
				})
			}
			inner.Wait()
			if offers[0] != offers[1] {
				errs <- fmt.Errorf("client %d offered %v and %v", i, offers[0], offers[1])
				return
			}
			got[i] = offers[0]
			rep, out := hs.h.Handle(context.Background(), Request{Port: fmt.Sprintf("p%d", i%48), Received: t0,
				Payload: pkt(dhcpv4.MessageTypeRequest, m, optIP(dhcpv4.OptionServerIdentifier, ip("10.9.0.1")), optIP(dhcpv4.OptionRequestedIPAddress, got[i]))})
			if out.Reason != ReasonAck {
				errs <- fmt.Errorf("client %d REQUEST: %v", i, out)
				return
			}
			d, _ := dhcpv4.FromBytes(rep.Payload)
			acked[i] = ip4(d.YourIPAddr)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	seen := map[netip.Addr]int{}
	for i, a := range acked {
		if j, dup := seen[a]; dup {
			t.Fatalf("%v given to clients %d and %d", a, j, i)
		}
		seen[a] = i
		if l := hs.leaseAt(a); !bytes.Equal(l.MAC, macN(i)) || l.State != lease.StateBound {
			t.Fatalf("store has %v as %+v, want client %d bound", a, l, i)
		}
	}
	hs.checkStore()
	ps := hs.h.Stats().Pools[0]
	if ps.Assigned != clients || ps.Free != 200 {
		t.Fatalf("pool stats %+v", ps)
	}
}

// TestConcurrentAllocationRace: another server instance sharing the store
// (or a stale free set) takes addresses behind the allocator's back;
// ErrAddressInUse makes the handler try the next.
func TestConcurrentAllocationRace(t *testing.T) {
	hs := newHarness(t, smallPool(10))
	ctx := context.Background()
	for i := range 5 {
		a := u32Addr(addrU32(ip("10.9.0.10")) + uint32(i))
		if err := hs.store.Allocate(ctx, lease.Lease{IP: a, MAC: macN(500 + i), Pool: "small", State: lease.StateBound, Expires: t0.Add(time.Hour)}, t0); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		if a := hs.dora("p1", 0, macN(i)); addrU32(a)-addrU32(ip("10.9.0.10")) < 5 {
			t.Fatalf("got %v, held by another", a)
		}
	}
	if _, out := hs.discover("p1", 0, macN(9)); out.Reason != ReasonPoolExhausted {
		t.Fatalf("%v", out)
	}
	hs.checkStore()
}

func TestDeclineAndProbation(t *testing.T) {
	cfg := smallPool(2)
	cfg.DeclineProbation = 10 * time.Minute
	hs := newHarness(t, cfg)
	m := macN(1)
	a := hs.dora("p1", 0, m)
	decline := func(port string, from net.HardwareAddr, addr netip.Addr) Outcome {
		_, out := hs.do(onPort(port, 0, from, pkt(dhcpv4.MessageTypeDecline, from,
			optIP(dhcpv4.OptionRequestedIPAddress, addr), optIP(dhcpv4.OptionServerIdentifier, ip("10.9.0.1")))))
		return out
	}
	if out := decline("p2", m, a); out != drop(ReasonWrongPort) {
		t.Fatalf("decline from another port: %v", out)
	}
	if out := decline("p1", macN(2), a); out != drop(ReasonNotOwner) {
		t.Fatalf("decline by another MAC: %v", out)
	}
	if out := decline("p1", m, ip("10.9.0.11")); out != drop(ReasonUnknownClient) {
		t.Fatalf("decline of an unleased address: %v", out)
	}
	if _, out := hs.do(onPort("p1", 0, m, pkt(dhcpv4.MessageTypeDecline, m))); out != drop(ReasonRFCViolation) {
		t.Fatalf("decline without 50: %v", out)
	}
	if out := decline("p1", m, a); out != silent(ReasonDeclined) {
		t.Fatalf("decline: %v", out)
	}
	if l := hs.leaseAt(a); l.State != lease.StateDeclined || !l.Expires.Equal(hs.now.Add(10*time.Minute)) {
		t.Fatalf("after decline: %+v", l)
	}
	if ps := hs.h.Stats().Pools[0]; ps.Declined != 1 {
		t.Fatalf("pool stats %+v", ps)
	}
	// In probation: the declined address is offered to nobody.
	b := hs.dora("p1", 0, macN(2))
	if b == a {
		t.Fatal("declined address offered")
	}
	if _, out := hs.discover("p1", 0, macN(3)); out.Reason != ReasonPoolExhausted {
		t.Fatalf("with one address declined: %v", out)
	}
	// After probation it comes back.
	hs.now = hs.now.Add(11 * time.Minute)
	if n, _ := hs.h.Reclaim(context.Background(), hs.now); n != 1 {
		t.Fatalf("reclaimed %d", n)
	}
	if got := hs.dora("p1", 0, macN(3)); got != a {
		t.Fatalf("after probation got %v, want %v", got, a)
	}
}

// TestDeclineFlood (reliability test case 16): a port that declines every
// offer pins at most MaxDeclinesPerPort addresses; a phone elsewhere still
// gets one.
func TestDeclineFlood(t *testing.T) {
	cfg := smallPool(10)
	cfg.MaxDeclinesPerPort = 3
	cfg.MaxLeasesPerPort = 2
	hs := newHarness(t, cfg)
	declined := 0
	for i := range 20 {
		m := macN(i)
		rep, out := hs.discover("evil", 0, m)
		if out.Action != Answered {
			continue
		}
		a := ip4(parseReply(t, rep).YourIPAddr)
		_, out = hs.do(onPort("evil", 0, m, pkt(dhcpv4.MessageTypeDecline, m, optIP(dhcpv4.OptionRequestedIPAddress, a))))
		if out == silent(ReasonDeclined) {
			declined++
		} else if out != drop(ReasonDeclineLimit) {
			t.Fatalf("decline %d: %v", i, out)
		}
	}
	if declined != 3 {
		t.Fatalf("%d declines accepted, want 3", declined)
	}
	st := hs.h.Stats()
	if st.Pools[0].Declined != 3 || st.DroppedBy[ReasonPortLeaseLimit] == 0 || st.DroppedBy[ReasonDeclineLimit] == 0 {
		t.Fatalf("stats %+v", st)
	}
	hs.dora("phone", 0, macN(100))
}

func TestReleaseRules(t *testing.T) {
	hs := newHarness(t, testConfig())
	m := macN(1)
	a := hs.dora("p1", 100, m)
	release := func(port string, from net.HardwareAddr, addr netip.Addr, mods ...dhcpv4.Modifier) Outcome {
		mods = append([]dhcpv4.Modifier{withCiaddr(addr)}, mods...)
		_, out := hs.do(onPort(port, 100, from, pkt(dhcpv4.MessageTypeRelease, from, mods...)))
		return out
	}
	for _, c := range []struct {
		name string
		out  Outcome
		want Outcome
	}{
		{"wrong port", release("p2", m, a), drop(ReasonWrongPort)},
		{"not owner", release("p1", macN(2), a), drop(ReasonNotOwner)},
		{"unknown", release("p1", m, ip("10.1.0.190")), drop(ReasonUnknownClient)},
		{"no ciaddr", release("p1", m, netip.IPv4Unspecified()), drop(ReasonRFCViolation)},
		{"other server", release("p1", m, a, optIP(dhcpv4.OptionServerIdentifier, ip("10.1.0.3"))), drop(ReasonNotOurServer)},
		{"ok", release("p1", m, a, optIP(dhcpv4.OptionServerIdentifier, ip("10.1.0.2"))), silent(ReasonReleased)},
		{"again", release("p1", m, a), drop(ReasonUnknownClient)},
	} {
		if c.out != c.want {
			t.Errorf("%s: %v, want %v", c.name, c.out, c.want)
		}
	}
	if l := hs.leaseAt(a); l.State != lease.StateReleased {
		t.Fatalf("lease %s", l.State)
	}
}

func TestInform(t *testing.T) {
	hs := newHarness(t, testConfig())
	m := macN(1)
	rep, out := hs.do(onPort("p1", 100, m, pkt(dhcpv4.MessageTypeInform, m, withCiaddr(ip("10.1.0.3")), withVendorClass(vcPhone8845))))
	if out != (Outcome{Answered, ReasonAck}) {
		t.Fatalf("%v", out)
	}
	d := parseReply(t, rep)
	for _, code := range []dhcpv4.OptionCode{dhcpv4.OptionIPAddressLeaseTime, dhcpv4.OptionRenewTimeValue, dhcpv4.OptionRebindingTimeValue} {
		if d.Options.Has(code) {
			t.Errorf("INFORM reply carries %v", code)
		}
	}
	if !d.YourIPAddr.IsUnspecified() || d.TFTPServerName() != "tftp-8845.example.net" || d.MessageType() != dhcpv4.MessageTypeAck {
		t.Errorf("yiaddr %v, 66 %q, type %v", d.YourIPAddr, d.TFTPServerName(), d.MessageType())
	}
	if !bytes.Equal(rep.Payload[240:240+len(hs.h.pools[0].blocks[2][blockInform])], hs.h.pools[0].blocks[2][blockInform]) {
		t.Error("INFORM reply is not the inform block")
	}
	if _, out := hs.do(onPort("p1", 100, m, pkt(dhcpv4.MessageTypeInform, m))); out != drop(ReasonRFCViolation) {
		t.Fatalf("INFORM without ciaddr: %v", out)
	}
}

func TestClasses(t *testing.T) {
	hs := newHarness(t, testConfig())
	tests := []struct {
		vc        string
		wantClass int
		tftp      string
		name66    string
		vendor    []byte
	}{
		{"", 0, "10.0.0.69,10.0.0.70", "10.0.0.69", []byte{1, 4, 't', 'e', 's', 't'}},
		{vcPhone7841, 1, "10.0.0.71", "10.0.0.69", []byte{1, 4, 't', 'e', 's', 't'}},
		{vcPhone8845, 2, "10.0.0.69,10.0.0.70", "tftp-8845.example.net", []byte{2, 1, 0x88}},
		{vcPhone8845 + "x", 0, "10.0.0.69,10.0.0.70", "10.0.0.69", []byte{1, 4, 't', 'e', 's', 't'}},
		{"Cisco Systems, Inc. IP Phone CP-7", 0, "10.0.0.69,10.0.0.70", "10.0.0.69", []byte{1, 4, 't', 'e', 's', 't'}},
	}
	for i, tc := range tests {
		t.Run(fmt.Sprintf("%d-%s", i, tc.vc), func(t *testing.T) {
			var mods []dhcpv4.Modifier
			if tc.vc != "" {
				mods = append(mods, withVendorClass(tc.vc))
			}
			rep, out := hs.discover("p1", 100, macN(i), mods...)
			if out.Reason != ReasonOffer {
				t.Fatalf("%v", out)
			}
			d := parseReply(t, rep)
			var tftp []string
			v := d.Options.Get(dhcpv4.OptionTFTPServerAddress)
			for j := 0; j+4 <= len(v); j += 4 {
				tftp = append(tftp, netip.AddrFrom4([4]byte(v[j:j+4])).String())
			}
			if got := strings.Join(tftp, ","); got != tc.tftp {
				t.Errorf("150 = %s, want %s", got, tc.tftp)
			}
			if d.TFTPServerName() != tc.name66 || !bytes.Equal(d.Options.Get(dhcpv4.OptionVendorSpecificInformation), tc.vendor) {
				t.Errorf("66 %q 43 %x", d.TFTPServerName(), d.Options.Get(dhcpv4.OptionVendorSpecificInformation))
			}
			if got := hs.h.pools[0].ClassFor([]byte(tc.vc)); got != tc.wantClass {
				t.Errorf("class %d, want %d", got, tc.wantClass)
			}
		})
	}
}

func TestRateLimit(t *testing.T) {
	cfg := testConfig()
	cfg.RatePerPort, cfg.RateBurst = 10, 5
	hs := newHarness(t, cfg)
	for i := range 7 {
		_, out := hs.discover("p1", 100, macN(i))
		if want := i < 5; (out.Action == Answered) != want {
			t.Fatalf("packet %d: %v", i, out)
		}
		if i >= 5 && out != drop(ReasonRateLimited) {
			t.Fatalf("packet %d: %v", i, out)
		}
	}
	// Another port has its own bucket.
	if _, out := hs.discover("p2", 100, macN(50)); out.Action != Answered {
		t.Fatalf("other port: %v", out)
	}
	// 10/s refills one token per 100 ms.
	hs.now = hs.now.Add(250 * time.Millisecond)
	for i := range 3 {
		_, out := hs.discover("p1", 100, macN(60+i))
		if (out.Action == Answered) != (i < 2) {
			t.Fatalf("after 250 ms, packet %d: %v", i, out)
		}
	}
	if st := hs.h.Stats(); st.DroppedBy[ReasonRateLimited] != 3 {
		t.Fatalf("rate-limited %d", st.DroppedBy[ReasonRateLimited])
	}
}

// TestPortLeaseLimit (reliability test case 15): random chaddrs from one
// port stop at the cap; the same client may come back; other ports are
// unaffected.
func TestPortLeaseLimit(t *testing.T) {
	cfg := testConfig()
	cfg.MaxLeasesPerPort = 2
	hs := newHarness(t, cfg)
	a := hs.dora("evil", 100, macN(1))
	rep, _ := hs.discover("evil", 100, macN(2))
	b := ip4(parseReply(t, rep).YourIPAddr)
	for i := 3; i < 50; i++ {
		if _, out := hs.discover("evil", 100, macN(i)); out != drop(ReasonPortLeaseLimit) {
			t.Fatalf("client %d on a full port: %v", i, out)
		}
	}
	// Clients already counted still get served.
	if _, out := hs.discover("evil", 100, macN(1)); out.Reason != ReasonOffer {
		t.Fatalf("returning client: %v", out)
	}
	if _, out := hs.selectOffer("evil", 100, macN(2), ip("10.1.0.2"), b); out.Reason != ReasonAck {
		t.Fatalf("second client's REQUEST: %v", out)
	}
	// INIT-REBOOT into a free address is capped too.
	if _, out := hs.do(onPort("evil", 100, macN(77), pkt(dhcpv4.MessageTypeRequest, macN(77), optIP(dhcpv4.OptionRequestedIPAddress, ip("10.1.0.180"))))); out != drop(ReasonPortLeaseLimit) {
		t.Fatalf("init-reboot on a full port: %v", out)
	}
	// A phone elsewhere is fine.
	hs.dora("phone", 100, macN(100))
	// A release frees a slot.
	hs.do(onPort("evil", 100, macN(1), pkt(dhcpv4.MessageTypeRelease, macN(1), withCiaddr(a))))
	if _, out := hs.discover("evil", 100, macN(3)); out.Reason != ReasonOffer {
		t.Fatalf("after release: %v", out)
	}
	if _, out := hs.discover("evil", 100, macN(4)); out.Reason != ReasonPortLeaseLimit {
		t.Fatalf("full again: %v", out)
	}
	// An offer that expires frees its slot; the bound lease still counts.
	hs.now = hs.now.Add(time.Minute)
	if _, out := hs.discover("evil", 100, macN(4)); out.Reason != ReasonOffer {
		t.Fatalf("after the offer expired: %v", out)
	}
	if _, out := hs.discover("evil", 100, macN(5)); out.Reason != ReasonPortLeaseLimit {
		t.Fatalf("bound lease and new offer: %v", out)
	}
	hs.now = hs.now.Add(25 * time.Hour)
	if _, out := hs.discover("evil", 100, macN(5)); out.Reason != ReasonOffer {
		t.Fatalf("after expiry: %v", out)
	}
}

func TestChaddrCheck(t *testing.T) {
	cfg := testConfig()
	cfg.VerifyClientMAC = true
	hs := newHarness(t, cfg)
	m := macN(1)
	if _, out := hs.do(onPort("p1", 100, macN(2), pkt(dhcpv4.MessageTypeDiscover, m))); out != drop(ReasonChaddrMismatch) {
		t.Fatalf("spoofed chaddr: %v", out)
	}
	if _, out := hs.do(onPort("p1", 100, m, pkt(dhcpv4.MessageTypeDiscover, m))); out.Reason != ReasonOffer {
		t.Fatalf("matching chaddr: %v", out)
	}
	// Relayed requests carry the relay's MAC: not checked.
	if _, out := hs.do(onPort("up", 0, macN(9), pkt(dhcpv4.MessageTypeDiscover, m, withGiaddr(ip("172.16.5.1"))))); out.Reason != ReasonOffer {
		t.Fatalf("relayed: %v", out)
	}
}

func TestServerMessagesFromPort(t *testing.T) {
	hs := newHarness(t, testConfig())
	m := macN(1)
	var msgs [][]byte
	for _, mt := range []dhcpv4.MessageType{dhcpv4.MessageTypeOffer, dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak, 9 /* FORCERENEW */, 13 /* LEASEACTIVE */} {
		msgs = append(msgs, pkt(mt, m))
		// And as a proper BOOTREPLY.
		b := pkt(mt, m, dhcpv4.WithYourIP(net.IP{10, 1, 0, 99}))
		b[0] = opReply
		msgs = append(msgs, b)
	}
	// A BOOTREPLY with a client message type, and a bare, short one.
	b := pkt(dhcpv4.MessageTypeDiscover, m)
	b[0] = opReply
	msgs = append(msgs, b, []byte{opReply})
	for i, p := range msgs {
		if _, out := hs.do(onPort("p1", 100, m, p)); out != drop(ReasonServerMessage) {
			t.Errorf("message %d: %v", i, out)
		}
	}
	st := hs.h.Stats()
	if st.DroppedBy[ReasonServerMessage] != uint64(len(msgs)) {
		t.Fatalf("counted %d", st.DroppedBy[ReasonServerMessage])
	}
	// Kea's pkt4-offer-received and friends, for those with op 1.
	if r := st.ReceivedByType; r["offer"] != 1 || r["ack"] != 1 || r["nak"] != 1 || r["unknown"] != 2 {
		t.Fatalf("received by type %v", r)
	}
}

func TestNotForUs(t *testing.T) {
	hs := newHarness(t, testConfig())
	m := macN(1)
	a := hs.dora("p1", 100, m)
	r := onPort("p1", 100, m, pkt(dhcpv4.MessageTypeRequest, m, withCiaddr(a)))
	r.DstIP = ip("10.1.0.250") // another server renewing its own client
	if _, out := hs.do(r); out != drop(ReasonNotForUs) {
		t.Fatalf("%v", out)
	}
	for _, dst := range []netip.Addr{ip("10.1.0.2"), ip("10.1.0.255"), broadcastIP, {}} {
		r.DstIP = dst
		if _, out := hs.do(r); out.Reason != ReasonAck {
			t.Fatalf("to %v: %v", dst, out)
		}
	}
}

func TestNoPool(t *testing.T) {
	hs := newHarness(t, testConfig())
	if _, out := hs.discover("p1", 999, macN(1)); out != drop(ReasonNoPool) {
		t.Fatalf("unknown VLAN: %v", out)
	}
	if _, out := hs.do(onPort("p1", 100, macN(1), pkt(dhcpv4.MessageTypeDiscover, macN(1), withGiaddr(ip("10.99.0.1"))))); out != drop(ReasonNoPool) {
		t.Fatalf("unknown giaddr: %v", out)
	}
}

// killerPackets are reliability test case 2 and its relatives: each must
// be dropped as parse-failed.
func killerPackets() map[string][]byte {
	m := macN(66)
	base := pkt(dhcpv4.MessageTypeDiscover, m)
	end, _ := optionsEnd(base)
	// withOpts appends raw option bytes before END.
	withOpts := func(raw ...byte) []byte {
		p := slices.Clone(base[:end])
		p = append(p, raw...)
		return append(p, optEnd)
	}
	opt := func(code byte, v []byte) []byte { return append([]byte{code, byte(len(v))}, v...) }
	long := func(n int, c byte) []byte { return bytes.Repeat([]byte{c}, n) }
	cid253 := opt(optClientID, append([]byte{0}, long(252, 'x')...))
	host300 := append(opt(optHostName, long(200, 'a')), opt(optHostName, long(100, 'b'))...)
	noEnd := slices.Clone(base[:end])
	pastEnd := append(slices.Clone(base[:end]), optHostName, 40, 'a', 'b')
	onlyCode := append(slices.Clone(base[:end]), optHostName)
	twice53 := withOpts(opt(optMessageType, []byte{1})...)
	no53 := pkt(dhcpv4.MessageTypeDiscover, m, dhcpv4.WithoutOption(dhcpv4.OptionDHCPMessageType))
	bad53 := withOpts()
	if i := bytes.Index(bad53[240:], []byte{optMessageType, 1, 1}); i >= 0 {
		bad53[240+i+1] = 2 // length 2, swallowing the next byte
	}
	htype := slices.Clone(base)
	htype[1] = 6 // IEEE 802
	hlen := slices.Clone(base)
	hlen[2] = 16
	op := slices.Clone(base)
	op[0] = 3
	cookie := slices.Clone(base)
	cookie[239] = 0
	return map[string][]byte{
		"client-id 253 bytes":          withOpts(cid253...),
		"client-id 1 byte":             withOpts(opt(optClientID, []byte{1})...),
		"hostname zero length":         withOpts(opt(optHostName, nil)...),
		"hostname garbage":             withOpts(opt(optHostName, []byte{'a', 0, 1, 2, '\n', 0xff})...),
		"hostname over 255 (RFC 3396)": withOpts(host300...),
		"fqdn too short":               withOpts(opt(optClientFQDN, []byte{0})...),
		"fqdn label past end":          withOpts(opt(optClientFQDN, []byte{0x04, 0, 0, 10, 'a', 'b'})...),
		"fqdn compression pointer":     withOpts(opt(optClientFQDN, []byte{0x04, 0, 0, 0xc0, 0x0c})...),
		"fqdn text with controls":      withOpts(opt(optClientFQDN, []byte{0, 0, 0, 'a', '\n'})...),
		"truncated option 82":          withOpts(opt(optAgentInfo, []byte{1, 10, 'a', 'b', 'c'})...),
		"option 82 one byte":           withOpts(opt(optAgentInfo, []byte{1})...),
		"option 82 at the end, cut":    append(slices.Clone(base[:end]), optAgentInfo, 8, 1, 6, 'a'),
		"option overload":              withOpts(opt(optOverload, []byte{3})...),
		"no END":                       noEnd,
		"option past the end":          pastEnd,
		"option without length":        onlyCode,
		"53 twice":                     twice53,
		"53 missing":                   no53,
		"53 length 2":                  bad53,
		"53 zero":                      withOptsReplace53(base, 0),
		"50 of 3 bytes":                withOpts(opt(optRequestedIP, []byte{10, 1, 0})...),
		"54 of 5 bytes":                withOpts(opt(optServerID, []byte{10, 1, 0, 2, 0})...),
		"57 of 1 byte":                 withOpts(opt(optMaxMsgSize, []byte{2})...),
		"60 empty":                     withOpts(opt(optVendorClass, nil)...),
		"55 empty":                     withOpts(opt(optParamRequest, nil)...),
		"htype 6":                      htype,
		"hlen 16":                      hlen,
		"op 3":                         op,
		"bad cookie":                   cookie,
		"header only":                  base[:236],
		"empty":                        {},
		"one byte":                     {1},
	}
}

func withOptsReplace53(base []byte, v byte) []byte {
	p := slices.Clone(base)
	if i := bytes.Index(p[240:], []byte{optMessageType, 1}); i >= 0 {
		p[240+i+2] = v
	}
	return p
}

func TestKillerPackets(t *testing.T) {
	hs := newHarness(t, testConfig())
	pkts := killerPackets()
	for name, p := range pkts {
		t.Run(name, func(t *testing.T) {
			rep, out := hs.do(onPort("p1", 100, macN(66), p))
			if out != drop(ReasonParseFailed) || rep.Payload != nil {
				t.Fatalf("%v", out)
			}
			// The next good DISCOVER is served.
			if _, out := hs.discover("p1", 100, macN(67)); out.Reason != ReasonOffer {
				t.Fatalf("good DISCOVER after it: %v", out)
			}
		})
	}
	st := hs.h.Stats()
	if st.DroppedBy[ReasonParseFailed] != uint64(len(pkts)) || st.Offers != uint64(len(pkts)) {
		t.Fatalf("parse-failed %d offers %d, want %d", st.DroppedBy[ReasonParseFailed], st.Offers, len(pkts))
	}
}

// TestAcceptedOddities: things that look odd but are legal pass.
func TestAcceptedOddities(t *testing.T) {
	hs := newHarness(t, testConfig())
	m := macN(70)
	base := pkt(dhcpv4.MessageTypeDiscover, m)
	end, _ := optionsEnd(base)
	cases := map[string][]byte{
		"client-id 128 bytes":    append(append(slices.Clone(base[:end]), optClientID, 128), append(bytes.Repeat([]byte{7}, 128), optEnd)...),
		"hostname NUL-ended":     append(append(slices.Clone(base[:end]), optHostName, 5), 'a', 'b', 'c', 0, 0, optEnd),
		"pads between options":   append(append(slices.Clone(base[:end]), 0, 0, 0), optEnd),
		"garbage after END":      append(slices.Clone(base[:end+1]), 1, 2, 3, 0xff, 0xff),
		"fqdn wire, partial":     append(append(slices.Clone(base[:end]), optClientFQDN, 8, 0x05, 0, 0, 4, 's', 'e', 'p', '1'), optEnd),
		"fqdn wire, terminated":  append(append(slices.Clone(base[:end]), optClientFQDN, 9, 0x05, 0, 0, 4, 's', 'e', 'p', '1', 0), optEnd),
		"unknown option, len 0":  append(append(slices.Clone(base[:end]), 224, 0), optEnd),
		"no padding to 300":      append(slices.Clone(base[:end]), optEnd),
		"utf-8 hostname":         append(append(slices.Clone(base[:end]), optHostName, 4, 0xc3, 0xa9, 'a', 'b'), optEnd),
		"vendor class 2 options": append(append(slices.Clone(base[:end]), optVendorClass, 3, 'a', 'b', 'c', optVendorClass, 1, 'd'), optEnd),
	}
	for name, p := range cases {
		if _, out := hs.do(onPort("p1", 100, m, p)); out.Reason != ReasonOffer {
			t.Errorf("%s: %v", name, out)
		}
	}
}

func TestUnknownMessageType(t *testing.T) {
	hs := newHarness(t, testConfig())
	p := withOptsReplace53(pkt(dhcpv4.MessageTypeDiscover, macN(1)), 10) // LEASEQUERY
	if _, out := hs.do(onPort("p1", 100, macN(1), p)); out != drop(ReasonUnknownType) {
		t.Fatalf("%v", out)
	}
	if hs.h.Stats().ReceivedByType["unknown"] != 1 {
		t.Fatal("not counted as unknown")
	}
}

func TestStats(t *testing.T) {
	hs := newHarness(t, testConfig())
	a := hs.dora("p1", 100, macN(1))
	hs.do(onPort("p1", 100, macN(1), pkt(dhcpv4.MessageTypeRelease, macN(1), withCiaddr(a))))
	hs.do(onPort("p1", 100, macN(2), []byte("junk")))
	hs.do(onPort("p1", 100, macN(2), pkt(dhcpv4.MessageTypeRequest, macN(2), optIP(dhcpv4.OptionRequestedIPAddress, ip("192.168.10.100")))))
	st := hs.h.Stats()
	want := map[string]uint64{"discover": 1, "request": 2, "release": 1}
	for k, v := range st.ReceivedByType {
		if v != want[k] {
			t.Errorf("received %s = %d, want %d", k, v, want[k])
		}
	}
	if len(st.ReceivedByType) != len(MessageTypes) || len(st.DroppedBy) != len(Reasons(Dropped)) || len(st.Silent) != len(Reasons(Silent)) {
		t.Errorf("maps do not list every key: %+v", st)
	}
	if st.Received != 5 || st.Offers != 1 || st.Acks != 1 || st.Naks != 1 || st.Sent != 3 || st.Dropped != 1 ||
		st.DroppedBy[ReasonParseFailed] != 1 || st.Silent[ReasonReleased] != 1 {
		t.Errorf("stats %+v", st)
	}
	voice := st.Pools[0]
	if voice.Name != "voice" || voice.Total != 192 || voice.Assigned != 0 || voice.Free != 190 {
		t.Errorf("voice pool %+v (191 in range + 1 reserved outside; 1 reserved inside)", voice)
	}
}

// TestRestartKeepsState: a new handler on the same store knows every
// lease, reservation and probation.
func TestRestartKeepsState(t *testing.T) {
	cfg := smallPool(4)
	hs := newHarness(t, cfg)
	hs.now = time.Now() // NewHandler reads the store at the real time
	a := hs.dora("p1", 0, macN(1))
	b := hs.dora("p1", 0, macN(2))
	hs.do(onPort("p1", 0, macN(2), pkt(dhcpv4.MessageTypeDecline, macN(2), optIP(dhcpv4.OptionRequestedIPAddress, b))))
	rep, _ := hs.discover("p1", 0, macN(3))
	c := ip4(parseReply(t, rep).YourIPAddr)

	h2, err := NewHandler(cfg, hs.store, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if ps := h2.Pools(); len(ps) != 1 || ps[0].Name() != "small" {
		t.Fatalf("Pools() = %v", ps)
	}
	hs.h = h2
	ps := h2.Stats().Pools[0]
	if ps.Assigned != 2 || ps.Declined != 1 || ps.Free != 1 {
		t.Fatalf("after restart %+v", ps)
	}
	got := hs.dora("p1", 0, macN(4))
	if got == a || got == b || got == c {
		t.Fatalf("after restart offered %v (a %v b %v c %v)", got, a, b, c)
	}
	if _, out := hs.discover("p1", 0, macN(5)); out.Reason != ReasonPoolExhausted {
		t.Fatalf("%v", out)
	}
}

// TestStoreFailure: store errors are dropped as processing-failed and the
// next request is served.
func TestStoreFailure(t *testing.T) {
	hs := newHarness(t, testConfig())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := onPort("p1", 100, macN(1), pkt(dhcpv4.MessageTypeDiscover, macN(1)))
	r.Received = t0
	if _, out := hs.h.Handle(ctx, r); out != drop(ReasonProcessingFailed) {
		t.Fatalf("%v", out)
	}
	if _, out := hs.discover("p1", 100, macN(1)); out.Reason != ReasonOffer {
		t.Fatalf("%v", out)
	}
	hs.checkStore()
}

func TestNewHandlerErrors(t *testing.T) {
	if _, err := NewHandler(testConfig(), nil, nil); err == nil {
		t.Error("nil store accepted")
	}
	for _, mut := range []func(*Config){
		func(c *Config) { c.OfferTimeout = -1 },
		func(c *Config) { c.DeclineProbation = -1 },
		func(c *Config) { c.MaxLeasesPerPort = -1 },
		func(c *Config) { c.MaxDeclinesPerPort = -1 },
		func(c *Config) { c.RatePerPort = -1 },
		func(c *Config) { c.RateBurst = -1 },
		func(c *Config) { c.Pools = nil },
	} {
		c := testConfig()
		mut(&c)
		if _, err := NewHandler(c, lease.NewMemory(), nil); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
}

var errBoom = errors.New("boom")

// failingStore fails Iterate.
type failingStore struct {
	lease.Store
}

func (f *failingStore) Iterate(ctx context.Context, fn func(lease.Lease) error) error {
	return errBoom
}

func TestNewHandlerStoreError(t *testing.T) {
	if _, err := NewHandler(testConfig(), &failingStore{Store: lease.NewMemory()}, nil); !errors.Is(err, errBoom) {
		t.Fatalf("got %v", err)
	}
}

// TestDeclineThenDiscover: the client that declined restarts with a
// DISCOVER (RFC 2131 section 3.1); it gets another address and the
// declined one stays on probation although the store frees a client's
// previous address on Allocate.
func TestDeclineThenDiscover(t *testing.T) {
	hs := newHarness(t, smallPool(3))
	m := macN(1)
	a := hs.dora("p1", 0, m)
	if _, out := hs.do(onPort("p1", 0, m, pkt(dhcpv4.MessageTypeDecline, m, optIP(dhcpv4.OptionRequestedIPAddress, a)))); out != silent(ReasonDeclined) {
		t.Fatalf("decline: %v", out)
	}
	until := hs.leaseAt(a).Expires
	b := hs.dora("p1", 0, m)
	if b == a {
		t.Fatal("offered the address it declined")
	}
	if l := hs.leaseAt(a); l.State != lease.StateDeclined || !l.Expires.Equal(until) {
		t.Fatalf("declined address now %s until %v", l.State, l.Expires)
	}
	c := hs.dora("p1", 0, macN(2))
	if _, out := hs.discover("p1", 0, macN(3)); out.Reason != ReasonPoolExhausted || c == a {
		t.Fatalf("pool with one address on probation: %v, got %v", out, c)
	}
	if ps := hs.h.Stats().Pools[0]; ps.Declined != 1 || ps.Assigned != 2 {
		t.Fatalf("pool stats %+v", ps)
	}
}
