package tftp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/bootfiles"
)

// Config of the server. Zero values take the defaults named.
type Config struct {
	// Addrs to listen on; default 0.0.0.0:69 and [::]:69. Each transfer
	// gets a socket of its own (a new TID, RFC 1350) bound to the
	// address the request came to.
	Addrs  []netip.AddrPort
	Source bootfiles.Source // required

	// Timeout before a window is sent again when no ACK came, unless
	// the client negotiated its own (RFC 2349); default 1 s.
	Timeout time.Duration
	// Retries of a window before the transfer is given up; default 5.
	Retries int
	// IdleTimeout ends a transfer that made no progress for this long,
	// whatever timeout the client negotiated; default 30 s.
	IdleTimeout time.Duration

	// MaxTransfers in progress at once; default 1024. Each holds two
	// file descriptors (its socket and the file), so New checks that
	// RLIMIT_NOFILE leaves room for them.
	MaxTransfers int
	// MaxPerClient transfers in progress from one client address;
	// default 4 (a phone fetches one file at a time).
	MaxPerClient int
	// ClientRate and ClientBurst: read requests a second from one
	// client address, and how many may come at once; default 10 and 20.
	ClientRate  float64
	ClientBurst int
	// Rate and Burst: read requests a second from everyone; default
	// 2000 and 2000.
	Rate  float64
	Burst int
	// MaxClients the rate limiter remembers at once; default 65536.
	// Past that, new clients are only subject to the global rate.
	MaxClients int

	// MaxBlockSize and MaxWindowSize the server agrees to; defaults
	// MaxBlockSize (65464) and 64.
	MaxBlockSize  int
	MaxWindowSize int
	// MaxBlockSizeV6 is the largest block for an IPv6 client, whose
	// packets carry a 40-byte IP header instead of IPv4's 20 (IPv4-mapped
	// clients count as IPv4); default MaxBlockSize.
	MaxBlockSizeV6 int
	// NoGSO sends every DATA packet as a message of its own (sendmmsg)
	// instead of a window as one GSO send: for a link that mishandles
	// UDP GSO, and to measure the difference.
	NoGSO bool
	// MaxNetascii is the largest file served in netascii mode, which is
	// converted in memory per transfer; default 1 MiB. Firmware goes in
	// octet mode.
	MaxNetascii int
	// ReceiveBuffer is each listening socket's receive buffer in bytes;
	// default 4 MiB. A boot storm's read requests come in bursts of
	// thousands, and with the kernel's default (208 KiB here, some 270
	// small datagrams) the rest are dropped and the phones wait out their
	// retransmission timer. Set with SO_RCVBUFFORCE (CAP_NET_ADMIN),
	// else SO_RCVBUF, which net.core.rmem_max caps.
	ReceiveBuffer int
}

