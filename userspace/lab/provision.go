package lab

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/phoneboot/phoneboot/agent"
	"github.com/phoneboot/phoneboot/images"
	"github.com/phoneboot/phoneboot/userspace/provision"
)

// What the lab's agent serves phones: the synthetic firmware loads with
// their catalog, configuration files generated from an inventory of the
// lab's phones, over TFTP and HTTP.

// unlistedEvery leaves one phone in this many out of the inventory: it
// gets no SEP<MAC>.cnf.xml and takes XMLDefault.cnf.xml (auto-registration),
// as a new phone does.
const unlistedEvery = 20

func unlisted(ph *Phone) bool { return ph.index%unlistedEvery == unlistedEvery-1 }

// writeLoads writes the synthetic firmware loads (images.Synthesize: the
// embedded catalog's names and sizes, 5 to 30 MB a load) into the
// directory the agent serves, and their catalog beside it. They live in
// the run directory on /run (tmpfs): nothing large is committed or left.
func (l *lab) writeLoads() error {
	l.tftpRoot = filepath.Join(l.runDir, "tftpboot")
	if err := os.Mkdir(l.tftpRoot, 0o755); err != nil {
		return fmt.Errorf("lab tftp root: %w", err)
	}
	c, err := images.SyntheticCatalog()
	if err != nil {
		return err
	}
	written, err := images.Synthesize(l.tftpRoot, c, images.SyntheticSeed)
	if err != nil {
		return err
	}
	data, err := written.Marshal()
	if err != nil {
		return err
	}
	l.catalogPath = filepath.Join(l.runDir, "firmware.yaml")
	if err := os.WriteFile(l.catalogPath, data, 0o644); err != nil {
		return fmt.Errorf("lab firmware catalog: %w", err)
	}
	return nil
}

// provisionConfig turns provisioning on in the agent's config: the
// synthetic loads, auto-registration, the CallManager group (the lab's
// CallManagers; with the proxy on, the files name the proxy instead), and
// every phone of the lab but one in unlistedEvery in the inventory (by
// MAC and model, SCCP; each runs its model's load from the catalog).
func (l *lab) provisionConfig(cfg *agent.Config, phones []*Phone) {
	p := &cfg.Provision
	p.Enabled = true
	p.Root = l.tftpRoot
	p.Catalog = l.catalogPath
	p.AutoRegistration = true
	g := provision.Group{Name: "lab"}
	for i, a := range callManagerAddrs {
		g.Members = append(g.Members, provision.Member{Host: a.String(), Priority: i})
	}
	p.Groups = []provision.Group{g}
	p.Phones = nil
	for _, ph := range phones {
		if unlisted(ph) {
			continue
		}
		p.Phones = append(p.Phones, provision.Phone{MAC: provision.MAC(ph.MAC), Model: ph.Model.Model, Protocol: "SCCP"})
	}
}

// pickUpgraders chooses the round(fraction × phones) phones that boot an
// older load, spread over the lab by a permutation drawn from seed.
func pickUpgraders(phones []*Phone, fraction float64, seed uint64) []*Phone {
	n := int(math.Round(fraction * float64(len(phones))))
	rng := rand.New(rand.NewPCG(seed, 0x75706772616465)) // "upgrade"
	var out []*Phone
	for _, i := range rng.Perm(len(phones))[:n] {
		out = append(out, phones[i])
	}
	return out
}

// damageFile flips the bits of one byte in the middle of a file, in place
// (so a server that has it mapped serves the damage).
func damageFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("damage %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return fmt.Errorf("damage %s: empty or %v", path, err)
	}
	b := make([]byte, 1)
	at := st.Size() / 2
	if _, err := f.ReadAt(b, at); err != nil {
		return fmt.Errorf("damage %s: %w", path, err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, at); err != nil {
		return fmt.Errorf("damage %s: %w", path, err)
	}
	return nil
}

// provisioned summarises the config and firmware phases for the
// report's table.
type provisioned struct {
	OwnConfig     int   // phones configured from their SEP<MAC>.cnf.xml
	DefaultConfig int   // phones configured from XMLDefault.cnf.xml
	Older         int   // phones that booted an older load
	Upgraded      int   // of them, phones that fetched and checked the new one
	Bytes         int64 // firmware bytes fetched and checked
	// Files fetched over HTTP 6970, and files asked over TFTP after HTTP
	// failed (models with HTTP provisioning), of them after it stalled.
	HTTPFetches, HTTPFallbacks, HTTPStalls int
}

func (l *lab) provisionSummary(phones []*Phone) provisioned {
	u := provisioned{Bytes: l.firmwareBytes.Load()}
	for _, ph := range phones {
		switch {
		case ph.Config == nil:
		case ph.Config.File == "XMLDefault.cnf.xml":
			u.DefaultConfig++
		default:
			u.OwnConfig++
		}
		if ph.Model.PreviousLoad == ph.bootLoad {
			u.Older++
		}
		if ph.Upgraded {
			u.Upgraded++
		}
		u.HTTPFetches += ph.HTTPFetches
		u.HTTPFallbacks += ph.HTTPFallbacks
		u.HTTPStalls += ph.HTTPStalls
	}
	return u
}
