# phoneboot build. `make help` lists the targets.

CLANG ?= clang-16
STRIP ?= llvm-strip-16
BPF_CFLAGS := -O2 -g -Wall -Werror -mcpu=v3
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/phoneboot/phoneboot/agent.Version=$(VERSION)
GO ?= go

export BPF2GO_CC := $(CLANG)
export BPF2GO_STRIP := $(STRIP)
export BPF2GO_CFLAGS := $(BPF_CFLAGS)

.PHONY: help generate vmlinux build test lab bench lint clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

generate: ## rebuild the committed *_bpfel.go/*_bpfel.o from bpf/*.c (needs $(CLANG), libbpf-dev)
	$(GO) generate ./...

vmlinux: ## regenerate vmlinux.h from the running kernel's BTF (needs bpftool)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > vmlinux.h.tmp
	mv vmlinux.h.tmp vmlinux.h

build: ## build bin/phoneboot with the version stamped in
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/phoneboot ./cmd/phoneboot

test: ## run every test, privileged ones included (as root)
	$(GO) test -count=1 ./...

lab: build ## run the lab boot storm (as root); pass flags with LAB_FLAGS='--phones 1000'
	./bin/phoneboot lab $(LAB_FLAGS)

bench: ## run the benchmarks
	$(GO) test -run '^$$' -bench . -benchmem ./...

lint: ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck -checks 'all,-ST1000,-ST1003' ./...

clean: ## remove build output
	rm -rf bin
