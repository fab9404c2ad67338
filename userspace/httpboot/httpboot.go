// Package httpboot serves the boot files over HTTP on port 6970, where
// Cisco phones (and CUCM's TFTP service) look first before falling back to
// TFTP: the same namespace, file names as URL paths. Files on disk go out
// with sendfile (http.ServeContent over the *os.File, which net/http hands
// to the TCP connection's ReadFrom); generated files from their bytes.
// Range and If-Modified-Since come with ServeContent.
package httpboot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/phoneboot/phoneboot/userspace/bootfiles"
)

// Config of the server. Zero values take the defaults named.
type Config struct {
	Addr   netip.AddrPort // default [::]:6970 (IPv4 too)
	Source bootfiles.Source

	// MaxConns open at once; default 4096. Past it a connection gets a
	// 503 to its request and is closed (CUCM's TFTP service answers 503
	// when full; the phone falls back to TFTP or retries); past 64 such
	// answers in progress, it is closed without one.
	MaxConns int
	// ReadHeaderTimeout for a request's headers; default 5 s (slow
	// header writers hold no connection longer).
	ReadHeaderTimeout time.Duration
	// WriteTimeout for a whole response; default 10 min (a 30 MB load
	// over a slow, busy link).
	WriteTimeout time.Duration
	// IdleTimeout of a kept-alive connection between requests; default
	// 30 s.
	IdleTimeout time.Duration
	// ShutdownGrace: how long Run waits for responses in progress when
	// its context ends; default 5 s.
	ShutdownGrace time.Duration
}

// Stats counts requests since New. Every request lands in exactly one of
// the status counters.
type Stats struct {
	Requests         uint64 `json:"requests"`
	OK               uint64 `json:"ok"`                 // 200
	Partial          uint64 `json:"partial"`            // 206
	NotModified      uint64 `json:"not_modified"`       // 304
	NotFound         uint64 `json:"not_found"`          // 404
	Forbidden        uint64 `json:"forbidden"`          // 403
	MethodNotAllowed uint64 `json:"method_not_allowed"` // 405
	OtherStatus      uint64 `json:"other_status"`       // 416, 412, 400 from ServeContent
	SourceErrors     uint64 `json:"source_errors"`      // 500
	// Bytes of bodies written; SendfileBytes of them went through the
	// connection's ReadFrom from a file (sendfile), the rest were copied.
	Bytes         uint64 `json:"bytes"`
	SendfileBytes uint64 `json:"sendfile_bytes"`
	Conns         int64  `json:"conns"`          // open now
	ConnsRejected uint64 `json:"conns_rejected"` // over MaxConns: 503
}

type counters struct {
	requests, ok, partial, notModified, notFound, forbidden atomic.Uint64
	methodNotAllowed, otherStatus, sourceErrors             atomic.Uint64
	bytes, sendfileBytes, connsRejected                     atomic.Uint64
	conns                                                   atomic.Int64
}

// Server is the HTTP file service.
type Server struct {
	cfg  Config
	log  *slog.Logger
	ln   net.Listener
	srv  *http.Server
	c    counters
	once sync.Once
}

// New binds the listening socket (in the calling thread's network
// namespace); Run serves it.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("httpboot: a source is required")
	}
	if !cfg.Addr.IsValid() {
		cfg.Addr = netip.MustParseAddrPort("[::]:6970")
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 4096
	}
	if cfg.MaxConns < 1 {
		return nil, fmt.Errorf("httpboot: max conns %d", cfg.MaxConns)
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&cfg.ReadHeaderTimeout, 5 * time.Second}, {&cfg.WriteTimeout, 10 * time.Minute}, {&cfg.IdleTimeout, 30 * time.Second}, {&cfg.ShutdownGrace, 5 * time.Second}} {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	ln, err := net.Listen("tcp", cfg.Addr.String())
	if err != nil {
		return nil, fmt.Errorf("httpboot: listen on %s: %w", cfg.Addr, err)
	}
	s := &Server{cfg: cfg, log: log}
	s.ln = &limitListener{Listener: ln, s: s, slots: make(chan struct{}, cfg.MaxConns), rejecting: make(chan struct{}, 64)}
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    8 << 10, // a GET for a file name; nothing needs more
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// Addr is the address listened on (the port chosen when configured as 0).
func (s *Server) Addr() netip.AddrPort {
	return s.ln.Addr().(*net.TCPAddr).AddrPort()
}

// Run serves until ctx is done or Close is called; at the end of ctx it
// lets responses in progress finish for ShutdownGrace.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("httpboot: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownGrace)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		s.srv.Close()
	}
	<-errc
	return nil
}

// Close stops the server at once.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		err = errors.Join(s.srv.Close(), s.ln.Close())
		if errors.Is(err, net.ErrClosed) {
			err = nil
		}
	})
	return err
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	c := &s.c
	return Stats{
		Requests: c.requests.Load(), OK: c.ok.Load(), Partial: c.partial.Load(), NotModified: c.notModified.Load(),
		NotFound: c.notFound.Load(), Forbidden: c.forbidden.Load(), MethodNotAllowed: c.methodNotAllowed.Load(),
		OtherStatus: c.otherStatus.Load(), SourceErrors: c.sourceErrors.Load(),
		Bytes: c.bytes.Load(), SendfileBytes: c.sendfileBytes.Load(),
		Conns: c.conns.Load(), ConnsRejected: c.connsRejected.Load(),
	}
}

