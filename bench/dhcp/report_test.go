package main

import (
	"strings"
	"testing"
)

// The userspace target compares the servers' highest passed steps: the
// rates measured within one step differ by noise, so the same step is a
// tie whichever measured a few exchanges more.
func TestUserspaceTargetVerdict(t *testing.T) {
	for _, c := range []struct {
		name           string
		user, kea      *step
		want, dontWant string
	}{
		{"no step passed", nil, &step{Requested: 500, Rate4Way: 500}, ": NOT MET (0 vs 500", ""},
		{"higher step", &step{Requested: 16000, Rate4Way: 15990}, &step{Requested: 13000, Rate4Way: 13000}, ": MET (", ""},
		{"lower step", &step{Requested: 8000, Rate4Way: 8000}, &step{Requested: 11000, Rate4Way: 10990}, ": NOT MET (", ""},
		{"same step, fewer measured", &step{Requested: 8000, Rate4Way: 7996}, &step{Requested: 8000, Rate4Way: 7998}, ": TIE at the ladder's resolution (both passed -r 8000", "NOT MET"},
		{"same step, more measured", &step{Requested: 8000, Rate4Way: 8000}, &step{Requested: 8000, Rate4Way: 7996}, ": TIE at", ": MET ("},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := report{servers: []result{
				{server: "phoneboot-userspace", gen: "perfdhcp", best: c.user},
				{server: "kea", gen: "perfdhcp", best: c.kea},
			}}
			var got string
			for _, l := range r.targets() {
				if strings.HasPrefix(l, "userspace") {
					got = l
				}
			}
			if !strings.Contains(got, c.want) || (c.dontWant != "" && strings.Contains(got, c.dontWant)) {
				t.Errorf("got %q, want it to say %q", got, c.want)
			}
		})
	}
}
