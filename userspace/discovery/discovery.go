// Package discovery runs CDP and LLDP-MED on the phone ports: every port
// advertises itself (every Interval, and at once when its link comes up),
// answers a phone's VoIP VLAN Query or power request at once, withdraws
// its advertisement when phoneboot stops, and records what it hears in the
// neighbour table.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/cdp"
	"github.com/phoneboot/phoneboot/userspace/lldp"
	"github.com/phoneboot/phoneboot/userspace/neighbor"
	"github.com/phoneboot/phoneboot/userspace/rawsock"
)

// PortConfig is one port: what it advertises on each protocol. The
// source MACs may be left empty; the interface's own address is used. A
// port with CDP or LLDP nil does not speak that protocol (it still hears
// it, for the neighbour table).
type PortConfig struct {
	Name string
	CDP  *cdp.PortConfig
	LLDP *lldp.PortConfig
}

// Config of the service.
type Config struct {
	Ports []PortConfig
	// Interval between advertisements; 0 means cdp.Interval (60 s).
	Interval time.Duration
	// Neighbors receives every neighbour heard; required.
	Neighbors *neighbor.Table
	// OnNeighbor, if set, is called with each neighbour heard, after the
	// table has it (from the port's reading goroutine: keep it short).
	OnNeighbor func(neighbor.Neighbor)
	// PowerRequest, if set, decides a powered device's request on a PoE
	// port (CDP Power Requested; LLDP-MED Extended Power-via-MDI sent as
	// a PD): it gets the levels in mW, most preferred first, and returns
	// the power available to the port, which the port advertises from
	// then on (at once when it changed, and always in answer to a new CDP
	// request). It is asked once per new request, from the port's reading
	// goroutine: keep it short.
	PowerRequest func(port string, levelsMW []uint32) (availableMW uint32)
}

// Stats counts frames; every frame read lands in exactly one Rx counter.
type Stats struct {
	CDPReceived      uint64 `json:"cdp_received"`
	CDPBadChecksum   uint64 `json:"cdp_bad_checksum"` // decoded and used all the same
	CDPNotCDP        uint64 `json:"cdp_not_cdp"`      // DTP, VTP... on the same address
	CDPMalformed     uint64 `json:"cdp_malformed"`
	LLDPReceived     uint64 `json:"lldp_received"`
	LLDPMalformed    uint64 `json:"lldp_malformed"`
	Advertisements   uint64 `json:"advertisements"`    // frames sent, both protocols
	ImmediateReplies uint64 `json:"immediate_replies"` // CDP answers to a query or power request
	SendErrors       uint64 `json:"send_errors"`
}

type stats struct {
	cdpReceived, cdpBadChecksum, cdpNotCDP, cdpMalformed atomic.Uint64
	lldpReceived, lldpMalformed                          atomic.Uint64
	advertisements, immediate, sendErrors                atomic.Uint64
}

// Service is the discovery protocols on every configured port.
type Service struct {
	cfg   Config
	log   *slog.Logger
	ports []*port
	stats stats
	// links delivers link state changes until linksDone is closed.
	links     chan netlink.LinkUpdate
	linksDone chan struct{}
	linksErr  atomic.Pointer[error] // why the link updates stopped
	closeOnce sync.Once
}

// linkEventsBuffer is the receive buffer of the link subscription.
const linkEventsBuffer = 4 << 20

type port struct {
	name    string
	ifindex int
	cdpConn *rawsock.Conn
	lldp    *rawsock.Conn
	mu      sync.Mutex // guards cdp, lldpP and up, and serialises sends
	cdp     *cdp.Port  // nil: CDP not advertised
	lldpP   *lldp.Port // nil: LLDP not advertised
	up      bool       // the link's last known operational state
	// lldpPowerMW is the last LLDP-MED power request heard, so that a
	// request repeated in every LLDPDU is decided once.
	lldpPowerMW uint32
	buf         []byte
}

