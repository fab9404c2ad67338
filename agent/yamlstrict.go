package agent

import (
	"encoding"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// strictDecoder fills a config struct from a YAML tree and refuses what
// yaml.v3's own decoder would let through or report without context:
// unknown and duplicate keys, and type errors, each reported with the file,
// line and dotted key. It records the line of every key it sees so that
// validation errors found later can point at the same place.
type strictDecoder struct {
	file  string
	lines map[string]int // dotted key path -> line
}

// ConfigError is a problem at one place in a config file.
type ConfigError struct {
	File string
	Line int
	Key  string
	Msg  string
}

func (e *ConfigError) Error() string {
	switch {
	case e.Line > 0 && e.Key != "":
		return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Key, e.Msg)
	case e.Line > 0:
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	case e.Key != "":
		return fmt.Sprintf("%s: %s: %s", e.File, e.Key, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

func (d *strictDecoder) errorf(n *yaml.Node, key, format string, args ...any) error {
	line := 0
	if n != nil {
		line = n.Line
	}
	return &ConfigError{File: d.file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)}
}

// line returns the line of key, or of its closest recorded parent.
func (d *strictDecoder) line(key string) int {
	for k := key; k != ""; {
		if l, ok := d.lines[k]; ok {
			return l
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

var (
	unmarshalerType     = reflect.TypeFor[yaml.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

func (d *strictDecoder) decode(n *yaml.Node, v reflect.Value, key string) error {
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		return d.decode(n.Content[0], v, key)
	}
	if n.Kind == yaml.AliasNode {
		return d.errorf(n, key, "YAML aliases are not supported in the config")
	}
	if n.Tag == "!!null" {
		return nil // an empty value keeps the default
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		return d.decode(n, v.Elem(), key)
	}
	if v.CanAddr() && v.Addr().Type().Implements(unmarshalerType) {
		if err := n.Decode(v.Addr().Interface()); err != nil {
			return d.errorf(n, key, "%v", cleanYAMLError(err))
		}
		return nil
	}
	if v.CanAddr() && v.Addr().Type().Implements(textUnmarshalerType) {
		// Addresses, prefixes: scalars in YAML, structs in Go.
		if n.Kind != yaml.ScalarNode {
			return d.errorf(n, key, "expected a single value, got %s", describe(n))
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			// netip's errors repeat the input inside a function name:
			// keep the reason only.
			msg := err.Error()
			if i := strings.LastIndex(msg, "): "); i >= 0 {
				msg = msg[i+3:]
			}
			return d.errorf(n, key, "%q is not valid: %s", n.Value, msg)
		}
		return nil
	}
	switch v.Kind() {
	case reflect.Struct:
		return d.decodeStruct(n, v, key)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return d.errorf(n, key, "expected a list, got %s", describe(n))
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			k := fmt.Sprintf("%s[%d]", key, i)
			d.lines[k] = item.Line
			if err := d.decode(item, s.Index(i), k); err != nil {
				return err
			}
		}
		v.Set(s)
		return nil
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return d.errorf(n, key, "expected a mapping, got %s", describe(n))
		}
		m := reflect.MakeMap(v.Type())
		for i := 0; i+1 < len(n.Content); i += 2 {
			kn, vn := n.Content[i], n.Content[i+1]
			k := key + "." + kn.Value
			if m.MapIndex(reflect.ValueOf(kn.Value)).IsValid() {
				return d.errorf(kn, k, "duplicate key")
			}
			d.lines[k] = kn.Line
			elem := reflect.New(v.Type().Elem()).Elem()
			if err := d.decode(vn, elem, k); err != nil {
				return err
			}
			m.SetMapIndex(reflect.ValueOf(kn.Value), elem)
		}
		v.Set(m)
		return nil
	}
	if n.Kind != yaml.ScalarNode {
		return d.errorf(n, key, "expected a single value, got %s", describe(n))
	}
	if err := n.Decode(v.Addr().Interface()); err != nil {
		return d.errorf(n, key, "%v", cleanYAMLError(err))
	}
	return nil
}

func (d *strictDecoder) decodeStruct(n *yaml.Node, v reflect.Value, key string) error {
	if n.Kind != yaml.MappingNode {
		return d.errorf(n, key, "expected a mapping, got %s", describe(n))
	}
	fields := map[string]int{}
	t := v.Type()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			fields[name] = i
		}
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := n.Content[i], n.Content[i+1]
		k := kn.Value
		if key != "" {
			k = key + "." + kn.Value
		}
		idx, ok := fields[kn.Value]
		if !ok {
			return d.errorf(kn, k, "unknown key (known keys here: %s)", knownKeys(fields))
		}
		if seen[kn.Value] {
			return d.errorf(kn, k, "duplicate key")
		}
		seen[kn.Value] = true
		d.lines[k] = kn.Line
		if err := d.decode(vn, v.Field(idx), k); err != nil {
			return err
		}
	}
	return nil
}

func knownKeys(fields map[string]int) string {
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.Value)
}

// cleanYAMLError drops yaml.v3's "yaml: unmarshal errors:" and "line N:"
// framing; the caller adds file, line and key itself.
func cleanYAMLError(err error) string {
	s := strings.TrimSpace(err.Error())
	s = strings.TrimPrefix(s, "yaml: unmarshal errors:")
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "yaml: ")
	return yamlLinePrefix.ReplaceAllString(s, "")
}

var yamlLinePrefix = regexp.MustCompile(`^line \d+: `)
