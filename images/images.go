// Package images holds what phoneboot knows about phones and their files,
// embedded into the binary: the phone model table (models.yaml), the
// templates of the configuration files provisioning generates
// (templates/), the firmware catalog format with its validation against
// the served directory, the .loads manifest format, and the lab's synthetic
// loads (firmware.yaml, Synthesize).
package images

import (
	_ "embed"
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"
)

//go:embed models.yaml
var modelsYAML []byte

// Model is one phone model.
type Model struct {
	Model string `yaml:"model"`
	// DeviceType is CallManager's number for the model (XMLDefault.cnf.xml
	// names per-model loads by it).
	DeviceType  int     `yaml:"device_type"`
	BootSeconds float64 `yaml:"boot_seconds"`
	PoEClass    int     `yaml:"poe_class"`
	Load        string  `yaml:"load"`
}

// BootTime is the model's unscaled boot time.
func (m Model) BootTime() time.Duration {
	return time.Duration(m.BootSeconds * float64(time.Second))
}

// Models parses and checks the embedded model table.
func Models() ([]Model, error) {
	var doc struct {
		Models []Model `yaml:"models"`
	}
	if err := yaml.Unmarshal(modelsYAML, &doc); err != nil {
		return nil, fmt.Errorf("images/models.yaml: %w", err)
	}
	if len(doc.Models) == 0 {
		return nil, fmt.Errorf("images/models.yaml: no models")
	}
	seen := map[string]bool{}
	for _, m := range doc.Models {
		switch {
		case m.Model == "" || seen[m.Model]:
			return nil, fmt.Errorf("images/models.yaml: model %q is empty or repeated", m.Model)
		case m.DeviceType <= 0:
			return nil, fmt.Errorf("images/models.yaml: %s: no device_type", m.Model)
		case m.BootSeconds <= 0 || m.BootSeconds > 600:
			return nil, fmt.Errorf("images/models.yaml: %s: boot_seconds %v outside (0, 600]", m.Model, m.BootSeconds)
		case m.PoEClass < 0 || m.PoEClass > 4:
			return nil, fmt.Errorf("images/models.yaml: %s: poe_class %d is not 0-4", m.Model, m.PoEClass)
		case m.Load == "":
			return nil, fmt.Errorf("images/models.yaml: %s: no load", m.Model)
		}
		seen[m.Model] = true
	}
	return doc.Models, nil
}
