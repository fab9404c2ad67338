package dhcp

import (
	"sync/atomic"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Action is what Handle did with a request.
type Action uint8

const (
	// Answered: Reply is to be sent (an OFFER, ACK or NAK).
	Answered Action = iota + 1
	// Silent: the request was handled and needs no reply (RELEASE,
	// DECLINE, a REQUEST that chose another server).
	Silent
	// Dropped: the request was refused; Reason says why.
	Dropped
)

func (a Action) String() string {
	switch a {
	case Answered:
		return "answered"
	case Silent:
		return "silent"
	case Dropped:
		return "dropped"
	}
	return "invalid"
}

// Outcome is the result of one request: the action and a reason from the
// fixed sets below (see Reasons), meant for metric labels.
type Outcome struct {
	Action Action
	Reason string
}

func (o Outcome) String() string { return o.Action.String() + "/" + o.Reason }

// Reasons of Answered outcomes: the message sent.
const (
	ReasonOffer = "offer"
	ReasonAck   = "ack"
	ReasonNak   = "nak"
)

// Reasons of Silent outcomes. ReasonNotOurServer is also a Dropped
// reason (a RELEASE or DECLINE naming another server).
const (
	ReasonNotOurServer = "not-our-server" // REQUEST in SELECTING for another server's offer
	ReasonReleased     = "released"
	ReasonDeclined     = "declined"
)

// Reasons of Dropped outcomes.
const (
	ReasonStale             = "stale"                     // waited in the socket longer than ServerConfig.MaxRequestAge: shed under overload
	ReasonParseFailed       = "parse-failed"              // malformed (Kea pkt4-parse-failed)
	ReasonRateLimited       = "rate-limited"              // over the port's packet rate
	ReasonServerMessage     = "server-message-from-port"  // BOOTREPLY or OFFER/ACK/NAK/... from a client port: a rogue server
	ReasonUnknownType       = "unknown-message-type"      // option 53 not DISCOVER..INFORM
	ReasonNotForUs          = "not-for-us"                // unicast to an address that is not ours
	ReasonChaddrMismatch    = "chaddr-mismatch"           // VerifyClientMAC: chaddr is not the frame's source
	ReasonNoPool            = "no-pool"                   // no pool for the VLAN or giaddr
	ReasonPoolExhausted     = "pool-exhausted"            // no free address
	ReasonPortLeaseLimit    = "port-lease-limit"          // MaxLeasesPerPort reached
	ReasonDeclineLimit      = "decline-limit"             // MaxDeclinesPerPort reached
	ReasonWrongPort         = "wrong-port"                // RELEASE/DECLINE from a port other than the lease's
	ReasonNotOwner          = "not-owner"                 // RELEASE/DECLINE by a MAC that does not hold the address
	ReasonUnknownClient     = "unknown-client"            // RELEASE/DECLINE of an address with no active lease
	ReasonNotRequestingAddr = "not-requesting-an-address" // REQUEST naming no address (no 50, no ciaddr)
	ReasonRFCViolation      = "rfc-violation"             // RELEASE/INFORM without ciaddr, DECLINE without 50
	ReasonProcessingFailed  = "processing-failed"         // the lease store failed
	ReasonInternalError     = "internal-error"            // a bug: the handler panicked and recovered
)

var (
	answeredReasons = [...]string{ReasonOffer, ReasonAck, ReasonNak}
	silentReasons   = [...]string{ReasonNotOurServer, ReasonReleased, ReasonDeclined}
	droppedReasons  = [...]string{
		ReasonStale, ReasonParseFailed, ReasonRateLimited, ReasonServerMessage, ReasonUnknownType,
		ReasonNotForUs, ReasonChaddrMismatch, ReasonNoPool, ReasonPoolExhausted,
		ReasonPortLeaseLimit, ReasonDeclineLimit, ReasonWrongPort, ReasonNotOwner,
		ReasonUnknownClient, ReasonNotRequestingAddr, ReasonNotOurServer,
		ReasonRFCViolation, ReasonProcessingFailed, ReasonInternalError,
	}
	reasonIndex = [4]map[string]int{}
)

func init() {
	for a, list := range map[Action][]string{Answered: answeredReasons[:], Silent: silentReasons[:], Dropped: droppedReasons[:]} {
		reasonIndex[a] = map[string]int{}
		for i, r := range list {
			reasonIndex[a][r] = i
		}
	}
}

// Reasons lists every reason an outcome with action a can carry.
func Reasons(a Action) []string {
	switch a {
	case Answered:
		return append([]string(nil), answeredReasons[:]...)
	case Silent:
		return append([]string(nil), silentReasons[:]...)
	case Dropped:
		return append([]string(nil), droppedReasons[:]...)
	}
	return nil
}

// MessageTypes are the keys of Stats.ReceivedByType, Kea's
// pkt4-<type>-received names.
var MessageTypes = []string{"discover", "offer", "request", "decline", "ack", "nak", "release", "inform", "unknown"}

// Stats is a snapshot of the handler's counters (monotonic from
// NewHandler) and of its pools.
type Stats struct {
	Received       uint64            // every request given to Handle (pkt4-received)
	ReceivedByType map[string]uint64 // parsed requests by option 53 (see MessageTypes)
	Sent           uint64            // Offers + Acks + Naks (pkt4-sent)
	Offers         uint64
	Acks           uint64
	Naks           uint64
	Silent         map[string]uint64 // by reason, every silent reason present
	Dropped        uint64            // pkt4-receive-drop
	DroppedBy      map[string]uint64 // by reason, every drop reason present
	// ReservationConflicts counts reserved clients given a dynamic
	// address because their reserved one was held by another client.
	ReservationConflicts uint64
	// Reclaimed counts leases Reclaim returned to the free set.
	Reclaimed uint64
	// FastPathConflicts counts leases the XDP fast path handed out that
	// the store refused to record (the address held by another client).
	FastPathConflicts uint64
	Pools             []PoolStats
}

// PoolStats is a pool's utilisation (Kea's total-addresses,
// assigned-addresses, declined-addresses).
type PoolStats struct {
	Name     string
	Total    uint64 // addresses of the range plus reserved addresses outside it
	Assigned uint64 // offered or bound
	Declined uint64 // in probation
	Free     uint64 // believed free
}

type counters struct {
	received             atomic.Uint64
	byType               [9]atomic.Uint64 // 1..8 by type, 0 unknown
	answered             [len(answeredReasons)]atomic.Uint64
	silent               [len(silentReasons)]atomic.Uint64
	dropped              [len(droppedReasons)]atomic.Uint64
	reservationConflicts atomic.Uint64
	reclaimed            atomic.Uint64
	fastpathConflicts    atomic.Uint64
}

func (c *counters) countType(t dhcpv4.MessageType) {
	if t >= 1 && t <= 8 {
		c.byType[t].Add(1)
	} else {
		c.byType[0].Add(1)
	}
}

func (c *counters) count(o Outcome) {
	if o.Action < Answered || o.Action > Dropped {
		return
	}
	i, ok := reasonIndex[o.Action][o.Reason]
	if !ok {
		return
	}
	switch o.Action {
	case Answered:
		c.answered[i].Add(1)
	case Silent:
		c.silent[i].Add(1)
	case Dropped:
		c.dropped[i].Add(1)
	}
}

// Stats returns the counters and the pools' utilisation.
func (h *Handler) Stats() Stats {
	c := &h.stats
	s := Stats{
		Received:             c.received.Load(),
		ReceivedByType:       map[string]uint64{},
		Offers:               c.answered[0].Load(),
		Acks:                 c.answered[1].Load(),
		Naks:                 c.answered[2].Load(),
		Silent:               map[string]uint64{},
		DroppedBy:            map[string]uint64{},
		ReservationConflicts: c.reservationConflicts.Load(),
		Reclaimed:            c.reclaimed.Load(),
		FastPathConflicts:    c.fastpathConflicts.Load(),
	}
	s.Sent = s.Offers + s.Acks + s.Naks
	for t := 1; t <= 8; t++ {
		s.ReceivedByType[MessageTypes[t-1]] = c.byType[t].Load()
	}
	s.ReceivedByType["unknown"] = c.byType[0].Load()
	for i, r := range silentReasons {
		s.Silent[r] = c.silent[i].Load()
	}
	for i, r := range droppedReasons {
		n := c.dropped[i].Load()
		s.DroppedBy[r] = n
		s.Dropped += n
	}
	for _, p := range h.pools {
		st := p.alloc.stats()
		s.Pools = append(s.Pools, PoolStats{
			Name:     p.name,
			Total:    uint64(p.alloc.total()),
			Assigned: uint64(st[stAssigned]),
			Declined: uint64(st[stDeclined]),
			Free:     uint64(st[stFree] + st[stFreeUsed]),
		})
	}
	return s
}
