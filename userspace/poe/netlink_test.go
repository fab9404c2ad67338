package poe

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/genetlink/genltest"
	"github.com/mdlayher/netlink"
)

// fakePSE is one device's PSE in the fake ethtool family.
type fakePSE struct {
	podl    bool
	admin   uint32 // adminDisabled or adminEnabled
	pd      bool   // a device is plugged in: enabling delivers power
	class   uint32
	powerMW uint32
	limitMW uint32
	prioMax uint32 // 0: no priority support (before kernel 6.17)
	prio    uint32
	ext     uint32 // C33 extended state reported while not delivering
	extSub  uint32
	// raw, if set, replaces every attribute of the next GET replies.
	raw      []netlink.Attribute
	rawTimes int
	// getErr fails the next getErrTimes GETs with this errno.
	getErr      syscall.Errno
	getErrTimes int
	setErr      syscall.Errno
}

// fakeEthtool is the kernel's ethtool family as far as PSE goes: PSE_GET
// answers from the devices' state, PSE_SET changes it.
type fakeEthtool struct {
	mu   sync.Mutex
	devs map[string]*fakePSE
	sets []string // "dev attr=value" for every attribute a PSE_SET carried
}

const fakeFamilyID = 0x1d

func dialFake(f *fakeEthtool) *genetlink.Conn {
	family := genetlink.Family{ID: fakeFamilyID, Name: ethtoolFamily, Version: ethtoolGenlV}
	return genltest.Dial(genltest.ServeFamily(family, f.handle))
}

func headerDev(b []byte) (string, []netlink.Attribute, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "", nil, err
	}
	var dev string
	var rest []netlink.Attribute
	for ad.Next() {
		if ad.Type() == attrPSEHeader {
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				for nad.Next() {
					if nad.Type() == attrHeaderDevName {
						dev = nad.String()
					}
				}
				return nil
			})
			continue
		}
		rest = append(rest, netlink.Attribute{Type: ad.Type(), Data: ad.Bytes()})
	}
	return dev, rest, ad.Err()
}

func (f *fakeEthtool) handle(greq genetlink.Message, nreq netlink.Message) ([]genetlink.Message, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if nreq.Header.Type != fakeFamilyID || greq.Header.Version != ethtoolGenlV {
		return nil, fmt.Errorf("fake ethtool: request to family %d version %d", nreq.Header.Type, greq.Header.Version)
	}
	dev, attrs, err := headerDev(greq.Data)
	if err != nil {
		return nil, err
	}
	d, ok := f.devs[dev]
	if !ok {
		return nil, genltest.Error(int(syscall.ENODEV))
	}
	switch greq.Header.Command {
	case msgPSEGet:
		if nreq.Header.Flags&netlink.Request == 0 {
			return nil, errors.New("fake ethtool: PSE_GET without NLM_F_REQUEST")
		}
		if d.getErrTimes > 0 {
			d.getErrTimes--
			return nil, genltest.Error(int(d.getErr))
		}
		return []genetlink.Message{{Header: genetlink.Header{Command: msgPSEGetReply, Version: ethtoolGenlV}, Data: d.reply(dev)}}, nil
	case msgPSESet:
		if nreq.Header.Flags&netlink.Acknowledge == 0 {
			return nil, errors.New("fake ethtool: PSE_SET without NLM_F_ACK")
		}
		if d.setErr != 0 {
			return nil, genltest.Error(int(d.setErr))
		}
		for _, a := range attrs {
			v := nlenc32(a.Data)
			f.sets = append(f.sets, fmt.Sprintf("%s %d=%d", dev, a.Type, v))
			switch {
			case a.Type == attrC33AdminControl && !d.podl, a.Type == attrPoDLAdminControl && d.podl:
				if v != adminEnabled && v != adminDisabled {
					return nil, genltest.Error(int(syscall.ERANGE))
				}
				d.admin = v
			case a.Type == attrC33PowerLimit && !d.podl:
				d.limitMW = v
			case a.Type == attrPSEPrio && d.prioMax > 0:
				if v > d.prioMax {
					return nil, genltest.Error(int(syscall.ERANGE))
				}
				d.prio = v
			default:
				return nil, genltest.Error(int(syscall.EOPNOTSUPP))
			}
		}
		return []genetlink.Message{{}}, nil // the ack
	}
	return nil, genltest.Error(int(syscall.EOPNOTSUPP))
}

