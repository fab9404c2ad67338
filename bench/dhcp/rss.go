package main

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/phoneboot/phoneboot/agent"
	"github.com/phoneboot/phoneboot/userspace/lease"
	"github.com/phoneboot/phoneboot/userspace/vnet"
)

// The daemon's memory with a large lease database: 100,000 bound leases
// written with the lease package before the daemon starts, then VmRSS of
// `phoneboot serve` (with the fast path, which loads every lease into its
// binding map at start) once it reports READY=1.

type rssResult struct {
	Leases    int
	RSSMiB    float64 // VmRSS at READY=1
	HWMMiB    float64 // VmHWM (peak) at READY=1
	RSSLater  float64 // VmRSS 2 s later
	Anon      float64 // RssAnon: the Go heap, stacks, runtime
	File      float64 // RssFile: the binary's pages, files mapped from disk
	Shmem     float64 // RssShmem: files mapped from tmpfs (the lease db here)
	Binary    float64 // of the mappings: the phoneboot executable's pages
	BPFMmap   float64 // of the mappings: mmapped BPF maps (the event ring buffer)
	BPFMiB    float64 // memlock of the BPF maps the daemon holds (kernel memory, not in RSS)
	FillSecs  float64
	ReadySecs float64 // start to READY=1
	DBFileMiB float64
}

// rssPool is 10.200.0.0/14: room for the 100,000 leases and more.
func rssPool() agent.DHCPPoolConfig {
	p := benchPool()
	p.Subnet = netip.MustParsePrefix("10.200.0.0/14")
	p.RangeEnd = netip.MustParseAddr("10.203.255.250")
	return p
}

func fillLeases(path string, n int) error {
	s, err := lease.OpenBolt(path, lease.BoltOptions{})
	if err != nil {
		return err
	}
	ctx := context.Background()
	now := time.Now()
	base := netip.MustParseAddr(rangeStart).As4()
	first := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	// Concurrent writers share commits (the store's group commit).
	for range 64 {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				a := first + uint32(i)
				mac := clientMAC(uint32(i))
				l := lease.Lease{
					IP:       netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}),
					MAC:      mac,
					Pool:     "bench",
					State:    lease.StateBound,
					Expires:  now.Add(time.Hour),
					Port:     "swp1",
					ClientID: append([]byte{1}, mac...),
					Hostname: fmt.Appendf(nil, "SEP%02X%02X%02X%02X%02X%02X", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]),
				}
				if err := s.Allocate(ctx, l, now); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("lease %d: %w", i, err)
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if err := s.Close(); err != nil && firstErr == nil {
		firstErr = err
	}
	return firstErr
}

func procStatusMiB(pid int, field string) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// bpfMapMemlock sums the memlock of the BPF maps among the process's
// file descriptors.
func bpfMapMemlock(pid int) float64 {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var total float64
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil || !strings.Contains(string(data), "map_type:") {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "memlock:"); ok {
				b, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				total += b
			}
		}
	}
	return total / (1 << 20)
}

func (b *bench) measureRSS(ctx context.Context, ns *vnet.NS, n int) (rssResult, error) {
	res := rssResult{Leases: n}
	dir, done, err := b.stepDir()
	if err != nil {
		return res, err
	}
	defer done()
	db := filepath.Join(dir, "leases.db")
	t0 := time.Now()
	if err := fillLeases(db, n); err != nil {
		return res, fmt.Errorf("fill lease db: %w", err)
	}
	res.FillSecs = time.Since(t0).Seconds()
	if fi, err := os.Stat(db); err == nil {
		res.DBFileMiB = float64(fi.Size()) / (1 << 20)
	}
	t0 = time.Now()
	p, err := b.startPhoneboot(ctx, ns, dir, true, rssPool())
	if err != nil {
		return res, err
	}
	defer p.stop()
	res.ReadySecs = time.Since(t0).Seconds()
	res.RSSMiB = procStatusMiB(p.pid(), "VmRSS")
	res.HWMMiB = procStatusMiB(p.pid(), "VmHWM")
	res.Anon = procStatusMiB(p.pid(), "RssAnon")
	res.File = procStatusMiB(p.pid(), "RssFile")
	res.Shmem = procStatusMiB(p.pid(), "RssShmem")
	res.BPFMiB = bpfMapMemlock(p.pid())
	res.Binary, res.BPFMmap = smapsRSS(p.pid(), b.phoneboot)
	select {
	case <-time.After(2 * time.Second):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	res.RSSLater = procStatusMiB(p.pid(), "VmRSS")
	if !p.alive() {
		return res, fmt.Errorf("phoneboot exited after READY=1; log:\n%s", p.tail())
	}
	return res, nil
}

// smapsRSS sums the resident size of the executable's mappings and of
// mmapped BPF maps.
func smapsRSS(pid int, exe string) (binary, bpfMaps float64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	name := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			name = ""
			if len(fields) >= 6 {
				name = fields[5]
			}
			continue
		}
		if v, ok := strings.CutPrefix(line, "Rss:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			switch {
			case name == exe:
				binary += kb / 1024
			case name == "anon_inode:bpf-map":
				bpfMaps += kb / 1024
			}
		}
	}
	return binary, bpfMaps
}
