package wiretest

import (
	"net"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// TCPConversation builds the Ethernet frames of one TCP connection, from
// the handshake on, so that a dissector registered on a TCP port sees a
// stream it can follow: each Send is one segment with the sequence and
// acknowledgement numbers a real stack would put there.
type TCPConversation struct {
	tb               testing.TB
	clientIP         net.IP
	serverIP         net.IP
	clientPort       uint16
	serverPort       uint16
	clientSeq, srvSq uint32
	frames           [][]byte
}

var (
	clientMAC = net.HardwareAddr{0x00, 0x1b, 0x54, 0x01, 0x02, 0x03}
	serverMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
)

// NewTCPConversation starts a connection from client to server (IPv4
// addresses) with the three-way handshake.
func NewTCPConversation(tb testing.TB, client string, clientPort uint16, server string, serverPort uint16) *TCPConversation {
	tb.Helper()
	c := &TCPConversation{tb: tb, clientIP: net.ParseIP(client).To4(), serverIP: net.ParseIP(server).To4(),
		clientPort: clientPort, serverPort: serverPort, clientSeq: 1000, srvSq: 5000}
	if c.clientIP == nil || c.serverIP == nil {
		tb.Fatalf("TCPConversation: bad IPv4 address %q or %q", client, server)
	}
	c.segment(true, layers.TCP{SYN: true}, nil)
	c.clientSeq++
	c.segment(false, layers.TCP{SYN: true, ACK: true}, nil)
	c.srvSq++
	c.segment(true, layers.TCP{ACK: true}, nil)
	return c
}

// Send adds one segment carrying payload, from the client if fromClient,
// else from the server.
func (c *TCPConversation) Send(fromClient bool, payload []byte) {
	c.segment(fromClient, layers.TCP{PSH: true, ACK: true}, payload)
	if fromClient {
		c.clientSeq += uint32(len(payload))
	} else {
		c.srvSq += uint32(len(payload))
	}
}

// Frames are the frames so far.
func (c *TCPConversation) Frames() [][]byte { return c.frames }

func (c *TCPConversation) segment(fromClient bool, tcp layers.TCP, payload []byte) {
	c.tb.Helper()
	eth := layers.Ethernet{SrcMAC: clientMAC, DstMAC: serverMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: c.clientIP, DstIP: c.serverIP, Flags: layers.IPv4DontFragment}
	tcp.SrcPort, tcp.DstPort = layers.TCPPort(c.clientPort), layers.TCPPort(c.serverPort)
	tcp.Seq, tcp.Ack = c.clientSeq, c.srvSq
	if !fromClient {
		eth.SrcMAC, eth.DstMAC = eth.DstMAC, eth.SrcMAC
		ip.SrcIP, ip.DstIP = ip.DstIP, ip.SrcIP
		tcp.SrcPort, tcp.DstPort = tcp.DstPort, tcp.SrcPort
		tcp.Seq, tcp.Ack = c.srvSq, c.clientSeq
	}
	if tcp.SYN && !tcp.ACK {
		tcp.Ack = 0
	}
	tcp.Window = 64240
	if err := tcp.SetNetworkLayerForChecksum(&ip); err != nil {
		c.tb.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, &eth, &ip, &tcp, gopacket.Payload(payload)); err != nil {
		c.tb.Fatal(err)
	}
	c.frames = append(c.frames, append([]byte(nil), buf.Bytes()...))
}
