package dhcp

import "golang.org/x/net/bpf"

// socketFilter is the classic BPF program on each phone port's raw socket:
// it passes IPv4/UDP datagrams to port 67 that are not fragments (a DHCP
// message fits one datagram; pieces of one are dropped) and nothing else.
// It sees frames after the kernel removed the outer VLAN tag, so tagged and
// untagged requests look alike.
var socketFilter = []bpf.Instruction{
	/* 0 */ bpf.LoadAbsolute{Off: 12, Size: 2}, // EtherType
	/* 1 */ bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0x0800, SkipTrue: 8},
	/* 2 */ bpf.LoadAbsolute{Off: 23, Size: 1}, // IPv4 protocol
	/* 3 */ bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 17, SkipTrue: 6},
	/* 4 */ bpf.LoadAbsolute{Off: 20, Size: 2}, // flags and fragment offset
	/* 5 */ bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x3fff, SkipTrue: 4}, // MF or an offset: a fragment
	/* 6 */ bpf.LoadMemShift{Off: 14}, // X = IPv4 header length
	/* 7 */ bpf.LoadIndirect{Off: 14 + 2, Size: 2}, // UDP destination port
	/* 8 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: 67, SkipFalse: 1},
	/* 9 */ bpf.RetConstant{Val: 0xffff},
	/* 10 */ bpf.RetConstant{Val: 0},
}
