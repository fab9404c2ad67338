package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/privtest"
)

func TestParseFault(t *testing.T) {
	tests := []struct {
		in   string
		want Fault
		err  string
	}{
		{in: "daemon@5s", want: Fault{Kind: FaultDaemon, After: 5 * time.Second}},
		{in: "daemon@0s", want: Fault{Kind: FaultDaemon}},
		{in: "callmanager@register=100", want: Fault{Kind: FaultCallManager, Phase: "register", Count: 100}},
		{in: "port@1.5s", want: Fault{Kind: FaultPort, Port: "p1", After: 1500 * time.Millisecond}},
		{in: "port:p12@dhcp=3", want: Fault{Kind: FaultPort, Port: "p12", Phase: "dhcp", Count: 3}},
		{in: "daemon", err: "want KIND@WHEN"},
		{in: "reboot@5s", err: `kind "reboot"`},
		{in: "daemon:p1@5s", err: `kind "daemon:p1"`},
		{in: "port:@5s", err: `kind "port:"`},
		{in: "daemon@soon", err: `"soon" is neither`},
		{in: "daemon@-1s", err: `"-1s" is neither`},
		{in: "daemon@tftp=3", err: `phase "tftp" is not one of power, boot, cdp, dhcp, config, firmware, register`},
		{in: "daemon@dhcp=0", err: `"0" is not a count`},
		{in: "daemon@dhcp=x", err: `"x" is not a count`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			f, err := ParseFault(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %+v, %v; want an error with %q", f, err, tt.err)
				}
				return
			}
			tt.want.Spec = tt.in
			if err != nil || f != tt.want {
				t.Fatalf("got %+v, %v; want %+v", f, err, tt.want)
			}
		})
	}
}

func FuzzParseFault(f *testing.F) {
	for _, s := range []string{"daemon@5s", "port:p3@dhcp=300", "callmanager@register=1", "port@", "@", "port:p1:p2@1s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		flt, err := ParseFault(s)
		if err != nil {
			return
		}
		if !slices.Contains([]string{FaultCallManager, FaultDaemon, FaultPort}, flt.Kind) || (flt.Kind == FaultPort) != (flt.Port != "") {
			t.Fatalf("%q: kind %q, port %q", s, flt.Kind, flt.Port)
		}
		if (flt.Phase == "") == (flt.Count > 0) || flt.After < 0 || (flt.Phase != "" && flt.After != 0) {
			t.Fatalf("%q: neither a time nor a count: %+v", s, flt)
		}
	})
}

// TestPhaseNames: the names a fault's trigger may name are the lab's phases.
func TestPhaseNames(t *testing.T) {
	var names []string
	for _, p := range (&lab{}).phases() {
		names = append(names, p.Name())
	}
	if !slices.Equal(names, phaseNames) {
		t.Errorf("phases %v, phaseNames %v", names, phaseNames)
	}
}

func TestFaultValidation(t *testing.T) {
	base := Options{Phones: 10, Ports: 4, PowerPolicy: "all", StaggerPorts: 1, TimeScale: 0.1, Timeout: time.Minute}
	tests := []struct {
		faults []string
		want   string
	}{
		{[]string{"port:p5@1s"}, "the lab's ports are p1 to p4"},
		{[]string{"daemon@dhcp=11"}, "the lab has 10 phones"},
		{[]string{"daemon@2m"}, "after the storm's --timeout 1m0s"},
		{[]string{"callmanager@1s", "callmanager@2s", "callmanager@3s"}, "3 CallManager faults would stop all 3 CallManagers"},
		{[]string{"callmanager@1s", "callmanager@2s", "daemon@3s", "daemon@4s", "port:p4@register=10"}, ""},
	}
	for _, tt := range tests {
		o := base
		for _, s := range tt.faults {
			f, err := ParseFault(s)
			if err != nil {
				t.Fatal(err)
			}
			o.Faults = append(o.Faults, f)
		}
		err := o.normalize()
		if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%v: %v, want %q", tt.faults, err, tt.want)
		}
	}
}

