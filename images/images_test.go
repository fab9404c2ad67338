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