// ServeHTTP answers GET and HEAD for a file of the namespace.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.c.requests.Add(1)
	cw := &countingWriter{ResponseWriter: w, s: s}
	defer cw.count()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(cw, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	client, _ := netip.ParseAddrPort(r.RemoteAddr)
	f, err := s.cfg.Source.Open(r.Context(), bootfiles.Request{Name: r.URL.Path, Client: client, Protocol: "http"})
	if err != nil {
		switch {
		case errors.Is(err, bootfiles.ErrNotFound):
			http.Error(cw, "not found", http.StatusNotFound)
		case errors.Is(err, bootfiles.ErrForbidden):
			http.Error(cw, "forbidden", http.StatusForbidden)
		default:
			s.log.Warn("httpboot: open", "path", r.URL.Path, "client", r.RemoteAddr, "error", err)
			http.Error(cw, "cannot read file", http.StatusInternalServerError)
		}
		return
	}
	defer f.Close()
	// Set the type from the name: ServeContent would otherwise read the
	// first 512 bytes to sniff it, copying them instead of sendfile.
	ctype := mime.TypeByExtension(path.Ext(r.URL.Path))
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	w.Header().Set("Content-Type", ctype)
	var content io.ReadSeeker
	if osf := f.OS(); osf != nil {
		content = osf
	} else {
		content = &guardedReader{bytes.NewReader(f.Bytes())}
	}
	http.ServeContent(cw, r, path.Base(r.URL.Path), f.ModTime(), content)
}

// guardedReader reads content that may be a file's mapping: if the file
// shrank under it, the read faults, and SetPanicOnFault turns that into an
// error for this response instead of a crash of the daemon. Only Read and
// Seek: an io.WriterTo would let a copy read around the guard.
type guardedReader struct{ r *bytes.Reader }

func (r *guardedReader) Seek(off int64, whence int) (int64, error) { return r.r.Seek(off, whence) }

func (r *guardedReader) Read(b []byte) (n int, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			if f, ok := p.(interface{ Addr() uintptr }); ok {
				n, err = 0, fmt.Errorf("httpboot: memory fault at %#x reading the content", f.Addr())
				return
			}
			panic(p)
		}
	}()
	return r.r.Read(b)
}

// countingWriter counts status and body bytes, and passes ReadFrom
// through so that net/http still sends files with sendfile.
type countingWriter struct {
	http.ResponseWriter
	s      *Server
	status int
}

func (w *countingWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.s.c.bytes.Add(uint64(n))
	return n, err
}

func (w *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.(io.ReaderFrom).ReadFrom(r)
	w.s.c.bytes.Add(uint64(n))
	if lr, ok := r.(*io.LimitedReader); ok {
		r = lr.R
	}
	if _, ok := r.(*os.File); ok {
		w.s.c.sendfileBytes.Add(uint64(n))
	}
	return n, err
}

func (w *countingWriter) count() {
	c := &w.s.c
	switch w.status {
	case http.StatusOK, 0:
		c.ok.Add(1)
	case http.StatusPartialContent:
		c.partial.Add(1)
	case http.StatusNotModified:
		c.notModified.Add(1)
	case http.StatusNotFound:
		c.notFound.Add(1)
	case http.StatusForbidden:
		c.forbidden.Add(1)
	case http.StatusMethodNotAllowed:
		c.methodNotAllowed.Add(1)
	case http.StatusInternalServerError:
		c.sourceErrors.Add(1)
	default:
		c.otherStatus.Add(1)
	}
}

// limitListener holds at most cap(slots) connections open; one more is
// answered 503 and closed.
type limitListener struct {
	net.Listener
	s     *Server
	slots chan struct{}
	// rejecting bounds the connections being answered 503 at once.
	rejecting chan struct{}
}

var busyResponse = []byte("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			l.s.c.conns.Add(1)
			return &limitedConn{Conn: c, l: l}, nil
		default:
			l.s.c.connsRejected.Add(1)
			select {
			case l.rejecting <- struct{}{}:
				go func() {
					defer func() { <-l.rejecting }()
					reject(c)
				}()
			default:
				c.Close() // a flood of connections: no answer at all
			}
		}
	}
}

// reject answers 503 to the request on c: after the request (a response
// that comes before it confuses clients), and within 200 ms whatever the
// client does.
func reject(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 4096)
	var got []byte
	for len(got) < len(buf) && !bytes.Contains(got, []byte("\r\n\r\n")) {
		n, err := c.Read(buf[len(got):])
		got = buf[:len(got)+n]
		if err != nil {
			break
		}
	}
	c.Write(busyResponse)
}

type limitedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		<-c.l.slots
		c.l.s.c.conns.Add(-1)
	})
	return err
}

// ReadFrom keeps the TCP connection's ReadFrom (sendfile) reachable
// through the wrapper.
func (c *limitedConn) ReadFrom(r io.Reader) (int64, error) {
	return c.Conn.(io.ReaderFrom).ReadFrom(r)
}