// TestRecoveryWatch: a fault's phones count as recovered once each has
// registered on a connection opened at or after its own start; a
// registration on an older connection does not count even when it
// completes later (its RegisterAck read after the fault), and a phone
// that was never registered (a daemon fault's phone mid-boot) counts
// when it first registers.
func TestRecoveryWatch(t *testing.T) {
	var track registrationTrack
	a, b, c := &Phone{Name: "a"}, &Phone{Name: "b"}, &Phone{Name: "c"}
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	track.setRegistered(a, at(0), at(-1))
	track.setRegistered(b, at(0), at(-1))
	since := map[*Phone]time.Time{a: at(2), b: at(1), c: at(1)}
	w := track.watch(at(1), []*Phone{a, b, c}, func(ph *Phone) time.Time { return since[ph] })
	track.setLost(a, at(1))
	track.setRegistered(a, at(1.5), at(0.5)) // completed after the fault, on a connection from before a's since
	track.setLost(b, at(1))
	track.setRegistered(b, at(3), at(2.5))
	if n := len(w.pendingPhones()); n != 2 || !w.recoveredAt().IsZero() {
		t.Fatalf("%d pending, recovered at %v; want a and c pending", n, w.recoveredAt())
	}
	track.setLost(a, at(3))
	track.setRegistered(a, at(4), at(3.5))
	track.setRegistered(c, at(5), at(4.5))
	select {
	case <-w.done:
	default:
		t.Fatal("watch not done with every phone registered again")
	}
	if got := w.recoveredAt(); !got.Equal(at(5)) {
		t.Errorf("recovered at %v, want t0+5s", got.Sub(t0))
	}
	s := track.series(t0)
	if len(s) != 9 || s[len(s)-1] != (RegisteredSample{T: 5, N: 3}) || s[2] != (RegisteredSample{T: 1, N: 1}) {
		t.Errorf("series %+v", s)
	}
	if empty := track.watch(t0, nil, nil); !empty.recoveredAt().Equal(t0) {
		t.Error("a watch of no phones is not recovered at once")
	}
	// A phone that registered again before the watch was made (the
	// fault's injection takes time) counts from its history; one whose
	// registration then was on a connection from before the fault does
	// not.
	d, e := &Phone{Name: "d"}, &Phone{Name: "e"}
	track.setRegistered(d, at(6), at(5.9))
	track.setRegistered(e, at(7.1), at(6.9))
	track.setLost(d, at(7))
	track.setRegistered(d, at(8), at(7.5))
	late := track.watch(at(7), []*Phone{d, e}, func(*Phone) time.Time { return at(7) })
	if p := late.pendingPhones(); len(p) != 1 || p[0] != e {
		t.Fatalf("pending %v, want e", p)
	}
	track.setLost(e, at(8))
	track.setRegistered(e, at(9), at(8.5))
	if got := late.recoveredAt(); !got.Equal(at(9)) {
		t.Errorf("recovered at %v, want t0+9s", got.Sub(t0))
	}
}

// faultOptions is a small storm with the given faults.
func faultOptions(t *testing.T, phones, ports int, faults ...string) Options {
	o := testOptions(t)
	o.Phones, o.Ports = phones, ports
	for _, s := range faults {
		f, err := ParseFault(s)
		if err != nil {
			t.Fatal(err)
		}
		o.Faults = append(o.Faults, f)
	}
	return o
}

// checkRecovered holds a faulty run to what every run must show: every
// phone completed, every fault injected and every phone it hit registered
// again (the time recorded), the events in the JSON report, and no lease
// lost or duplicated.
func checkRecovered(t *testing.T, o Options, rep Report) {
	t.Helper()
	if rep.Completed != o.Phones || rep.Failed != 0 {
		t.Errorf("completed %d, failed %d of %d: %+v", rep.Completed, rep.Failed, o.Phones, rep.Failures)
	}
	if len(rep.Faults) != len(o.Faults) {
		t.Fatalf("%d faults reported, want %d", len(rep.Faults), len(o.Faults))
	}
	for _, f := range rep.Faults {
		if !f.Injected || f.Error != "" || f.Recovered != f.Affected || f.AtSeconds <= 0 || (f.Affected > 0 && f.RecoverySeconds <= 0) ||
			f.RegisteredAtFault > f.Affected || f.ReregisteredSeconds > f.RecoverySeconds || (f.RegisteredAtFault > 0 && f.ReregisteredSeconds <= 0) {
			t.Errorf("fault %+v: want injected, every phone it hit registered again, and the time that took", f)
		}
	}
	if in := rep.Integrity; in == nil || in.Violations != 0 || in.Phones != o.Phones || in.StoreLeases < o.Phones {
		t.Errorf("lease integrity: %+v", in)
	}
	data, err := os.ReadFile(o.JSONPath)
	if err != nil {
		t.Fatal(err)
	}
	var top struct {
		Faults []FaultReport `json:"faults"`
		Events []Event       `json:"events"`
	}
	if err := json.Unmarshal(data, &top); err != nil {
		t.Fatal(err)
	}
	if len(top.Faults) != len(o.Faults) || len(top.Events) == 0 {
		t.Errorf("JSON report: %d faults and %d events", len(top.Faults), len(top.Events))
	}
	if n := len(rep.Series.Registered); n == 0 || rep.Series.Registered[n-1].N != o.Phones {
		t.Errorf("registered phones over time: %d samples, the last %+v", n, rep.Series.Registered[max(n-1, 0):])
	}
}

