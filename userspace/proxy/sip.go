package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
)

// maxSIPHeader bounds a SIP message's start line and headers. A Cisco
// phone's REGISTER is 1-2 KiB; anything this large is no phone.
const maxSIPHeader = 16 << 10

var errSIPMalformed = errors.New("malformed SIP message")

// sipMessage is what the proxy reads of a SIP message's head.
type sipMessage struct {
	method     string // for a request
	status     int    // for a response
	cseqMethod string
	to         string // the To URI: the address of record
	contact    string // the Contact URI
	device     string // +u.sip!devicename.ccm.cisco.com from Contact, Cisco phones only
	bodyLen    int    // Content-Length
}

// sipHead finds a whole head (start line and headers) at the start of b,
// after any CRLF keepalives. n is its length with the blank line, 0 if b
// holds only part of one; skip is the keepalive bytes before it.
func sipHead(b []byte) (head []byte, skip, n int, err error) {
	for skip < len(b) && (b[skip] == '\r' || b[skip] == '\n') {
		skip++
	}
	b = b[skip:]
	i := bytes.Index(b, []byte("\r\n\r\n"))
	if i < 0 {
		if len(b) > maxSIPHeader {
			return nil, skip, 0, fmt.Errorf("%w: head longer than %d bytes", errSIPMalformed, maxSIPHeader)
		}
		return nil, skip, 0, nil
	}
	if i > maxSIPHeader {
		return nil, skip, 0, fmt.Errorf("%w: head longer than %d bytes", errSIPMalformed, maxSIPHeader)
	}
	return b[:i], skip, i + 4, nil
}

// parseSIPHead reads the start line and the headers the proxy uses.
func parseSIPHead(head []byte) (*sipMessage, error) {
	lines := strings.Split(string(head), "\r\n")
	m := &sipMessage{}
	start := strings.Fields(lines[0])
	if len(start) < 3 {
		return nil, fmt.Errorf("%w: start line %q", errSIPMalformed, clip(lines[0]))
	}
	if strings.HasPrefix(start[0], "SIP/2.0") {
		code, err := strconv.Atoi(start[1])
		if err != nil || code < 100 || code > 699 {
			return nil, fmt.Errorf("%w: status %q", errSIPMalformed, clip(start[1]))
		}
		m.status = code
	} else {
		if start[2] != "SIP/2.0" {
			return nil, fmt.Errorf("%w: version %q", errSIPMalformed, clip(start[2]))
		}
		m.method = start[0]
	}
	for _, l := range lines[1:] {
		name, value, ok := strings.Cut(l, ":")
		if !ok {
			continue // a folded line or junk: not a header the proxy needs
		}
		value = strings.TrimSpace(value)
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "to", "t":
			m.to = sipURI(value)
		case "contact", "m":
			m.contact = sipURI(value)
			m.device = contactParam(value, "+u.sip!devicename.ccm.cisco.com")
		case "cseq":
			if f := strings.Fields(value); len(f) == 2 {
				m.cseqMethod = f[1]
			}
		case "content-length", "l":
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 || n > 1<<20 {
				return nil, fmt.Errorf("%w: Content-Length %q", errSIPMalformed, clip(value))
			}
			m.bodyLen = n
		}
	}
	return m, nil
}

// sipURI is the URI of a To/From/Contact value: between < and > when
// there are brackets, else up to the first parameter.
func sipURI(v string) string {
	if i := strings.IndexByte(v, '<'); i >= 0 {
		if j := strings.IndexByte(v[i:], '>'); j > 0 {
			return clip(v[i+1 : i+j])
		}
	}
	if i := strings.IndexByte(v, ';'); i >= 0 {
		v = v[:i]
	}
	return clip(strings.TrimSpace(v))
}

// contactParam is a quoted parameter's value in a Contact header.
func contactParam(v, name string) string {
	i := strings.Index(v, name+"=")
	if i < 0 {
		return ""
	}
	v = strings.TrimPrefix(v[i+len(name)+1:], `"`)
	if j := strings.IndexAny(v, `";>`); j >= 0 {
		v = v[:j]
	}
	return clip(v)
}

