package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/phoneboot/phoneboot/userspace/cmsim"
)

// The lab's CallManager simulators run in a process of their own (the
// phoneboot binary's hidden lab-callmanagers command), started in the
// CallManagers' namespace: a registered phone holds one descriptor on the
// phone's side and one on the CallManager's, and with both in the lab's
// process 10,000 phones would need 20,000, where this machine's hard
// limit is 20,000 per process and cannot be raised without
// CAP_SYS_RESOURCE. The lab drives them over a small HTTP API on a unix
// socket in its run directory (remoteCM).

// CallManagersConfig is what the lab-callmanagers command serves.
type CallManagersConfig struct {
	Addrs     []string      // SCCP listen addresses, highest priority first; named cm1, cm2, ...
	KeepAlive time.Duration // given to phones in RegisterAck
	Control   string        // the unix socket of the control API
	Log       *slog.Logger
}

// RunCallManagers serves the simulators and their control API until ctx
// ends.
func RunCallManagers(ctx context.Context, cfg CallManagersConfig) error {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	var servers []*cmsim.Server
	defer func() {
		for _, s := range servers {
			s.Close()
		}
	}()
	for i, a := range cfg.Addrs {
		s, err := cmsim.New(cmsim.Config{Name: fmt.Sprintf("cm%d", i+1), Addr: a, KeepAlive: cfg.KeepAlive}, cfg.Log)
		if err != nil {
			return err
		}
		servers = append(servers, s)
		go s.Run(ctx)
	}
	ln, err := net.Listen("unix", cfg.Control)
	if err != nil {
		return fmt.Errorf("CallManagers' control socket: %w", err)
	}
	server := func(r *http.Request) (*cmsim.Server, error) {
		i, err := strconv.Atoi(r.PathValue("cm"))
		if err != nil || i < 1 || i > len(servers) {
			return nil, fmt.Errorf("no CallManager %q", r.PathValue("cm"))
		}
		return servers[i-1], nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /cm/{cm}", func(w http.ResponseWriter, r *http.Request) {
		s, err := server(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		json.NewEncoder(w).Encode(cmState{Mode: int(s.Mode()), Registered: s.Registered(), Stats: s.Stats(), Stations: s.Stations()})
	})
	mux.HandleFunc("PUT /cm/{cm}/mode", func(w http.ResponseWriter, r *http.Request) {
		s, err := server(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		var m int
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// Stopping answers with the devices whose registrations it
		// ended (cmsim.Server.Stop).
		if cmsim.Mode(m) == cmsim.Stopped {
			resets, err := s.Stop()
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			json.NewEncoder(w).Encode(resets)
			return
		}
		if err := s.SetMode(cmsim.Mode(m)); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		hs.Close()
	}()
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// cmState is one simulator as the control API reports it.
type cmState struct {
	Mode       int
	Registered int
	Stats      cmsim.Stats
	Stations   []cmsim.Station
}

// cmProcess is the lab's handle on the simulators' process.
type cmProcess struct {
	cmd    *exec.Cmd
	exited chan struct{}
	client *http.Client
}

// startCMProcess starts the simulators with command (the phoneboot
// binary) in the namespace do runs in, and waits for their control API.
func startCMProcess(command string, do func(func() error) error, runDir string, addrs []string, keepAlive time.Duration, logw io.Writer, log *slog.Logger) (*cmProcess, []*remoteCM, error) {
	control := filepath.Join(runDir, "callmanagers.sock")
	args := []string{"lab-callmanagers", "--control", control, "--keepalive", keepAlive.String()}
	for _, a := range addrs {
		args = append(args, "--addr", a)
	}
	cmd := exec.Command(command, args...)
	cmd.Stdout, cmd.Stderr = logw, logw
	// If the lab dies, the simulators go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := do(cmd.Start); err != nil {
		return nil, nil, fmt.Errorf("start the CallManager simulators: %w", err)
	}
	p := &cmProcess{cmd: cmd, exited: make(chan struct{}), client: &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", control)
		}},
		Timeout: 10 * time.Second,
	}}
	go func() { cmd.Wait(); close(p.exited) }()
	var cms []*remoteCM
	for i := range addrs {
		cms = append(cms, &remoteCM{p: p, n: i + 1, log: log})
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := cms[0].state(); err == nil {
			return p, cms, nil
		} else if time.Now().After(deadline) {
			p.close()
			return nil, nil, fmt.Errorf("the CallManager simulators did not come up: %w", err)
		}
		select {
		case <-p.exited:
			return nil, nil, fmt.Errorf("the CallManager simulators exited at start (%s)", cmd.ProcessState)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// close stops the simulators (their phones' connections go with them).
func (p *cmProcess) close() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
	p.client.CloseIdleConnections()
}

// remoteCM is one simulator in the simulators' process, with the methods
// of cmsim.Server the lab uses.
type remoteCM struct {
	p   *cmProcess
	n   int // cm1, cm2, ...
	log *slog.Logger
}

func (c *remoteCM) url(path string) string { return "http://cm/cm/" + strconv.Itoa(c.n) + path }

func (c *remoteCM) state() (cmState, error) {
	var st cmState
	resp, err := c.p.client.Get(c.url(""))
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return st, fmt.Errorf("cm%d: %s: %s", c.n, resp.Status, bytes.TrimSpace(b))
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// SetMode serves, stops, black-holes or hangs the simulator.
func (c *remoteCM) SetMode(m cmsim.Mode) error {
	_, err := c.putMode(m)
	return err
}

// Stop stops the simulator and returns the devices whose registrations
// that ended (cmsim.Server.Stop).
func (c *remoteCM) Stop() ([]cmsim.Reset, error) {
	body, err := c.putMode(cmsim.Stopped)
	if err != nil {
		return nil, err
	}
	var resets []cmsim.Reset
	if err := json.Unmarshal(body, &resets); err != nil {
		return nil, fmt.Errorf("cm%d: stop: %w", c.n, err)
	}
	return resets, nil
}

func (c *remoteCM) putMode(m cmsim.Mode) ([]byte, error) {
	body, _ := json.Marshal(int(m))
	req, err := http.NewRequest(http.MethodPut, c.url("/mode"), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := c.p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cm%d: set mode %s: %w", c.n, m, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("cm%d: set mode %s: %w", c.n, m, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("cm%d: set mode %s: %s: %s", c.n, m, resp.Status, bytes.TrimSpace(b[:min(len(b), 1024)]))
	}
	return b, nil
}

// Registered is how many phones the simulator has registered now; 0 when
// it cannot be asked (logged).
func (c *remoteCM) Registered() int {
	st, err := c.state()
	if err != nil {
		c.log.Warn("CallManager simulator not answering", "error", err)
	}
	return st.Registered
}

// Stats are the simulator's counters.
func (c *remoteCM) Stats() cmsim.Stats {
	st, err := c.state()
	if err != nil {
		c.log.Warn("CallManager simulator not answering", "error", err)
	}
	return st.Stats
}

// Stations are the phones registered now.
func (c *remoteCM) Stations() []cmsim.Station {
	st, err := c.state()
	if err != nil {
		c.log.Warn("CallManager simulator not answering", "error", err)
	}
	return st.Stations
}
