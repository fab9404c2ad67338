package images

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// A .loads file is what a phone fetches first when its configuration names
// a load it does not run (<loadInformation> is the file name without
// ".loads"): the manifest of the load's component files, which the phone
// then fetches one by one.
//
// Cisco's own .loads files for the SIP 78xx/88xx phones are a signature
// block followed by a plain-text INI body: global compatibility keys, then
// one section per hardware platform ([PLATFORM_1], [PLATFORM_2] on the
// two-chip 78xx) naming the component files by role (sboot, kern, rootfs;
// fbi, sb2, kern, rootfs, vc4 on the 88xx). Public reverse-engineering notes
// describe that layout, but no public copy of a body shows its exact key
// syntax, and the components are authenticated by Cisco's signatures, not
// by hashes in the text.
//
// The synthetic loads phoneboot's lab serves use the same layout without
// the signature block, with each component's size and SHA-256 on its line
// so that a simulated phone can check what it downloaded:
//
//	# comment (also ';')
//	[LOAD]
//	id=sip88xx.14-2-1-0001-14
//	models=CP-8811,CP-8841
//
//	[PLATFORM_1]
//	kern=kern88xx.14-2-1-0001-14.sbn 3145728 <64 hex digits>
//
// Keys are case-insensitive, whitespace around "=" and at line ends is
// ignored, lines end in LF or CRLF.

// LoadsFile is a parsed .loads file.
type LoadsFile struct {
	ID     string
	Models []string
	Files  []Component // in file order
}

// Component is one file of a load.
type Component struct {
	Platform int    // 1-9: the [PLATFORM_n] section
	Role     string // sboot, kern, rootfs, ...: the key
	Name     string
	Size     int64
	SHA256   [32]byte
}

// Limits of the .loads parser: a real manifest is about a kilobyte and
// lists fewer than ten files.
const (
	MaxLoadsSize      = 64 << 10
	MaxLoadsFiles     = 64
	MaxComponentSize  = 1 << 30
	maxNameLen        = 128
	maxPlatform       = 9
	loadsSectionLoad  = "LOAD"
	loadsSectionPlat  = "PLATFORM_"
	loadsKeyID        = "id"
	loadsKeyModels    = "models"
	maxModelsPerLoads = 32
)

// ParseLoads parses a .loads file in the format above. Errors name the
// line.
func ParseLoads(data []byte) (*LoadsFile, error) {
	if len(data) > MaxLoadsSize {
		return nil, fmt.Errorf(".loads: %d bytes, more than %d", len(data), MaxLoadsSize)
	}
	lf := &LoadsFile{}
	section := ""
	platform := 0
	seenSections := map[string]bool{}
	seenKeys := map[string]bool{}
	seenNames := map[string]bool{}
	for n, line := range bytes.Split(data, []byte("\n")) {
		lineNo := n + 1
		bad := func(format string, args ...any) error {
			return fmt.Errorf(".loads line %d: %s", lineNo, fmt.Sprintf(format, args...))
		}
		s := strings.TrimSpace(string(bytes.TrimSuffix(line, []byte("\r"))))
		if s == "" || s[0] == '#' || s[0] == ';' {
			continue
		}
		if !isPrintableASCII(s) {
			return nil, bad("not printable ASCII")
		}
		if s[0] == '[' {
			if s[len(s)-1] != ']' {
				return nil, bad("section header %q lacks its ]", s)
			}
			name := strings.ToUpper(strings.TrimSpace(s[1 : len(s)-1]))
			switch {
			case name == loadsSectionLoad:
				platform = 0
			case strings.HasPrefix(name, loadsSectionPlat):
				p, err := strconv.Atoi(name[len(loadsSectionPlat):])
				if err != nil || p < 1 || p > maxPlatform {
					return nil, bad("section %q is not PLATFORM_1 to PLATFORM_%d", name, maxPlatform)
				}
				platform = p
			default:
				return nil, bad("unknown section %q", name)
			}
			if seenSections[name] {
				return nil, bad("section %q repeated", name)
			}
			seenSections[name] = true
			section = name
			continue
		}
		key, value, ok := strings.Cut(s, "=")
		if !ok {
			return nil, bad("%q is neither a [section] nor key=value", s)
		}
		key, value = strings.ToLower(strings.TrimSpace(key)), strings.TrimSpace(value)
		if key == "" {
			return nil, bad("empty key")
		}
		if section == "" {
			return nil, bad("key %q before any section", key)
		}
		if seenKeys[section+"\x00"+key] {
			return nil, bad("key %q repeated in [%s]", key, section)
		}
		seenKeys[section+"\x00"+key] = true
		if platform == 0 {
			switch key {
			case loadsKeyID:
				if err := checkFileName(value); err != nil {
					return nil, bad("id: %v", err)
				}
				lf.ID = value
			case loadsKeyModels:
				for m := range strings.SplitSeq(value, ",") {
					m = strings.TrimSpace(m)
					if m == "" || strings.ContainsAny(m, " \t") {
						return nil, bad("models: %q is not a model name", m)
					}
					lf.Models = append(lf.Models, m)
				}
				if len(lf.Models) > maxModelsPerLoads {
					return nil, bad("models: more than %d", maxModelsPerLoads)
				}
			default:
				return nil, bad("unknown key %q in [LOAD]", key)
			}
			continue
		}
		c, err := parseComponent(platform, key, value)
		if err != nil {
			return nil, bad("%v", err)
		}
		if seenNames[strings.ToLower(c.Name)] {
			return nil, bad("file %s listed twice", c.Name)
		}
		seenNames[strings.ToLower(c.Name)] = true
		if len(lf.Files) == MaxLoadsFiles {
			return nil, bad("more than %d files", MaxLoadsFiles)
		}
		lf.Files = append(lf.Files, c)
	}
	switch {
	case lf.ID == "":
		return nil, fmt.Errorf(".loads: no [LOAD] id")
	case len(lf.Files) == 0:
		return nil, fmt.Errorf(".loads %s: lists no files", lf.ID)
	}
	return lf, nil
}

