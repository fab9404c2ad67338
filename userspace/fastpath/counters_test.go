package fastpath

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// btfEnum reads a named enum from the embedded object's BTF. It needs no
// privileges: nothing is loaded into the kernel.
func btfEnum(t *testing.T, name string) *btf.Enum {
	t.Helper()
	spec, err := loadPhonePort()
	if err != nil {
		t.Fatalf("loadPhonePort: %v", err)
	}
	if spec.Types == nil {
		t.Fatal("embedded object has no BTF")
	}
	var e *btf.Enum
	if err := spec.Types.TypeByName(name, &e); err != nil {
		t.Fatalf("BTF enum %s: %v", name, err)
	}
	return e
}

// TestCounterNamesMatchBTF ties counterNames to enum pb_counter as the C
// compiler saw it: same order, same values, same names, nothing missing.
func TestCounterNamesMatchBTF(t *testing.T) {
	e := btfEnum(t, "pb_counter")
	if len(e.Values) == 0 {
		t.Fatal("enum pb_counter has no members")
	}
	last := e.Values[len(e.Values)-1]
	if last.Name != "PB_CNT__MAX" {
		t.Fatalf("last member of enum pb_counter is %s, want PB_CNT__MAX", last.Name)
	}
	if got, want := len(e.Values)-1, len(counterNames); got != want {
		t.Errorf("enum pb_counter has %d counters before PB_CNT__MAX, counterNames has %d", got, want)
	}
	if last.Value != uint64(len(counterNames)) {
		t.Errorf("PB_CNT__MAX = %d in BTF, counterNames has %d entries", last.Value, len(counterNames))
	}
	if uint64(phonePortPbCounterPB_CNT__MAX) != last.Value {
		t.Errorf("generated phonePortPbCounterPB_CNT__MAX = %d, BTF says %d (stale bpf2go output?)",
			phonePortPbCounterPB_CNT__MAX, last.Value)
	}
	for i, v := range e.Values[:len(e.Values)-1] {
		if v.Value != uint64(i) {
			t.Errorf("member %d of enum pb_counter is %s = %d, want %d", i, v.Name, v.Value, i)
		}
		if !strings.HasPrefix(v.Name, "PB_CNT_") {
			t.Errorf("member %s of enum pb_counter lacks the PB_CNT_ prefix", v.Name)
		}
		want := strings.ToLower(strings.TrimPrefix(v.Name, "PB_CNT_"))
		if i >= len(counterNames) {
			t.Errorf("counterNames has no entry %d for %s", i, v.Name)
			continue
		}
		if counterNames[i] != want {
			t.Errorf("counterNames[%d] = %q, BTF member %s wants %q", i, counterNames[i], v.Name, want)
		}
	}
	// CounterNames is the exported view of the same table.
	if got := CounterNames(); strings.Join(got, ",") != strings.Join(counterNames[:], ",") {
		t.Errorf("CounterNames() = %v, want %v", got, counterNames)
	}
}

// TestConfigVersionMatchesBTF checks the version Go writes into the config
// map against the one the C program compares it with.
func TestConfigVersionMatchesBTF(t *testing.T) {
	e := btfEnum(t, "pb_config_version")
	var found bool
	for _, v := range e.Values {
		if v.Name != "PB_CONFIG_VERSION" {
			continue
		}
		found = true
		if v.Value != uint64(phonePortPbConfigVersionPB_CONFIG_VERSION) {
			t.Errorf("PB_CONFIG_VERSION = %d in BTF, Go has %d", v.Value, phonePortPbConfigVersionPB_CONFIG_VERSION)
		}
		if v.Value == 0 {
			t.Error("PB_CONFIG_VERSION is 0, indistinguishable from an unwritten config map")
		}
	}
	if !found {
		t.Fatalf("enum pb_config_version has no PB_CONFIG_VERSION member: %+v", e.Values)
	}
}
