package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// pbgen is the bench's own load generator: DHCP clients on eth0 as phones
// are, one MAC each, sending DISCOVER and, on OFFER, REQUEST, through
// AF_PACKET sockets with sendmmsg/recvmmsg batches. It exists because
// perfdhcp (a) acts as a relay agent (giaddr set, source port 67, chaddr
// not the frame's source MAC), which phoneboot's XDP fast path leaves to
// the Go server by design, so perfdhcp never exercises the fast path, and
// (b) shares the two cores with the server.

const (
	batchMax = 64
	dropTime = time.Second // as perfdhcp's default -d 1
	probeIdx = 0xffffff    // client index of the readiness probe
)

type gen struct {
	tx, rx   int
	flen     int
	txb, rxb *mbatch
	mu       sync.Mutex // serialises runs
}

// mbatch is a set of buffers wired up for sendmmsg/recvmmsg.
type mbatch struct {
	bufs [][]byte
	iovs []unix.Iovec
	hdrs []unix.Mmsghdr
}

func newBatch(n, size int) *mbatch {
	b := &mbatch{bufs: make([][]byte, n), iovs: make([]unix.Iovec, n), hdrs: make([]unix.Mmsghdr, n)}
	for i := range n {
		b.bufs[i] = make([]byte, size)
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(size)
		b.hdrs[i].Hdr.Iov = &b.iovs[i]
		b.hdrs[i].Hdr.Iovlen = 1
	}
	return b
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// openGen opens the generator's sockets on eth0 inside the client namespace.
func openGen(ns *vnet.NS, ifindex int) (*gen, error) {
	g := &gen{tx: -1, rx: -1, flen: frameLen()}
	err := ns.Do(func() error {
		var err error
		g.tx, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("tx socket: %w", err)
		}
		if err := unix.Bind(g.tx, &unix.SockaddrLinklayer{Ifindex: ifindex}); err != nil {
			return fmt.Errorf("bind tx socket: %w", err)
		}
		_ = unix.SetsockoptInt(g.tx, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1)
		_ = unix.SetsockoptInt(g.tx, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)

		g.rx, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IP)))
		if err != nil {
			return fmt.Errorf("rx socket: %w", err)
		}
		// IPv4, UDP, first fragment, destination port 68.
		filter := []unix.SockFilter{
			{Code: 0x28, K: 12},                   // ldh [12]
			{Code: 0x15, Jt: 0, Jf: 8, K: 0x800},  // jeq IPv4
			{Code: 0x30, K: 23},                   // ldb [23]
			{Code: 0x15, Jt: 0, Jf: 6, K: 17},     // jeq UDP
			{Code: 0x28, K: 20},                   // ldh [20]
			{Code: 0x45, Jt: 4, Jf: 0, K: 0x1fff}, // jset fragment offset
			{Code: 0xb1, K: 14},                   // ldxb 4*([14]&0xf)
			{Code: 0x48, K: 16},                   // ldh [x+16]
			{Code: 0x15, Jt: 0, Jf: 1, K: 68},     // jeq 68
			{Code: 0x06, K: 0xffff},               // ret all
			{Code: 0x06, K: 0},                    // ret 0
		}
		prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
		if err := unix.SetsockoptSockFprog(g.rx, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
			return fmt.Errorf("attach socket filter: %w", err)
		}
		_ = unix.SetsockoptInt(g.rx, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
		if err := unix.SetsockoptInt(g.rx, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20); err != nil {
			return fmt.Errorf("rx buffer: %w", err)
		}
		tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(g.rx, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(g.rx, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifindex})
	})
	if err != nil {
		g.close()
		return nil, err
	}
	g.txb = newBatch(batchMax, g.flen)
	g.rxb = newBatch(batchMax, 2048)
	return g, nil
}

func (g *gen) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.tx >= 0 {
		unix.Close(g.tx)
		g.tx = -1
	}
	if g.rx >= 0 {
		unix.Close(g.rx)
		g.rx = -1
	}
}