// New opens the ports' raw sockets and subscribes to link changes, in the
// calling thread's network namespace. It fails as a whole.
func New(cfg Config, log *slog.Logger) (_ *Service, err error) {
	if cfg.Neighbors == nil {
		return nil, errors.New("discovery: a neighbour table is required")
	}
	if cfg.Interval == 0 {
		cfg.Interval = cdp.Interval
	}
	if cfg.Interval < time.Second {
		return nil, fmt.Errorf("discovery: interval %s is below 1s", cfg.Interval)
	}
	s := &Service{cfg: cfg, log: log, links: make(chan netlink.LinkUpdate, 64), linksDone: make(chan struct{})}
	defer func() {
		if err != nil {
			s.closeSockets()
		}
	}()
	for _, pc := range cfg.Ports {
		p, err := s.openPort(pc)
		if err != nil {
			return nil, fmt.Errorf("discovery: port %s: %w", pc.Name, err)
		}
		s.ports = append(s.ports, p)
	}
	// A burst of link changes (48 ports coming up together, each also a
	// bridge port's state change when the ports are bridged) outgrows the
	// default socket buffer while Run is busy advertising; the kernel then
	// drops the subscription's messages and the subscription ends. A
	// forced 4 MiB buffer holds thousands of them.
	err = netlink.LinkSubscribeWithOptions(s.links, s.linksDone, netlink.LinkSubscribeOptions{
		ReceiveBufferSize:      linkEventsBuffer,
		ReceiveBufferForceSize: true,
		ErrorCallback: func(err error) {
			select {
			case <-s.linksDone: // closing the socket at Close ends the receive
			default:
				s.linksErr.Store(&err)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("discovery: subscribe to link changes: %w", err)
	}
	// The links' state is read only now that every later change is queued
	// for Run: the kernel sets a link running a moment after its carrier
	// comes on (linkwatch batches it), so a state read before subscribing
	// could miss a port going up in between, and nobody would hear it.
	for _, p := range s.ports {
		ifi, err := net.InterfaceByIndex(p.ifindex)
		if err != nil {
			return nil, fmt.Errorf("discovery: port %s: %w", p.name, err)
		}
		p.up = ifi.Flags&net.FlagRunning != 0
	}
	return s, nil
}

func (s *Service) openPort(pc PortConfig) (_ *port, err error) {
	ifi, err := net.InterfaceByName(pc.Name)
	if err != nil {
		return nil, err
	}
	p := &port{name: pc.Name, ifindex: ifi.Index} // up: read by New once subscribed
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	if pc.CDP != nil {
		c := *pc.CDP
		if len(c.MAC) == 0 {
			c.MAC = ifi.HardwareAddr
		}
		if p.cdp, err = cdp.NewPort(c); err != nil {
			return nil, err
		}
	}
	if pc.LLDP != nil {
		c := *pc.LLDP
		if len(c.MAC) == 0 {
			c.MAC = ifi.HardwareAddr
		}
		if p.lldpP, err = lldp.NewPort(c); err != nil {
			return nil, err
		}
	}
	// Small buffers: a port hears one advertisement a minute per neighbour.
	open := func(f []bpf.Instruction) (*rawsock.Conn, error) {
		return rawsock.Listen(pc.Name, rawsock.Options{Filter: f, RecvBuffer: 256 << 10})
	}
	if p.cdpConn, err = open(cdp.Filter()); err != nil {
		return nil, err
	}
	if p.lldp, err = open(lldp.Filter()); err != nil {
		return nil, err
	}
	return p, nil
}

// Run advertises on every port whose link is up, then every Interval and
// on every link-up, and reads until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, p := range s.ports {
		wg.Add(2)
		go func() { defer wg.Done(); s.read(p, p.cdpConn, s.onCDP) }()
		go func() { defer wg.Done(); s.read(p, p.lldp, s.onLLDP) }()
		if p.up {
			s.advertise(p, "start")
		}
	}
	tick := time.NewTicker(s.cfg.Interval)
	defer tick.Stop()
	byIndex := map[int]*port{}
	for _, p := range s.ports {
		byIndex[p.ifindex] = p
	}
	defer wg.Wait()
	defer s.closeSockets() // ends the readers
	for {
		select {
		case <-ctx.Done():
			s.withdraw()
			return nil
		case <-tick.C:
			for _, p := range s.ports {
				if s.isUp(p) {
					s.advertise(p, "interval")
				}
			}
		case u, ok := <-s.links:
			if !ok {
				if err := s.linksErr.Load(); err != nil {
					return fmt.Errorf("discovery: link updates stopped: %w", *err)
				}
				return errors.New("discovery: link updates stopped")
			}
			p := byIndex[int(u.Index)]
			if p == nil {
				continue
			}
			up := u.Flags&unix.IFF_RUNNING != 0
			p.mu.Lock()
			was := p.up
			p.up = up
			if was && !up && p.cdp != nil {
				p.cdp.LinkDown()
			}
			if was && !up {
				p.lldpPowerMW = 0 // the next device asks afresh
			}
			p.mu.Unlock()
			if up && !was {
				s.advertise(p, "link up")
			}
		}
	}
}

func (s *Service) isUp(p *port) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.up
}

// advertise sends the port's CDP and LLDP advertisements.
func (s *Service) advertise(p *port, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cdp != nil {
		s.send(p, p.cdpConn, p.cdp.Advertisement(), why)
	}
	if p.lldpP != nil {
		s.send(p, p.lldp, p.lldpP.Advertisement(), why)
	}
}

// withdraw tells the neighbours to forget this port at once, as a switch
// does before its interface goes down.
func (s *Service) withdraw() {
	for _, p := range s.ports {
		if !s.isUp(p) {
			continue
		}
		p.mu.Lock()
		if p.cdp != nil {
			s.send(p, p.cdpConn, p.cdp.Withdrawal(), "stop")
		}
		if p.lldpP != nil {
			s.send(p, p.lldp, p.lldpP.Withdrawal(), "stop")
		}
		p.mu.Unlock()
	}
}

