package fastpath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// The DHCP fast path's tables in the kernel (bpf/lib/dhcp.h). The DHCP
// server fills them: ports, pools per VLAN, option blocks it rendered,
// classes, bindings, and queues of free addresses for new clients.

// DHCPBlockMax is the longest option block the kernel can copy.
const DHCPBlockMax = len(phonePortPbDhcpBlock{}.Data)

// DHCPVendorClassMax is the longest option 60 the kernel matches classes on.
const DHCPVendorClassMax = 64

// DHCPFreeQueueDefault is how many free addresses a pool's queue holds
// when DHCPPool.FreeQueue is 0 (the size bpf/lib/dhcp.h declares; the
// kernel takes queues of any size in its place).
const DHCPFreeQueueDefault = 4096

// DHCPPoolMax bounds pool IDs (1 to DHCPPoolMax-1).
const DHCPPoolMax = 256

// DHCPEventRingSize is the size in bytes of the ring buffer that carries
// the kernel's OFFERs and ACKs to userspace; it replaces the C map's
// size at load. An event takes 40 bytes (32 and the ring's 8-byte
// header), so 1 MiB holds 26,214 of them: 260 ms of 100,000 events a
// second while the reader waits on a lease store commit (an fdatasync:
// milliseconds on an SSD, tens on eMMC), or everything three pools' free
// queues (DHCPFreeQueueDefault each, an OFFER and an ACK per address) hand
// out while the daemon restarts. When it is full the kernel answers
// nothing and passes the request to userspace, so the size bounds the
// burst the kernel absorbs, not what is recorded. Its pages are mapped
// twice in the reader (a ring that wraps reads as one run of bytes), so
// 4 MiB cost 8 MiB of the daemon's RSS.
const DHCPEventRingSize = 1 << 20

// DHCPTables writes and reads the fast path's DHCP maps.
type DHCPTables struct {
	objs *phonePortObjects
}

// DHCP returns the fast path's DHCP tables.
func (o *Objects) DHCP() *DHCPTables { return &DHCPTables{objs: &o.objs} }

// DHCP returns the fast path's DHCP tables.
func (f *FastPath) DHCP() *DHCPTables { return f.objs.DHCP() }

