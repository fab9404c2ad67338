package dhcp

import (
	"encoding/binary"
	"testing"

	"golang.org/x/net/bpf"
)

// TestSocketFilter runs the raw socket's classic BPF program in x/net's
// BPF interpreter, so its jump offsets are checked without a kernel.
func TestSocketFilter(t *testing.T) {
	vm, err := bpf.NewVM(socketFilter)
	if err != nil {
		t.Fatal(err)
	}
	build := func(etherType uint16, ihl int, proto byte, frag uint16, dport uint16) []byte {
		f := make([]byte, 14+ihl*4+8+10)
		binary.BigEndian.PutUint16(f[12:], etherType)
		f[14] = 0x40 | byte(ihl)
		binary.BigEndian.PutUint16(f[14+6:], frag)
		f[14+9] = proto
		binary.BigEndian.PutUint16(f[14+ihl*4+2:], dport)
		return f
	}
	tests := []struct {
		name  string
		frame []byte
		pass  bool
	}{
		{"udp to 67", build(0x0800, 5, 17, 0, 67), true},
		{"udp to 67 with IP options", build(0x0800, 7, 17, 0, 67), true},
		{"udp to 67, DF set", build(0x0800, 5, 17, 0x4000, 67), true},
		{"udp to 68", build(0x0800, 5, 17, 0, 68), false},
		{"udp to 53", build(0x0800, 5, 17, 0, 53), false},
		{"tcp to 67", build(0x0800, 5, 6, 0, 67), false},
		{"first fragment (MF) to 67", build(0x0800, 5, 17, 0x2000, 67), false},
		{"later fragment", build(0x0800, 5, 17, 0x0010, 67), false},
		{"IPv6", build(0x86dd, 5, 17, 0, 67), false},
		{"inner 802.1Q tag", build(0x8100, 5, 17, 0, 67), false},
		{"ARP", build(0x0806, 5, 17, 0, 67), false},
		{"runt", []byte{0, 1, 2}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := vm.Run(tt.frame)
			if err != nil {
				t.Fatal(err)
			}
			if got := n > 0; got != tt.pass {
				t.Errorf("filter passed=%v, want %v", got, tt.pass)
			}
		})
	}
}
