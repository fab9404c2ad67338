package poe

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// stateFile keeps the operator's changes made through the API (a port
// turned off, a priority raised) across restarts. It holds only what
// differs from the config: setting a port back to its configured value
// removes its entry, and the config applies again.
type stateFile struct {
	path  string
	Ports map[string]savedPort `json:"ports"`
}

type savedPort struct {
	Enabled  *bool     `json:"enabled,omitempty"`
	Priority *Priority `json:"priority,omitempty"`
}

// loadState reads the state file. A missing file is an empty state; a
// damaged one is moved aside (and logged), so that the config applies
// rather than the daemon refusing to start.
func loadState(path string, log *slog.Logger) (*stateFile, error) {
	s := &stateFile{path: path, Ports: map[string]savedPort{}}
	if path == "" {
		return s, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("power state file: %w", err)
	}
	if err := json.Unmarshal(data, s); err != nil || s.Ports == nil {
		aside := fmt.Sprintf("%s.damaged-%s", path, time.Now().UTC().Format("20060102T150405Z"))
		if rerr := os.Rename(path, aside); rerr != nil {
			return nil, fmt.Errorf("power state file %s is damaged (%v) and cannot be moved aside: %w", path, err, rerr)
		}
		log.Error("power state file damaged: moved aside; the config's port settings apply", "file", path, "movedTo", aside, "error", err)
		s.Ports = map[string]savedPort{}
	}
	return s, nil
}

// save writes the file atomically: a temporary file in the same
// directory, synced, renamed over the old one.
func (s *stateFile) save() error {
	if s.path == "" {
		return nil
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(s.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("power state file: %w", err)
	}
	f, err := os.CreateTemp(dir, filepath.Base(s.path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("power state file: %w", err)
	}
	_, err = f.Write(append(data, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), s.path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("power state file: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// saveLocked records p's settings where they differ from its config and
// writes the file; m.mu is held.
func (m *Manager) saveLocked(p *managed) error {
	var o savedPort
	if p.enabled != p.cfg.Enabled {
		v := p.enabled
		o.Enabled = &v
	}
	if p.priority != p.cfg.Priority {
		v := p.priority
		o.Priority = &v
	}
	if o.Enabled == nil && o.Priority == nil {
		delete(m.state.Ports, p.cfg.Name)
	} else {
		m.state.Ports[p.cfg.Name] = o
	}
	if err := m.state.save(); err != nil {
		m.log.Error("operator change not saved: it is lost at the next restart", "port", p.cfg.Name, "error", err)
		return err
	}
	return nil
}
