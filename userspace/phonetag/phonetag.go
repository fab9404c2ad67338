// Package phonetag is the simulated phone's VLAN-aware NIC, for the lab and
// the tests: with no 8021q devices here, an XDP program strips the tag of
// frames arriving at a phone and a TC egress program tags what the phone
// sends with the voice VLAN it was told (bpf/phone_tagger.c).
package phonetag

import (
	"errors"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Tagger is the loaded pair of programs and their table of phones. One
// Tagger serves any number of phone interfaces, in any namespaces.
type Tagger struct {
	objs taggerObjects
}

// Load loads the programs; nothing is attached yet.
func Load() (*Tagger, error) {
	t := &Tagger{}
	if err := loadTaggerObjects(&t.objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("BPF verifier rejected the phone tagger: %+v", verr)
		}
		return nil, fmt.Errorf("load the phone tagger: %w", err)
	}
	return t, nil
}

// Attachment is the tagger on one interface; Close detaches it.
type Attachment struct {
	links []link.Link
}

// Close detaches both programs.
func (a *Attachment) Close() error {
	var errs []error
	for _, l := range a.links {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}

// Attach puts both programs on the interface with this index. The caller
// runs it in the interface's network namespace.
func (t *Tagger) Attach(ifindex int) (*Attachment, error) {
	x, err := link.AttachXDP(link.XDPOptions{Program: t.objs.XdpPhoneUntag, Interface: ifindex})
	if err != nil {
		return nil, fmt.Errorf("attach xdp to ifindex %d: %w", ifindex, err)
	}
	e, err := link.AttachTCX(link.TCXOptions{Program: t.objs.TcPhoneTag, Interface: ifindex, Attach: ebpf.AttachTCXEgress})
	if err != nil {
		x.Close()
		return nil, fmt.Errorf("attach tc egress to ifindex %d: %w", ifindex, err)
	}
	return &Attachment{links: []link.Link{x, e}}, nil
}

// SetVLAN makes frames from mac leave tagged with vlan at priority pcp.
func (t *Tagger) SetVLAN(mac net.HardwareAddr, vlan uint16, pcp uint8) error {
	k, err := key(mac)
	if err != nil {
		return err
	}
	if vlan < 1 || vlan > 4094 || pcp > 7 {
		return fmt.Errorf("VLAN %d priority %d: want VLAN 1-4094, priority 0-7", vlan, pcp)
	}
	if err := t.objs.PhoneTags.Put(k, uint16(pcp)<<13|vlan); err != nil {
		return fmt.Errorf("set the VLAN of %s: %w", mac, err)
	}
	return nil
}

// ClearVLAN makes frames from mac leave untagged again.
func (t *Tagger) ClearVLAN(mac net.HardwareAddr) error {
	k, err := key(mac)
	if err != nil {
		return err
	}
	if err := t.objs.PhoneTags.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("clear the VLAN of %s: %w", mac, err)
	}
	return nil
}

func key(mac net.HardwareAddr) (taggerPhoneTagKey, error) {
	var k taggerPhoneTagKey
	if len(mac) != 6 {
		return k, fmt.Errorf("MAC %s is not 6 bytes", mac)
	}
	copy(k.Mac[:], mac)
	return k, nil
}

// Close releases the programs; attachments must be closed first.
func (t *Tagger) Close() error { return t.objs.Close() }
