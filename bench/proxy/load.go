package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/phoneboot/phoneboot/userspace/sccp"
)

func dialTCP(addr string) (*net.TCPConn, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// registerMsg is a 7941's RegisterMessage with a device name of its own.
func registerMsg(b []byte, id uint64) []byte {
	m := sccp.Register{DeviceName: fmt.Sprintf("SEP%012X", id&0xffffffffffff), Instance: 1,
		StationIP:  netip.AddrFrom4([4]byte{10, byte(id >> 16), byte(id >> 8), byte(id)}),
		DeviceType: 115, MaxStreams: 5, ProtocolVersion: 11, LoadInfo: "SCCP41.8-5-3S", BodyLen: sccp.RegisterLoadBody}
	return m.AppendFrame(b, sccp.VersionBasic)
}

// registerOnce is one new phone: connect, Register, wait for RegisterAck,
// close. It returns the time from connect to RegisterAck.
func registerOnce(addr string, id uint64, buf []byte) (time.Duration, error) {
	t0 := time.Now()
	c, err := dialTCP(addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if _, err := c.Write(registerMsg(buf[:0], id)); err != nil {
		return 0, err
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := sccp.NewReader(c)
	for {
		f, err := r.ReadFrame()
		if err != nil {
			return 0, err
		}
		if f.ID == sccp.RegisterAckID {
			return time.Since(t0), nil
		}
	}
}

// run is what one measurement gives.
type run struct {
	done    int
	errs    int
	elapsed time.Duration
	lat     []time.Duration
	cpu     map[string]float64 // % of one core, by process
	firstEr string
}

func (r *run) rate() float64 { return float64(r.done) / r.elapsed.Seconds() }

func (r *run) pct(p float64) float64 {
	if len(r.lat) == 0 {
		return 0
	}
	slices.Sort(r.lat)
	i := int(p / 100 * float64(len(r.lat)-1))
	return float64(r.lat[i]) / float64(time.Millisecond)
}

func (r *run) addErr(err error) {
	r.errs++
	if r.firstEr == "" {
		r.firstEr = err.Error()
	}
}

var nextID atomic.Uint64

// closedLoop runs workers that each register, one after the other, as
// fast as the target answers, for d.
func closedLoop(ctx context.Context, addr string, workers int, d time.Duration) *run {
	r := &run{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 0, 256)
			lat := make([]time.Duration, 0, 4096)
			var errs []error
			for time.Now().Before(stop) && ctx.Err() == nil {
				l, err := registerOnce(addr, nextID.Add(1), buf)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				lat = append(lat, l)
			}
			mu.Lock()
			r.lat = append(r.lat, lat...)
			for _, e := range errs {
				r.addErr(e)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	r.elapsed = time.Since(start)
	r.done = len(r.lat)
	return r
}

// openLoop starts one registration every 1/rate, whatever the answers,
// for d: the latency of a registration at a load the target carries.
func openLoop(ctx context.Context, addr string, rate int, d time.Duration) *run {
	r := &run{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	gap := time.Second / time.Duration(rate)
	start := time.Now()
	for i := 0; ; i++ {
		at := start.Add(time.Duration(i) * gap)
		if at.Sub(start) >= d || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Until(at))
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf [256]byte
			l, err := registerOnce(addr, nextID.Add(1), buf[:0])
			mu.Lock()
			if err != nil {
				r.addErr(err)
			} else {
				r.lat = append(r.lat, l)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	r.elapsed = time.Since(start)
	r.done = len(r.lat)
	return r
}

// keepalives holds n registered sessions, each sending KeepAlive every
// gap and timing the KeepAliveAck, for d: the relay's cost on what a
// registered phone does.
func keepalives(ctx context.Context, addr string, n int, gap, d time.Duration) *run {
	r := &run{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	stop := start.Add(d)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			err := func() error {
				c, err := dialTCP(addr)
				if err != nil {
					return err
				}
				defer c.Close()
				if _, err := c.Write(registerMsg(nil, nextID.Add(1))); err != nil {
					return err
				}
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				rd := sccp.NewReader(c)
				for {
					f, err := rd.ReadFrame()
					if err != nil {
						return err
					}
					if f.ID == sccp.RegisterAckID {
						break
					}
				}
				ka := sccp.AppendEmpty(nil, sccp.VersionBasic, sccp.KeepAliveID)
				// Spread the sessions over the gap.
				next := time.Now().Add(gap * time.Duration(i) / time.Duration(n))
				for next.Before(stop) && ctx.Err() == nil {
					time.Sleep(time.Until(next))
					t0 := time.Now()
					if _, err := c.Write(ka); err != nil {
						return err
					}
					c.SetReadDeadline(time.Now().Add(5 * time.Second))
					for {
						f, err := rd.ReadFrame()
						if err != nil {
							return err
						}
						if f.ID == sccp.KeepAliveAckID {
							break
						}
					}
					lat = append(lat, time.Since(t0))
					next = next.Add(gap)
				}
				return nil
			}()
			mu.Lock()
			r.lat = append(r.lat, lat...)
			if err != nil {
				r.addErr(err)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	r.elapsed = time.Since(start)
	r.done = len(r.lat)
	return r
}

// cpuTime is the CPU a process has used so far (user + system).
func cpuTime(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// measured runs fn and notes the CPU of each process meanwhile.
func measured(procs map[string]int, fn func() *run) *run {
	before := map[string]time.Duration{}
	for name, pid := range procs {
		before[name] = cpuTime(pid)
	}
	t0 := time.Now()
	r := fn()
	el := time.Since(t0)
	r.cpu = map[string]float64{}
	for name, pid := range procs {
		r.cpu[name] = 100 * float64(cpuTime(pid)-before[name]) / float64(el)
	}
	return r
}