func ip4Native(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func nativeIP4(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// SetPort enables the fast path on a port (by ifindex) with the port's MAC
// as the source of replies.
func (t *DHCPTables) SetPort(ifindex int, mac net.HardwareAddr, verifyChaddr bool) error {
	if len(mac) != 6 {
		return fmt.Errorf("dhcp fast path: port %d: MAC %v is not 6 bytes", ifindex, mac)
	}
	v := phonePortPbDhcpPort{Enabled: 1}
	copy(v.Mac[:], mac)
	if verifyChaddr {
		v.VerifyChaddr = 1
	}
	return t.objs.PbDhcpPorts.Put(uint32(ifindex), v)
}

// DeletePort turns the fast path off on a port.
func (t *DHCPTables) DeletePort(ifindex int) error {
	err := t.objs.PbDhcpPorts.Delete(uint32(ifindex))
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

// DHCPPool is a pool as the kernel sees it.
type DHCPPool struct {
	ID           uint32 // 1 to DHCPPoolMax-1; indexes the free queue
	VLAN         uint16
	ServerIP     netip.Addr
	DefaultBlock uint32
	LeaseTime    time.Duration
	OfferTime    time.Duration
	// Allocate lets the kernel give new clients addresses from the free
	// queue; PrefixClasses sends an unmatched option 60 to userspace.
	Allocate      bool
	PrefixClasses bool
	// FreeQueue is the free queue's capacity (0: DHCPFreeQueueDefault).
	FreeQueue int
}

// SetPool installs a pool on its VLAN and creates its free queue. A
// queue of another capacity is replaced, and what it held is lost: drain
// it first.
func (t *DHCPTables) SetPool(p DHCPPool) error {
	if p.ID == 0 || p.ID >= DHCPPoolMax {
		return fmt.Errorf("dhcp fast path: pool ID %d outside 1-%d", p.ID, DHCPPoolMax-1)
	}
	if p.VLAN > 4095 || !p.ServerIP.Is4() {
		return fmt.Errorf("dhcp fast path: pool %d: VLAN %d or server address %v invalid", p.ID, p.VLAN, p.ServerIP)
	}
	v := phonePortPbDhcpPool{
		PoolId:       p.ID,
		ServerIp:     ip4Native(p.ServerIP),
		DefaultBlock: p.DefaultBlock,
		LeaseSecs:    uint32(p.LeaseTime / time.Second),
		OfferSecs:    uint32(p.OfferTime / time.Second),
	}
	if p.Allocate {
		v.Flags |= uint32(phonePortPbDhcpPoolFlagsPB_POOL_ALLOCATE)
	}
	if p.PrefixClasses {
		v.Flags |= uint32(phonePortPbDhcpPoolFlagsPB_POOL_PREFIX_CLASSES)
	}
	size := p.FreeQueue
	if size == 0 {
		size = DHCPFreeQueueDefault
	}
	if size < 0 {
		return fmt.Errorf("dhcp fast path: pool %d: free queue of %d addresses", p.ID, size)
	}
	if err := t.ensureFreeQueue(p.ID, uint32(size)); err != nil {
		return err
	}
	classes, err := t.hasClasses(p.ID)
	if err != nil {
		return fmt.Errorf("dhcp fast path: pool %d: %w", p.ID, err)
	}
	if err := t.setClassless(p.ID, !classes); err != nil {
		return err
	}
	return t.objs.PbDhcpPools.Put(uint32(p.VLAN), v)
}

// hasClasses reports whether the pool has an exact class.
func (t *DHCPTables) hasClasses(poolID uint32) (bool, error) {
	var k phonePortPbDhcpClassKey
	var v uint32
	it := t.objs.PbDhcpClasses.Iterate()
	for it.Next(&k, &v) {
		if k.PoolId == poolID {
			return true, nil
		}
	}
	return false, it.Err()
}

// setClassless tells the kernel whether it may skip the class lookup for
// the pool's requests (pb_dhcp_classless).
func (t *DHCPTables) setClassless(poolID uint32, classless bool) error {
	var v uint32
	if classless {
		v = 1
	}
	if err := t.objs.PbDhcpClassless.Put(poolID, v); err != nil {
		return fmt.Errorf("dhcp fast path: pool %d class hint: %w", poolID, err)
	}
	return nil
}

// ClearPool removes the pool from its VLAN: its requests go to userspace.
func (t *DHCPTables) ClearPool(vlan uint16) error {
	return t.objs.PbDhcpPools.Put(uint32(vlan), phonePortPbDhcpPool{})
}

func (t *DHCPTables) ensureFreeQueue(id, size uint32) error {
	var inner *ebpf.Map
	err := t.objs.PbDhcpFree.Lookup(id, &inner)
	if err == nil {
		same := inner.MaxEntries() == size
		inner.Close()
		if same {
			return nil
		}
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("dhcp fast path: free queue %d: %w", id, err)
	}
	q, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "pb_dhcp_freeq",
		Type:       ebpf.Queue,
		ValueSize:  4,
		MaxEntries: size,
	})
	if err != nil {
		return fmt.Errorf("dhcp fast path: create free queue %d: %w", id, err)
	}
	defer q.Close() // the outer map holds it
	if err := t.objs.PbDhcpFree.Put(id, q); err != nil {
		return fmt.Errorf("dhcp fast path: install free queue %d: %w", id, err)
	}
	return nil
}

// PushFree queues free addresses for the pool's new clients, in order; it
// stops at the first that does not fit and returns how many went in.
func (t *DHCPTables) PushFree(poolID uint32, ips []netip.Addr) (int, error) {
	var q *ebpf.Map
	if err := t.objs.PbDhcpFree.Lookup(poolID, &q); err != nil {
		return 0, fmt.Errorf("dhcp fast path: free queue %d: %w", poolID, err)
	}
	defer q.Close()
	for i, ip := range ips {
		if err := q.Update(nil, ip4Native(ip), ebpf.UpdateAny); err != nil {
			if errors.Is(err, unix.E2BIG) {
				return i, nil
			}
			return i, fmt.Errorf("dhcp fast path: push to free queue %d: %w", poolID, err)
		}
	}
	return len(ips), nil
}

// DrainFree empties the pool's free queue and returns what was in it, so
// userspace can take those addresses back.
func (t *DHCPTables) DrainFree(poolID uint32) ([]netip.Addr, error) {
	var q *ebpf.Map
	if err := t.objs.PbDhcpFree.Lookup(poolID, &q); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("dhcp fast path: free queue %d: %w", poolID, err)
	}
	defer q.Close()
	var out []netip.Addr
	for {
		var v uint32
		err := q.LookupAndDelete(nil, &v)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("dhcp fast path: drain free queue %d: %w", poolID, err)
		}
		out = append(out, nativeIP4(v))
	}
}

