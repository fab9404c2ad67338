package dhcp

import (
	"testing"

	"github.com/phoneboot/phoneboot/userspace/lease"
)

// TestKernelAllocates: the fast path gives new clients addresses only when
// no per-port defence needs the handler to count them.
func TestKernelAllocates(t *testing.T) {
	for _, tt := range []struct {
		name  string
		tweak func(*Config)
		want  bool
	}{
		{"no per-port defence", func(*Config) {}, true},
		{"lease cap per port", func(c *Config) { c.MaxLeasesPerPort = 8 }, false},
		{"rate limit per port", func(c *Config) { c.RatePerPort, c.RateBurst = 50, 100 }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			tt.tweak(&cfg)
			h, err := NewHandler(cfg, lease.NewMemory(), nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := h.KernelAllocates(); got != tt.want {
				t.Errorf("KernelAllocates() = %v, want %v", got, tt.want)
			}
		})
	}
}
