package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/phoneboot/phoneboot/userspace/tftp"
)

// genResult is what one load generator run reports to the bench.
type genResult struct {
	Transfers int       `json:"transfers"`
	Completed int       `json:"completed"`
	Bytes     int64     `json:"bytes"` // verified bytes received, unfinished transfers included
	WallS     float64   `json:"wall_s"`
	Durations []float64 `json:"durations_s"` // of completed transfers
	Errors    []string  `json:"errors"`      // the first few
	Resent    int       `json:"resent"`      // TFTP requests and ACKs sent again
}

// runGen is the load generator, run by the bench inside the client
// namespace: clients concurrent clients each fetch the file `each` times
// in a row (TFTP with the bench's own client, tftp.Fetch; HTTP with
// net/http), every byte compared with the file. It stops at limit, counting
// what arrived by then.
func runGen(args []string) error {
	fs := flag.NewFlagSet("gen", flag.ExitOnError)
	proto := fs.String("proto", "tftp", "tftp or http")
	server := fs.String("server", serverIP+":69", "server address")
	name := fs.String("file", "", "file to fetch")
	wantPath := fs.String("want", "", "local copy of the file to compare with")
	clients := fs.Int("clients", 1, "concurrent clients")
	each := fs.Int("each", 1, "transfers per client, one after the other")
	blksize := fs.Int("blksize", 1468, "TFTP blksize")
	windowsize := fs.Int("windowsize", 0, "TFTP windowsize (0: lock-step, no option)")
	limit := fs.Duration("limit", 10*time.Minute, "stop after this long")
	probe := fs.Bool("probe", false, "only wait until the server answers (up to -limit)")
	fs.Parse(args)

	want, err := os.ReadFile(*wantPath)
	if err != nil {
		return err
	}
	addr, err := netip.ParseAddrPort(*server)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *limit)
	defer cancel()
	tr := &http.Transport{
		DisableCompression: true,
		DisableKeepAlives:  true, // one connection per transfer, like a phone
		DialContext:        (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		MaxConnsPerHost:    0,
	}
	hc := &http.Client{Transport: tr}
	fetch := func(ctx context.Context, w *cmpWriter) (int, error) {
		if *proto == "http" {
			req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr.String()+"/"+*name, nil)
			if err != nil {
				return 0, err
			}
			resp, err := hc.Do(req)
			if err != nil {
				return 0, err
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				return 0, fmt.Errorf("HTTP %s", resp.Status)
			}
			_, err = io.CopyBuffer(w, resp.Body, make([]byte, 64<<10))
			return 0, err
		}
		// Retries like a phone's, which keeps asking for minutes: a
		// server slow to answer is measured as slow, not as failed.
		res, err := tftp.Fetch(ctx, addr, *name, tftp.FetchOptions{BlockSize: *blksize, WindowSize: *windowsize, Retries: 20}, w)
		return res.Resent, err
	}
	if *probe {
		for {
			tctx, tcancel := context.WithTimeout(ctx, 500*time.Millisecond)
			_, err := fetch(tctx, &cmpWriter{want: want})
			tcancel()
			if err == nil {
				return nil
			}
			if ctx.Err() != nil {
				return fmt.Errorf("server not ready: %w", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	var (
		mu        sync.Mutex
		res       = genResult{Transfers: *clients * *each}
		bytesSeen atomic.Int64
		resent    atomic.Int64
		wg        sync.WaitGroup
	)
	start := time.Now()
	for range *clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range *each {
				w := &cmpWriter{want: want}
				t0 := time.Now()
				n, err := fetch(ctx, w)
				d := time.Since(t0)
				resent.Add(int64(n))
				bytesSeen.Add(w.off)
				if err == nil && w.off != int64(len(want)) {
					err = fmt.Errorf("short: %d of %d bytes", w.off, len(want))
				}
				mu.Lock()
				if err == nil {
					res.Completed++
					res.Durations = append(res.Durations, d.Seconds())
				} else if len(res.Errors) < 5 {
					res.Errors = append(res.Errors, err.Error())
				}
				mu.Unlock()
				if ctx.Err() != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	res.WallS = time.Since(start).Seconds()
	res.Bytes = bytesSeen.Load()
	res.Resent = int(resent.Load())
	return json.NewEncoder(os.Stdout).Encode(res)
}

// cmpWriter checks what arrives against the file, byte for byte.
type cmpWriter struct {
	want []byte
	off  int64
}

var errMismatch = errors.New("content differs from the file")

func (w *cmpWriter) Write(p []byte) (int, error) {
	end := w.off + int64(len(p))
	if end > int64(len(w.want)) || !bytes.Equal(p, w.want[w.off:end]) {
		return 0, errMismatch
	}
	w.off = end
	return len(p), nil
}