// send transmits the first n frames of b.
func (g *gen) send(b *mbatch, n int) error {
	for i := range n {
		b.iovs[i].SetLen(g.flen)
	}
	off := 0
	for off < n {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(g.tx), uintptr(unsafe.Pointer(&b.hdrs[off])), uintptr(n-off), 0, 0, 0)
		if e != 0 {
			if e == unix.EINTR || e == unix.EAGAIN || e == unix.ENOBUFS {
				continue
			}
			return fmt.Errorf("sendmmsg: %w", e)
		}
		off += int(r)
	}
	return nil
}

// recv waits up to the socket timeout for frames; it returns how many
// arrived (their lengths in b.hdrs[i].Len).
func (g *gen) recv(b *mbatch) (int, error) {
	for i := range b.hdrs {
		b.iovs[i].SetLen(len(b.bufs[i]))
		b.hdrs[i].Len = 0
	}
	r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(g.rx), uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(len(b.hdrs)), unix.MSG_WAITFORONE, 0, 0)
	if e != 0 {
		if e == unix.EAGAIN || e == unix.EINTR {
			return 0, nil
		}
		return 0, fmt.Errorf("recvmmsg: %w", e)
	}
	return int(r), nil
}

// drain discards whatever is queued on the receive socket.
func (g *gen) drain() {
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(g.rx), uintptr(unsafe.Pointer(&g.rxb.hdrs[0])), uintptr(len(g.rxb.hdrs)), unix.MSG_DONTWAIT, 0, 0)
		if e != 0 || r == 0 {
			return
		}
	}
}

// probe sends DISCOVERs from one MAC until a server OFFERs, or timeout.
func (g *gen) probe(ctx context.Context, timeout time.Duration) (reply, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.drain()
	xid := rand.Uint32()
	mac := clientMAC(probeIdx)
	deadline := time.Now().Add(timeout)
	rb := newBatch(batchMax, 2048)
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return reply{}, ctx.Err()
		}
		buildRequest(g.txb.bufs[0], dhcpDiscover, mac, xid, [4]byte{}, [4]byte{})
		if err := g.send(g.txb, 1); err != nil {
			return reply{}, err
		}
		until := time.Now().Add(100 * time.Millisecond)
		for time.Now().Before(until) {
			n, err := g.recv(rb)
			if err != nil {
				return reply{}, err
			}
			for i := range n {
				r, ok := parseReply(rb.bufs[i][:rb.hdrs[i].Len])
				if ok && r.xid == xid && r.msgType == dhcpOffer {
					return r, nil
				}
			}
		}
	}
	return reply{}, fmt.Errorf("no OFFER to a probe DISCOVER within %v", timeout)
}

// exch is one client's DORA. Times are ns since the run's start; 0 means
// not yet.
type exch struct {
	discSent  atomic.Int64
	offerRecv atomic.Int64
	reqSent   atomic.Int64
	ackRecv   atomic.Int64
	late      atomic.Bool
	restarts  atomic.Int32 // avalanche: NAKs that sent the client back to DISCOVER
	seenRest  int32        // restarts as the sender last saw it (sender only)
	discTries int32        // avalanche: retransmissions so far (sender only)
	reqTries  int32
	reqStart  int64
	yiaddr    [4]byte // written by the receiver before reqSent is stored
	srvID     [4]byte
}

// genStats is one generator run's outcome, in perfdhcp's terms.
type genStats struct {
	Requested     float64 // DORA/s asked for (0: avalanche)
	SendRate      float64 // DISCOVERs/s the generator achieved
	DOSent        int
	DORecv        int
	RASent        int
	RARecv        int
	Late          int // replies after the drop time: counted as drops
	Naks          int
	Orphans       int // replies nobody here asked for
	No150         int // OFFER/ACK without option 150
	DOAvg, DOMax  float64
	RAAvg, RAMax  float64
	Rate4Way      float64 // completed DORA per second
	FailRatio     float64 // DISCOVERs that did not end in an ACK
	Seconds       float64 // avalanche: time until the last client was served
	Completed     bool    // avalanche: every client served
	Resent        int     // avalanche: retransmissions
	WaitOffer     int     // avalanche not done: clients still waiting for an OFFER
	WaitAck       int     // ... and for an ACK
	GenCPUPercent float64 // CPU of the bench process (generator) during the run
}