func eventKinds(evs []Event) []string {
	var ks []string
	for _, e := range evs {
		ks = append(ks, e.Kind)
	}
	return ks
}

// TestLabFaultCallManager: the primary CallManager stops once half the
// phones are registered; those registered move through the proxy to the
// secondary, and the rest register there in the first place.
func TestLabFaultCallManager(t *testing.T) {
	privtest.Require(t)
	o := faultOptions(t, 8, 4, "callmanager@register=4")
	rep, err := Run(context.Background(), o)
	assertCleanedUp(t, o.ID)
	if err != nil {
		t.Fatal(err)
	}
	checkRecovered(t, o, rep)
	if f := rep.Faults[0]; f.Target != "cm1" || f.Affected < 4 || f.RegisteredAtFault != f.Affected {
		t.Errorf("fault %+v: want cm1 stopped with at least 4 phones registered", f)
	}
	if r := rep.registrations; !strings.HasPrefix(r.ByCallManager, "cm1 0, cm2 8") {
		t.Errorf("registrations %+v: want every phone on cm2", r)
	}
	if ks := eventKinds(rep.Events); !slices.Equal(ks, []string{eventCallManagerStopped, eventRecovered}) {
		t.Errorf("events %v", ks)
	}
}

// TestLabFaultDaemon kills the daemon three times during the storm, the
// first time while the phones are getting their leases, and each time
// starts it again; the phones must all complete and the lease store, the
// fast path and the phones must agree at the end. While the daemon is
// down the first time, a bound phone asks again for its address and a new
// client for one: the pinned fast path must answer both, and the new
// client's lease, handed out while no daemon ran, must be in the store
// after the restart (the integrity check compares the store and the
// fast path for every client).
func TestLabFaultDaemon(t *testing.T) {
	privtest.Require(t)
	o := faultOptions(t, 96, 8, "daemon@dhcp=30", "daemon@dhcp=70", "daemon@register=96")
	o.VoiceVLANs = 2
	o.Timeout = 3 * time.Minute
	probed := false
	o.whileDown = func(ctx context.Context, l *lab) error {
		if probed {
			return nil
		}
		probed = true
		return probeFastPath(ctx, l)
	}
	rep, err := Run(context.Background(), o)
	assertCleanedUp(t, o.ID)
	if err != nil {
		t.Fatal(err)
	}
	checkRecovered(t, o, rep)
	var answered uint64
	for _, f := range rep.Faults {
		if f.DownSeconds <= 0 {
			t.Errorf("fault %+v: no time down", f)
		}
		answered += f.FastPathAnswersWhileDown
	}
	// The probe alone is 4 answers (two OFFERs, two ACKs).
	if answered < 4 {
		t.Errorf("%d fast path answers while the daemon was down, want at least the probe's 4", answered)
	}
	// The new client's OFFER and ACK (at least) waited in the fast
	// path's ring for the restart.
	if first := rep.Faults[0]; first.RestartEvents < 2 {
		t.Errorf("first restart: %d fast path events waiting, want at least the probe's new client's 2", first.RestartEvents)
	}
	if last := rep.Faults[2]; last.Affected != 96 || last.RegisteredAtFault != 96 {
		t.Errorf("the last kill hit %d phones, %d registered; want all 96 registered then", last.Affected, last.RegisteredAtFault)
	}
	if in := rep.Integrity; in.StoreLeases != 97 || in.KernelBindings != 97 {
		t.Errorf("integrity %+v: want the 96 phones and the probe's client in the store and the fast path", in)
	}
	want := 0
	for _, k := range eventKinds(rep.Events) {
		if k == eventDaemonKilled || k == eventDaemonReady {
			want++
		}
	}
	if want != 6 {
		t.Errorf("events %v: want 3 kills and 3 restarts", eventKinds(rep.Events))
	}
}

