// Package control is the daemon's local control API: JSON over HTTP on a
// unix socket that only root (or the daemon's own user) can open. The CLI
// (`phoneboot status`) is its client.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Status is the daemon's state as `phoneboot status` shows it.
type Status struct {
	Version   string          `json:"version"`
	PID       int             `json:"pid"`
	StartedAt time.Time       `json:"started_at"`
	Uptime    float64         `json:"uptime_seconds"`
	Ports     []PortStatus    `json:"ports"`
	Services  []ServiceStatus `json:"services"`
	Counters  []Counter       `json:"counters"`
}

// PortStatus is one phone port.
type PortStatus struct {
	Name     string `json:"name"`
	Ifindex  int    `json:"ifindex,omitempty"`
	XDPMode  string `json:"xdp_mode"` // native, generic, or "off"
	PoEState string `json:"poe_state,omitempty"`
	PoEClass int    `json:"poe_class,omitempty"`
	PowerMW  int    `json:"power_mw,omitempty"`
	PoEFault string `json:"poe_fault,omitempty"`
}

// ServiceStatus is one service the daemon runs.
type ServiceStatus struct {
	Name  string `json:"name"`
	State string `json:"state"` // starting, running, stopped, failed
	Error string `json:"error,omitempty"`
}

// Counter is a data-path counter.
type Counter struct {
	Name    string `json:"name"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Lease is one DHCP lease as `phoneboot leases` lists it.
type Lease struct {
	IP       string    `json:"ip"`
	MAC      string    `json:"mac"`
	Pool     string    `json:"pool"`
	State    string    `json:"state"`
	Expires  time.Time `json:"expires"`
	Port     string    `json:"port,omitempty"`
	VLAN     uint16    `json:"vlan"`
	Hostname string    `json:"hostname,omitempty"` // as the client sent it, quoted if not printable
}

// Neighbor is one device heard over CDP or LLDP, as `phoneboot neighbors`
// lists it.
type Neighbor struct {
	Port             string    `json:"port"`
	Protocol         string    `json:"protocol"` // cdp or lldp
	MAC              string    `json:"mac"`
	DeviceID         string    `json:"device_id"` // quoted if not printable
	Platform         string    `json:"platform,omitempty"`
	PortID           string    `json:"port_id,omitempty"`
	Addresses        []string  `json:"addresses,omitempty"`
	SoftwareVersion  string    `json:"software_version,omitempty"`
	PowerRequestedMW uint32    `json:"power_requested_mw,omitempty"`
	VoiceVLANQuery   bool      `json:"voice_vlan_query,omitempty"`
	Expires          time.Time `json:"expires"`
}

// Registration is one phone connection through the registration proxy,
// as `phoneboot registrations` lists it.
type Registration struct {
	Device      string    `json:"device"` // SCCP device name or SIP device/AOR; empty while unknown (TLS)
	Phone       string    `json:"phone"`  // the phone's address and port
	CallManager string    `json:"call_manager,omitempty"`
	Protocol    string    `json:"protocol"` // sccp, sip, sccp-tls, sip-tls
	State       string    `json:"state"`    // reading, queued, registering, registered, rejected, connected
	Since       time.Time `json:"since"`    // of the last state change
	DeviceType  uint32    `json:"device_type,omitempty"`
	Load        string    `json:"load,omitempty"`
	// KeepAliveSeconds is the interval the CallManager's RegisterAck gave.
	KeepAliveSeconds float64 `json:"keepalive_seconds,omitempty"`
}

// Provider answers the API's questions.
type Provider interface {
	Status(ctx context.Context) Status
	// Leases lists the DHCP leases; an error if DHCP is off.
	Leases(ctx context.Context) ([]Lease, error)
	// Neighbors lists the CDP and LLDP neighbours; an error if discovery is off.
	Neighbors(ctx context.Context) ([]Neighbor, error)
	// Registrations lists the registration proxy's sessions; an error if
	// the proxy is off.
	Registrations(ctx context.Context) ([]Registration, error)
}

// Server serves the control API on a unix socket.
type Server struct {
	path string
	ln   net.Listener
	srv  *http.Server
	log  *slog.Logger
}

// NewServer creates the socket (mode 0600; its directory 0700 when created
// here) and is ready to serve once it returns.
func NewServer(path string, p Provider, log *slog.Logger) (*Server, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("control socket directory: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	// The umask makes the socket private from its creation on; the chmod
	// after Listen alone would leave a window.
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket permissions: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, p.Status(r.Context()))
	})
	mux.HandleFunc("GET /v1/leases", func(w http.ResponseWriter, r *http.Request) {
		ls, err := p.Leases(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		if ls == nil {
			ls = []Lease{}
		}
		writeJSON(w, ls)
	})
	mux.HandleFunc("GET /v1/neighbors", func(w http.ResponseWriter, r *http.Request) {
		ns, err := p.Neighbors(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		if ns == nil {
			ns = []Neighbor{}
		}
		writeJSON(w, ns)
	})
	mux.HandleFunc("GET /v1/registrations", func(w http.ResponseWriter, r *http.Request) {
		rs, err := p.Registrations(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		if rs == nil {
			rs = []Registration{}
		}
		writeJSON(w, rs)
	})
	s := &Server{
		path: path,
		ln:   ln,
		log:  log,
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      10 * time.Second,
			MaxHeaderBytes:    16 << 10,
		},
	}
	return s, nil
}

// removeStaleSocket deletes a socket left by a daemon that died, and
// refuses to take over one that still answers or a path that is not a socket.
func removeStaleSocket(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if st.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("control socket path %s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("control socket %s is in use: is another phoneboot running?", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale control socket: %w", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("control API: %w", err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.srv.Shutdown(sctx)
		return nil
	}
}

// Close stops serving and removes the socket.
func (s *Server) Close() error {
	s.srv.Close()
	s.ln.Close() // srv.Close only closes it if Run got to Serve
	if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Client talks to a daemon's control socket.
type Client struct {
	http *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}
	return &Client{http: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// Status fetches the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	return st, c.get(ctx, "/v1/status", &st)
}

// Leases fetches the DHCP leases.
func (c *Client) Leases(ctx context.Context) ([]Lease, error) {
	var ls []Lease
	return ls, c.get(ctx, "/v1/leases", &ls)
}

// Neighbors fetches the CDP and LLDP neighbours.
func (c *Client) Neighbors(ctx context.Context) ([]Neighbor, error) {
	var ns []Neighbor
	return ns, c.get(ctx, "/v1/neighbors", &ns)
}

// Registrations fetches the registration proxy's table.
func (c *Client) Registrations(ctx context.Context) ([]Registration, error) {
	var rs []Registration
	return rs, c.get(ctx, "/v1/registrations", &rs)
}

func (c *Client) get(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://phoneboot"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("control API: %w (is phoneboot running, and are you root?)", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("control API: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("control API %s: %s: %s", path, resp.Status, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("control API %s: bad answer: %w", path, err)
	}
	return nil
}
