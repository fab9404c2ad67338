package proxy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/phoneboot/phoneboot/userspace/privtest"
)

// TestTLSPassthrough: on the TLS ports the proxy relays the handshake and
// the records untouched: the phone sees the CallManager's own
// certificate, and what it sends arrives.
func TestTLSPassthrough(t *testing.T) {
	privtest.RequireNetNS(t)
	pip, cmIP := testNet()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "cucm1.example"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", cmIP(0)+":2443", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b := make([]byte, 5)
				if _, err := io.ReadFull(c, b); err == nil { // health probes send nothing
					got <- b
					c.Write([]byte("olleh"))
				}
			}()
		}
	}()
	p := runProxy(t, Config{
		Listeners:    []Listener{{Protocol: SCCPTLS, Addr: pip + ":0", UpstreamPort: 2443}},
		CallManagers: []CallManager{{Name: "cucm1", Host: cmIP(0)}},
		Health:       HealthConfig{Probe: ProbeTCP, Port: 2443},
	})

	raw, err := net.DialTimeout("tcp", p.Addrs()[0].String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, ServerName: "cucm1.example"})
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	if certs := c.ConnectionState().PeerCertificates; len(certs) != 1 || !bytes.Equal(certs[0].Raw, der) {
		t.Fatal("the phone did not see the CallManager's own certificate")
	}
	regs := p.Registrations()
	if len(regs) != 1 || regs[0].Protocol != SCCPTLS || regs[0].State != StateConnected || regs[0].CallManager != "cucm1" {
		t.Errorf("table %+v", regs)
	}
	c.Write([]byte("hello"))
	select {
	case b := <-got:
		if string(b) != "hello" {
			t.Errorf("CallManager got %q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing arrived")
	}
	reply := make([]byte, 5)
	if _, err := io.ReadFull(c, reply); err != nil || string(reply) != "olleh" {
		t.Errorf("reply %q, %v", reply, err)
	}
}
