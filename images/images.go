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
	// PreviousLoad is the release before Load: what the lab's phones that
	// must upgrade run when they boot.
	PreviousLoad string `yaml:"previous_load"`
	// TFTP is what the model asks for in its TFTP read requests.
	TFTP TFTPRequest `yaml:"tftp"`
	// HTTP: the model asks for each file over HTTP on port 6970 first,
	// once, and over TFTP when that fails.
	HTTP bool `yaml:"http"`
}

// TFTPRequest is the options a model puts in its TFTP read requests.
type TFTPRequest struct {
	BlockSize  int  `yaml:"blksize"`    // RFC 2348; 0: none (512-byte blocks)
	WindowSize int  `yaml:"windowsize"` // RFC 7440; 0: none (lock-step)
	TSize      bool `yaml:"tsize"`      // RFC 2349
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
		case m.PreviousLoad == "" || m.PreviousLoad == m.Load:
			return nil, fmt.Errorf("images/models.yaml: %s: previous_load %q is empty or the load itself", m.Model, m.PreviousLoad)
		case m.TFTP.BlockSize != 0 && (m.TFTP.BlockSize < 8 || m.TFTP.BlockSize > 65464):
			return nil, fmt.Errorf("images/models.yaml: %s: tftp blksize %d is not 0 or 8-65464 (RFC 2348)", m.Model, m.TFTP.BlockSize)
		case m.TFTP.WindowSize < 0 || m.TFTP.WindowSize > 65535:
			return nil, fmt.Errorf("images/models.yaml: %s: tftp windowsize %d is not 0-65535 (RFC 7440)", m.Model, m.TFTP.WindowSize)
		}
		seen[m.Model] = true
	}
	return doc.Models, nil
}
