package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/phoneboot/phoneboot/images"
	"github.com/phoneboot/phoneboot/userspace/tftp"
)

// firmwarePhase is the phone upgrading when its configuration names a load
// other than the one it runs: it fetches <load>.loads, then every file the
// .loads file lists, each checked against the size and SHA-256 the .loads
// file gives (and the tsize the server announces, when the model asks for
// one). A file that fails its check is fetched again like a failed
// transfer, up to maxVerifyAttempts times; then the phase fails. The
// phone then runs the new load (the lab does not model the reboot into
// it). A phone already running the named load, or one whose configuration
// names none for its model, skips the download and is done at once.
type firmwarePhase struct {
	f     *fetcher
	bytes *atomic.Int64 // firmware bytes fetched and checked, all phones
	log   *slog.Logger
}

// maxVerifyAttempts bounds the downloads of a file that keeps failing its
// check: a corrupt file on the server will not heal.
const maxVerifyAttempts = 3

func (firmwarePhase) Name() string { return "firmware" }

func (p firmwarePhase) Run(ctx context.Context, ph *Phone) error {
	defer ph.closeHTTP() // the last files the phone fetches
	if ph.Config == nil {
		return fmt.Errorf("no configuration")
	}
	load := ph.Config.Load
	if load == "" || strings.EqualFold(load, ph.Load) {
		return nil
	}
	start := time.Now()
	buf := &bufferSink{max: images.MaxLoadsSize}
	name := load + ".loads"
	if _, err := p.f.fetchFile(ctx, ph, name, buf, nil); err != nil {
		return fmt.Errorf("load %s: %w", load, err)
	}
	lf, err := images.ParseLoads(buf.buf)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if !strings.EqualFold(lf.ID, load) {
		return fmt.Errorf("%s lists load %q", name, lf.ID)
	}
	total := int64(len(buf.buf))
	for _, c := range lf.Files {
		s := &hashSink{h: sha256.New()}
		failed := 0
		check := func(res tftp.FetchResult) error {
			err := verify(c, s, res)
			if err != nil {
				if failed++; failed >= maxVerifyAttempts {
					return &finalError{fmt.Errorf("%w (downloaded %d times)", err, failed)}
				}
			}
			return err
		}
		_, err := p.f.fetchFile(ctx, ph, c.Name, s, check)
		if err != nil {
			return fmt.Errorf("load %s: %w", load, err)
		}
		total += s.n
	}
	p.bytes.Add(total)
	p.log.Info("upgraded", "phone", ph.Name, "model", ph.Model.Model, "from", ph.Load, "to", lf.ID,
		"files", len(lf.Files)+1, "bytes", total, "took", time.Since(start).Round(time.Millisecond), "retransmits", ph.Retransmits)
	ph.Load = lf.ID
	ph.Upgraded = true
	return nil
}

// verify checks a downloaded component against its .loads entry.
func verify(c images.Component, s *hashSink, res tftp.FetchResult) error {
	if res.TSize >= 0 && res.TSize != c.Size {
		return fmt.Errorf("the server announced %d bytes (tsize), the .loads file lists %d", res.TSize, c.Size)
	}
	if s.n != c.Size {
		return fmt.Errorf("%d bytes, the .loads file lists %d", s.n, c.Size)
	}
	if got := s.h.Sum(nil); string(got) != string(c.SHA256[:]) {
		return fmt.Errorf("sha256 %x, the .loads file lists %s", got, hex.EncodeToString(c.SHA256[:]))
	}
	return nil
}

// hashSink hashes and counts a component as it arrives; the phone keeps
// no copy.
type hashSink struct {
	h hash.Hash
	n int64
}

func (s *hashSink) Write(p []byte) (int, error) {
	s.h.Write(p)
	s.n += int64(len(p))
	return len(p), nil
}

func (s *hashSink) reset() { s.h.Reset(); s.n = 0 }