func (c *Config) setDefaults() error {
	if c.Source == nil {
		return errors.New("tftp: a source is required")
	}
	if len(c.Addrs) == 0 {
		c.Addrs = []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:69"), netip.MustParseAddrPort("[::]:69")}
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	deff := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Timeout == 0 {
		c.Timeout = time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 30 * time.Second
	}
	def(&c.Retries, 5)
	def(&c.MaxTransfers, 1024)
	def(&c.MaxPerClient, 4)
	deff(&c.ClientRate, 10)
	def(&c.ClientBurst, 20)
	deff(&c.Rate, 2000)
	def(&c.Burst, 2000)
	def(&c.MaxClients, 65536)
	def(&c.MaxBlockSize, MaxBlockSize)
	def(&c.MaxBlockSizeV6, c.MaxBlockSize)
	def(&c.MaxWindowSize, 64)
	def(&c.MaxNetascii, 1<<20)
	def(&c.ReceiveBuffer, 4<<20)
	switch {
	case c.Timeout < 10*time.Millisecond || c.IdleTimeout < c.Timeout:
		return fmt.Errorf("tftp: timeout %s and idle timeout %s", c.Timeout, c.IdleTimeout)
	case c.Retries < 0 || c.MaxTransfers < 1 || c.MaxPerClient < 1 || c.MaxClients < 1:
		return errors.New("tftp: retries, transfer and client limits must be positive")
	case c.ClientRate < 0 || c.ClientBurst < 1 || c.Rate < 0 || c.Burst < 1:
		return errors.New("tftp: rates must be positive and bursts at least 1")
	case c.MaxBlockSize < MinBlockSize || c.MaxBlockSize > MaxBlockSize:
		return fmt.Errorf("tftp: max block size %d not in %d..%d", c.MaxBlockSize, MinBlockSize, MaxBlockSize)
	case c.MaxBlockSizeV6 < MinBlockSize || c.MaxBlockSizeV6 > MaxBlockSize:
		return fmt.Errorf("tftp: max IPv6 block size %d not in %d..%d", c.MaxBlockSizeV6, MinBlockSize, MaxBlockSize)
	case c.ReceiveBuffer < 4096:
		return fmt.Errorf("tftp: receive buffer %d bytes, below 4096", c.ReceiveBuffer)
	case c.MaxWindowSize < 1 || c.MaxWindowSize > 4096:
		return fmt.Errorf("tftp: max window size %d not in 1..4096", c.MaxWindowSize)
	}
	return nil
}

// maxBlockSize is the largest block for a client, by its address family.
func (c *Config) maxBlockSize(client netip.Addr) int {
	if client.Is4() || client.Is4In6() {
		return c.MaxBlockSize
	}
	return c.MaxBlockSizeV6
}

// Stats counts requests and transfers since New. Every request read on a
// listening socket lands in exactly one of the request counters; every
// transfer started ends in exactly one of the ending counters.
type Stats struct {
	// Requests (packets read on the listening sockets).
	Requests uint64 `json:"requests"`
	// Overflowed counts packets the kernel dropped because a listening
	// socket's receive buffer was full (SO_RXQ_OVFL), as of the last
	// packet read: requests that got no answer and none of the counters
	// below.
	Overflowed      uint64 `json:"overflowed"`
	Malformed       uint64 `json:"malformed"`         // answered ERROR 4
	NotRequests     uint64 `json:"not_requests"`      // DATA, ACK... sent to port 69: ignored
	WriteRefused    uint64 `json:"write_refused"`     // WRQ: ERROR 2
	BadMode         uint64 `json:"bad_mode"`          // mode other than octet/netascii: ERROR 4
	OptionRefused   uint64 `json:"option_refused"`    // ERROR 8
	RateLimited     uint64 `json:"rate_limited"`      // over the client's request rate: dropped
	RateLimitedAll  uint64 `json:"rate_limited_all"`  // over the global request rate: dropped
	Busy            uint64 `json:"busy"`              // MaxTransfers reached: ERROR 0
	BusyClient      uint64 `json:"busy_client"`       // MaxPerClient reached: ERROR 0
	NotFound        uint64 `json:"not_found"`         // ERROR 1
	Forbidden       uint64 `json:"forbidden"`         // ERROR 2
	SourceErrors    uint64 `json:"source_errors"`     // the source failed otherwise, or the file shrank before the transfer began: ERROR 0
	NetasciiTooLong uint64 `json:"netascii_too_long"` // ERROR 0
	Started         uint64 `json:"started"`           // transfers begun (socket open, OACK or DATA 1 sent)

	// Ends of transfers.
	Completed     uint64 `json:"completed"`      // the last block was acknowledged
	TimedOut      uint64 `json:"timed_out"`      // retries or the idle timeout ran out
	ClientAborted uint64 `json:"client_aborted"` // the client sent an ERROR (or its port was closed)
	Faulted       uint64 `json:"faulted"`        // the file shrank under the transfer
	Failed        uint64 `json:"failed"`         // a socket error
	Cancelled     uint64 `json:"cancelled"`      // the server stopped

	Active        int64  `json:"active"`
	OACKs         uint64 `json:"oacks"`
	Blocks        uint64 `json:"blocks"`         // DATA packets sent, retransmissions included
	Retransmitted uint64 `json:"retransmitted"`  // DATA packets sent again
	Bytes         uint64 `json:"bytes"`          // file bytes sent, retransmissions included
	SendCalls     uint64 `json:"send_calls"`     // sendmsg/sendmmsg calls for DATA
	DuplicateAcks uint64 `json:"duplicate_acks"` // ignored (no Sorcerer's Apprentice)
	StrayPackets  uint64 `json:"stray_packets"`  // neither ACK nor ERROR during a transfer
	GSOFallbacks  uint64 `json:"gso_fallbacks"`  // transfers that fell back to sendmmsg
}

type counters struct {
	requests, malformed, notRequests, writeRefused, badMode, optionRefused atomic.Uint64
	rateLimited, rateLimitedAll, busy, busyClient                          atomic.Uint64
	notFound, forbidden, sourceErrors, netasciiTooLong, started            atomic.Uint64
	completed, timedOut, clientAborted, faulted, failed, cancelled         atomic.Uint64
	active                                                                 atomic.Int64
	oacks, blocks, retransmitted, bytes, sendCalls                         atomic.Uint64
	duplicateAcks, strayPackets, gsoFallbacks                              atomic.Uint64
	overflowed                                                             atomic.Uint64
}

// Server is the TFTP service.
type Server struct {
	cfg       Config
	log       *slog.Logger
	listeners []*listener
	lim       *limiter
	c         counters

	ctx       context.Context // cancelled by Close: ends transfers
	cancel    context.CancelFunc
	transfers sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

type listener struct {
	conn *net.UDPConn
	v6   bool
	// overflowed is the socket's drop count (SO_RXQ_OVFL) last seen;
	// only the listener's goroutine touches it.
	overflowed uint32
}

// New binds the listening sockets (in the calling thread's network
// namespace); Run serves them.
func New(cfg Config, log *slog.Logger) (_ *Server, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil {
		if need := uint64(2*cfg.MaxTransfers + 64); rl.Cur < need {
			return nil, fmt.Errorf("tftp: %d transfers need %d file descriptors, RLIMIT_NOFILE is %d", cfg.MaxTransfers, need, rl.Cur)
		}
	}
	s := &Server{cfg: cfg, log: log, lim: &limiter{
		perRate: cfg.ClientRate, perBurst: float64(cfg.ClientBurst),
		globalRate: cfg.Rate, globalBurst: float64(cfg.Burst),
		maxPerClient: cfg.MaxPerClient, maxTransfers: cfg.MaxTransfers, maxTracked: cfg.MaxClients,
		global:  bucket{tokens: float64(cfg.Burst), last: time.Now()},
		buckets: map[netip.Addr]*bucket{}, active: map[netip.Addr]int{},
	}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	for _, a := range cfg.Addrs {
		l, err := listen(a, cfg.ReceiveBuffer)
		if err != nil {
			return nil, fmt.Errorf("tftp: listen on %s: %w", a, err)
		}
		s.listeners = append(s.listeners, l)
	}
	return s, nil
}

func listen(a netip.AddrPort, rcvbuf int) (*listener, error) {
	network := "udp4"
	v6 := a.Addr().Is6() && !a.Addr().Is4In6()
	if v6 {
		network = "udp6" // IPV6_V6ONLY: IPv4 comes to its own socket
	}
	conn, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(a))
	if err != nil {
		return nil, err
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		// The destination address of each request: the transfer's
		// socket is bound to it, and errors come from it.
		if v6 {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		}
		// Each packet read carries the count of those dropped before it.
		serr = errors.Join(serr, unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1))
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf) != nil {
			serr = errors.Join(serr, unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf))
		}
	})
	if err = errors.Join(err, serr); err != nil {
		conn.Close()
		return nil, err
	}
	return &listener{conn: conn, v6: v6}, nil
}

