package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/cmsim"
	"github.com/phoneboot/phoneboot/userspace/sccp"
)

// registerPhase is the phone registering with its CallManager over SCCP,
// with cmsim's simulated phone: it connects to the CallManagers of its
// configuration file, highest priority first (the next on failure, after
// a pause), sends RegisterMessage with its device name, device type, load,
// address and MAC, and waits for RegisterAck. The phase is done when it is
// registered; the phone then stays registered until the lab ends: it
// sends KeepAlive at the interval RegisterAck gave, and when the
// connection drops (or three keepalives go unanswered) it registers again
// from the top of its list. The lab's phones all speak SCCP, whatever
// their model's load is named, since the simulated phone does.
type registerPhase struct {
	// phones is the context the registered phones keep alive under: it
	// outlives the storm's, and ends when the lab stops.
	phones context.Context
	// dial opens the phone's connection (dialTCP; tests: any).
	dial  func(ph *Phone) func(ctx context.Context, addr string) (net.Conn, error)
	stats *registrations
}

// registrations counts the phones' registration events, all phones, and
// follows which are registered.
type registrations struct {
	registered, lost, failed, rejected atomic.Int64
	track                              registrationTrack
}

func (registerPhase) Name() string { return "register" }

func (p registerPhase) Run(ctx context.Context, ph *Phone) error {
	if ph.Config == nil {
		return fmt.Errorf("no configuration")
	}
	var servers []string
	for _, cm := range ph.Config.CallManagers { // highest priority first
		servers = append(servers, net.JoinHostPort(cm.Host, strconv.Itoa(cm.SCCPPort)))
	}
	registered := make(chan struct{})
	var once atomic.Bool
	var last atomic.Value // the last failure, for the error
	reg := sccp.Register{
		DeviceName: ph.Name, Instance: 1, StationIP: ph.IP, DeviceType: uint32(ph.Model.DeviceType),
		MaxStreams: 5, ProtocolVersion: 11, MAC: [6]byte(ph.MAC), MaxLines: 1, LoadInfo: ph.Load,
		ConfigVersion: truncate(ph.Config.VersionStamp, 47),
	}
	phone, err := cmsim.NewPhone(cmsim.PhoneConfig{
		Register: reg,
		Version:  11,
		Servers:  servers,
		Dial:     p.dial(ph),
		OnEvent: func(ev cmsim.PhoneEvent) {
			switch ev.Kind {
			case cmsim.EventRegistered:
				p.stats.registered.Add(1)
				p.stats.track.setRegistered(ph, ev.At, ev.Dialed)
				if once.CompareAndSwap(false, true) {
					close(registered)
				}
			case cmsim.EventLost:
				p.stats.lost.Add(1)
				p.stats.track.setLost(ph, ev.At)
			case cmsim.EventRejected:
				p.stats.rejected.Add(1)
				last.Store(fmt.Sprintf("%s rejected it: %v", ev.Server, ev.Err))
			case cmsim.EventFailed:
				p.stats.failed.Add(1)
				last.Store(fmt.Sprintf("%s: %v", ev.Server, ev.Err))
			}
		},
	})
	if err != nil {
		return err
	}
	// It keeps alive until the lab ends or the phone loses power.
	keep, stop := whilePowered(p.phones, ph.session)
	done := make(chan struct{})
	ph.regDone = done
	go func() {
		defer close(done)
		defer stop()
		phone.Run(keep)
	}()
	select {
	case <-registered:
		return nil
	case <-ctx.Done():
		why, _ := last.Load().(string)
		if why == "" {
			why = "no answer yet"
		}
		return fmt.Errorf("not registered (%s): %w", why, context.Cause(ctx))
	}
}

// dialTCP connects from the phone's interface and address, in its port's
// namespace (a phone without a port, in tests: from its address). Only the
// socket is made on the namespace's thread, which a socket keeps for life;
// the connect and its wait for the handshake happen here, so the phones of
// a port connect side by side as real phones do, not one after another
// through that one thread (with 200 phones a port, the last waited for
// every handshake before it, and timed out).
func dialTCP(ph *Phone) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		if ph.Port == nil {
			d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(ph.IP, 0))}
			return d.DialContext(ctx, "tcp4", addr)
		}
		raddr, err := netip.ParseAddrPort(addr)
		if err != nil || !raddr.Addr().Is4() {
			return nil, fmt.Errorf("dial %q: an IPv4 address and port", addr)
		}
		var fd int
		if err := ph.Port.thread.Do(func() error {
			var err error
			fd, err = ph.tcpSocket()
			return err
		}); err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		return connectFD(ctx, fd, raddr)
	}
}

// tcpSocket makes a non-blocking TCP socket in the calling thread's
// namespace, bound to the phone's interface and address.
func (ph *Phone) tcpSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BINDTOIFINDEX, ph.nicIndex)
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrInet4{Addr: ph.IP.As4()})
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// connectFD connects the non-blocking socket fd, which it takes over, to
// raddr, waiting in the runtime's poller until the handshake is done, ctx
// ends or the connect fails.
func connectFD(ctx context.Context, fd int, raddr netip.AddrPort) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "tcp")
	defer f.Close() // net.FileConn holds a duplicate
	fail := func(err error) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: "tcp4", Addr: net.TCPAddrFromAddrPort(raddr), Err: err}
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: raddr.Addr().As4(), Port: int(raddr.Port())}); err != nil && err != unix.EINPROGRESS {
		return fail(os.NewSyscallError("connect", err))
	}
	if dl, ok := ctx.Deadline(); ok {
		f.SetWriteDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Now()) })
	defer stop()
	rc, err := f.SyscallConn()
	if err != nil {
		return fail(err)
	}
	var cerr error
	if err := rc.Write(func(fd uintptr) bool {
		// Writable, or woken for another reason: done once the socket
		// has an error or a peer.
		switch v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); {
		case err != nil:
			cerr = os.NewSyscallError("getsockopt", err)
			return true
		case v != 0:
			if e := unix.Errno(v); e != unix.EINPROGRESS && e != unix.EALREADY && e != unix.EINTR {
				cerr = os.NewSyscallError("connect", e)
				return true
			}
			return false
		}
		_, err := unix.Getpeername(int(fd))
		return err == nil
	}); err != nil {
		if ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		return fail(err)
	}
	if cerr != nil {
		return fail(cerr)
	}
	return net.FileConn(f)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// registered summarises the register phase for the report's table.
type registered struct {
	Registered, Lost, Failed, Rejected int64
	// ByCallManager is how many phones each CallManager has registered
	// at the end of the storm, highest priority first ("cm1 40, cm2 0, ...").
	ByCallManager string
}

func (l *lab) registrationSummary() registered {
	r := registered{
		Registered: l.registrations.registered.Load(), Lost: l.registrations.lost.Load(),
		Failed: l.registrations.failed.Load(), Rejected: l.registrations.rejected.Load(),
	}
	for i, s := range l.cms {
		if i > 0 {
			r.ByCallManager += ", "
		}
		r.ByCallManager += fmt.Sprintf("cm%d %d", i+1, s.Registered())
	}
	return r
}