// clip bounds what a peer can make the proxy store or log.
func clip(s string) string {
	const max = 128
	if len(s) > max {
		return s[:max]
	}
	return s
}

// sipWatch follows the responses a CallManager sends on a SIP connection
// until the REGISTER's final answer: 2xx registers, 401/407 is a
// challenge the phone answers with a new REGISTER (watched the same way),
// any other final answer rejects.
type sipWatch struct {
	pending int // body bytes of the current message still to skip
}

// feed consumes b and reports the first final answer to REGISTER it
// finds; the returned n says how much of b it consumed, so the caller
// keeps the rest for the next call.
func (w *sipWatch) feed(b []byte) (n, status int, err error) {
	for {
		if w.pending > 0 {
			k := min(w.pending, len(b)-n)
			w.pending -= k
			n += k
			if w.pending > 0 {
				return n, 0, nil
			}
		}
		head, skip, hn, err := sipHead(b[n:])
		if err != nil {
			return n, 0, err
		}
		if hn == 0 {
			return n + skip, 0, nil
		}
		m, err := parseSIPHead(head)
		if err != nil {
			return n, 0, err
		}
		n += skip + hn
		w.pending = m.bodyLen
		if m.status >= 200 && m.cseqMethod == "REGISTER" && m.status != 401 && m.status != 407 {
			// Skip this response's body before handing over.
			k := min(w.pending, len(b)-n)
			w.pending -= k
			return n + k, m.status, nil
		}
	}
}

// maxSIPStatusLine bounds what the OPTIONS probe reads of an answer
// before its status line ends.
const maxSIPStatusLine = 1024

// probeSIPOptions sends OPTIONS over c, whose deadline the caller set,
// and waits for a status line: any code passes, as any answer shows the
// SIP service alive. The request has what RFC 3261 asks of one (Via, Max-
// Forwards, From, To, Call-ID, CSeq) and nothing that would need state.
func probeSIPOptions(c net.Conn, host string, port int) error {
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return fmt.Errorf("OPTIONS probe over %T", c.LocalAddr())
	}
	id := strconv.FormatUint(rand.Uint64(), 36)
	target := "sip:" + net.JoinHostPort(host, strconv.Itoa(port))
	req := "OPTIONS " + target + " SIP/2.0\r\n" +
		"Via: SIP/2.0/TCP " + local.String() + ";branch=z9hG4bK" + id + "\r\n" +
		"Max-Forwards: 70\r\n" +
		"From: <sip:phoneboot@" + uriHost(local.IP) + ">;tag=" + id + "\r\n" +
		"To: <" + target + ">\r\n" +
		"Call-ID: " + id + "@phoneboot\r\n" +
		"CSeq: 1 OPTIONS\r\n" +
		"Content-Length: 0\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		return err
	}
	r := bufio.NewReader(io.LimitReader(c, maxSIPStatusLine))
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) && len(line) > 0 {
				err = fmt.Errorf("no status line in the first %d bytes", maxSIPStatusLine)
			}
			return fmt.Errorf("OPTIONS: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			continue // a CRLF keepalive
		}
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "SIP/2.0" {
			if code, err := strconv.Atoi(f[1]); err == nil && code >= 100 && code <= 699 {
				// A registrar that answers 503 or 408 is up but cannot
				// serve: down, as Cisco's SIP OPTIONS ping counts it.
				if code == 503 || code == 408 {
					return fmt.Errorf("OPTIONS answered %q", clip(line))
				}
				return nil
			}
		}
		return fmt.Errorf("OPTIONS answered with %q, not a SIP status line", clip(line))
	}
}

// uriHost is an address as a SIP URI's host: IPv6 in brackets.
func uriHost(ip net.IP) string {
	if ip.To4() == nil {
		return "[" + ip.String() + "]"
	}
	return ip.String()
}