// Addrs are the addresses listened on (the ports chosen when configured
// as 0).
func (s *Server) Addrs() []netip.AddrPort {
	var out []netip.AddrPort
	for _, l := range s.listeners {
		out = append(out, l.conn.LocalAddr().(*net.UDPAddr).AddrPort())
	}
	return out
}

// Run serves until ctx is done or Close is called, then waits for the
// transfers to end.
func (s *Server) Run(ctx context.Context) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-ctx.Done():
		case <-s.ctx.Done():
		}
		for _, l := range s.listeners {
			l.conn.SetReadDeadline(time.Unix(1, 0))
		}
	}()
	errc := make(chan error, len(s.listeners))
	for _, l := range s.listeners {
		go func() { errc <- s.serve(ctx, l) }()
	}
	var errs []error
	for range s.listeners {
		if err := <-errc; err != nil {
			errs = append(errs, err)
			stop()
		}
	}
	s.cancel()
	s.transfers.Wait()
	return errors.Join(errs...)
}

// Close stops the server: listeners close and transfers end.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		var errs []error
		for _, l := range s.listeners {
			errs = append(errs, l.conn.Close())
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	c := &s.c
	return Stats{
		Requests: c.requests.Load(), Overflowed: c.overflowed.Load(), Malformed: c.malformed.Load(), NotRequests: c.notRequests.Load(),
		WriteRefused: c.writeRefused.Load(), BadMode: c.badMode.Load(), OptionRefused: c.optionRefused.Load(),
		RateLimited: c.rateLimited.Load(), RateLimitedAll: c.rateLimitedAll.Load(),
		Busy: c.busy.Load(), BusyClient: c.busyClient.Load(),
		NotFound: c.notFound.Load(), Forbidden: c.forbidden.Load(), SourceErrors: c.sourceErrors.Load(),
		NetasciiTooLong: c.netasciiTooLong.Load(), Started: c.started.Load(),
		Completed: c.completed.Load(), TimedOut: c.timedOut.Load(), ClientAborted: c.clientAborted.Load(),
		Faulted: c.faulted.Load(), Failed: c.failed.Load(), Cancelled: c.cancelled.Load(),
		Active: c.active.Load(), OACKs: c.oacks.Load(), Blocks: c.blocks.Load(),
		Retransmitted: c.retransmitted.Load(), Bytes: c.bytes.Load(), SendCalls: c.sendCalls.Load(),
		DuplicateAcks: c.duplicateAcks.Load(), StrayPackets: c.strayPackets.Load(), GSOFallbacks: c.gsoFallbacks.Load(),
	}
}

