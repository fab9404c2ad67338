package fastpath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// loadEgress loads the TC egress program onto the XDP program's maps: the
// two halves of the VLAN policy must read the same stations and members.
func (o *Objects) loadEgress() error {
	spec, err := loadPhoneEgress()
	if err != nil {
		return fmt.Errorf("read embedded BPF object: %w", err)
	}
	shared := map[string]*ebpf.Map{
		phonePortMapPbConfigMap:    o.objs.PbConfigMap,
		phonePortMapPbCounters:     o.objs.PbCounters,
		phonePortMapPbVlanPorts:    o.objs.PbVlanPorts,
		phonePortMapPbVlanMembers:  o.objs.PbVlanMembers,
		phonePortMapPbVlanStations: o.objs.PbVlanStations,
		phonePortMapPbVlanSubnets:  o.objs.PbVlanSubnets,
		phonePortMapPbPhoneMacs:    o.objs.PbPhoneMacs,
		phonePortMapPbPhoneOuis:    o.objs.PbPhoneOuis,
	}
	repl := map[string]*ebpf.Map{}
	for name, m := range spec.Maps {
		if shared[name] != nil {
			repl[name] = shared[name]
			continue
		}
		// Anything else would be a second copy the XDP side never sees.
		if m.Type != ebpf.Array || m.Pinning != ebpf.PinNone {
			return fmt.Errorf("tc_phone_egress has map %s that xdp_phone_port does not share", name)
		}
	}
	if err := spec.LoadAndAssign(&o.egress, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return fmt.Errorf("BPF verifier rejected tc_phone_egress: %+v", verr)
		}
		return fmt.Errorf("load tc_phone_egress: %w", err)
	}
	return nil
}

// EgressProgram is the TC egress program.
func (o *Objects) EgressProgram() *ebpf.Program { return o.egress.TcPhoneEgress }

func egressPinPath(pinDir, port string) string {
	return filepath.Join(pinDir, "tcx_"+port)
}

// attachEgress puts the egress program on a port with a TCX link, taking
// over the link an earlier run pinned (the program is swapped atomically).
func (f *FastPath) attachEgress(port string, ifindex int) (l link.Link, fresh bool, err error) {
	if f.cfg.PinDir != "" {
		path := egressPinPath(f.cfg.PinDir, port)
		l, err = link.LoadPinnedLink(path, nil)
		switch {
		case err == nil:
			info, ierr := l.Info()
			if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
				if err := l.Update(f.objs.EgressProgram()); err != nil {
					l.Close()
					return nil, false, fmt.Errorf("update pinned tc link %s: %w", path, err)
				}
				return l, false, nil
			}
			// The interface was recreated: the old link went with it.
			if err := l.Unpin(); err != nil {
				l.Close()
				return nil, false, fmt.Errorf("unpin stale tc link %s: %w", path, err)
			}
			l.Close()
		case !errors.Is(err, os.ErrNotExist):
			return nil, false, fmt.Errorf("open pinned tc link %s: %w", path, err)
		}
	}
	l, err = link.AttachTCX(link.TCXOptions{
		Interface: ifindex,
		Program:   f.objs.EgressProgram(),
		Attach:    ebpf.AttachTCXEgress,
	})
	if err != nil {
		return nil, false, fmt.Errorf("attach tc egress (tcx, Linux 6.6+): %w", err)
	}
	if f.cfg.PinDir != "" {
		if err := l.Pin(egressPinPath(f.cfg.PinDir, port)); err != nil {
			l.Close()
			return nil, false, fmt.Errorf("pin tc egress link: %w", err)
		}
	}
	return l, true, nil
}
