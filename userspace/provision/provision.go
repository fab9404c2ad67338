// Package provision decides what each phone is served: its SEP<MAC>.cnf.xml
// generated from the inventory for every request (never written to disk),
// XMLDefault.cnf.xml for auto-registration, and everything else (trust
// lists, firmware, locales, ring lists, dial plans) from the root
// directory. A Service is the bootfiles.Source the TFTP and HTTP servers
// serve.
//
// The inventory comes from the config; a phone whose entry names no model
// gets the one CDP or LLDP-MED reports for it (a neighbour whose Device ID
// is SEP<MAC>), which picks its default load.
package provision

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/template"
	"time"

	"github.com/phoneboot/phoneboot/images"
	"github.com/phoneboot/phoneboot/userspace/bootfiles"
	"github.com/phoneboot/phoneboot/userspace/neighbor"
)

// Neighbors is the neighbour table as provisioning reads it
// (*neighbor.Table).
type Neighbors interface {
	List() []neighbor.Neighbor
}

// neighborRefresh bounds how often the neighbour table is read: a boot
// storm asks for thousands of files a second, and a phone's model does not
// change that fast.
const neighborRefresh = time.Second

// Service resolves phones' requests. It is immutable once built (a config
// change builds a new one) apart from its view of the neighbour table.
type Service struct {
	log      *slog.Logger
	root     *bootfiles.Dir
	sep, def *template.Template
	now      func() time.Time
	loadedAt time.Time // when this config took effect, rounded up to a second

	phones   map[MAC]*phone
	loads    map[string]string // upper-case model -> load
	models   []images.Model
	autoReg  bool
	members  []memberData // the default group, straight to the CallManagers
	proxy    *proxyRoute  // nil: the proxy is off
	defaults cnfData      // device pool, date/time

	nb     Neighbors
	nbMu   sync.Mutex
	nbSnap atomic.Pointer[neighborSnapshot]

	bufs sync.Pool // *bytes.Buffer
}

// phone is an inventory entry with its text escaped and references
// resolved.
type phone struct {
	mac      MAC
	model    string // upper-case; empty: ask the neighbour table
	load     string // explicit; empty: the model's default
	protocol string // explicit SIP or SCCP; empty: from the load
	members  []memberData
	data     cnfData // the per-phone text: description, lines, locales
}

// proxyRoute is where phones reach the registration proxy.
type proxyRoute struct {
	def     []memberData // for phones in no listed subnet; nil: none
	subnets []proxySubnet
}

type proxySubnet struct {
	prefix  netip.Prefix
	members []memberData
}

// New validates cfg, opens its root directory and, when cfg names one,
// loads the firmware catalog and validates it against the root (see
// images.Catalog.Validate): every load the inventory names must be in it.
// nb may be nil when discovery is off (a nil interface: a nil
// *neighbor.Table in it would be called).
func New(ctx context.Context, cfg Config, nb Neighbors, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	root, err := bootfiles.OpenDir(cfg.Root)
	if err != nil {
		return nil, err
	}
	s, err := build(ctx, cfg, root, nb, log)
	if err != nil {
		root.Close()
		return nil, err
	}
	return s, nil
}