// request is a read request as it came in: who asked, on which address.
type request struct {
	l      *listener
	client netip.AddrPort
	local  netip.Addr // the request's destination, with the zone of its interface
	pkt    Packet
	mode   Mode
}

func (s *Server) serve(ctx context.Context, l *listener) error {
	// A request is at most a datagram; larger ones are cut and fail to
	// parse (no valid request is anywhere near this).
	buf := make([]byte, 2048)
	oob := make([]byte, 256)
	for {
		n, oobn, flags, from, err := l.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if ctx.Err() != nil || s.ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			s.log.Warn("tftp: read request", "error", err)
			continue
		}
		s.c.requests.Add(1)
		local, ok, dropped := controlMessages(oob[:oobn], l.v6)
		if dropped != l.overflowed {
			s.c.overflowed.Add(uint64(dropped - l.overflowed)) // uint32 arithmetic: wraps as the kernel's does
			l.overflowed = dropped
		}
		if !ok || from.Port() == 0 {
			s.c.malformed.Add(1)
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if flags&unix.MSG_TRUNC != 0 {
			n = 0 // unparseable on purpose
		}
		s.handle(l, from, local, buf[:n])
	}
}

// controlMessages reads a request's destination address from IP_PKTINFO
// or IPV6_PKTINFO, and the socket's drop count from SO_RXQ_OVFL (absent,
// and so 0, until the first drop).
func controlMessages(oob []byte, v6 bool) (dst netip.Addr, ok bool, dropped uint32) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.Addr{}, false, 0
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_RXQ_OVFL && len(m.Data) >= 4:
			dropped = *(*uint32)(unsafe.Pointer(&m.Data[0]))
		case !v6 && m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo:
			info := (*unix.Inet4Pktinfo)(unsafe.Pointer(&m.Data[0]))
			dst, ok = netip.AddrFrom4(info.Addr), true
		case v6 && m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= unix.SizeofInet6Pktinfo:
			info := (*unix.Inet6Pktinfo)(unsafe.Pointer(&m.Data[0]))
			dst = netip.AddrFrom16(info.Addr)
			if dst.IsLinkLocalUnicast() {
				dst = dst.WithZone(zoneName(int(info.Ifindex)))
			}
			ok = true
		}
	}
	return dst, ok, dropped
}

func zoneName(ifindex int) string {
	if ifi, err := net.InterfaceByIndex(ifindex); err == nil {
		return ifi.Name
	}
	return fmt.Sprint(ifindex)
}

