package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// dhcpPhase gets the phone an address the way a Cisco phone does: DISCOVER
// with its vendor class (option 60) and a parameter list asking for option
// 150, REQUEST for the offer, and RFC 2131 retransmission (4 s doubling to
// 64 s, +-1 s, all scaled by --time-scale) until the storm's deadline.
//
// subnetOf, if set, checks the lab's wiring: the address must come from
// the pool of the phone's voice VLAN.
type dhcpPhase struct {
	timeScale float64
	subnetOf  func(vlan uint16) netip.Prefix
}

func (dhcpPhase) Name() string { return "dhcp" }

// WireTime is the phase's latency in the report: the time its exchanges
// took on the wire and in the server, from each exchange's first request
// leaving the phone (the start of the system call that sends it) to the
// answer reaching the phone's kernel (the raw socket's SO_TIMESTAMPNS),
// retransmissions included. Left out is the phone's own time: between
// its boot and its DISCOVER, between an OFFER's arrival and its REQUEST,
// and its wait for its turn on the raw socket the port's phones share
// (up to 1.8 s in a 10,000-phone storm, where each send also runs the
// kernel's receive work that is pending). A real phone takes microseconds for
// that, while the lab's thousands of phones share two cores with the
// appliance and the phones' downloads, so counting it would measure the
// simulator's wait for a CPU, not the server.
func (dhcpPhase) WireTime(ph *Phone) time.Duration { return ph.dhcpWire }

// Option 150, the TFTP server list Cisco phones ask for.
const optTFTPServers = 150

func (d dhcpPhase) Run(ctx context.Context, ph *Phone) error {
	ph.dhcpWire = 0
	for {
		ack, err := d.dora(ctx, ph)
		if errors.Is(err, errNAK) {
			continue // start over from DISCOVER, as RFC 2131 says
		}
		if err != nil {
			return err
		}
		yi, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
		if !ok || !yi.IsValid() || yi.IsUnspecified() {
			return fmt.Errorf("ACK without an address")
		}
		if d.subnetOf != nil && !d.subnetOf(ph.VoiceVLAN).Contains(yi) {
			return fmt.Errorf("ACK gave %s, outside %s, the subnet of voice VLAN %d", yi, d.subnetOf(ph.VoiceVLAN), ph.VoiceVLAN)
		}
		bits, size := ack.SubnetMask().Size()
		if size != 32 || bits == 0 {
			return fmt.Errorf("ACK for %s without a subnet mask", yi)
		}
		ph.IP = yi
		ph.Subnet = netip.PrefixFrom(yi, bits).Masked()
		ph.held.Store(&heldAddress{Phone: ph.Name, MAC: ph.MAC, VLAN: ph.VoiceVLAN, IP: yi})
		ph.TFTPServers = nil
		for _, ip := range dhcpv4.GetIPs(dhcpv4.GenericOptionCode(optTFTPServers), ack.Options) {
			if a, ok := netip.AddrFromSlice(ip.To4()); ok {
				ph.TFTPServers = append(ph.TFTPServers, a)
			}
		}
		if len(ph.TFTPServers) == 0 {
			return fmt.Errorf("ACK for %s has no option 150 (TFTP servers)", yi)
		}
		return nil
	}
}

var errNAK = errors.New("NAK")

func (d dhcpPhase) dora(ctx context.Context, ph *Phone) (*dhcpv4.DHCPv4, error) {
	vendorClass := "Cisco Systems, Inc. IP Phone " + ph.Model.Model
	// A phone asks for the same options in DISCOVER and REQUEST; servers
	// such as Kea send only what was asked for.
	asks := dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer,
		dhcpv4.OptionDomainName, dhcpv4.OptionNTPServers, dhcpv4.OptionTFTPServerName,
		dhcpv4.GenericOptionCode(optTFTPServers))
	disc, err := dhcpv4.NewDiscovery(ph.MAC,
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(vendorClass)),
		dhcpv4.WithOption(dhcpv4.OptHostName(ph.Name)),
		asks,
	)
	if err != nil {
		return nil, err
	}
	offer, err := d.exchange(ctx, ph, disc, dhcpv4.MessageTypeOffer)
	if err != nil {
		return nil, fmt.Errorf("DISCOVER: %w", err)
	}
	req, err := dhcpv4.NewRequestFromOffer(offer,
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(vendorClass)),
		dhcpv4.WithOption(dhcpv4.OptHostName(ph.Name)),
		asks,
	)
	if err != nil {
		return nil, err
	}
	ack, err := d.exchange(ctx, ph, req, dhcpv4.MessageTypeAck)
	if err != nil {
		return nil, fmt.Errorf("REQUEST %s: %w", offer.YourIPAddr, err)
	}
	return ack, nil
}

// exchange sends m and retransmits it until a reply of type want (or a
// NAK) for its transaction arrives.
func (d dhcpPhase) exchange(ctx context.Context, ph *Phone, m *dhcpv4.DHCPv4, want dhcpv4.MessageType) (*dhcpv4.DHCPv4, error) {
	io := ph.Port.io
	xid := uint32(m.TransactionID[0])<<24 | uint32(m.TransactionID[1])<<16 | uint32(m.TransactionID[2])<<8 | uint32(m.TransactionID[3])
	replies := io.register(xid)
	defer io.unregister(xid)
	frame := clientFrame(ph.MAC, netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255}), m.ToBytes())
	backoff := 4 * time.Second
	var firstSent time.Time
	for attempt := 0; ; attempt++ {
		// The port's phones share one socket and take turns on it: the
		// request leaves the phone when its turn comes.
		sent, err := io.conn.Send(frame)
		if err != nil {
			return nil, err
		}
		if attempt == 0 {
			firstSent = sent
		}
		if attempt > 0 {
			ph.Retransmits++
		}
		jitter := time.Duration((ph.rng.Float64()*2 - 1) * float64(time.Second))
		wait := time.Duration(float64(backoff+jitter) * d.timeScale)
		t := time.NewTimer(wait)
	waiting:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, fmt.Errorf("no %s after %d attempts: %w", want, attempt+1, context.Cause(ctx))
			case <-t.C:
				break waiting
			case reply := <-replies:
				r, err := dhcpv4.FromBytes(reply.payload)
				if err != nil || r.OpCode != dhcpv4.OpcodeBootReply || !macEqual(r.ClientHWAddr, ph.MAC) {
					continue
				}
				switch r.MessageType() {
				case want:
					t.Stop()
					ph.dhcpWire += reply.at.Sub(firstSent)
					return r, nil
				case dhcpv4.MessageTypeNak:
					t.Stop()
					ph.dhcpWire += reply.at.Sub(firstSent)
					return nil, errNAK
				}
			}
		}
		backoff = min(backoff*2, 64*time.Second)
	}
}

func macEqual(a, b net.HardwareAddr) bool { return string(a) == string(b) }
