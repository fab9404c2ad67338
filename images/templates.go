package images

import "embed"

//go:embed templates/*.tmpl
var templates embed.FS

// Template returns the text of a configuration file template:
// "SEPMAC.cnf.xml" (one phone's configuration) or "XMLDefault.cnf.xml"
// (auto-registration). Each template documents the data it expects.
func Template(name string) (string, error) {
	b, err := templates.ReadFile("templates/" + name + ".tmpl")
	if err != nil {
		return "", err
	}
	return string(b), nil
}