func nlenc32(b []byte) uint32 {
	if len(b) != 4 {
		return 0xffffffff
	}
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func (d *fakePSE) reply(dev string) []byte {
	ae := netlink.NewAttributeEncoder()
	encodeHeader(ae, dev)
	if d.rawTimes > 0 {
		d.rawTimes--
		for _, a := range d.raw {
			ae.Bytes(a.Type, a.Data)
		}
		b, _ := ae.Encode()
		return b
	}
	status := uint32(2) // disabled
	if d.admin == adminEnabled {
		status = 3 // searching
		if d.pd {
			status = 4 // delivering
		}
	}
	if d.podl {
		ae.Uint32(attrPoDLAdminState, d.admin)
		ae.Uint32(attrPoDLPowerStatus, status)
	} else {
		ae.Uint32(attrC33AdminState, d.admin)
		ae.Uint32(attrC33PowerStatus, status)
		if status == 4 {
			ae.Uint32(attrC33Class, d.class)
			ae.Uint32(attrC33ActualPower, d.powerMW)
		} else if d.ext != 0 {
			ae.Uint32(attrC33ExtState, d.ext)
			ae.Uint32(attrC33ExtSubstate, d.extSub)
		}
		if d.limitMW != 0 {
			ae.Uint32(attrC33PowerLimit, d.limitMW)
		}
		ae.Nested(attrC33PowerLimitRange, func(nae *netlink.AttributeEncoder) error {
			nae.Uint32(1, 15000)
			nae.Uint32(2, 18100)
			return nil
		})
		ae.Uint32(attrPSEPowerDomain, 1)
	}
	if d.prioMax > 0 {
		ae.Uint32(attrPSEPrioMax, d.prioMax)
		ae.Uint32(attrPSEPrio, d.prio)
	}
	b, _ := ae.Encode()
	return b
}

func newFakeNetlink(t *testing.T, f *fakeEthtool, ifnames map[string]string) *Netlink {
	t.Helper()
	n, err := NewNetlink(context.Background(), dialFake(f), ifnames)
	if err != nil {
		t.Fatal(err)
	}
	n.backoff = time.Millisecond
	t.Cleanup(func() { n.Close() })
	return n
}

func TestNetlinkOpen(t *testing.T) {
	for _, tc := range []struct {
		name    string
		devs    map[string]*fakePSE
		ifnames map[string]string
		wantErr string
	}{
		{"c33 and podl", map[string]*fakePSE{"lan1": {admin: adminDisabled}, "t1l0": {podl: true, admin: adminDisabled}},
			map[string]string{"swp1": "lan1", "swp2": "t1l0"}, ""},
		{"no such device", map[string]*fakePSE{"lan1": {}}, map[string]string{"swp1": "lan9"}, "swp1 (lan9): PSE_GET"},
		{"no PSE state", map[string]*fakePSE{"lan1": {raw: []netlink.Attribute{}, rawTimes: 100}},
			map[string]string{"swp1": "lan1"}, "neither a Clause 33 nor a PoDL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := NewNetlink(context.Background(), dialFake(&fakeEthtool{devs: tc.devs}), tc.ifnames)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				n.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("NewNetlink = %v, want an error with %q", err, tc.wantErr)
			}
		})
	}
}

