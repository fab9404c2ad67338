package lab

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestHTTPGetStall: the phone's HTTP fetch gives up a transfer that stops
// (before the response, or in the middle of the body) after the stall
// time without data, and not one that keeps trickling in slower than
// that in all. On loopback.
func TestHTTPGetStall(t *testing.T) {
	const stall = 300 * time.Millisecond
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f := w.(http.Flusher)
		switch r.URL.Path {
		case "/silent": // the request taken, no response
			<-release
		case "/half": // half the body, then nothing
			w.Header().Set("Content-Length", "8")
			w.Write([]byte("abcd"))
			f.Flush()
			<-release
		case "/trickle": // a byte every stall/3, 12 in all: 4 stalls long
			w.Header().Set("Content-Length", "12")
			for range 12 {
				w.Write([]byte("x"))
				f.Flush()
				time.Sleep(stall / 3)
			}
		}
	}))
	defer srv.Close()
	defer close(release) // before Close, which waits for the handlers
	for _, tt := range []struct {
		path    string
		stalled bool
		got     string
	}{
		{"/silent", true, ""},
		{"/half", true, "abcd"},
		{"/trickle", false, strings.Repeat("x", 12)},
	} {
		t.Run(tt.path[1:], func(t *testing.T) {
			var buf bytes.Buffer
			start := time.Now()
			res, err := httpGetWith(context.Background(), srv.Client(), srv.URL+tt.path, &buf, stall)
			took := time.Since(start)
			if got := errors.Is(err, errHTTPStalled); got != tt.stalled {
				t.Fatalf("err %v after %v: stalled %v, want %v", err, took, got, tt.stalled)
			}
			if buf.String() != tt.got {
				t.Errorf("got %q, want %q", buf.String(), tt.got)
			}
			if tt.stalled && (took < stall || took > 5*stall) {
				t.Errorf("gave up after %v, want about %v", took, stall)
			}
			if !tt.stalled && res.Bytes != 12 {
				t.Errorf("%d bytes", res.Bytes)
			}
		})
	}
}
