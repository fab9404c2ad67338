// Package images holds the phone model table, and later the firmware
// catalog and config templates, embedded into the binary.
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
	Model       string  `yaml:"model"`
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