func TestNetlinkStatus(t *testing.T) {
	u32 := func(typ uint16, v uint32) netlink.Attribute {
		return netlink.Attribute{Type: typ, Data: []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}}
	}
	for _, tc := range []struct {
		name    string
		dev     fakePSE
		want    PortStatus
		wantErr string
	}{
		{"c33 disabled", fakePSE{admin: adminDisabled}, PortStatus{State: StateDisabled, Class: -1}, ""},
		{"c33 searching", fakePSE{admin: adminEnabled}, PortStatus{State: StateSearching, Class: -1}, ""},
		{"c33 delivering", fakePSE{admin: adminEnabled, pd: true, class: 2, powerMW: 6123, limitMW: 15000},
			PortStatus{State: StateDelivering, Class: 2, PowerMW: 6123, LimitMW: 15000}, ""},
		{"c33 budget exceeded", fakePSE{admin: adminEnabled, ext: 8, extSub: 1},
			PortStatus{State: StateSearching, Class: -1, Fault: "power not available (substate 1)"}, ""},
		{"podl delivering", fakePSE{podl: true, admin: adminEnabled, pd: true}, PortStatus{State: StateDelivering, Class: -1}, ""},
		{"c33 fault", fakePSE{raw: []netlink.Attribute{u32(attrC33AdminState, adminEnabled), u32(attrC33PowerStatus, 6), u32(attrC33ExtState, 9)}, rawTimes: 100},
			PortStatus{State: StateFault, Class: -1, Fault: "fault: short circuit"}, ""},
		{"c33 unknown power status", fakePSE{raw: []netlink.Attribute{u32(attrC33AdminState, adminEnabled), u32(attrC33PowerStatus, 1)}, rawTimes: 100},
			PortStatus{State: StateFault, Class: -1, Fault: "the PSE reports its power status as unknown"}, ""},
		{"c33 no power status", fakePSE{raw: []netlink.Attribute{u32(attrC33AdminState, adminEnabled)}, rawTimes: 100},
			PortStatus{State: StateFault, Class: -1, Fault: "the PSE reports its power status as unknown"}, ""},
		// A bad answer once is asked again; the second one is good.
		{"impossible class once", fakePSE{admin: adminEnabled, pd: true, class: 3, powerMW: 9000,
			raw: []netlink.Attribute{u32(attrC33AdminState, adminEnabled), u32(attrC33PowerStatus, 4), u32(attrC33Class, 12)}, rawTimes: 1},
			PortStatus{State: StateDelivering, Class: 3, PowerMW: 9000}, ""},
		{"transient EBUSY", fakePSE{admin: adminEnabled, getErr: syscall.EBUSY, getErrTimes: 2}, PortStatus{State: StateSearching, Class: -1}, ""},
		// Bad every time: an error, not a guess.
		{"impossible class", fakePSE{raw: []netlink.Attribute{u32(attrC33AdminState, adminEnabled), u32(attrC33PowerStatus, 4), u32(attrC33Class, 12)}, rawTimes: 100},
			PortStatus{}, "impossible class 12"},
		{"impossible power status", fakePSE{raw: []netlink.Attribute{u32(attrC33AdminState, adminEnabled), u32(attrC33PowerStatus, 42)}, rawTimes: 100},
			PortStatus{}, "impossible power status 42"},
		{"impossible admin state", fakePSE{raw: []netlink.Attribute{u32(attrC33AdminState, 9), u32(attrC33PowerStatus, 4)}, rawTimes: 100},
			PortStatus{}, "impossible admin state 9"},
		{"impossible power", fakePSE{raw: []netlink.Attribute{u32(attrC33AdminState, adminEnabled), u32(attrC33PowerStatus, 4), u32(attrC33ActualPower, 4_000_000)}, rawTimes: 100},
			PortStatus{}, "impossible power 4000000 mW"},
		{"short attribute", fakePSE{raw: []netlink.Attribute{u32(attrC33AdminState, adminEnabled), {Type: attrC33PowerStatus, Data: []byte{4}}}, rawTimes: 100},
			PortStatus{}, "PSE_GET_REPLY"},
		{"always EBUSY", fakePSE{admin: adminEnabled, getErr: syscall.EBUSY, getErrTimes: 100}, PortStatus{}, "device or resource busy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Open against a sane device, then give it the case's state.
			f := &fakeEthtool{devs: map[string]*fakePSE{"lan1": {podl: tc.dev.podl, admin: adminDisabled}}}
			n := newFakeNetlink(t, f, map[string]string{"swp1": "lan1"})
			d := tc.dev
			f.mu.Lock()
			f.devs["lan1"] = &d
			f.mu.Unlock()
			st, err := n.Status(context.Background(), "swp1")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Status = %+v, %v; want an error with %q", st, err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), "swp1") {
					t.Errorf("error %q does not name the port", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.want.Port = "swp1"
			if st != tc.want {
				t.Errorf("Status:\n got  %+v\n want %+v", st, tc.want)
			}
		})
	}
}