// parseComponent parses "name size sha256".
func parseComponent(platform int, role, value string) (Component, error) {
	if !isRole(role) {
		return Component{}, fmt.Errorf("%q is not a component role (lower-case letters and digits)", role)
	}
	f := strings.Fields(value)
	if len(f) != 3 {
		return Component{}, fmt.Errorf("%s: want \"name size sha256\", got %d fields", role, len(f))
	}
	c := Component{Platform: platform, Role: role, Name: f[0]}
	if err := checkFileName(c.Name); err != nil {
		return Component{}, fmt.Errorf("%s: %v", role, err)
	}
	size, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || size < 0 || size > MaxComponentSize || (len(f[1]) > 1 && f[1][0] == '0') {
		return Component{}, fmt.Errorf("%s: size %q is not a decimal 0 to %d", role, f[1], MaxComponentSize)
	}
	c.Size = size
	if len(f[2]) != 64 {
		return Component{}, fmt.Errorf("%s: sha256 %q is not 64 hex digits", role, f[2])
	}
	if _, err := hex.Decode(c.SHA256[:], []byte(f[2])); err != nil {
		return Component{}, fmt.Errorf("%s: sha256 %q is not 64 hex digits", role, f[2])
	}
	return c, nil
}

// Format writes lf in the format ParseLoads reads, components grouped by
// platform in ascending order.
func (lf *LoadsFile) Format() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# %s.loads: synthetic firmware load (phoneboot lab), not signed\n", lf.ID)
	fmt.Fprintf(&b, "[%s]\n%s=%s\n", loadsSectionLoad, loadsKeyID, lf.ID)
	if len(lf.Models) > 0 {
		fmt.Fprintf(&b, "%s=%s\n", loadsKeyModels, strings.Join(lf.Models, ","))
	}
	platforms := []int{}
	for _, c := range lf.Files {
		if !slices.Contains(platforms, c.Platform) {
			platforms = append(platforms, c.Platform)
		}
	}
	slices.Sort(platforms)
	for _, p := range platforms {
		fmt.Fprintf(&b, "\n[%s%d]\n", loadsSectionPlat, p)
		for _, c := range lf.Files {
			if c.Platform == p {
				fmt.Fprintf(&b, "%s=%s %d %s\n", c.Role, c.Name, c.Size, hex.EncodeToString(c.SHA256[:]))
			}
		}
	}
	return b.Bytes()
}

// checkFileName accepts the names a load uses: one path element of
// printable ASCII without spaces, such as rootfs2.78xx.14-2-1-0001-14.sbn.
func checkFileName(s string) error {
	switch {
	case s == "" || len(s) > maxNameLen:
		return fmt.Errorf("name %q is empty or longer than %d bytes", s, maxNameLen)
	case s == "." || s == ".." || strings.ContainsAny(s, "/\\ \t") || !isPrintableASCII(s):
		return fmt.Errorf("name %q is not a plain file name", s)
	}
	return nil
}

func isRole(s string) bool {
	if s == "" || len(s) > 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if (s[i] < 'a' || s[i] > 'z') && (s[i] < '0' || s[i] > '9') {
			return false
		}
	}
	return true
}

func isPrintableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			if s[i] == '\t' {
				continue
			}
			return false
		}
	}
	return true
}