func build(ctx context.Context, cfg Config, root *bootfiles.Dir, nb Neighbors, log *slog.Logger) (*Service, error) {
	s := &Service{
		log:     log,
		root:    root,
		now:     time.Now,
		phones:  make(map[MAC]*phone, len(cfg.Phones)),
		loads:   map[string]string{},
		autoReg: cfg.AutoRegistration,
		nb:      nb,
		bufs:    sync.Pool{New: func() any { return new(bytes.Buffer) }},
	}
	s.loadedAt = s.now().Truncate(time.Second).Add(time.Second)
	var err error
	if s.sep, err = parseTemplate("SEPMAC.cnf.xml"); err != nil {
		return nil, err
	}
	if s.def, err = parseTemplate("XMLDefault.cnf.xml"); err != nil {
		return nil, err
	}
	if s.models, err = images.Models(); err != nil {
		return nil, err
	}
	catalog, err := loadCatalog(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := s.resolveLoads(cfg, catalog); err != nil {
		return nil, err
	}

	groups := map[string][]memberData{}
	for _, g := range cfg.Groups {
		groups[g.Name] = groupMembers(g)
	}
	defGroup := cfg.Defaults.Group
	if defGroup == "" {
		defGroup = cfg.Groups[0].Name
	}
	s.members = groups[defGroup]
	if cfg.Proxy.Enabled {
		s.proxy = newProxyRoute(cfg.Proxy)
	}
	dt := cfg.DevicePool.DateTime
	s.defaults = cnfData{
		DevicePool: esc(cfg.DevicePool.Name),
		DateTime:   dateTimeData{Name: esc(dt.Name), DateTemplate: esc(dt.DateTemplate), TimeZone: esc(dt.TimeZone)},
	}
	for _, h := range dt.NTP {
		s.defaults.DateTime.NTP = append(s.defaults.DateTime.NTP, esc(h))
	}
	for _, p := range cfg.Phones {
		s.phones[p.MAC] = s.newPhone(cfg, p, groups)
	}
	return s, nil
}

func loadCatalog(ctx context.Context, cfg Config) (*images.Catalog, error) {
	if cfg.Catalog == "" {
		return nil, nil
	}
	data, err := os.ReadFile(cfg.Catalog)
	if err != nil {
		return nil, &FieldError{Key: "catalog", Msg: err.Error()}
	}
	c, err := images.ParseCatalog(data)
	if err != nil {
		return nil, &FieldError{Key: "catalog", Msg: fmt.Sprintf("%s: %v", cfg.Catalog, err)}
	}
	r, err := os.OpenRoot(cfg.Root)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if err := c.Validate(ctx, r.FS()); err != nil {
		return nil, fmt.Errorf("firmware catalog %s against %s:\n%w", cfg.Catalog, cfg.Root, err)
	}
	return c, nil
}

// resolveLoads builds the default load of each model and checks every load
// the config names against the catalog, when there is one: a phone sent to
// a load the server lacks asks for it again at every boot.
func (s *Service) resolveLoads(cfg Config, c *images.Catalog) error {
	check := func(key, model, load string) error {
		if c == nil {
			return nil
		}
		l := c.Load(load)
		if l == nil {
			return &FieldError{Key: key, Msg: fmt.Sprintf("load %s is not in the firmware catalog", load)}
		}
		if model != "" && !slices.ContainsFunc(l.Models, func(m string) bool { return strings.EqualFold(m, model) }) {
			return &FieldError{Key: key, Msg: fmt.Sprintf("load %s is for %s, not %s", load, strings.Join(l.Models, ", "), model)}
		}
		return nil
	}
	for _, model := range sortedKeys(cfg.DefaultLoads) {
		load := cfg.DefaultLoads[model]
		if err := check("default_loads."+model, model, load); err != nil {
			return err
		}
		s.loads[strings.ToUpper(model)] = load
	}
	if c != nil {
		for _, l := range c.Loads {
			for _, m := range l.Models {
				m = strings.ToUpper(m)
				if _, set := s.loads[m]; !set {
					if ids := c.LoadsFor(m); len(ids) == 1 {
						s.loads[m] = ids[0]
					}
				}
			}
		}
	}
	for i, p := range cfg.Phones {
		if p.Load != "" {
			if err := check(fmt.Sprintf("phones[%d].load", i), p.Model, p.Load); err != nil {
				return err
			}
		}
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func groupMembers(g Group) []memberData {
	ms := make([]memberData, 0, len(g.Members))
	for _, m := range g.Members {
		ms = append(ms, memberData{Priority: m.Priority, Host: esc(m.Host), SCCPPort: orDefault(m.SCCPPort, DefaultSCCPPort), SIPPort: orDefault(m.SIPPort, DefaultSIPPort)})
	}
	slices.SortFunc(ms, func(a, b memberData) int { return a.Priority - b.Priority })
	return ms
}

// newProxyRoute makes the one-member groups that point phones at the
// proxy, one per address phones reach it at. The proxy chooses among the
// CallManagers itself.
func newProxyRoute(p Proxy) *proxyRoute {
	member := func(host string) []memberData {
		return []memberData{{Priority: 0, Host: esc(host), SCCPPort: orDefault(p.SCCPPort, DefaultSCCPPort), SIPPort: orDefault(p.SIPPort, DefaultSIPPort)}}
	}
	r := &proxyRoute{}
	if p.Host != "" {
		r.def = member(p.Host)
	}
	for _, sn := range p.Subnets {
		r.subnets = append(r.subnets, proxySubnet{prefix: sn.Subnet.Masked(), members: member(sn.Host)})
	}
	// Longest prefix first, so the first match is the most specific.
	slices.SortStableFunc(r.subnets, func(a, b proxySubnet) int { return b.prefix.Bits() - a.prefix.Bits() })
	return r
}

// route returns the proxy member for a phone at addr, or nil.
func (r *proxyRoute) route(addr netip.Addr) []memberData {
	addr = addr.Unmap()
	for _, sn := range r.subnets {
		if sn.prefix.Contains(addr) {
			return sn.members
		}
	}
	return r.def
}

func orDefault(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

func (s *Service) newPhone(cfg Config, p Phone, groups map[string][]memberData) *phone {
	ph := &phone{mac: p.MAC, model: strings.ToUpper(p.Model), load: p.Load, protocol: strings.ToUpper(p.Protocol), members: s.members}
	if p.Group != "" {
		ph.members = groups[p.Group]
	}
	ulName := p.UserLocale
	if ulName == "" {
		ulName = cfg.Defaults.UserLocale
	}
	nl := p.NetworkLocale
	if nl == "" {
		nl = cfg.Defaults.NetworkLocale
	}
	ph.data = s.defaults
	ph.data.Description = esc(p.Description)
	ph.data.UserLocale = localeData{Name: esc(ulName), LangCode: esc(userLocales[ulName])}
	ph.data.NetworkLocale = esc(nl)
	for i, l := range p.Lines {
		ph.data.Lines = append(ph.data.Lines, lineData{Button: i + 1, Number: esc(l.Number), Label: esc(l.Label), DisplayName: esc(l.DisplayName)})
	}
	return ph
}

// Open implements bootfiles.Source.
func (s *Service) Open(ctx context.Context, r bootfiles.Request) (bootfiles.File, error) {
	name, err := bootfiles.Clean(r.Name)
	if err != nil {
		return nil, err
	}
	if mac, ok := parseConfigName(name); ok {
		if p := s.phones[mac]; p != nil {
			return s.phoneConfig(ctx, p, r)
		}
	} else if strings.EqualFold(name, "XMLDefault.cnf.xml") {
		// Generated or refused, never a file of the root: with
		// auto-registration off, a phone the inventory does not know gets
		// nothing to register with.
		if !s.autoReg {
			return nil, bootfiles.ErrNotFound
		}
		return s.defaultConfig(r)
	}
	// Trust lists (CTLSEP<MAC>.tlv, ITLSEP<MAC>.tlv, ITLFile.tlv) are served
	// when the root has them; otherwise the root answers "not found" at
	// once, and the phone carries on without a trust list.
	return s.root.Open(ctx, r)
}

// parseConfigName recognises SEP<MAC>.cnf.xml in any letter case.
func parseConfigName(name string) (MAC, bool) {
	var m MAC
	const prefix, suffix = "SEP", ".cnf.xml"
	if len(name) != len(prefix)+12+len(suffix) ||
		!strings.EqualFold(name[:len(prefix)], prefix) || !strings.EqualFold(name[len(prefix)+12:], suffix) {
		return m, false
	}
	if _, err := hex.Decode(m[:], []byte(name[len(prefix):len(prefix)+12])); err != nil {
		return m, false
	}
	return m, true
}

// errNoProxy is a phone in no proxy subnet when the proxy has no default
// address: there is no address to tell it. Servers answer it as "not
// found".
var errNoProxy = fmt.Errorf("%w: no registration proxy address for this phone's subnet", bootfiles.ErrNotFound)

func (s *Service) phoneConfig(ctx context.Context, p *phone, r bootfiles.Request) (bootfiles.File, error) {
	d := p.data
	d.Members = p.members
	if s.proxy != nil {
		if d.Members = s.proxy.route(r.Client.Addr()); d.Members == nil {
			s.log.Warn("phone outside every proxy subnet", "phone", p.mac.DeviceName(), "client", r.Client)
			return nil, errNoProxy
		}
	}
	model, heardSince := p.model, time.Time{}
	if model == "" {
		model, heardSince = s.heardModel(p.mac)
	}
	load := p.load
	if load == "" {
		load = s.loadFor(model)
	}
	protocol := p.protocol
	if protocol == "" {
		protocol = protocolOf(load)
	}
	d.Load = esc(load)
	d.Protocol = xmlText(protocol)
	d.SIP = protocol == "SIP"
	d.SIPPort = d.Members[0].SIPPort

	buf := s.bufs.Get().(*bytes.Buffer)
	buf.Reset()
	defer s.bufs.Put(buf)
	if err := renderStamped(s.sep, &d, buf); err != nil {
		return nil, err
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("phone config", "phone", p.mac.DeviceName(), "model", model, "load", load, "client", r.Client)
	}
	modified := s.loadedAt
	if heardSince.After(modified) {
		modified = heardSince
	}
	return &bootfiles.Bytes{Data: bytes.Clone(buf.Bytes()), Modified: modified}, nil
}

func (s *Service) defaultConfig(r bootfiles.Request) (bootfiles.File, error) {
	d := defaultData{Members: s.members}
	if s.proxy != nil {
		if d.Members = s.proxy.route(r.Client.Addr()); d.Members == nil {
			s.log.Warn("phone outside every proxy subnet", "file", "XMLDefault.cnf.xml", "client", r.Client)
			return nil, errNoProxy
		}
	}
	for _, m := range s.models {
		if load := s.loadFor(m.Model); load != "" {
			d.Loads = append(d.Loads, modelLoad{DeviceType: m.DeviceType, Model: esc("Cisco " + strings.TrimPrefix(m.Model, "CP-")), Load: esc(load)})
		}
	}
	buf := s.bufs.Get().(*bytes.Buffer)
	buf.Reset()
	defer s.bufs.Put(buf)
	if err := s.def.Execute(buf, &d); err != nil {
		return nil, err
	}
	return &bootfiles.Bytes{Data: bytes.Clone(buf.Bytes()), Modified: s.loadedAt}, nil
}

// loadFor is the default load of model: its own, or that of the base model
// without a variant suffix (CP-8851NR runs the CP-8851's load).
func (s *Service) loadFor(model string) string {
	if model == "" {
		return ""
	}
	model = strings.ToUpper(model)
	if l, ok := s.loads[model]; ok {
		return l
	}
	return s.loads[strings.TrimRight(model, "ABCDEFGHIJKLMNOPQRSTUVWXYZ")]
}

// protocolOf tells a load's protocol by its name: SCCP loads are named
// SCCPnn.… or P00…, SIP loads sipnn… or P0S….
func protocolOf(load string) string {
	l := strings.ToUpper(load)
	if strings.HasPrefix(l, "SCCP") || strings.HasPrefix(l, "P00") {
		return "SCCP"
	}
	return "SIP"
}

// Close releases the root directory; files already open stay valid.
func (s *Service) Close() error { return s.root.Close() }

// neighborSnapshot is the models the neighbour table reports for inventory
// phones that name none. An entry stays (with no model) after its
// neighbour expires, so that its since moves forward again: a file's
// modification time must change whenever its content does, or an HTTP
// client's If-Modified-Since keeps a stale configuration.
type neighborSnapshot struct {
	at     time.Time
	models map[MAC]heard
}

type heard struct {
	model string
	since time.Time // when model was first reported, rounded up to a second
}

// heardModel is the model the neighbour table reports for mac, and since
// when.
func (s *Service) heardModel(mac MAC) (string, time.Time) {
	if s.nb == nil {
		return "", time.Time{}
	}
	now := s.now()
	snap := s.nbSnap.Load()
	if snap == nil || now.Sub(snap.at) >= neighborRefresh {
		snap = s.refreshNeighbors(now)
	}
	h := snap.models[mac]
	return h.model, h.since
}

func (s *Service) refreshNeighbors(now time.Time) *neighborSnapshot {
	s.nbMu.Lock()
	defer s.nbMu.Unlock()
	old := s.nbSnap.Load()
	if old != nil && now.Sub(old.at) < neighborRefresh {
		return old // another request refreshed it meanwhile
	}
	next := &neighborSnapshot{at: now, models: map[MAC]heard{}}
	stamp := now.Truncate(time.Second).Add(time.Second)
	for _, n := range s.nb.List() {
		mac, ok := deviceMAC(n.DeviceID)
		if !ok {
			continue
		}
		if p := s.phones[mac]; p == nil || p.model != "" {
			continue // not ours, or its model is configured
		}
		if model := platformModel(n.Platform); model != "" {
			next.models[mac] = heard{model: model}
		}
	}
	for mac, h := range next.models {
		if prev, ok := old.lookup(mac); ok && prev.model == h.model {
			h.since = prev.since
		} else {
			h.since = stamp
		}
		next.models[mac] = h
	}
	if old != nil {
		for mac, prev := range old.models {
			if _, still := next.models[mac]; !still {
				if prev.model != "" {
					prev = heard{since: stamp} // gone: the file changes back
				}
				next.models[mac] = prev
			}
		}
	}
	s.nbSnap.Store(next)
	return next
}

func (snap *neighborSnapshot) lookup(mac MAC) (heard, bool) {
	if snap == nil {
		return heard{}, false
	}
	h, ok := snap.models[mac]
	return h, ok
}

// deviceMAC parses a CDP Device ID (or LLDP System Name) of the form
// SEP<MAC>.
func deviceMAC(id string) (MAC, bool) {
	var m MAC
	if len(id) != 15 || !strings.EqualFold(id[:3], "SEP") {
		return m, false
	}
	if _, err := hex.Decode(m[:], []byte(id[3:])); err != nil {
		return m, false
	}
	return m, true
}

// platformModel turns what a phone reports as its platform (CDP's
// "Cisco IP Phone 8851", LLDP-MED's "CP-8851") into a model name: the last
// word that is four digits and perhaps letters, after an optional "CP-".
func platformModel(platform string) string {
	fields := strings.Fields(platform)
	for i := len(fields) - 1; i >= 0; i-- {
		f := strings.ToUpper(fields[i])
		f = strings.TrimPrefix(f, "CP-")
		if len(f) < 4 || len(f) > 12 {
			continue
		}
		ok := true
		for j := 0; j < len(f); j++ {
			c := f[j]
			if j < 4 && (c < '0' || c > '9') || j >= 4 && (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
				ok = false
				break
			}
		}
		if ok {
			return "CP-" + f
		}
	}
	return ""
}
