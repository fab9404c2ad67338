package agent

import (
	"reflect"
	"regexp"
	"strconv"
)

func reflectValue(p any) reflect.Value { return reflect.ValueOf(p).Elem() }

var yamlLineRe = regexp.MustCompile(`line (\d+)`)

// yamlErrorLine extracts the line from a yaml.v3 syntax error.
func yamlErrorLine(err error) int {
	m := yamlLineRe.FindStringSubmatch(err.Error())
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