// handle answers one packet read on a listening socket: an ERROR at
// once, or a transfer started in a goroutine of its own.
func (s *Server) handle(l *listener, from netip.AddrPort, local netip.Addr, b []byte) {
	now := time.Now()
	switch s.lim.allowRequest(from.Addr(), now) {
	case rateLimitedClient:
		s.c.rateLimited.Add(1)
		return
	case rateLimitedGlobal:
		s.c.rateLimitedAll.Add(1)
		return
	}
	p, err := Parse(b)
	if err != nil {
		if len(b) >= 2 && b[1] >= byte(OpData) && b[1] <= byte(OpOACK) && b[0] == 0 {
			s.c.notRequests.Add(1) // a stray packet of some transfer: no answer
			return
		}
		s.c.malformed.Add(1)
		s.replyError(l, from, local, ErrIllegalOp, "malformed request")
		return
	}
	switch p.Op {
	case OpRRQ:
	case OpWRQ:
		s.c.writeRefused.Add(1)
		s.replyError(l, from, local, ErrAccess, "read-only server")
		return
	default:
		s.c.notRequests.Add(1)
		return
	}
	mode, ok := ParseMode(p.Mode)
	if !ok {
		s.c.badMode.Add(1)
		s.replyError(l, from, local, ErrIllegalOp, "unsupported mode "+p.Mode)
		return
	}
	switch s.lim.acquire(from.Addr()) {
	case busyGlobal:
		s.c.busy.Add(1)
		s.replyError(l, from, local, ErrUndefined, "server busy, try again")
		return
	case busyClient:
		s.c.busyClient.Add(1)
		s.replyError(l, from, local, ErrUndefined, "too many transfers from this client")
		return
	}
	s.transfers.Add(1)
	go func() {
		defer s.transfers.Done()
		defer s.lim.release(from.Addr())
		s.start(request{l: l, client: from, local: local, pkt: p, mode: mode})
	}()
}

// replyError answers from the listening socket, with the request's
// destination as source address.
func (s *Server) replyError(l *listener, to netip.AddrPort, local netip.Addr, code ErrorCode, msg string) {
	var oob []byte
	if l.v6 {
		info := unix.Inet6Pktinfo{Addr: local.As16()}
		oob = unix.PktInfo6(&info)
	} else {
		info := unix.Inet4Pktinfo{Spec_dst: local.As4()}
		oob = unix.PktInfo4(&info)
	}
	if _, _, err := l.conn.WriteMsgUDPAddrPort(AppendError(nil, code, msg), oob, to); err != nil {
		s.log.Debug("tftp: send error", "client", to, "error", err)
	}
}

// start opens the file and runs the transfer.
func (s *Server) start(r request) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.IdleTimeout)
	f, err := s.cfg.Source.Open(ctx, bootfiles.Request{Name: r.pkt.Filename, Client: r.client, Protocol: "tftp"})
	cancel()
	if err != nil {
		switch {
		case errors.Is(err, bootfiles.ErrNotFound):
			s.c.notFound.Add(1)
			s.replyError(r.l, r.client, r.local, ErrFileNotFound, "file not found")
		case errors.Is(err, bootfiles.ErrForbidden):
			s.c.forbidden.Add(1)
			s.replyError(r.l, r.client, r.local, ErrAccess, "access violation")
		default:
			s.c.sourceErrors.Add(1)
			s.log.Warn("tftp: open", "file", r.pkt.Filename, "client", r.client, "error", err)
			s.replyError(r.l, r.client, r.local, ErrUndefined, "cannot read file")
		}
		return
	}
	defer f.Close()
	data := f.Bytes()
	if r.mode == ModeNetascii {
		if len(data) > s.cfg.MaxNetascii {
			s.c.netasciiTooLong.Add(1)
			s.replyError(r.l, r.client, r.local, ErrUndefined, "file too large for netascii, use octet")
			return
		}
		if data, err = netascii(data); err != nil {
			s.c.sourceErrors.Add(1)
			s.log.Warn("tftp: file changed under a transfer", "file", r.pkt.Filename, "client", r.client, "error", err)
			s.replyError(r.l, r.client, r.local, ErrUndefined, "file changed during the transfer")
			return
		}
	}
	neg, err := Negotiate(r.pkt.Options, int64(len(data)), OptionLimits{MaxBlockSize: s.cfg.maxBlockSize(r.client.Addr()), MaxWindowSize: s.cfg.MaxWindowSize})
	if err != nil {
		s.c.optionRefused.Add(1)
		s.replyError(r.l, r.client, r.local, ErrOptionRefused, err.(*NegotiateError).Msg)
		return
	}
	conn, err := net.DialUDP(r.l.conn.LocalAddr().Network(),
		net.UDPAddrFromAddrPort(netip.AddrPortFrom(r.local, 0)), net.UDPAddrFromAddrPort(r.client))
	if err != nil {
		s.c.sourceErrors.Add(1)
		s.log.Warn("tftp: transfer socket", "client", r.client, "error", err)
		s.replyError(r.l, r.client, r.local, ErrUndefined, "server cannot open a socket")
		return
	}
	defer conn.Close()
	s.c.started.Add(1)
	s.c.active.Add(1)
	defer s.c.active.Add(-1)
	t := &transfer{s: s, conn: conn, data: data, neg: neg, name: r.pkt.Filename, client: r.client}
	t.run()
}
