package lab

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// rtnl changes one namespace's links, addresses and neighbours in batches:
// requests from many phones that arrive while a batch is in the kernel go
// together in the next one, as one sendmsg whose acknowledgements are read
// back together. The kernel's work per request (under the RTNL lock, which
// all namespaces share) is what remains: about 160 µs per phone brought up
// on the development machine; batching saves the round trips and
// goroutine hand-offs around it.
type rtnl struct {
	fd   int
	name string // the namespace's, for errors

	queue  chan rtnlJob
	done   chan struct{} // closed by close
	exited chan struct{} // closed when run has returned
	once   sync.Once
}

type rtnlJob struct {
	msgs [][]byte
	errc chan error
}

// A batch is bounded so that its acknowledgements fit the receive buffer
// together: each is a small message, but counts as a whole socket buffer
// (about 1 KB) there, and one that does not fit is lost with an ENOBUFS.
const (
	rtnlBatchBytes = 64 << 10
	rtnlBatchMsgs  = 256
	rtnlRecvBuffer = 1 << 20
)

func openRTNL(ns *vnet.NS) (*rtnl, error) {
	r := &rtnl{name: ns.Name, queue: make(chan rtnlJob, 1024), done: make(chan struct{}), exited: make(chan struct{})}
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		r.fd = fd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rtnetlink in %s: %w", ns.Name, err)
	}
	for _, o := range []struct{ level, opt, v int }{
		{unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1},
		{unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1},
		{unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rtnlRecvBuffer},
	} {
		if err := unix.SetsockoptInt(r.fd, o.level, o.opt, o.v); err != nil {
			unix.Close(r.fd)
			return nil, fmt.Errorf("rtnetlink in %s: %w", ns.Name, err)
		}
	}
	// A kernel that stops answering fails the batch instead of hanging it.
	tv := unix.Timeval{Sec: 30}
	if err := unix.SetsockoptTimeval(r.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(r.fd)
		return nil, fmt.Errorf("rtnetlink in %s: %w", ns.Name, err)
	}
	if err := unix.Bind(r.fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(r.fd)
		return nil, fmt.Errorf("rtnetlink in %s: %w", ns.Name, err)
	}
	go r.run()
	return r, nil
}

// do runs msgs (requests made by the functions below) and returns the
// first error the kernel reports for them.
func (r *rtnl) do(msgs ...[]byte) error {
	j := rtnlJob{msgs: msgs, errc: make(chan error, 1)}
	select {
	case r.queue <- j:
	case <-r.done:
		return fmt.Errorf("rtnetlink in %s: closed", r.name)
	}
	select {
	case err := <-j.errc:
		return err
	case <-r.done:
		return fmt.Errorf("rtnetlink in %s: closed", r.name)
	}
}

// close stops the batcher (a batch in the kernel is finished first) and
// closes its socket.
func (r *rtnl) close() {
	r.once.Do(func() {
		close(r.done)
		<-r.exited
		unix.Close(r.fd)
	})
}

func (r *rtnl) run() {
	defer close(r.exited)
	var seq uint32
	for {
		var batch []rtnlJob
		select {
		case j := <-r.queue:
			batch = append(batch, j)
		case <-r.done:
			return
		}
		size, msgs := batchSize(batch[0]), len(batch[0].msgs)
	more:
		for size < rtnlBatchBytes && msgs < rtnlBatchMsgs {
			select {
			case j := <-r.queue:
				batch = append(batch, j)
				size += batchSize(j)
				msgs += len(j.msgs)
			default:
				break more
			}
		}
		errs := r.exchange(batch, &seq)
		for i, j := range batch {
			j.errc <- errs[i]
		}
	}
}

func batchSize(j rtnlJob) int {
	n := 0
	for _, m := range j.msgs {
		n += len(m)
	}
	return n
}