// runner carries the shared state of one run.
type runner struct {
	g       *gen
	recs    []exch
	xidBase uint32
	t0      time.Time
	done    atomic.Int64
	stop    atomic.Bool
	// counters owned by the receiver goroutine
	naks, orphans, no150, late int
	avalanche                  bool
	lastAck                    atomic.Int64
	errMu                      sync.Mutex
	rxErr                      error
}

func (r *runner) setErr(err error) {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	if r.rxErr == nil {
		r.rxErr = err
	}
}

func (r *runner) err() error {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	return r.rxErr
}

func (r *runner) now() int64 { return int64(time.Since(r.t0)) }

// receive reads replies until stop and answers OFFERs with REQUESTs.
func (r *runner) receive() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	rb := newBatch(batchMax, 2048)
	tb := newBatch(batchMax, r.g.flen)
	for !r.stop.Load() {
		n, err := r.g.recv(rb)
		if err != nil {
			r.setErr(err)
			return
		}
		if n == 0 {
			continue
		}
		now := r.now()
		nreq := 0
		var restart []uint32
		for i := range n {
			rep, ok := parseReply(rb.bufs[i][:rb.hdrs[i].Len])
			if !ok {
				continue
			}
			idx := rep.xid - r.xidBase
			if int(idx) >= len(r.recs) || rep.chaddr != [6]byte(clientMAC(idx%clientCap)) {
				r.orphans++
				continue
			}
			e := &r.recs[idx]
			if !rep.opt150 && (rep.msgType == dhcpOffer || rep.msgType == dhcpAck) {
				r.no150++
			}
			switch rep.msgType {
			case dhcpOffer:
				if e.offerRecv.Load() != 0 || e.late.Load() {
					continue // a duplicate (retransmitted DISCOVER)
				}
				sent := e.discSent.Load()
				if !r.avalanche && now-sent > int64(dropTime) {
					e.late.Store(true)
					r.late++
					continue
				}
				e.yiaddr, e.srvID = rep.yiaddr, rep.srvID
				e.offerRecv.Store(now)
				buildRequest(tb.bufs[nreq], dhcpRequest, clientMAC(idx%clientCap), rep.xid, rep.yiaddr, rep.srvID)
				nreq++
			case dhcpAck:
				sent := e.reqSent.Load()
				if sent == 0 || e.ackRecv.Load() != 0 || e.late.Load() {
					continue
				}
				if !r.avalanche && now-sent > int64(dropTime) {
					e.late.Store(true)
					r.late++
					continue
				}
				e.ackRecv.Store(now)
				r.done.Add(1)
				r.lastAck.Store(now)
			case dhcpNak:
				r.naks++
				// A client that is NAKed starts over with DISCOVER (RFC
				// 2131 §3.1.5); in the basic scenario the exchange is lost.
				if r.avalanche && e.reqSent.Load() != 0 && e.ackRecv.Load() == 0 {
					e.reqSent.Store(0)
					e.offerRecv.Store(0)
					e.restarts.Add(1)
					restart = append(restart, idx)
				}
			}
		}
		for _, idx := range restart {
			buildRequest(tb.bufs[nreq], dhcpDiscover, clientMAC(idx%clientCap), r.xidBase+idx, [4]byte{}, [4]byte{})
			r.recs[idx].discSent.Store(now)
			nreq++
		}
		if nreq > 0 {
			// Stamp the REQUESTs as sent, then send them.
			ts := r.now()
			for i := range nreq - len(restart) {
				idx := r.xidOf(tb.bufs[i]) - r.xidBase
				e := &r.recs[idx]
				e.reqStart = ts
				e.reqSent.Store(ts)
			}
			if err := r.g.send(tb, nreq); err != nil {
				r.setErr(err)
				return
			}
		}
	}
}

