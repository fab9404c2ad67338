package proxy

import (
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/cmsim"
)

const (
	storm     = 2000
	keepalive = 6 * time.Second
	// admission paces new connections toward each CallManager: a whole
	// storm passes in storm/admission = 0.5 s.
	admission = 4000
)

// failoverRig registers storm phones through the proxy to cm1 of three
// and returns once all are registered there.
func failoverRig(t *testing.T, tweak func(*Config)) (*rig, []*cmsim.Phone, *atomic.Int64) {
	t.Helper()
	r := newRig(t, 3, keepalive, func(c *Config) {
		c.Admission = AdmissionConfig{Rate: admission, Burst: 100}
		if tweak != nil {
			tweak(c)
		}
	})
	var lost atomic.Int64
	phones := r.phones(storm, func(e cmsim.PhoneEvent) {
		if e.Kind == cmsim.EventLost {
			lost.Add(1)
		}
	})
	took := waitFor(t, time.Minute, "every phone registered on cm1", func() bool { return r.cms[0].Registered() == storm })
	t.Logf("%d phones registered on cm1 through the proxy in %v", storm, took.Round(time.Millisecond))
	return r, phones, &lost
}

// allOn checks that every phone is registered, through the proxy, on the
// CallManager i and nowhere else, with exactly one session each.
func allOn(r *rig, phones []*cmsim.Phone, i int) bool {
	if r.cms[i].Registered() != storm || r.p.Stats().Active != storm {
		return false
	}
	for _, ph := range phones {
		if !ph.State().Registered {
			return false
		}
	}
	return true
}

// checkTable: the registration table has every phone once, registered,
// on the CallManager named cm.
func checkTable(t *testing.T, r *rig, cm string) {
	t.Helper()
	regs := r.p.Registrations()
	seen := map[string]bool{}
	for _, g := range regs {
		if g.State != StateRegistered || g.CallManager != cm || seen[g.Device] {
			t.Fatalf("row %+v (want registered on %s, once)", g, cm)
		}
		seen[g.Device] = true
	}
	if len(seen) != storm {
		t.Fatalf("%d devices in the table, want %d", len(seen), storm)
	}
	// The counts by state, kept as sessions move and close, agree.
	if got, want := r.p.Stats().Table, []TableCount{{State: StateRegistered, CallManager: cm, Rows: storm}}; !slices.Equal(got, want) {
		t.Errorf("table counts %+v, want %+v", got, want)
	}
}

// TestFailover: with 2,000 phones registered on the primary, the primary
// is stopped (connections reset), black-holed (nothing acknowledged) or
// hung (TCP up, nothing answered). Every phone must be registered on the
// secondary within one keepalive interval plus the admission pacing, far
// sooner than the three missed keepalives a phone alone needs for the
// last two, and no phone is left with a half-open session.
func TestFailover(t *testing.T) {
	bound := keepalive + storm*time.Second/admission
	for _, tc := range []struct {
		name string
		mode cmsim.Mode
	}{
		{"stopped", cmsim.Stopped},
		{"black-holed", cmsim.BlackHoled},
		{"hung", cmsim.Hung},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, phones, lost := failoverRig(t, nil)
			if err := r.cms[0].SetMode(tc.mode); err != nil {
				t.Fatal(err)
			}
			took := waitFor(t, 3*bound, "every phone registered on cm2", func() bool { return allOn(r, phones, 1) })
			t.Logf("%s: all %d phones on cm2 after %v (bound: one keepalive %v + pacing %v)", tc.name, storm,
				took.Round(time.Millisecond), keepalive, storm*time.Second/admission)
			if took > bound {
				t.Errorf("failover took %v, over one keepalive interval plus pacing (%v)", took, bound)
			}
			checkTable(t, r, "cm2")
			if n := lost.Load(); n != storm {
				t.Errorf("phones lost their registration %d times, want %d (once each)", n, storm)
			}
			for _, ph := range phones {
				if st := ph.State(); st.Registrations != 2 {
					t.Fatalf("phone registered %d times, want 2: %+v", st.Registrations, st)
				}
			}
			waitFor(t, 3*time.Second, "cm1 marked down", func() bool { return !r.p.Stats().CallManagers[0].Healthy })
			st := r.p.Stats()
			if st.CallManagers[0].Healthy || st.CallManagers[0].Failovers != 1 || st.CallManagers[0].Sessions != 0 ||
				st.CallManagers[1].Sessions != storm || st.CallManagers[1].Failovers != 0 || r.cms[2].Registered() != 0 {
				t.Errorf("after failover: %+v, cm3 has %d", st.CallManagers, r.cms[2].Registered())
			}
			t.Logf("closed: %v", st.Closed)
			if tc.mode == cmsim.Hung {
				// The hung CallManager, once it runs again, finds every
				// connection the proxy had to it closed.
				r.cms[0].SetMode(cmsim.Serving)
				waitFor(t, 5*time.Second, "hung primary's connections closed", func() bool { return r.cms[0].Registered() == 0 })
			}
		})
	}
}

// TestFailback: when the primary returns, the phones move back to it,
// paced with jitter, not all at once.
func TestFailback(t *testing.T) {
	const rate = 4000.0
	r, phones, _ := failoverRig(t, func(c *Config) {
		c.Failback = FailbackConfig{Delay: 300 * time.Millisecond, Rate: rate}
	})
	r.cms[0].SetMode(cmsim.Stopped)
	waitFor(t, time.Minute, "every phone on cm2", func() bool { return allOn(r, phones, 1) })
	returned := time.Now()
	if err := r.cms[0].SetMode(cmsim.Serving); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, time.Minute, "every phone back on cm1", func() bool { return allOn(r, phones, 0) })
	checkTable(t, r, "cm1")
	// When each phone registered on cm1 again.
	var back []time.Time
	for _, s := range r.cms[0].Stations() {
		back = append(back, s.Since)
	}
	first, last := back[0], back[0]
	for _, b := range back {
		if b.Before(first) {
			first = b
		}
		if b.After(last) {
			last = b
		}
	}
	spread := last.Sub(first)
	want := time.Duration(float64(storm-1) / rate * float64(time.Second))
	t.Logf("failback: first phone back %v after cm1 returned, all back after %v, spread %v (paced: %v)",
		first.Sub(returned).Round(time.Millisecond), took.Round(time.Millisecond), spread.Round(time.Millisecond), want)
	if first.Sub(returned) < 300*time.Millisecond {
		t.Errorf("first phone back %v after the primary returned, before the failback delay", first.Sub(returned))
	}
	if spread < want*7/10 {
		t.Errorf("failback spread %v, want about %v (paced at %.0f/s)", spread, want, rate)
	}
	// No burst: at most twice the paced count in any 50 ms.
	win := 50 * time.Millisecond
	counts := map[int64]int{}
	for _, b := range back {
		counts[b.Sub(first).Nanoseconds()/win.Nanoseconds()]++
	}
	for w, n := range counts {
		if float64(n) > 2*rate*win.Seconds()+10 {
			t.Errorf("%d phones returned in the 50 ms window %d", n, w)
		}
	}
	if st := r.p.Stats(); st.Closed["failback"] != storm {
		t.Errorf("failback closed %d sessions, want %d", st.Closed["failback"], storm)
	}
}
