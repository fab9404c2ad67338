package poe

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// The kernel's PSE framework over ethtool's generic netlink family. The
// numbers are the uapi's: include/uapi/linux/ethtool_netlink_generated.h
// (kernel 6.x; commit 1176978e for the message and PSE attribute enums,
// eeb0c8f72f49 "net: ethtool: Add PSE port priority support feature",
// 6.17, for PRIO_MAX and PRIO) and include/uapi/linux/ethtool.h for the
// state enums. golang.org/x/sys/unix has the message numbers but none of
// the PSE attributes.
const (
	ethtoolFamily = "ethtool" // ETHTOOL_FAMILY_NAME
	ethtoolGenlV  = 1         // ETHTOOL_FAMILY_VERSION

	msgPSEGet      = 36 // ETHTOOL_MSG_PSE_GET (user to kernel)
	msgPSESet      = 37 // ETHTOOL_MSG_PSE_SET (user to kernel)
	msgPSEGetReply = 37 // ETHTOOL_MSG_PSE_GET_REPLY (kernel to user)

	attrHeaderDevName = 2 // ETHTOOL_A_HEADER_DEV_NAME, string

	attrPSEHeader          = 1  // ETHTOOL_A_PSE_HEADER, nest of ETHTOOL_A_HEADER_*
	attrPoDLAdminState     = 2  // ETHTOOL_A_PODL_PSE_ADMIN_STATE, u32
	attrPoDLAdminControl   = 3  // ETHTOOL_A_PODL_PSE_ADMIN_CONTROL, u32 (SET)
	attrPoDLPowerStatus    = 4  // ETHTOOL_A_PODL_PSE_PW_D_STATUS, u32
	attrC33AdminState      = 5  // ETHTOOL_A_C33_PSE_ADMIN_STATE, u32
	attrC33AdminControl    = 6  // ETHTOOL_A_C33_PSE_ADMIN_CONTROL, u32 (SET)
	attrC33PowerStatus     = 7  // ETHTOOL_A_C33_PSE_PW_D_STATUS, u32
	attrC33Class           = 8  // ETHTOOL_A_C33_PSE_PW_CLASS, u32
	attrC33ActualPower     = 9  // ETHTOOL_A_C33_PSE_ACTUAL_PW, u32 mW
	attrC33ExtState        = 10 // ETHTOOL_A_C33_PSE_EXT_STATE, u32
	attrC33ExtSubstate     = 11 // ETHTOOL_A_C33_PSE_EXT_SUBSTATE, u32
	attrC33PowerLimit      = 12 // ETHTOOL_A_C33_PSE_AVAIL_PW_LIMIT, u32 mW (GET and SET)
	attrC33PowerLimitRange = 13 // ETHTOOL_A_C33_PSE_PW_LIMIT_RANGES, nests of MIN=1, MAX=2 (mW)
	attrPSEPowerDomain     = 14 // ETHTOOL_A_PSE_PW_D_ID, u32
	attrPSEPrioMax         = 15 // ETHTOOL_A_PSE_PRIO_MAX, u32
	attrPSEPrio            = 16 // ETHTOOL_A_PSE_PRIO, u32 (GET and SET), 0 highest

	// enum ethtool_c33_pse_admin_state and ethtool_podl_pse_admin_state.
	adminDisabled = 2
	adminEnabled  = 3
)

// The power detection states, by enum (ethtool_c33_pse_pw_d_status and
// ethtool_podl_pse_pw_d_status, 1-based; IEEE 802.3 30.9.1.1.5 and
// 30.15.1.1.3).
var (
	c33PowerStates = map[uint32]State{
		2: StateDisabled,   // disabled
		3: StateSearching,  // searching
		4: StateDelivering, // delivering power
		5: StateFault,      // test
		6: StateFault,      // fault
		7: StateFault,      // other fault
	}
	c33PowerStateNames = map[uint32]string{1: "unknown", 5: "test mode", 6: "fault", 7: "other fault"}
	podlPowerStates    = map[uint32]State{
		2: StateDisabled,   // disabled
		3: StateSearching,  // searching
		4: StateDelivering, // delivering power
		5: StateSearching,  // sleep
		6: StateSearching,  // idle
		7: StateFault,      // error
	}
	podlPowerStateNames = map[uint32]string{1: "unknown", 7: "error"}
	// enum ethtool_c33_pse_ext_state, which says why a port is not
	// delivering.
	c33ExtStates = map[uint32]string{
		1: "error condition", 2: "no valid maintain power signature", 3: "PSE disabled",
		4: "detection", 5: "port voltage out of range", 6: "overload",
		7: "PD data-link power type", 8: "power not available", 9: "short circuit",
	}
)