// SetBlock stores an option block: every option of an OFFER in order,
// without END; typeOff is the offset of option 53's value in it.
func (t *DHCPTables) SetBlock(id uint32, options []byte, typeOff int) error {
	if len(options) == 0 || len(options) > DHCPBlockMax {
		return fmt.Errorf("dhcp fast path: block %d of %d bytes (1-%d)", id, len(options), DHCPBlockMax)
	}
	if typeOff < 2 || typeOff >= len(options) || options[typeOff-2] != 53 || options[typeOff-1] != 1 {
		return fmt.Errorf("dhcp fast path: block %d: offset %d is not option 53's value", id, typeOff)
	}
	v := phonePortPbDhcpBlock{Len: uint16(len(options)), TypeOff: uint16(typeOff)}
	copy(v.Data[:], options)
	return t.objs.PbDhcpBlocks.Put(id, v)
}

// VendorClassHash is the hash the kernel matches option 60 with (vc_mix
// in bpf/lib/dhcp.h): the value in little-endian 64-bit words, the last
// one zero-padded, each mixed into a seed that starts with the length.
func VendorClassHash(vc []byte) uint64 {
	const (
		seed = 0x9e3779b97f4a7c15
		mul  = 0xff51afd7ed558ccd
	)
	h := uint64(seed) ^ uint64(len(vc))
	for len(vc) > 0 {
		var w [8]byte
		n := copy(w[:], vc)
		vc = vc[n:]
		h = (h ^ binary.LittleEndian.Uint64(w[:])) * mul
		h ^= h >> 32
	}
	return h
}

