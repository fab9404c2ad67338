package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"time"

	"github.com/phoneboot/phoneboot/userspace/tftp"
)

// How a simulated phone fetches a file over TFTP. Protocol timers are
// real time, not scaled by --time-scale: they are the server's to meet
// whatever the storm, and scaling them would only make a loaded server
// look lossy. A request or ACK is sent again after tftpTimeout, up to
// tftpRetries times (RFC 1350 leaves both to the implementation; no public
// source gives Cisco's, so these are a conservative embedded client's);
// then the transfer has failed. A failed transfer (no answer, the server
// busy, a transfer cut off, a file that fails its check) is tried again
// after a pause of 15 to 30 s scaled by --time-scale (the pause is the
// phone's own behaviour, a think time: the only public figure is Mitel's,
// whose phones retry at random 15-30 s intervals to spread a storm), at
// the next server of option 150, until the storm's deadline. "File not
// found" and other errors the server answers are returned at once: they
// are answers, and a phone acts on them.
//
// A model with HTTP provisioning (images.Model.HTTP) asks for each file
// over HTTP on port 6970 first, once per attempt, and over TFTP when that
// fails for any reason, "not found" included.
const (
	tftpTimeout  = 2 * time.Second
	tftpRetries  = 5
	tftpPort     = 69
	httpPort     = 6970
	retryPauseLo = 15 * time.Second
	retryPauseHi = 30 * time.Second
)

// fetcher fetches files for phones. Its fields are what tests replace.
type fetcher struct {
	timeScale float64
	port      uint16 // the servers' TFTP port: 69
	// fetch is tftp.Fetch.
	fetch    func(ctx context.Context, server netip.AddrPort, name string, o tftp.FetchOptions, w io.Writer) (tftp.FetchResult, error)
	httpPort uint16 // the servers' HTTP port: 6970
	// get is an HTTP GET of url into w from the phone (httpGet).
	get func(ctx context.Context, ph *Phone, url string, w io.Writer) (tftp.FetchResult, error)
	// retryPause is the pause before the next attempt, unscaled.
	retryPause func(ph *Phone) time.Duration
}

func newFetcher(timeScale float64) *fetcher {
	return &fetcher{
		timeScale: timeScale,
		port:      tftpPort,
		fetch:     tftp.Fetch,
		httpPort:  httpPort,
		get:       httpGet,
		retryPause: func(ph *Phone) time.Duration {
			return retryPauseLo + time.Duration(ph.rng.Int64N(int64(retryPauseHi-retryPauseLo)))
		},
	}
}

// sink is where a transfer's bytes go; reset discards a failed attempt's.
type sink interface {
	io.Writer
	reset()
}

// fileCheck checks a finished transfer; an error makes the attempt a
// failure to be tried again, a *finalError the end of the fetch.
type fileCheck func(res tftp.FetchResult) error

// finalError is a failure no further attempt will fix.
type finalError struct{ err error }

func (e *finalError) Error() string { return e.err.Error() }
func (e *finalError) Unwrap() error { return e.err }

// errNotFound is a file the server says it does not have.
var errNotFound = errors.New("file not found")

// fetchFile fetches name into s with the phone's TFTP options, trying
// again as described above. A RemoteError other than "not found" or
// "busy" is returned at once, as is a *finalError from s or check;
// errNotFound wraps "not found".
func (f *fetcher) fetchFile(ctx context.Context, ph *Phone, name string, s sink, check fileCheck) (tftp.FetchResult, error) {
	if len(ph.TFTPServers) == 0 {
		return tftp.FetchResult{}, fmt.Errorf("%s: no TFTP server (option 150)", name)
	}
	o := tftp.FetchOptions{
		BlockSize:  ph.Model.TFTP.BlockSize,
		WindowSize: ph.Model.TFTP.WindowSize,
		TSize:      ph.Model.TFTP.TSize,
		Timeout:    tftpTimeout,
		Retries:    tftpRetries,
		Local:      ph.IP,
		Listen:     ph.listen,
	}
	for attempt := 0; ; attempt++ {
		addr := ph.TFTPServers[attempt%len(ph.TFTPServers)]
		server := netip.AddrPortFrom(addr, f.port)
		res, err := f.attempt(ctx, ph, addr, name, o, s, check)
		if err == nil {
			return res, nil
		}
		var re *tftp.RemoteError
		if errors.As(err, &re) {
			switch {
			case re.Code == tftp.ErrFileNotFound:
				return res, fmt.Errorf("%s from %s: %w", name, server.Addr(), errNotFound)
			case re.Code != tftp.ErrUndefined:
				// Access violation, option refused, ...: the server's
				// final answer. Code 0 is "busy": try again.
				return res, fmt.Errorf("%s from %s: %w", name, server.Addr(), err)
			}
		}
		if ctx.Err() != nil {
			return res, fmt.Errorf("%s: %d attempts, the last: %v: %w", name, attempt+1, err, context.Cause(ctx))
		}
		// Anything else is tried again: no answer, a server busy or whose
		// transfer timed out and closed its port (an ICMP port unreachable
		// on the phone's socket: ECONNREFUSED), a file failing its check.
		var fe *finalError
		if errors.As(err, &fe) {
			return res, fmt.Errorf("%s: %w", name, err)
		}
		ph.FetchRetries++
		pause := time.Duration(float64(f.retryPause(ph)) * f.timeScale)
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return res, fmt.Errorf("%s: %d attempts, the last: %v: %w", name, attempt+1, err, context.Cause(ctx))
		}
	}
}

