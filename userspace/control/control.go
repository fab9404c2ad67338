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
	"net/url"
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

// PoEStatus is the power manager's budget and ports, as `phoneboot poe
// status` shows them.
type PoEStatus struct {
	Policy          string    `json:"policy"`
	Accounting      string    `json:"accounting"`
	BudgetMW        int       `json:"budget_mw"` // 0: no limit
	AllocatedMW     int       `json:"allocated_mw"`
	DrawnMW         int       `json:"drawn_mw"`
	RequestsGranted uint64    `json:"requests_granted"` // CDP/LLDP power requests
	RequestsRefused uint64    `json:"requests_refused"`
	AdaptiveHolds   uint64    `json:"adaptive_holds"`
	Ports           []PoEPort `json:"ports"`
}

// PoEPort is one managed PoE port.
type PoEPort struct {
	Port        string `json:"port"`
	State       string `json:"state"` // disabled, searching, delivering, fault
	Class       int    `json:"class"` // -1: not classified
	PowerMW     int    `json:"power_mw"`
	LimitMW     int    `json:"limit_mw,omitempty"`
	Fault       string `json:"fault,omitempty"`
	Enabled     bool   `json:"enabled"` // wanted on
	Priority    string `json:"priority"`
	AllocatedMW int    `json:"allocated_mw"`
	Held        string `json:"held,omitempty"` // why a wanted port is off
	RequestedMW int    `json:"requested_mw,omitempty"`
	GrantedMW   int    `json:"granted_mw,omitempty"`
}

// Load is what the services have queued: the signals the adaptive power
// policy paces the storm by.
type Load struct {
	DHCPBacklog int `json:"dhcp_backlog"`
	TFTPActive  int `json:"tftp_active"`
	ProxyQueued int `json:"proxy_queued"`
}

// PoE actions a client may ask for.
const (
	PoEEnable   = "enable"
	PoEDisable  = "disable"
	PoECycle    = "cycle"
	PoEPriority = "priority" // with the priority as argument
)

// Errors a Provider wraps to give the client the right HTTP status.
var (
	ErrNotFound    = errors.New("not found")                 // 404
	ErrUnavailable = errors.New("not enabled on the daemon") // 503
	ErrBadRequest  = errors.New("bad request")               // 400
)

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
	// AOR and Contact are a SIP REGISTER's To and Contact URIs: the
	// address of record, and where the phone is reached.
	AOR     string `json:"aor,omitempty"`
	Contact string `json:"contact,omitempty"`
}

// Provider answers the API's questions.
type Provider interface {
	Status(ctx context.Context) Status
	// Leases lists the DHCP leases; an error if DHCP is off.
	Leases(ctx context.Context) ([]Lease, error)
	// Neighbors lists the CDP and LLDP neighbours; an error if discovery is off.
	Neighbors(ctx context.Context) ([]Neighbor, error)
	// PoE reports the power manager; an error if power management is off.
	PoE(ctx context.Context) (PoEStatus, error)
	// PoEAction carries out an operator's action on a port (arg is the
	// priority for PoEPriority) and returns the port afterwards.
	PoEAction(ctx context.Context, port, action, arg string) (PoEPort, error)
	// Load reports the services' queues.
	Load(ctx context.Context) Load
	// Registrations lists the registration proxy's sessions; an error if
	// the proxy is off.
	Registrations(ctx context.Context) ([]Registration, error)
}

// errorStatus is the HTTP status for a Provider's error.
func errorStatus(err error) int {
	switch {
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
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
	mux.HandleFunc("GET /v1/poe", func(w http.ResponseWriter, r *http.Request) {
		st, err := p.PoE(r.Context())
		if err != nil {
			http.Error(w, err.Error(), errorStatus(err))
			return
		}
		if st.Ports == nil {
			st.Ports = []PoEPort{}
		}
		writeJSON(w, st)
	})
	poeAction := func(w http.ResponseWriter, r *http.Request, action, arg string) {
		port, err := p.PoEAction(r.Context(), r.PathValue("port"), action, arg)
		if err != nil {
			http.Error(w, err.Error(), errorStatus(err))
			return
		}
		writeJSON(w, port)
	}
	mux.HandleFunc("POST /v1/poe/{port}/{action}", func(w http.ResponseWriter, r *http.Request) {
		switch a := r.PathValue("action"); a {
		case PoEEnable, PoEDisable, PoECycle:
			poeAction(w, r, a, "")
		default:
			http.Error(w, fmt.Sprintf("unknown PoE action %q (enable, disable, cycle, priority/LEVEL)", a), http.StatusNotFound)
		}
	})
	mux.HandleFunc("POST /v1/poe/{port}/priority/{level}", func(w http.ResponseWriter, r *http.Request) {
		poeAction(w, r, PoEPriority, r.PathValue("level"))
	})
	mux.HandleFunc("GET /v1/load", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, p.Load(r.Context()))
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

// PoE fetches the power manager's status.
func (c *Client) PoE(ctx context.Context) (PoEStatus, error) {
	var st PoEStatus
	return st, c.get(ctx, "/v1/poe", &st)
}

// PoEAction asks for an action on a PoE port (arg: the priority for
// PoEPriority) and returns the port afterwards.
func (c *Client) PoEAction(ctx context.Context, port, action, arg string) (PoEPort, error) {
	var p PoEPort
	path := "/v1/poe/" + url.PathEscape(port) + "/" + url.PathEscape(action)
	if action == PoEPriority {
		path += "/" + url.PathEscape(arg)
	}
	return p, c.do(ctx, http.MethodPost, path, &p)
}

// Load fetches the services' queues.
func (c *Client) Load(ctx context.Context) (Load, error) {
	var l Load
	return l, c.get(ctx, "/v1/load", &l)
}

// Registrations fetches the registration proxy's table.
func (c *Client) Registrations(ctx context.Context) ([]Registration, error) {
	var rs []Registration
	return rs, c.get(ctx, "/v1/registrations", &rs)
}

func (c *Client) get(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodGet, path, out)
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://phoneboot"+path, nil)
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