// Netlink drives PSEs through the kernel's PSE framework (drivers in
// drivers/net/pse-pd, such as pd692x0, tps23881 and pse_regulator), which
// hangs a PSE off a network device's PHY. Each port is a network device;
// Clause 33 (PoE) and PoDL PSEs are both handled.
type Netlink struct {
	conn     *genetlink.Conn
	family   uint16
	ifnames  map[string]string // port -> network device
	ports    []string
	attempts int
	backoff  time.Duration

	mu   sync.Mutex
	podl map[string]bool // ports whose PSE is PoDL rather than Clause 33
}

// OpenNetlink opens a generic netlink socket in the calling thread's
// network namespace and checks that every port's device has a PSE.
// ifnames maps each port to its network device.
func OpenNetlink(ctx context.Context, ifnames map[string]string) (*Netlink, error) {
	conn, err := genetlink.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("pse netlink: %w", err)
	}
	n, err := NewNetlink(ctx, conn, ifnames)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return n, nil
}

// NewNetlink is OpenNetlink on a connection the caller made (a fake family
// in tests); the Netlink owns conn from then on.
func NewNetlink(ctx context.Context, conn *genetlink.Conn, ifnames map[string]string) (*Netlink, error) {
	fam, err := conn.GetFamily(ethtoolFamily)
	if err != nil {
		return nil, fmt.Errorf("pse netlink: generic netlink family %q: %w", ethtoolFamily, err)
	}
	n := &Netlink{
		conn: conn, family: fam.ID, ifnames: map[string]string{},
		attempts: 3, backoff: 50 * time.Millisecond, podl: map[string]bool{},
	}
	for port, ifname := range ifnames {
		n.ifnames[port] = ifname
		n.ports = append(n.ports, port)
	}
	sort.Strings(n.ports)
	for _, port := range n.ports {
		r, err := n.get(ctx, port)
		if err != nil {
			return nil, err
		}
		switch {
		case r.has(attrC33AdminState):
		case r.has(attrPoDLAdminState):
			n.podl[port] = true
		default:
			return nil, fmt.Errorf("pse netlink: port %s (%s): the PSE reports neither a Clause 33 nor a PoDL admin state", port, n.ifnames[port])
		}
	}
	return n, nil
}

// Ports lists the ports in name order.
func (n *Netlink) Ports() []string { return slices.Clone(n.ports) }

func (n *Netlink) ifname(port string) (string, error) {
	ifname, ok := n.ifnames[port]
	if !ok {
		return "", fmt.Errorf("%w %q", ErrUnknownPort, port)
	}
	return ifname, nil
}

func (n *Netlink) isPoDL(port string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.podl[port]
}

// pseReply holds a PSE_GET reply's u32 attributes by type.
type pseReply map[uint16]uint32

func (r pseReply) has(t uint16) bool { _, ok := r[t]; return ok }

func encodeHeader(ae *netlink.AttributeEncoder, ifname string) {
	ae.Nested(attrPSEHeader, func(nae *netlink.AttributeEncoder) error {
		nae.String(attrHeaderDevName, ifname)
		return nil
	})
}

// get sends PSE_GET for the port and decodes the reply, asking again
// when the answer was bad.
func (n *Netlink) get(ctx context.Context, port string) (pseReply, error) {
	var r pseReply
	err := retry(ctx, n.attempts, n.backoff, func() error {
		var err error
		r, err = n.getOnce(port)
		return err
	})
	return r, err
}