func TestNetlinkSet(t *testing.T) {
	ctx := context.Background()
	newPair := func(t *testing.T) (*fakeEthtool, *Netlink) {
		f := &fakeEthtool{devs: map[string]*fakePSE{
			"lan1": {admin: adminDisabled, pd: true, class: 2, powerMW: 5000, prioMax: 1},
			"t1l0": {podl: true, admin: adminDisabled},
			"lan2": {admin: adminDisabled, setErr: syscall.EOPNOTSUPP},
		}}
		return f, newFakeNetlink(t, f, map[string]string{"c33": "lan1", "podl": "t1l0", "old": "lan2"})
	}
	for _, tc := range []struct {
		name     string
		call     func(*Netlink) error
		wantSets []string
		wantErr  error  // errors.Is
		errText  string // substring
	}{
		{"enable c33", func(n *Netlink) error { return n.Enable(ctx, "c33") }, []string{"lan1 6=3"}, nil, ""},
		{"disable c33", func(n *Netlink) error { return n.Disable(ctx, "c33") }, []string{"lan1 6=2"}, nil, ""},
		{"enable podl", func(n *Netlink) error { return n.Enable(ctx, "podl") }, []string{"t1l0 3=3"}, nil, ""},
		{"cycle", func(n *Netlink) error { return n.PowerCycle(ctx, "c33", time.Millisecond) }, []string{"lan1 6=2", "lan1 6=3"}, nil, ""},
		{"limit", func(n *Netlink) error { return n.SetLimit(ctx, "c33", 15400) }, []string{"lan1 12=15400"}, nil, ""},
		{"limit out of range", func(n *Netlink) error { return n.SetLimit(ctx, "c33", -1) }, nil, nil, "out of range"},
		{"limit podl", func(n *Netlink) error { return n.SetLimit(ctx, "podl", 15400) }, nil, ErrNotSupported, "PoDL"},
		{"priority critical", func(n *Netlink) error { return n.SetPriority(ctx, "c33", PriorityCritical) }, []string{"lan1 16=0"}, nil, ""},
		{"priority low capped at PRIO_MAX", func(n *Netlink) error { return n.SetPriority(ctx, "c33", PriorityLow) }, []string{"lan1 16=1"}, nil, ""},
		{"priority without PRIO_MAX", func(n *Netlink) error { return n.SetPriority(ctx, "podl", PriorityLow) }, nil, ErrNotSupported, "PRIO_MAX"},
		{"kernel says not supported", func(n *Netlink) error { return n.Enable(ctx, "old") }, nil, ErrNotSupported, "old (lan2)"},
		{"unknown port", func(n *Netlink) error { return n.Enable(ctx, "swp9") }, nil, ErrUnknownPort, "swp9"},
		{"unknown port status", func(n *Netlink) error { _, err := n.Status(ctx, "swp9"); return err }, nil, ErrUnknownPort, "swp9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, n := newPair(t)
			err := tc.call(n)
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v, want %v", err, tc.wantErr)
			}
			if tc.errText != "" && (err == nil || !strings.Contains(err.Error(), tc.errText)) {
				t.Errorf("error %v, want one with %q", err, tc.errText)
			}
			if tc.wantErr == nil && tc.errText == "" && err != nil {
				t.Fatal(err)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if fmt.Sprint(f.sets) != fmt.Sprint(tc.wantSets) {
				t.Errorf("PSE_SET attributes %v, want %v", f.sets, tc.wantSets)
			}
		})
	}
}

func TestNetlinkEnableDelivers(t *testing.T) {
	ctx := context.Background()
	f := &fakeEthtool{devs: map[string]*fakePSE{"lan1": {admin: adminDisabled, pd: true, class: 4, powerMW: 21000}}}
	n := newFakeNetlink(t, f, map[string]string{"swp1": "lan1"})
	if got := n.Ports(); fmt.Sprint(got) != "[swp1]" {
		t.Errorf("Ports = %v", got)
	}
	if err := n.Enable(ctx, "swp1"); err != nil {
		t.Fatal(err)
	}
	st, err := n.Status(ctx, "swp1")
	if err != nil {
		t.Fatal(err)
	}
	if want := (PortStatus{Port: "swp1", State: StateDelivering, Class: 4, PowerMW: 21000}); st != want {
		t.Errorf("after Enable: %+v, want %+v", st, want)
	}
	if b, err := n.Budget(ctx); b != 0 || err != nil {
		t.Errorf("Budget = %d, %v; want 0 (unknown)", b, err)
	}
}