// probeFastPath runs DHCP, while the daemon is down, for a phone that has
// its lease (it must get the same address) and for a client the lab does
// not otherwise have (it must get a new one).
func probeFastPath(ctx context.Context, l *lab) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var bound *Phone
	for _, ph := range l.phones {
		if ph.held.Load() != nil {
			bound = ph
			break
		}
	}
	if bound == nil {
		return fmt.Errorf("no phone has its lease yet")
	}
	held := bound.held.Load()
	again := newPhone(bound.index, bound.Model, bound.Port, 99)
	again.VoiceVLAN = held.VLAN
	d := dhcpPhase{timeScale: 0.01, subnetOf: l.o.subnetOf}
	if err := d.Run(ctx, again); err != nil {
		return fmt.Errorf("bound phone %s: %w", bound.Name, err)
	}
	if again.IP != held.IP {
		return fmt.Errorf("bound phone %s got %s, it holds %s", bound.Name, again.IP, held.IP)
	}
	stranger := newPhone(l.o.Phones+1000, bound.Model, bound.Port, 99)
	stranger.VoiceVLAN = held.VLAN
	if held.VLAN != 0 {
		if err := l.tagger.SetVLAN(stranger.MAC, held.VLAN, voicePriority); err != nil {
			return err
		}
	}
	if err := d.Run(ctx, stranger); err != nil {
		return fmt.Errorf("new client %s: %w", stranger.MAC, err)
	}
	for _, ph := range l.phones {
		if a := ph.held.Load(); a != nil && a.IP == stranger.IP {
			return fmt.Errorf("new client %s got %s, which %s holds", stranger.MAC, stranger.IP, ph.Name)
		}
	}
	return nil
}

// TestLabFaultPort power-cycles two ports: p2 once every phone is
// registered, p3 while its phones are still getting their leases. Their
// phones reboot and go through the phases again; none fails.
func TestLabFaultPort(t *testing.T) {
	privtest.Require(t)
	o := faultOptions(t, 16, 4, "port:p2@register=16", "port:p3@dhcp=2")
	rep, err := Run(context.Background(), o)
	assertCleanedUp(t, o.ID)
	if err != nil {
		t.Fatal(err)
	}
	checkRecovered(t, o, rep)
	for _, f := range rep.Faults {
		if f.Affected != 4 || f.PowerOffSeconds <= 0 {
			t.Errorf("fault %+v: want the 4 phones of the port hit and the time off", f)
		}
	}
	if f := rep.Faults[0]; f.RegisteredAtFault != 4 {
		t.Errorf("fault %+v: want p2's 4 phones registered when it went off", f)
	}
	ks := eventKinds(rep.Events)
	for _, k := range []string{eventPowerOff, eventPowerOn} {
		if n := strings.Count(strings.Join(ks, " "), k); n != 2 {
			t.Errorf("events %v: %d %s, want 2", ks, n, k)
		}
	}
	// The phones on p2 were registered when it went off, and registered
	// again; their CallManager replaced their old registrations.
	if r := rep.registrations; r.Registered < 16+4 || !strings.HasPrefix(r.ByCallManager, "cm1 16") {
		t.Errorf("registrations %+v: want 16 phones and the 4 of p2 again, all on cm1", r)
	}
}

// TestTurns: one fault at a time, and those waiting go in the order given.
func TestTurns(t *testing.T) {
	var tu turns
	tu.take(5) // a daemon restarting
	order := make(chan int, 3)
	var wg sync.WaitGroup
	for _, i := range []int{7, 2, 6} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tu.take(i)
			order <- i
			tu.give()
		}()
	}
	// Wait until all three wait for their turn.
	for {
		tu.mu.Lock()
		n := len(tu.waiting)
		tu.mu.Unlock()
		if n == 3 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case i := <-order:
		t.Fatalf("fault %d injected while another was", i)
	default:
	}
	tu.give()
	wg.Wait()
	close(order)
	var got []int
	for i := range order {
		got = append(got, i)
	}
	if !slices.Equal(got, []int{2, 6, 7}) {
		t.Errorf("order %v, want 2, 6, 7", got)
	}
}