func (n *Netlink) getOnce(port string) (pseReply, error) {
	ifname, err := n.ifname(port)
	if err != nil {
		return nil, err
	}
	ae := netlink.NewAttributeEncoder()
	encodeHeader(ae, ifname)
	body, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	msgs, err := n.conn.Execute(genetlink.Message{
		Header: genetlink.Header{Command: msgPSEGet, Version: ethtoolGenlV},
		Data:   body,
	}, n.family, netlink.Request)
	if err != nil {
		return nil, n.kernelError(port, ifname, "PSE_GET", err)
	}
	if len(msgs) != 1 || msgs[0].Header.Command != msgPSEGetReply {
		return nil, fmt.Errorf("pse netlink: port %s (%s): PSE_GET: %d replies, want one PSE_GET_REPLY", port, ifname, len(msgs))
	}
	r, err := decodePSEReply(msgs[0].Data)
	if err != nil {
		return nil, fmt.Errorf("pse netlink: port %s (%s): PSE_GET_REPLY: %w", port, ifname, err)
	}
	return r, nil
}

func decodePSEReply(b []byte) (pseReply, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	r := pseReply{}
	for ad.Next() {
		switch t := ad.Type(); t {
		case attrPSEHeader, attrC33PowerLimitRange:
			// The header names the device we asked about; the ranges are
			// not needed: the kernel checks a limit against them.
		case attrPoDLAdminState, attrPoDLPowerStatus, attrC33AdminState, attrC33PowerStatus,
			attrC33Class, attrC33ActualPower, attrC33ExtState, attrC33ExtSubstate,
			attrC33PowerLimit, attrPSEPowerDomain, attrPSEPrioMax, attrPSEPrio:
			r[t] = ad.Uint32()
		}
	}
	if err := ad.Err(); err != nil {
		return nil, err
	}
	return r, nil
}

// set sends PSE_SET with the attributes encode adds, and waits for the ack.
func (n *Netlink) set(ctx context.Context, port, what string, encode func(*netlink.AttributeEncoder)) error {
	ifname, err := n.ifname(port)
	if err != nil {
		return err
	}
	ae := netlink.NewAttributeEncoder()
	encodeHeader(ae, ifname)
	encode(ae)
	body, err := ae.Encode()
	if err != nil {
		return err
	}
	return retry(ctx, n.attempts, n.backoff, func() error {
		_, err := n.conn.Execute(genetlink.Message{
			Header: genetlink.Header{Command: msgPSESet, Version: ethtoolGenlV},
			Data:   body,
		}, n.family, netlink.Request|netlink.Acknowledge)
		if err != nil {
			return n.kernelError(port, ifname, "PSE_SET "+what, err)
		}
		return nil
	})
}

// kernelError names the port and turns the kernel's "not supported" into
// ErrNotSupported, which is not retried.
func (n *Netlink) kernelError(port, ifname, op string, err error) error {
	if errors.Is(err, syscall.EOPNOTSUPP) {
		return fmt.Errorf("pse netlink: port %s (%s): %s: %w (%v)", port, ifname, op, ErrNotSupported, err)
	}
	return fmt.Errorf("pse netlink: port %s (%s): %s: %w", port, ifname, op, err)
}

func (n *Netlink) setAdmin(ctx context.Context, port string, state uint32) error {
	attr, what := uint16(attrC33AdminControl), "c33-pse-admin-control"
	if n.isPoDL(port) {
		attr, what = attrPoDLAdminControl, "podl-pse-admin-control"
	}
	return n.set(ctx, port, what, func(ae *netlink.AttributeEncoder) { ae.Uint32(attr, state) })
}

// Enable sets the port's admin control to enabled.
func (n *Netlink) Enable(ctx context.Context, port string) error {
	return n.setAdmin(ctx, port, adminEnabled)
}

// Disable sets the port's admin control to disabled.
func (n *Netlink) Disable(ctx context.Context, port string) error {
	return n.setAdmin(ctx, port, adminDisabled)
}

// PowerCycle disables the port, waits off and enables it again, as
// `ethtool --set-pse` twice would.
func (n *Netlink) PowerCycle(ctx context.Context, port string, off time.Duration) error {
	return cycle(ctx, n, port, off)
}

// Status reads the port with PSE_GET. A reply that makes no sense (a state
// outside the enums, a class past 8, more power than any port can give) is
// asked again and then reported as an error.
func (n *Netlink) Status(ctx context.Context, port string) (PortStatus, error) {
	var st PortStatus
	err := retry(ctx, n.attempts, n.backoff, func() error {
		r, err := n.getOnce(port)
		if err != nil {
			return err
		}
		if st, err = n.portStatus(port, r); err != nil {
			return fmt.Errorf("pse netlink: port %s (%s): %w", port, n.ifnames[port], err)
		}
		return checkStatus(st)
	})
	return st, err
}

