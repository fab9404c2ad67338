package proxy

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"reflect"
	"strings"
	"testing"
)

// Each worker gets a share of the pacing, at least 1 where 0 would mean
// something else, and the port a port-0 listener was given.
func TestWorkerConfig(t *testing.T) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	for _, tt := range []struct {
		name     string
		in       AdmissionConfig
		failback float64
		n        int
		want     AdmissionConfig
		wantFB   float64
	}{
		{"split", AdmissionConfig{Rate: 100, Burst: 10, QueueLimit: 10000}, 0, 4, AdmissionConfig{Rate: 25, Burst: 2, QueueLimit: 2500}, 25},
		{"at least one", AdmissionConfig{Rate: 1, Burst: 1, QueueLimit: 3}, 8, 4, AdmissionConfig{Rate: 0.25, Burst: 1, QueueLimit: 1}, 2},
		{"unpaced stays unpaced", AdmissionConfig{}, 0, 2, AdmissionConfig{Rate: 0, Burst: 1, QueueLimit: 5000}, 25},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Listeners: []Listener{{Protocol: SCCP, Addr: "127.0.0.1:0"}, {Protocol: SIP, Addr: "127.0.0.1:0", UpstreamPort: 5062}},
				Admission: tt.in, Failback: FailbackConfig{Rate: tt.failback}}
			cfg.setDefaults()
			got := workerConfig(cfg, []*net.TCPListener{ln, ln}, tt.n)
			if got.Admission != tt.want || got.Failback.Rate != tt.wantFB {
				t.Errorf("admission %+v, failback rate %v; want %+v, %v", got.Admission, got.Failback.Rate, tt.want, tt.wantFB)
			}
			if got.Listeners[0].UpstreamPort != port || got.Listeners[1].UpstreamPort != 5062 {
				t.Errorf("upstream ports %d, %d; want %d, 5062", got.Listeners[0].UpstreamPort, got.Listeners[1].UpstreamPort, port)
			}
			if cfg.Listeners[0].UpstreamPort != 0 {
				t.Error("the caller's config was changed")
			}
		})
	}
}

func TestMergeStats(t *testing.T) {
	a := Stats{
		Accepted: map[Protocol]uint64{SCCP: 3, SIP: 1}, Active: 4, Registered: 3, Rejected: 1, Queued: 2,
		DialFailures: 1, AcceptErrors: 0, HealthFailures: 2, Closed: map[string]uint64{"idle": 1},
		CallManagers: []CallManagerStats{
			{Name: "cm1", Sessions: 3, Waiting: 1, CheckStats: CheckStats{Healthy: true, Transitions: 2, Failovers: 1, ProbesOK: 10, ProbesFail: 2, Vetoes: 1},
				SIP: &CheckStats{Healthy: true, ProbesOK: 10}},
			{Name: "cm2", Sessions: 1, CheckStats: CheckStats{Healthy: true, ProbesOK: 12}, SIP: &CheckStats{Healthy: true, ProbesOK: 1}},
		},
		Table: []TableCount{{State: StateRegistered, CallManager: "cm1", Rows: 3}, {State: StateReading, Rows: 1}},
	}
	b := Stats{
		Accepted: map[Protocol]uint64{SCCP: 5}, Active: 5, Registered: 5, Closed: map[string]uint64{"idle": 2, "failback": 1},
		CallManagers: []CallManagerStats{
			{Name: "cm1", Sessions: 4, Waiting: 2, CheckStats: CheckStats{Healthy: false, Transitions: 3, Failovers: 1, ProbesOK: 9, ProbesFail: 3},
				SIP: &CheckStats{Healthy: true, ProbesOK: 9}},
			{Name: "cm2", Sessions: 1, CheckStats: CheckStats{Healthy: true, ProbesOK: 12}, SIP: &CheckStats{Healthy: false, ProbesFail: 2, Transitions: 1}},
		},
		Table: []TableCount{{State: StateRegistered, CallManager: "cm1", Rows: 4}, {State: StateRegistered, CallManager: "cm2", Rows: 1}},
	}
	want := Stats{
		Accepted: map[Protocol]uint64{SCCP: 8, SIP: 1}, Active: 9, Registered: 8, Rejected: 1, Queued: 2,
		DialFailures: 1, HealthFailures: 2, Closed: map[string]uint64{"idle": 3, "failback": 1},
		CallManagers: []CallManagerStats{
			// Down while any worker holds it down; one event, seen by
			// every worker, counted once.
			{Name: "cm1", Sessions: 7, Waiting: 3, CheckStats: CheckStats{Healthy: false, Transitions: 3, Failovers: 1, ProbesOK: 19, ProbesFail: 5, Vetoes: 1},
				SIP: &CheckStats{Healthy: true, ProbesOK: 19}},
			{Name: "cm2", Sessions: 2, CheckStats: CheckStats{Healthy: true, ProbesOK: 24}, SIP: &CheckStats{Healthy: false, ProbesOK: 1, ProbesFail: 2, Transitions: 1}},
		},
		Table: []TableCount{{State: StateReading, Rows: 1}, {State: StateRegistered, CallManager: "cm1", Rows: 7},
			{State: StateRegistered, CallManager: "cm2", Rows: 1}},
	}
	if got := mergeStats([]Stats{a, b}); !reflect.DeepEqual(got, want) {
		t.Errorf("merged\n got %+v\nwant %+v", got, want)
	}
	if *a.CallManagers[1].SIP != (CheckStats{Healthy: true, ProbesOK: 1}) {
		t.Errorf("the first worker's stats were changed: %+v", *a.CallManagers[1].SIP)
	}
	if got := mergeStats(nil); got.Active != 0 || len(got.CallManagers) != 0 || got.Accepted == nil {
		t.Errorf("merged nothing: %+v", got)
	}
}