type frameEncoder interface {
	AppendFrame([]byte) ([]byte, error)
}

// send encodes and writes one frame; p.mu is held.
func (s *Service) send(p *port, c *rawsock.Conn, m frameEncoder, why string) {
	var err error
	p.buf, err = m.AppendFrame(p.buf[:0])
	if err == nil {
		err = c.Write(p.buf)
	}
	if err != nil {
		s.stats.sendErrors.Add(1)
		s.log.Warn("discovery: advertisement not sent", "port", p.name, "why", why, "error", err)
		return
	}
	s.stats.advertisements.Add(1)
}

// read hands every frame the socket reads to handle until it is closed.
func (s *Service) read(p *port, c *rawsock.Conn, handle func(*port, []byte)) {
	buf := make([]byte, 9216)
	for {
		f, err := c.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				s.log.Warn("discovery: read failed; the port hears no more neighbours", "port", p.name, "error", err)
			}
			return
		}
		// A tagged CDP or LLDP frame is still the neighbour's: phones send
		// them untagged, but a trunk may carry them in a VLAN.
		handle(p, f.Data)
	}
}

func (s *Service) onCDP(p *port, frame []byte) {
	m, err := cdp.Decode(frame)
	switch {
	case errors.Is(err, cdp.ErrNotCDP):
		s.stats.cdpNotCDP.Add(1)
		return
	case errors.Is(err, cdp.ErrChecksum):
		// Frames with bad checksums exist in the wild; the content is
		// used, the mismatch counted and logged.
		s.stats.cdpBadChecksum.Add(1)
		s.log.Debug("discovery: CDP checksum mismatch", "port", p.name, "error", err)
	case err != nil:
		s.stats.cdpMalformed.Add(1)
		s.log.Debug("discovery: malformed CDP frame", "port", p.name, "error", err)
		return
	default:
		s.stats.cdpReceived.Add(1)
	}
	s.heard(m.Neighbor(p.name))
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cdp != nil && s.cfg.PowerRequest != nil && p.cdp.NewPowerRequest(m) {
		p.cdp.SetPowerAvailable(s.cfg.PowerRequest(p.name, m.PowerRequested.MilliWatts))
	}
	if p.cdp != nil && p.cdp.Receive(m) {
		s.stats.immediate.Add(1)
		s.send(p, p.cdpConn, p.cdp.Advertisement(), "query")
	}
}

func (s *Service) onLLDP(p *port, frame []byte) {
	m, err := lldp.Decode(frame)
	if err != nil {
		s.stats.lldpMalformed.Add(1)
		s.log.Debug("discovery: malformed LLDP frame", "port", p.name, "error", err)
		return
	}
	s.stats.lldpReceived.Add(1)
	s.heard(m.Neighbor(p.name))
	ep := m.ExtendedPower
	if ep == nil || ep.Type != lldp.PowerPD || s.cfg.PowerRequest == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	mw := ep.MilliWatts()
	if p.lldpP == nil || mw == 0 || mw == p.lldpPowerMW {
		return
	}
	p.lldpPowerMW = mw
	if p.lldpP.SetPowerAvailable(s.cfg.PowerRequest(p.name, []uint32{mw})) {
		s.stats.immediate.Add(1)
		s.send(p, p.lldp, p.lldpP.Advertisement(), "power request")
	}
}

func (s *Service) heard(n neighbor.Neighbor) {
	s.cfg.Neighbors.Update(n)
	if s.cfg.OnNeighbor != nil {
		s.cfg.OnNeighbor(n)
	}
}

// Stats returns the counters.
func (s *Service) Stats() Stats {
	st := &s.stats
	return Stats{
		CDPReceived: st.cdpReceived.Load(), CDPBadChecksum: st.cdpBadChecksum.Load(),
		CDPNotCDP: st.cdpNotCDP.Load(), CDPMalformed: st.cdpMalformed.Load(),
		LLDPReceived: st.lldpReceived.Load(), LLDPMalformed: st.lldpMalformed.Load(),
		Advertisements: st.advertisements.Load(), ImmediateReplies: st.immediate.Load(),
		SendErrors: st.sendErrors.Load(),
	}
}

func (s *Service) closeSockets() {
	s.closeOnce.Do(func() {
		close(s.linksDone)
		for _, p := range s.ports {
			p.close()
		}
	})
}

func (p *port) close() {
	for _, c := range []*rawsock.Conn{p.cdpConn, p.lldp} {
		if c != nil {
			c.Close()
		}
	}
}

// Close releases the sockets; Run withdraws the advertisements before it
// returns, Close does not send anything.
func (s *Service) Close() error {
	s.closeSockets()
	return nil
}
