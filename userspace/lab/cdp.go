package lab

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/phoneboot/phoneboot/userspace/cdp"
	"github.com/phoneboot/phoneboot/userspace/phonetag"
)

// cdpPhase learns the phone's voice VLAN as a Cisco phone does: it sends
// CDP with a VoIP VLAN Query and its power request, and takes the VLAN of
// the switch's next announcement (which a query makes immediate). From
// then on the phone's NIC tags all it sends with that VLAN; an announcement
// without one leaves the phone untagged. A phone that hears no CDP keeps
// asking, every second (scaled), until the storm's deadline.
type cdpPhase struct {
	timeScale float64
	tagger    *phonetag.Tagger
}

func (cdpPhase) Name() string { return "cdp" }

// classPowerMW is the most an 802.3af/at class allows a device to draw:
// what the phone asks for in CDP's Power Requested.
var classPowerMW = [...]uint32{0: 12950, 1: 3840, 2: 6490, 3: 12950, 4: 25500}

// voicePriority is the 802.1p priority a Cisco phone gives voice frames.
const voicePriority = 5

func (c cdpPhase) Run(ctx context.Context, ph *Phone) error {
	io := ph.Port.io
	power := classPowerMW[0]
	if k := ph.Model.PoEClass; k >= 0 && k < len(classPowerMW) {
		power = classPowerMW[k]
	}
	frame, err := cdp.PhoneAdvertisement(cdp.PhoneConfig{
		MAC:                ph.MAC,
		DeviceID:           ph.Name,
		PortID:             "Port 1",
		SoftwareVersion:    ph.Load,
		Platform:           "Cisco IP Phone " + strings.TrimPrefix(ph.Model.Model, "CP-"),
		PowerConsumptionMW: uint16(power),
		// Each phone numbers its own requests; several phones behind one
		// lab port must not look like one phone repeating itself.
		PowerRequested: &cdp.PowerRequest{RequestID: uint16(ph.MAC[4])<<8 | uint16(ph.MAC[5]) | 1, MilliWatts: []uint32{power}},
	}).AppendFrame(nil)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		_, heard := io.voice()
		if err := io.conn.Write(frame); err != nil {
			return fmt.Errorf("send CDP: %w", err)
		}
		if attempt > 0 {
			ph.Retransmits++
		}
		t := time.NewTimer(time.Duration(float64(time.Second) * c.timeScale))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("no voice VLAN after %d CDP queries: %w", attempt+1, context.Cause(ctx))
		case <-t.C:
			continue
		case <-heard:
			t.Stop()
		}
		vlan, _ := io.voice()
		if vlan != 0 {
			if err := c.tagger.SetVLAN(ph.MAC, vlan, voicePriority); err != nil {
				return err
			}
		}
		ph.VoiceVLAN = vlan
		return nil
	}
}