// relayLog passes a worker's JSON log lines on at their level with their
// attributes, anything else as an error, and reads to the end.
func TestRelayLog(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	})).With("worker", 1)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		fmt.Fprintln(w, `{"time":"2026-12-06T06:00:00Z","level":"WARN","msg":"accept","listener":"0.0.0.0:2000","error":"too many open files"}`)
		fmt.Fprintln(w, `{"level":"DEBUG","msg":"dial CallManager","cm":"cm1"}`)
		fmt.Fprintln(w, `panic: boom`)
		w.Write(bytes.Repeat([]byte("x"), 2<<20)) // past the line limit: dropped, still drained
		w.Close()
	}()
	relayLog(log, r)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{
		`level=WARN msg=accept worker=1 error="too many open files" listener=0.0.0.0:2000`,
		`level=DEBUG msg="dial CallManager" worker=1 cm=cm1`,
		`level=ERROR msg="worker output" worker=1 line="panic: boom"`,
	}
	if len(lines) != 4 || !reflect.DeepEqual(lines[:3], want) || !strings.Contains(lines[3], "worker output unreadable") {
		t.Errorf("relayed:\n%s\nwant first:\n%s\nthen the unreadable rest", buf.String(), strings.Join(want, "\n"))
	}
}

func FuzzRelayLog(f *testing.F) {
	f.Add([]byte(`{"level":"INFO","msg":"m","a":{"b":[1,2]}}` + "\n"))
	f.Add([]byte(`{"level":7,"msg":null}` + "\nnot json\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		go func() { w.Write(data); w.Close() }()
		relayLog(slog.New(slog.DiscardHandler), r) // returns: read to the end
	})
}

// A worker that exits before it is ready fails NewWorkers, which leaves
// nothing listening.
func TestNewWorkersWorkerFails(t *testing.T) {
	cfg := Config{Listeners: []Listener{{Protocol: SCCP, Addr: "127.0.0.1:0"}}, CallManagers: []CallManager{{Name: "cm1", Host: "127.0.0.1"}}}
	// The port: bound once to learn a free one, then handed to the workers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg.Listeners[0].Addr = addr
	_, err = NewWorkers(cfg, WorkersConfig{Workers: 2, Command: []string{"/bin/false"}}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") {
		t.Fatalf("NewWorkers with workers that exit: %v", err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Errorf("%s still listens after NewWorkers failed", addr)
	}
	for _, n := range []int{0, 1} {
		if _, err := NewWorkers(cfg, WorkersConfig{Workers: n, Command: []string{"/bin/false"}}, slog.New(slog.DiscardHandler)); err == nil {
			t.Errorf("NewWorkers with %d workers: no error", n)
		}
	}
}