// attempt fetches name once from the server at addr: over HTTP first
// for a model with HTTP provisioning, over TFTP when HTTP fails (a file
// HTTP delivered that fails its check is the attempt's failure: the
// transfer worked, the file is bad), and checks what arrived.
func (f *fetcher) attempt(ctx context.Context, ph *Phone, addr netip.Addr, name string, o tftp.FetchOptions, s sink, check fileCheck) (tftp.FetchResult, error) {
	if ph.Model.HTTP {
		s.reset()
		res, err := f.get(ctx, ph, "http://"+netip.AddrPortFrom(addr, f.httpPort).String()+"/"+name, s)
		if err == nil {
			ph.HTTPFetches++
			if check != nil {
				err = check(res)
			}
			return res, err
		}
		ph.HTTPFallbacks++
	}
	s.reset()
	res, err := f.fetch(ctx, netip.AddrPortFrom(addr, f.port), name, o, s)
	ph.Retransmits += res.Resent
	if err == nil && check != nil {
		err = check(res)
	}
	return res, err
}

// bufferSink keeps a small file (a configuration file, a .loads file) in
// memory, up to max bytes.
type bufferSink struct {
	buf []byte
	max int
}

func (b *bufferSink) Write(p []byte) (int, error) {
	if len(b.buf)+len(p) > b.max {
		return 0, &finalError{fmt.Errorf("file larger than %d bytes", b.max)}
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *bufferSink) reset() { b.buf = b.buf[:0] }

// httpStall is how long the phone's HTTP fetch waits without a byte (for
// the response, then for more of its body) before it gives the transfer
// up and asks over TFTP, as its TFTP fetch gives up after five 1-s
// timeouts in a row. Without it a download that stopped making progress
// (frames dropped at the lab's ports, TCP backing off) waited until the
// storm's deadline: one phone of 10,000, in the middle of a firmware file.
// How long Cisco's phones wait is not published: this is an assumption.
const httpStall = 10 * time.Second

// errHTTPStalled ends a fetch that got nothing for httpStall.
var errHTTPStalled = errors.New("no data")

// httpGet fetches url over the phone's own HTTP client: from its
// interface and address, one connection kept open between requests.
// Anything but 200 is an error (the phone then asks over TFTP).
func httpGet(ctx context.Context, ph *Phone, url string, w io.Writer) (tftp.FetchResult, error) {
	res, err := httpGetWith(ctx, ph.httpClient(), url, w, httpStall)
	if errors.Is(err, errHTTPStalled) {
		ph.HTTPStalls++
	}
	return res, err
}

// httpGetWith is httpGet with the client and the stall timeout given.
func httpGetWith(ctx context.Context, c *http.Client, url string, w io.Writer, stall time.Duration) (tftp.FetchResult, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(stall, func() { cancel(errHTTPStalled) })
	defer idle.Stop()
	stalled := func(err error) error {
		if errors.Is(context.Cause(ctx), errHTTPStalled) {
			return fmt.Errorf("HTTP: %w for %s", errHTTPStalled, stall)
		}
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return tftp.FetchResult{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return tftp.FetchResult{}, stalled(err)
	}
	defer resp.Body.Close()
	body := &progressReader{r: resp.Body, idle: idle, stall: stall}
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(body, 64<<10)) // keep the connection
		return tftp.FetchResult{}, fmt.Errorf("HTTP %s", resp.Status)
	}
	n, err := io.Copy(w, body)
	// TSize plays Content-Length's part in the checks: the size the
	// server announced.
	return tftp.FetchResult{Bytes: n, TSize: resp.ContentLength}, stalled(err)
}

// progressReader restarts the stall timer whenever bytes arrive.
type progressReader struct {
	r     io.Reader
	idle  *time.Timer
	stall time.Duration
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.idle.Reset(p.stall)
	}
	return n, err
}