// ClearClasses removes every class mapping.
func (t *DHCPTables) ClearClasses() error {
	var k phonePortPbDhcpClassKey
	var keys []phonePortPbDhcpClassKey
	var v uint32
	it := t.objs.PbDhcpClasses.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range keys {
		if err := t.objs.PbDhcpClasses.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	for id := uint32(1); id < DHCPPoolMax; id++ {
		if err := t.setClassless(id, true); err != nil {
			return err
		}
	}
	return nil
}

// SetClass maps an exact option 60 in a pool to an option block.
func (t *DHCPTables) SetClass(poolID uint32, vendorClass string, block uint32) error {
	if len(vendorClass) == 0 || len(vendorClass) > DHCPVendorClassMax {
		return fmt.Errorf("dhcp fast path: vendor class of %d bytes (1-%d)", len(vendorClass), DHCPVendorClassMax)
	}
	// The kernel must look classes up for this pool before the class
	// exists, or a request in between would get the default block.
	if poolID < DHCPPoolMax {
		if err := t.setClassless(poolID, false); err != nil {
			return err
		}
	}
	k := phonePortPbDhcpClassKey{PoolId: poolID, VcHash: VendorClassHash([]byte(vendorClass))}
	return t.objs.PbDhcpClasses.Put(k, block)
}

// DHCPBinding is a client's address as the kernel knows it. A binding
// whose Expires has passed still tells the kernel the client is known:
// its DISCOVER goes to userspace (for its previous address or its
// reservation) instead of taking a queued address.
type DHCPBinding struct {
	VLAN    uint16
	MAC     net.HardwareAddr
	IP      netip.Addr
	Bound   bool // bound (ACKed), else offered
	Expires time.Time
	Ifindex int
}

func bindingKey(vlan uint16, mac net.HardwareAddr) (phonePortPbDhcpBindingKey, error) {
	k := phonePortPbDhcpBindingKey{Vlan: vlan}
	if len(mac) != 6 {
		return k, fmt.Errorf("dhcp fast path: MAC %v is not 6 bytes", mac)
	}
	copy(k.Mac[:], mac)
	return k, nil
}

func bindingValue(b *DHCPBinding, c clocks) phonePortPbDhcpBinding {
	v := phonePortPbDhcpBinding{
		Ip:        ip4Native(b.IP),
		State:     uint32(phonePortPbDhcpStatePB_DHCP_OFFERED),
		ExpiresNs: c.bootNanos(b.Expires),
		Ifindex:   uint32(b.Ifindex),
	}
	if b.Bound {
		v.State = uint32(phonePortPbDhcpStatePB_DHCP_BOUND)
	}
	return v
}

// PutBinding installs or replaces a client's binding.
func (t *DHCPTables) PutBinding(b DHCPBinding) error {
	k, err := bindingKey(b.VLAN, b.MAC)
	if err != nil {
		return err
	}
	return t.objs.PbDhcpBindings.Put(k, bindingValue(&b, readClocks()))
}

// BindingBatch gathers bindings for PutBindings; its buffers are reused
// from one batch to the next.
type BindingBatch struct {
	keys []phonePortPbDhcpBindingKey
	vals []phonePortPbDhcpBinding
	// The clocks are read once a batch: CLOCK_BOOTTIME costs a system
	// call, as much as the batch update's share of each binding.
	clocks clocks
}

// Add appends a binding to the batch.
func (bb *BindingBatch) Add(b DHCPBinding) error {
	k, err := bindingKey(b.VLAN, b.MAC)
	if err != nil {
		return err
	}
	if len(bb.keys) == 0 {
		bb.clocks = readClocks()
	}
	bb.keys = append(bb.keys, k)
	bb.vals = append(bb.vals, bindingValue(&b, bb.clocks))
	return nil
}

// Len is the number of bindings in the batch.
func (bb *BindingBatch) Len() int { return len(bb.keys) }

// PutBindings installs or replaces every binding of the batch in one
// system call and empties the batch. (Batch operations on hash maps came
// with Linux 5.6; the program's ring buffer already needs 5.8.)
func (t *DHCPTables) PutBindings(bb *BindingBatch) error {
	defer func() { bb.keys, bb.vals = bb.keys[:0], bb.vals[:0] }()
	if len(bb.keys) == 0 {
		return nil
	}
	n, err := t.objs.PbDhcpBindings.BatchUpdate(bb.keys, bb.vals, nil)
	if err != nil {
		return fmt.Errorf("dhcp fast path: binding %d of a batch of %d: %w", n+1, len(bb.keys), err)
	}
	return nil
}

// DeleteBinding removes a client's binding (its requests go to userspace).
func (t *DHCPTables) DeleteBinding(vlan uint16, mac net.HardwareAddr) error {
	k, err := bindingKey(vlan, mac)
	if err != nil {
		return err
	}
	err = t.objs.PbDhcpBindings.Delete(k)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

// Binding looks a client's binding up.
func (t *DHCPTables) Binding(vlan uint16, mac net.HardwareAddr) (DHCPBinding, bool, error) {
	k, err := bindingKey(vlan, mac)
	if err != nil {
		return DHCPBinding{}, false, err
	}
	var v phonePortPbDhcpBinding
	err = t.objs.PbDhcpBindings.Lookup(k, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return DHCPBinding{}, false, nil
	}
	if err != nil {
		return DHCPBinding{}, false, err
	}
	return DHCPBinding{
		VLAN: vlan, MAC: append(net.HardwareAddr(nil), mac...), IP: nativeIP4(v.Ip),
		Bound:   v.State == uint32(phonePortPbDhcpStatePB_DHCP_BOUND),
		Expires: wallFromBoot(v.ExpiresNs), Ifindex: int(v.Ifindex),
	}, true, nil
}

// WalkBindings calls fn with every binding the kernel holds. It reads the
// map a chunk at a time, so a map of a hundred thousand bindings is never
// copied into memory, and in a hundred system calls rather than one per
// binding. fn must not change the map (that would disturb the kernel's
// walk of its buckets) and must copy b.MAC to keep it.
func (t *DHCPTables) WalkBindings(fn func(b DHCPBinding)) error {
	const chunk = 1024 // far more than a hash bucket holds, which batch lookups need
	keys := make([]phonePortPbDhcpBindingKey, chunk)
	vals := make([]phonePortPbDhcpBinding, chunk)
	mac := make(net.HardwareAddr, 6)
	bootWall := time.Now().Add(-bootNow())
	var cursor ebpf.MapBatchCursor
	for {
		n, err := t.objs.PbDhcpBindings.BatchLookup(&cursor, keys, vals, nil)
		for i, k := range keys[:n] {
			v := vals[i]
			copy(mac, k.Mac[:])
			fn(DHCPBinding{
				VLAN: k.Vlan, MAC: mac, IP: nativeIP4(v.Ip),
				Bound:   v.State == uint32(phonePortPbDhcpStatePB_DHCP_BOUND),
				Expires: bootWall.Add(time.Duration(v.ExpiresNs)), Ifindex: int(v.Ifindex),
			})
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("dhcp fast path: reading the bindings: %w", err)
		}
	}
}

// PruneBindings deletes every binding for which keep returns false and
// returns how many it deleted.
func (t *DHCPTables) PruneBindings(keep func(vlan uint16, mac [6]byte) bool) (int, error) {
	// The walk comes first, then the deletes: the bindings to drop are
	// the few the store no longer knows.
	var drop []phonePortPbDhcpBindingKey
	err := t.WalkBindings(func(b DHCPBinding) {
		if !keep(b.VLAN, [6]byte(b.MAC)) {
			drop = append(drop, phonePortPbDhcpBindingKey{Vlan: b.VLAN, Mac: [6]byte(b.MAC)})
		}
	})
	if err != nil {
		return 0, err
	}
	if len(drop) > 0 {
		if _, err := t.objs.PbDhcpBindings.BatchDelete(drop, nil); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, fmt.Errorf("dhcp fast path: deleting %d bindings: %w", len(drop), err)
		}
	}
	return len(drop), nil
}

// DHCPEvent is an address the kernel handed out.
type DHCPEvent struct {
	Acked     bool // ACK sent (bound); else an OFFER was sent
	Allocated bool // the OFFER took a queued free address for a new client
	PoolID    uint32
	VLAN      uint16
	MAC       net.HardwareAddr
	IP        netip.Addr
	Expires   time.Time
	Ifindex   int
}

// DHCPEvents reads what the kernel handed out. It is for one goroutine.
type DHCPEvents struct {
	rd  *ringbuf.Reader
	rec ringbuf.Record // reused: tens of thousands of events a second

	// bootWall is the wall clock at CLOCK_BOOTTIME zero, read again at
	// most once a second (bootChecked): reading CLOCK_BOOTTIME is a
	// system call, which for every event cost more than the rest of
	// reading it. The two clocks drift apart only when the wall clock is
	// set or slewed.
	bootWall, bootChecked time.Time
}

// Events opens the event stream. Only one reader may be open at a time.
func (t *DHCPTables) Events() (*DHCPEvents, error) {
	rd, err := ringbuf.NewReader(t.objs.PbDhcpEvents)
	if err != nil {
		return nil, fmt.Errorf("dhcp fast path events: %w", err)
	}
	return &DHCPEvents{rd: rd}, nil
}

// Offsets of the event's fields in a record (bpf/lib/dhcp.h).
var evLayout phonePortPbDhcpEvent

const evSize = int(unsafe.Sizeof(evLayout))

// Read blocks for the next event; it returns ringbuf.ErrClosed after Close.
func (e *DHCPEvents) Read() (DHCPEvent, error) {
	if err := e.rd.ReadInto(&e.rec); err != nil {
		return DHCPEvent{}, err
	}
	b := e.rec.RawSample
	if len(b) < evSize {
		return DHCPEvent{}, fmt.Errorf("dhcp fast path event of %d bytes", len(b))
	}
	u32 := func(off uintptr) uint32 { return binary.NativeEndian.Uint32(b[off:]) }
	typ := u32(unsafe.Offsetof(evLayout.Type))
	mac := unsafe.Offsetof(evLayout.Mac)
	return DHCPEvent{
		Acked:     typ == uint32(phonePortPbDhcpEventTypePB_DHCP_EV_ACKED),
		Allocated: typ == uint32(phonePortPbDhcpEventTypePB_DHCP_EV_ALLOCATED),
		PoolID:    u32(unsafe.Offsetof(evLayout.PoolId)),
		VLAN:      binary.NativeEndian.Uint16(b[unsafe.Offsetof(evLayout.Vlan):]),
		MAC:       net.HardwareAddr(bytes.Clone(b[mac : mac+6])),
		IP:        nativeIP4(u32(unsafe.Offsetof(evLayout.Ip))),
		Expires:   e.wallAt(binary.NativeEndian.Uint64(b[unsafe.Offsetof(evLayout.ExpiresNs):])),
		Ifindex:   int(u32(unsafe.Offsetof(evLayout.Ifindex))),
	}, nil
}

// wallAt converts a CLOCK_BOOTTIME reading to the wall clock.
func (e *DHCPEvents) wallAt(ns uint64) time.Time {
	if now := time.Now(); e.bootChecked.IsZero() || now.Sub(e.bootChecked) >= time.Second || now.Before(e.bootChecked) {
		e.bootWall, e.bootChecked = now.Add(-bootNow()), now
	}
	return e.bootWall.Add(time.Duration(ns))
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t.
func (e *DHCPEvents) SetDeadline(t time.Time) { e.rd.SetDeadline(t) }

// Close unblocks Read.
func (e *DHCPEvents) Close() error { return e.rd.Close() }

// The kernel keeps expiry on CLOCK_BOOTTIME (bpf_ktime_get_boot_ns), which
// wall-clock steps do not move.
func bootNow() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return time.Duration(ts.Nano())
}

// clocks is one reading of CLOCK_BOOTTIME and of the wall clock.
type clocks struct {
	boot time.Duration
	wall time.Time
}

func readClocks() clocks { return clocks{bootNow(), time.Now()} }

// bootNanos is t on CLOCK_BOOTTIME.
func (c clocks) bootNanos(t time.Time) uint64 {
	d := c.boot + t.Sub(c.wall)
	if d < 0 {
		return 0
	}
	return uint64(d)
}

func wallFromBoot(ns uint64) time.Time {
	return time.Now().Add(time.Duration(ns) - bootNow())
}
