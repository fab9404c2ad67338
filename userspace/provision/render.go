package provision

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"strings"
	"text/template"

	"github.com/phoneboot/phoneboot/images"
)

// xmlText is text escaped for XML element content and attribute values.
// The templates' data holds no other kind of text, so no inventory value
// can reach a template unescaped, whatever the template does with it.
type xmlText string

// esc escapes s for XML: & < > " ' and the whitespace controls become
// character references, and what XML cannot carry becomes U+FFFD. Values
// are escaped once, when the inventory is loaded.
func esc(s string) xmlText {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '&' || c == '<' || c == '>' || c == '"' || c == '\'' {
			var b strings.Builder
			xml.EscapeText(&b, []byte(s)) // into a Builder: cannot fail
			return xmlText(b.String())
		}
	}
	return xmlText(s)
}

// cnfData is the data of SEPMAC.cnf.xml (see its template).
type cnfData struct {
	Protocol      xmlText
	SIP           bool
	Description   xmlText
	DevicePool    xmlText
	DateTime      dateTimeData
	Members       []memberData
	SIPPort       int
	Lines         []lineData
	Load          xmlText
	UserLocale    localeData
	NetworkLocale xmlText
	VersionStamp  xmlText
}

type dateTimeData struct {
	Name, DateTemplate, TimeZone xmlText
	NTP                          []xmlText
}

type memberData struct {
	Priority          int
	Host              xmlText
	SCCPPort, SIPPort int
}

type lineData struct {
	Button                     int
	Number, Label, DisplayName xmlText
}

type localeData struct {
	Name, LangCode xmlText
}

// defaultData is the data of XMLDefault.cnf.xml (see its template).
type defaultData struct {
	Members []memberData
	Loads   []modelLoad
}

type modelLoad struct {
	DeviceType int
	Model      xmlText // "Cisco 8851"
	Load       xmlText
}

// stampPlaceholder is rendered where the version stamp goes, then
// overwritten with the stamp: a UUID-shaped digest of the rest of the file.
const stampPlaceholder = "00000000-0000-0000-0000-000000000000"

var stampElement = []byte("<versionStamp>" + stampPlaceholder)

func parseTemplate(name string) (*template.Template, error) {
	text, err := images.Template(name)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	t, err := template.New(name).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	return t, nil
}

// renderStamped executes t with d (whose VersionStamp is the placeholder)
// into buf, then puts the stamp in: the first 16 bytes of the SHA-256 of
// the output with the placeholder, written like a UUID as CallManager
// writes its stamps. The stamp therefore changes exactly when something
// else in the file does: another load, line, group, proxy, template.
func renderStamped(t *template.Template, d *cnfData, buf *bytes.Buffer) error {
	d.VersionStamp = stampPlaceholder
	if err := t.Execute(buf, d); err != nil {
		return err
	}
	out := buf.Bytes()
	i := bytes.Index(out, stampElement)
	if i < 0 {
		return fmt.Errorf("template %s has no <versionStamp>{{.VersionStamp}}", t.Name())
	}
	sum := sha256.Sum256(out)
	s := out[i+len("<versionStamp>"):][:len(stampPlaceholder)]
	hex.Encode(s[0:8], sum[0:4])
	hex.Encode(s[9:13], sum[4:6])
	hex.Encode(s[14:18], sum[6:8])
	hex.Encode(s[19:23], sum[8:10])
	hex.Encode(s[24:36], sum[10:16])
	return nil
}
