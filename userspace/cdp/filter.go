package cdp

import "golang.org/x/net/bpf"

// Filter returns the classic BPF program for a port's raw socket that
// passes CDP frames (to MulticastAddr, LLC/SNAP with Cisco's OUI and
// protocol ID 0x2000) and nothing else: not even the other Cisco protocols
// that share the address, which arrive every few seconds on a trunk.
func Filter() []bpf.Instruction {
	return []bpf.Instruction{
		/* 0 */ bpf.LoadAbsolute{Off: 0, Size: 4},
		/* 1 */ bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0x01000ccc, SkipTrue: 7},
		/* 2 */ bpf.LoadAbsolute{Off: 4, Size: 2},
		/* 3 */ bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0xcccc, SkipTrue: 5},
		/* 4 */ bpf.LoadAbsolute{Off: 14, Size: 4}, // DSAP, SSAP, control, OUI[0]
		/* 5 */ bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0xaaaa0300, SkipTrue: 3},
		/* 6 */ bpf.LoadAbsolute{Off: 18, Size: 4}, // OUI[1:], protocol ID
		/* 7 */ bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0x000c0000 | pidCDP, SkipTrue: 1},
		/* 8 */ bpf.RetConstant{Val: 0xffff},
		/* 9 */ bpf.RetConstant{Val: 0},
	}
}