// exchange sends the batch's messages in one sendmsg and reads an
// acknowledgement for each; the error of a job is that of its first
// failed message.
func (r *rtnl) exchange(batch []rtnlJob, seq *uint32) []error {
	errs := make([]error, len(batch))
	owner := map[uint32]int{} // sequence number -> job
	var buf []byte
	for i, j := range batch {
		for _, m := range j.msgs {
			*seq++
			binary.NativeEndian.PutUint32(m[8:12], *seq)
			owner[*seq] = i
			buf = append(buf, m...)
		}
	}
	fail := func(err error) []error {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = fmt.Errorf("rtnetlink in %s: %w", r.name, err)
			}
		}
		return errs
	}
	if err := unix.Sendto(r.fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fail(err)
	}
	rb := make([]byte, 256<<10)
	for len(owner) > 0 {
		n, _, err := unix.Recvfrom(r.fd, rb, 0)
		if err != nil {
			return fail(err)
		}
		msgs, err := syscall.ParseNetlinkMessage(rb[:n])
		if err != nil {
			return fail(err)
		}
		for _, m := range msgs {
			i, ok := owner[m.Header.Seq]
			if !ok || m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			delete(owner, m.Header.Seq)
			if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 && errs[i] == nil {
				errs[i] = fmt.Errorf("rtnetlink in %s: %w", r.name, unix.Errno(-code))
			}
		}
	}
	return errs
}

// The requests. Each asks for an acknowledgement; its sequence number is
// set when it is sent.

func newRequest(typ, flags int, data ...nl.NetlinkRequestData) []byte {
	req := nl.NewNetlinkRequest(typ, flags|unix.NLM_F_ACK)
	for _, d := range data {
		req.AddData(d)
	}
	return req.Serialize()
}

// macvlanRequest creates a macvlan on parent with a fixed index and MAC,
// left down. Private mode: the phones behind one lab port do not hear
// each other's frames, as phones on the separate (isolated) ports of a
// real switch would not.
func macvlanRequest(name string, index, parent int, mac net.HardwareAddr) []byte {
	ifi := nl.NewIfInfomsg(unix.AF_UNSPEC)
	ifi.Index = int32(index)
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("macvlan"))
	info.AddRtAttr(nl.IFLA_INFO_DATA, nil).AddRtAttr(nl.IFLA_MACVLAN_MODE, nl.Uint32Attr(nl.MACVLAN_MODE_PRIVATE))
	return newRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL, ifi,
		nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)),
		nl.NewRtAttr(unix.IFLA_ADDRESS, mac),
		nl.NewRtAttr(unix.IFLA_LINK, nl.Uint32Attr(uint32(parent))),
		info)
}

// linkUpRequest brings the link with this index up.
func linkUpRequest(index int) []byte {
	ifi := nl.NewIfInfomsg(unix.AF_UNSPEC)
	ifi.Index = int32(index)
	ifi.Flags = unix.IFF_UP
	ifi.Change = unix.IFF_UP
	return newRequest(unix.RTM_NEWLINK, 0, ifi)
}

// addrRequest puts prefix's address on the link with this index (with
// the prefix's connected route).
func addrRequest(index int, prefix netip.Prefix) []byte {
	m := nl.NewIfAddrmsg(unix.AF_INET)
	m.Index = uint32(index)
	m.Prefixlen = uint8(prefix.Bits())
	a := prefix.Addr().AsSlice()
	return newRequest(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, m,
		nl.NewRtAttr(unix.IFA_LOCAL, a), nl.NewRtAttr(unix.IFA_ADDRESS, a))
}

// neighRequest makes ip's neighbour entry on the link with this index
// permanent, with mac.
func neighRequest(index int, ip netip.Addr, mac net.HardwareAddr) []byte {
	var nd [12]byte // struct ndmsg
	nd[0] = unix.AF_INET
	binary.NativeEndian.PutUint32(nd[4:8], uint32(index))
	binary.NativeEndian.PutUint16(nd[8:10], unix.NUD_PERMANENT)
	return newRequest(unix.RTM_NEWNEIGH, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, rawData(nd[:]),
		nl.NewRtAttr(unix.NDA_DST, ip.AsSlice()), nl.NewRtAttr(unix.NDA_LLADDR, mac))
}

// rawData is bytes as a netlink request part.
type rawData []byte

func (d rawData) Len() int          { return len(d) }
func (d rawData) Serialize() []byte { return d }
