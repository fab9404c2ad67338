package phonetag

// The C source lives in bpf/; the Makefile's generate target sets
// BPF2GO_CC, BPF2GO_STRIP and BPF2GO_CFLAGS to the pinned clang.
//go:generate go tool bpf2go -tags linux -target bpfel -type phone_tag_key tagger ../../bpf/phone_tagger.c -- -I../../bpf -I../..
