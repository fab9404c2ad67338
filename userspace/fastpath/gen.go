package fastpath

// The C sources live in bpf/; the Makefile's generate target sets
// BPF2GO_CC, BPF2GO_STRIP and BPF2GO_CFLAGS to the pinned clang.
//go:generate go tool bpf2go -tags linux -target bpfel -type pb_counter -type pb_counter_value -type pb_config -type pb_config_version phonePort ../../bpf/xdp_phone_port.c -- -I../../bpf -I../..