func (r *runner) xidOf(f []byte) uint32 {
	b := f[bootpOff:]
	return uint32(b[4])<<24 | uint32(b[5])<<16 | uint32(b[6])<<8 | uint32(b[7])
}

func procCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (g *gen) newRunner(n int, avalanche bool) *runner {
	g.drain()
	return &runner{g: g, recs: make([]exch, n), xidBase: rand.Uint32() &^ 0xffffff, t0: time.Now(), avalanche: avalanche}
}

// runRate runs the basic scenario: new clients at rate DORA/s for period,
// then waits for the stragglers (drop time for OFFER, again for ACK).
func (g *gen) runRate(ctx context.Context, rate int, period time.Duration) (genStats, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := int(float64(rate) * period.Seconds())
	r := g.newRunner(n, false)
	cpu0 := procCPU()
	var wg sync.WaitGroup
	wg.Go(r.receive)

	runtime.LockOSThread()
	sent := 0
	var sendDur time.Duration
	for sent < n && ctx.Err() == nil && r.err() == nil {
		el := time.Since(r.t0)
		due := n
		if el < period {
			due = min(n, int(float64(rate)*el.Seconds())+1)
		}
		for sent < due {
			k := min(due-sent, batchMax)
			ts := r.now()
			for i := range k {
				idx := uint32(sent + i)
				buildRequest(g.txb.bufs[i], dhcpDiscover, clientMAC(idx%clientCap), r.xidBase+idx, [4]byte{}, [4]byte{})
				r.recs[idx].discSent.Store(ts)
			}
			if err := g.send(g.txb, k); err != nil {
				runtime.UnlockOSThread()
				r.stop.Store(true)
				wg.Wait()
				return genStats{}, err
			}
			sent += k
		}
		if sent < n {
			time.Sleep(200 * time.Microsecond)
		}
	}
	sendDur = time.Since(r.t0)
	runtime.UnlockOSThread()
	// Stragglers: an OFFER may come up to dropTime late, its ACK another;
	// done early when every exchange has its ACK.
	deadline := time.Now().Add(2*dropTime + 100*time.Millisecond)
	for time.Now().Before(deadline) && ctx.Err() == nil && int(r.done.Load()) < sent {
		time.Sleep(10 * time.Millisecond)
	}
	r.stop.Store(true)
	wg.Wait()
	if err := r.err(); err != nil {
		return genStats{}, err
	}
	if err := ctx.Err(); err != nil {
		return genStats{}, err
	}
	st := r.stats(float64(rate), sent)
	st.SendRate = float64(sent) / sendDur.Seconds()
	st.Rate4Way = float64(st.RARecv) / max(period.Seconds(), sendDur.Seconds())
	st.GenCPUPercent = 100 * float64(procCPU()-cpu0) / float64(time.Since(r.t0))
	return st, nil
}

func (r *runner) stats(requested float64, sent int) genStats {
	st := genStats{Requested: requested, DOSent: sent, Naks: r.naks, Orphans: r.orphans, No150: r.no150, Late: r.late}
	var doSum, raSum float64
	for i := range r.recs[:sent] {
		e := &r.recs[i]
		if o := e.offerRecv.Load(); o != 0 {
			st.DORecv++
			d := float64(o-e.discSent.Load()) / 1e6
			doSum += d
			st.DOMax = max(st.DOMax, d)
		}
		if q := e.reqSent.Load(); q != 0 {
			st.RASent++
			if a := e.ackRecv.Load(); a != 0 {
				st.RARecv++
				d := float64(a-e.reqStart) / 1e6
				raSum += d
				st.RAMax = max(st.RAMax, d)
			}
		}
	}
	if st.DORecv > 0 {
		st.DOAvg = doSum / float64(st.DORecv)
	}
	if st.RARecv > 0 {
		st.RAAvg = raSum / float64(st.RARecv)
	}
	if sent > 0 {
		st.FailRatio = float64(sent-st.RARecv) / float64(sent)
	}
	return st
}

