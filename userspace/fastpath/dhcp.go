package fastpath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
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
	return t.objs.PbDhcpPools.Put(uint32(p.VLAN), v)
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

// VendorClassHash is the hash the kernel matches option 60 with (FNV-1a 64).
func VendorClassHash(vc []byte) uint64 {
	h := fnv.New64a()
	h.Write(vc)
	return h.Sum64()
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
	return nil
}

// SetClass maps an exact option 60 in a pool to an option block.
func (t *DHCPTables) SetClass(poolID uint32, vendorClass string, block uint32) error {
	if len(vendorClass) == 0 || len(vendorClass) > DHCPVendorClassMax {
		return fmt.Errorf("dhcp fast path: vendor class of %d bytes (1-%d)", len(vendorClass), DHCPVendorClassMax)
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

// PutBinding installs or replaces a client's binding.
func (t *DHCPTables) PutBinding(b DHCPBinding) error {
	k, err := bindingKey(b.VLAN, b.MAC)
	if err != nil {
		return err
	}
	v := phonePortPbDhcpBinding{
		Ip:        ip4Native(b.IP),
		State:     uint32(phonePortPbDhcpStatePB_DHCP_OFFERED),
		ExpiresNs: bootNanos(b.Expires),
		Ifindex:   uint32(b.Ifindex),
	}
	if b.Bound {
		v.State = uint32(phonePortPbDhcpStatePB_DHCP_BOUND)
	}
	return t.objs.PbDhcpBindings.Put(k, v)
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

// Bindings lists every binding.
func (t *DHCPTables) Bindings() ([]DHCPBinding, error) {
	var out []DHCPBinding
	var k phonePortPbDhcpBindingKey
	var v phonePortPbDhcpBinding
	it := t.objs.PbDhcpBindings.Iterate()
	for it.Next(&k, &v) {
		out = append(out, DHCPBinding{
			VLAN: k.Vlan, MAC: net.HardwareAddr(append([]byte(nil), k.Mac[:]...)), IP: nativeIP4(v.Ip),
			Bound:   v.State == uint32(phonePortPbDhcpStatePB_DHCP_BOUND),
			Expires: wallFromBoot(v.ExpiresNs), Ifindex: int(v.Ifindex),
		})
	}
	return out, it.Err()
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

func bootNanos(t time.Time) uint64 {
	d := bootNow() + time.Until(t)
	if d < 0 {
		return 0
	}
	return uint64(d)
}

func wallFromBoot(ns uint64) time.Time {
	return time.Now().Add(time.Duration(ns) - bootNow())
}
