package lab

import (
	"context"
	"errors"
	"fmt"
)

// configPhase is the phone fetching its configuration as a Cisco phone
// does after DHCP. It first brings up its interface with the leased
// address, then asks the TFTP server of option 150 for, in order:
// CTLSEP<MAC>.tlv, ITLSEP<MAC>.tlv and ITLFile.tlv (its trust lists: "not
// found" is the usual answer, and the phone carries on without one), then
// SEP<MAC>.cnf.xml, and when the server has none, XMLDefault.cnf.xml
// (auto-registration). It parses the file and keeps what later phases need:
// the load to run, the protocol, the CallManager group.
//
// A phone the server has no configuration for at all is reset by its
// CallManager and tries again without end; the lab fails it at once
// instead, since nothing will change during the storm.
type configPhase struct {
	f *fetcher
	// bringUp gives the phone its interface and address (bringUpNIC).
	bringUp func(ph *Phone) error
}

func (configPhase) Name() string { return "config" }

func (c configPhase) Run(ctx context.Context, ph *Phone) error {
	if err := c.bringUp(ph); err != nil {
		return err
	}
	buf := &bufferSink{max: maxConfigSize}
	for _, name := range []string{"CTL" + ph.Name + ".tlv", "ITL" + ph.Name + ".tlv", "ITLFile.tlv"} {
		// Served trust lists are kept as they are: the lab's phones run
		// in non-secure mode and do not check them.
		if _, err := c.f.fetchFile(ctx, ph, name, buf, nil); err != nil && !errors.Is(err, errNotFound) {
			return err
		}
	}
	name := ph.Name + ".cnf.xml"
	_, err := c.f.fetchFile(ctx, ph, name, buf, nil)
	if errors.Is(err, errNotFound) {
		name = "XMLDefault.cnf.xml"
		_, err = c.f.fetchFile(ctx, ph, name, buf, nil)
		if errors.Is(err, errNotFound) {
			return fmt.Errorf("the server has neither %s.cnf.xml nor XMLDefault.cnf.xml (is the phone in the inventory, or auto-registration on?)", ph.Name)
		}
	}
	if err != nil {
		return err
	}
	var cfg *phoneConfig
	if name == "XMLDefault.cnf.xml" {
		cfg, err = parseDefaultConfig(buf.buf, ph.Model.DeviceType)
	} else {
		cfg, err = parseDeviceConfig(buf.buf)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	cfg.File = name
	ph.Config = cfg
	return nil
}