func (n *Netlink) portStatus(port string, r pseReply) (PortStatus, error) {
	st := PortStatus{Port: port, Class: -1}
	admin, power := uint16(attrC33AdminState), uint16(attrC33PowerStatus)
	states, names := c33PowerStates, c33PowerStateNames
	if n.isPoDL(port) {
		admin, power = attrPoDLAdminState, attrPoDLPowerStatus
		states, names = podlPowerStates, podlPowerStateNames
	}
	a, ok := r[admin]
	if !ok {
		return st, errors.New("the reply has no admin state")
	}
	if a != adminDisabled && a != adminEnabled && a != 1 {
		return st, fmt.Errorf("impossible admin state %d", a)
	}
	p, hasPower := r[power]
	switch {
	case a == adminDisabled:
		st.State = StateDisabled
	case !hasPower || p == 1:
		// Enabled, but the PSE cannot say what it is doing: a fault to
		// look at, not a state to guess.
		st.State, st.Fault = StateFault, "the PSE reports its power status as unknown"
	default:
		s, ok := states[p]
		if !ok {
			return st, fmt.Errorf("impossible power status %d", p)
		}
		st.State = s
		if s == StateFault {
			st.Fault = names[p]
		}
	}
	if ext, ok := r[attrC33ExtState]; ok && ext != 0 && st.State != StateDelivering {
		name, ok := c33ExtStates[ext]
		if !ok {
			name = fmt.Sprintf("extended state %d", ext)
		}
		if sub := r[attrC33ExtSubstate]; sub != 0 {
			name = fmt.Sprintf("%s (substate %d)", name, sub)
		}
		if st.Fault == "" {
			st.Fault = name
		} else {
			st.Fault += ": " + name
		}
	}
	if c, ok := r[attrC33Class]; ok && st.State == StateDelivering {
		if c > 8 {
			return st, fmt.Errorf("impossible class %d", c)
		}
		st.Class = int(c)
	}
	if pw, ok := r[attrC33ActualPower]; ok {
		if pw > maxPortMW {
			return st, fmt.Errorf("impossible power %d mW", pw)
		}
		st.PowerMW = int(pw)
	}
	if l, ok := r[attrC33PowerLimit]; ok {
		if l > maxPortMW {
			return st, fmt.Errorf("impossible limit %d mW", l)
		}
		st.LimitMW = int(l)
	}
	return st, nil
}

// SetLimit sets a Clause 33 port's available power limit (the kernel
// refuses values outside the driver's ranges).
func (n *Netlink) SetLimit(ctx context.Context, port string, mw int) error {
	if _, err := n.ifname(port); err != nil {
		return err
	}
	if n.isPoDL(port) {
		return fmt.Errorf("pse netlink: port %s: a power limit on a PoDL PSE: %w", port, ErrNotSupported)
	}
	if mw < 0 || mw > maxPortMW {
		return fmt.Errorf("pse netlink: port %s: limit %d mW out of range", port, mw)
	}
	return n.set(ctx, port, "c33-pse-avail-pw-limit", func(ae *netlink.AttributeEncoder) {
		ae.Uint32(attrC33PowerLimit, uint32(mw))
	})
}

// SetPriority sets the port's priority in the kernel's budget handling
// (kernel 6.17+): critical 0, high 1, low 2, capped at the PSE's highest
// allowed value. A PSE without priorities has no PRIO_MAX.
func (n *Netlink) SetPriority(ctx context.Context, port string, p Priority) error {
	r, err := n.get(ctx, port)
	if err != nil {
		return err
	}
	prioMax, ok := r[attrPSEPrioMax]
	if !ok || prioMax == 0 {
		return fmt.Errorf("pse netlink: port %s: priority: %w (no PRIO_MAX: kernel before 6.17, or a driver without priorities)", port, ErrNotSupported)
	}
	v := min(uint32(p), prioMax)
	return n.set(ctx, port, "prio", func(ae *netlink.AttributeEncoder) { ae.Uint32(attrPSEPrio, v) })
}

// Budget is 0: the PSE netlink interface reports no supply budget (the
// kernel keeps one per power domain, but does not export it).
func (n *Netlink) Budget(context.Context) (int, error) { return 0, nil }

// Close closes the netlink socket.
func (n *Netlink) Close() error { return n.conn.Close() }
