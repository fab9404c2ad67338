package images

import "testing"

func TestModelsParse(t *testing.T) {
	ms, err := Models()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) < 4 {
		t.Fatalf("got %d models, want the lab's mix of at least 4", len(ms))
	}
	for _, m := range ms {
		if m.BootTime() <= 0 {
			t.Errorf("%s: boot time %v", m.Model, m.BootTime())
		}
	}
}

func TestModelsTFTPRequests(t *testing.T) {
	ms, err := Models()
	if err != nil {
		t.Fatal(err)
	}
	// The lab's mix must cover each regime a TFTP server meets: no options
	// at all (no OACK), blocks in lock-step, and windows.
	var plain, lockStep, windowed bool
	for _, m := range ms {
		r := m.TFTP
		switch {
		case r.BlockSize == 0 && r.WindowSize == 0 && !r.TSize:
			plain = true
		case r.WindowSize == 0:
			lockStep = true
		default:
			windowed = true
		}
	}
	if !plain || !lockStep || !windowed {
		t.Errorf("models.yaml's TFTP requests: plain %v, lock-step %v, windowed %v; want each at least once", plain, lockStep, windowed)
	}
}
