package lab

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/phoneboot/phoneboot/images"
)

// Cisco OUIs seen on IP phones; the lab spreads its phones across them.
var ciscoOUIs = [][3]byte{
	{0x00, 0x1e, 0x7a},
	{0x00, 0x26, 0x0b},
	{0x70, 0xdb, 0x98},
	{0x2c, 0x3e, 0xcf},
}

// Phone is one simulated IP phone.
type Phone struct {
	Name  string // SEP followed by the MAC in upper-case hex, as CUCM names devices
	MAC   net.HardwareAddr
	Model images.Model
	Load  string // the firmware load stored on the phone
	Port  *Port  // the switch port it is plugged into

	// Learned during the boot.
	VoiceVLAN   uint16       // from CDP
	IP          netip.Addr   // from DHCP
	Subnet      netip.Prefix // from DHCP
	TFTPServers []netip.Addr // option 150
	Retransmits int          // CDP, DHCP and TFTP messages sent again for want of an answer
	// FetchRetries are TFTP transfers tried again after a failure.
	FetchRetries int
	// HTTPFetches are files it got over HTTP on 6970; HTTPFallbacks are
	// files it then asked over TFTP because HTTP failed, HTTPStalls those
	// of them whose transfer stopped (httpStall).
	HTTPFetches, HTTPFallbacks, HTTPStalls int
	// Config is what it kept from its configuration file.
	Config *phoneConfig
	// Upgraded is set when it fetched and checked a new load.
	Upgraded bool
	// Reboots counts the times it lost power after it was first powered.
	Reboots int

	// held is the address it uses, from its ACK until it loses power, for
	// the lease integrity check (read while the phone runs).
	held atomic.Pointer[heldAddress]
	// powered is set from power on until the power goes, failed when it
	// has failed: for the faults, which count the phones they hit.
	powered, failed atomic.Bool
	// session is its port's power session, from power on (nil before).
	session context.Context
	// nicAddr is the address on its interface while it is up.
	nicAddr netip.Prefix
	// regDone is closed when its registration (kept alive after the
	// register phase) has ended.
	regDone chan struct{}

	index    int    // its number in the lab, from 0
	bootLoad string // the load it booted with
	nicIndex int    // its interface's index in the port's namespace
	// listen opens its UDP sockets; nil is net.ListenUDP (tests).
	listen func(network string, laddr *net.UDPAddr) (*net.UDPConn, error)
	http   *http.Client // made on first use (httpClient)
	// dhcpWire is the time its DHCP exchanges took on the wire and in
	// the server (dhcpPhase.WireTime).
	dhcpWire time.Duration
	rng      *rand.Rand
}

// httpClient is the phone's HTTP client: its connections are made from
// its interface and address, and one is kept open between requests.
func (ph *Phone) httpClient() *http.Client {
	if ph.http == nil {
		dial := dialTCP(ph)
		ph.http = &http.Client{Transport: &http.Transport{
			DialContext:         func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) },
			MaxIdleConnsPerHost: 1,
			DisableCompression:  true,
			Proxy:               nil, // never the environment's proxy: the lab's network is its own
		}}
	}
	return ph.http
}

// closeHTTP closes the phone's kept connection: it fetches nothing more
// once provisioned, and a storm's phones would hold thousands of them.
func (ph *Phone) closeHTTP() {
	if ph.http != nil {
		ph.http.CloseIdleConnections()
	}
}

func newPhone(index int, model images.Model, port *Port, seed uint64) *Phone {
	oui := ciscoOUIs[index%len(ciscoOUIs)]
	n := index / len(ciscoOUIs)
	mac := net.HardwareAddr{oui[0], oui[1], oui[2], byte(n >> 16), byte(n >> 8), byte(n)}
	return &Phone{
		Name:     "SEP" + strings.ToUpper(strings.ReplaceAll(mac.String(), ":", "")),
		MAC:      mac,
		Model:    model,
		Load:     model.Load,
		Port:     port,
		index:    index,
		bootLoad: model.Load,
		rng:      rand.New(rand.NewPCG(seed, uint64(index))),
	}
}

// wireTimed is a phase whose latency in the report is the time it spent
// on the wire and in the servers, as the phone's kernel timestamps tell,
// rather than the wall time it took the simulated phone.
type wireTimed interface {
	WireTime(ph *Phone) time.Duration
}

// Phase is one step of a phone's boot. Phases run in order; a phone that
// fails one stops there. Adding a phase means implementing this and adding
// it to the list in (*lab).phases.
type Phase interface {
	Name() string
	Run(ctx context.Context, ph *Phone) error
}

// powerPhase waits until the switch powers the phone's port, seen as the
// phone's side of the link coming up; the phone then runs until the power
// goes (its session ends).
type powerPhase struct{}

func (powerPhase) Name() string { return "power" }

func (powerPhase) Run(ctx context.Context, ph *Phone) error {
	session, err := ph.Port.power.wait(ctx)
	if err != nil {
		return fmt.Errorf("port %s was not powered: %w", ph.Port.Name, err)
	}
	ph.session = session
	return nil
}

// bootPhase loads the stored image: the model's boot time, scaled, with
// +-10% per phone so that a storm does not move in lockstep.
type bootPhase struct{ timeScale float64 }

func (bootPhase) Name() string { return "boot" }

func (b bootPhase) Run(ctx context.Context, ph *Phone) error {
	jitter := 0.9 + 0.2*ph.rng.Float64()
	d := time.Duration(float64(ph.Model.BootTime()) * b.timeScale * jitter)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("boot interrupted: %w", context.Cause(ctx))
	}
}

// phases lists the phases the lab runs, in order.
func (l *lab) phases() []Phase {
	f := newFetcher(l.o.TimeScale)
	return []Phase{
		powerPhase{},
		bootPhase{timeScale: l.o.TimeScale},
		cdpPhase{timeScale: l.o.TimeScale, tagger: l.tagger},
		dhcpPhase{timeScale: l.o.TimeScale, subnetOf: l.o.subnetOf},
		configPhase{f: f, bringUp: l.bringUpPhone},
		firmwarePhase{f: f, bytes: &l.firmwareBytes, log: l.o.Log},
		registerPhase{phones: l.phonesCtx, dial: dialTCP, stats: &l.registrations},
	}
}