// runAvalanche is perfdhcp's avalanche scenario with phone-like frames:
// every client's DISCOVER at once, then each unanswered DISCOVER or
// REQUEST is retransmitted when 2^k s (±1 s, at most 64 s) have passed
// since it was first sent, checked every 200 ms, until all are served.
func (g *gen) runAvalanche(ctx context.Context, clients int, limit time.Duration) (genStats, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	r := g.newRunner(clients, true)
	cpu0 := procCPU()
	var wg sync.WaitGroup
	wg.Go(r.receive)
	defer func() {
		r.stop.Store(true)
		wg.Wait()
	}()

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// sendIdx sends DISCOVERs (or REQUESTs) for the given exchanges.
	resent := 0
	sendSet := func(idxs []uint32, req bool) error {
		for len(idxs) > 0 {
			k := min(len(idxs), batchMax)
			for i, idx := range idxs[:k] {
				e := &r.recs[idx]
				if req {
					buildRequest(g.txb.bufs[i], dhcpRequest, clientMAC(idx%clientCap), r.xidBase+idx, e.yiaddr, e.srvID)
				} else {
					buildRequest(g.txb.bufs[i], dhcpDiscover, clientMAC(idx%clientCap), r.xidBase+idx, [4]byte{}, [4]byte{})
				}
			}
			if err := g.send(g.txb, k); err != nil {
				return err
			}
			idxs = idxs[k:]
		}
		return nil
	}
	all := make([]uint32, clients)
	ts := r.now()
	for i := range all {
		all[i] = uint32(i)
		r.recs[i].discSent.Store(ts)
	}
	if err := sendSet(all, false); err != nil {
		return genStats{}, err
	}
	backoff := func(tries int32) int64 {
		d := int64(math.Min(math.Pow(2, float64(tries)), 64) * 1000)
		d += rand.Int64N(2000) - 1000
		return d * int64(time.Millisecond)
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var disc, req []uint32
	for int(r.done.Load()) < clients {
		select {
		case <-ctx.Done():
			return genStats{}, ctx.Err()
		case <-tick.C:
		}
		if err := r.err(); err != nil {
			return genStats{}, err
		}
		now := r.now()
		if time.Duration(now) > limit {
			break
		}
		disc, req = disc[:0], req[:0]
		for i := range r.recs {
			e := &r.recs[i]
			if rs := e.restarts.Load(); rs != e.seenRest {
				e.seenRest, e.discTries, e.reqTries = rs, 0, 0
			}
			switch {
			case e.ackRecv.Load() != 0:
			case e.reqSent.Load() != 0:
				if now-e.reqStart > backoff(e.reqTries) {
					e.reqTries++
					req = append(req, uint32(i))
				}
			case e.offerRecv.Load() == 0:
				if now-e.discSent.Load() > backoff(e.discTries) {
					e.discTries++
					disc = append(disc, uint32(i))
				}
			}
		}
		resent += len(disc) + len(req)
		if err := sendSet(disc, false); err != nil {
			return genStats{}, err
		}
		if err := sendSet(req, true); err != nil {
			return genStats{}, err
		}
	}
	r.stop.Store(true)
	wg.Wait()
	if err := r.err(); err != nil {
		return genStats{}, err
	}
	st := r.stats(0, clients)
	st.Completed = int(r.done.Load()) == clients
	for i := range r.recs {
		e := &r.recs[i]
		switch {
		case e.ackRecv.Load() != 0:
		case e.reqSent.Load() != 0:
			st.WaitAck++
		default:
			st.WaitOffer++
		}
	}
	st.Seconds = float64(r.lastAck.Load()) / 1e9
	st.Resent = resent
	el := time.Since(r.t0)
	st.GenCPUPercent = 100 * float64(procCPU()-cpu0) / float64(el)
	if st.Completed {
		st.Rate4Way = float64(clients) / st.Seconds
	}
	return st, nil
}
