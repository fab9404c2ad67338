package lab

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// phoneConfig is what a phone keeps from its configuration file
// (SEP<MAC>.cnf.xml, or XMLDefault.cnf.xml when it has none): the load it
// must run, and what the register phase needs.
type phoneConfig struct {
	File       string // the file it came from
	Protocol   string // SCCP or SIP; empty from XMLDefault.cnf.xml
	Load       string // the load to run; empty: no load named for the model
	DevicePool string
	// CallManagers to register with, highest priority (lowest number)
	// first.
	CallManagers []callManager
	VersionStamp string
	UserLocale   string
}

// callManager is one member of the CallManager group.
type callManager struct {
	Priority int
	Host     string // processNodeName: an address or host name
	SCCPPort int    // ethernetPhonePort; 2000 when the file has none
	SIPPort  int    // sipPort; 5060 when the file has none
}

// Limits a phone holds configuration files to.
const (
	maxConfigSize = 64 << 10
	// Cisco documents three CallManagers a group; usecallmanager's notes
	// allow five (priority 0-4). A phone takes five and ignores the rest.
	maxCallManagers = 5
	maxHostLen      = 255
)

// XML of the two files. Paths select what the phone reads; the rest of
// the file is skipped.
type cnfMember struct {
	Priority string `xml:"priority,attr"`
	SCCPPort string `xml:"callManager>ports>ethernetPhonePort"`
	SIPPort  string `xml:"callManager>ports>sipPort"`
	Host     string `xml:"callManager>processNodeName"`
}

type cnfDevice struct {
	Protocol     string      `xml:"deviceProtocol"`
	DevicePool   string      `xml:"devicePool>name"`
	Members      []cnfMember `xml:"devicePool>callManagerGroup>members>member"`
	VersionStamp string      `xml:"versionStamp"`
	Load         string      `xml:"loadInformation"`
	UserLocale   string      `xml:"userLocale>name"`
}

type cnfDefault struct {
	Members []cnfMember `xml:"callManagerGroup>members>member"`
	// Other elements, among them loadInformation<device type>.
	Other []cnfElement `xml:",any"`
}

type cnfElement struct {
	XMLName xml.Name
	Model   string `xml:"model,attr"`
	Text    string `xml:",chardata"`
}

// parseDeviceConfig parses a SEP<MAC>.cnf.xml.
func parseDeviceConfig(data []byte) (*phoneConfig, error) {
	var d cnfDevice
	if err := decodeRoot(data, "device", &d); err != nil {
		return nil, err
	}
	c := &phoneConfig{
		Protocol:     strings.ToUpper(strings.TrimSpace(d.Protocol)),
		Load:         strings.TrimSpace(d.Load),
		DevicePool:   strings.TrimSpace(d.DevicePool),
		VersionStamp: strings.TrimSpace(d.VersionStamp),
		UserLocale:   strings.TrimSpace(d.UserLocale),
	}
	switch c.Protocol {
	case "SCCP", "SIP":
	default:
		return nil, fmt.Errorf("cnf.xml: deviceProtocol %q is neither SCCP nor SIP", d.Protocol)
	}
	if err := checkLoadName(c.Load); err != nil {
		return nil, err
	}
	var err error
	if c.CallManagers, err = callManagers(d.Members); err != nil {
		return nil, err
	}
	return c, nil
}

// parseDefaultConfig parses an XMLDefault.cnf.xml for a phone of
// deviceType: its load is that of <loadInformation<deviceType>>.
func parseDefaultConfig(data []byte, deviceType int) (*phoneConfig, error) {
	var d cnfDefault
	if err := decodeRoot(data, "Default", &d); err != nil {
		return nil, err
	}
	c := &phoneConfig{}
	tag := "loadInformation" + strconv.Itoa(deviceType)
	for _, e := range d.Other {
		if e.XMLName.Local != tag {
			continue
		}
		if c.Load != "" {
			return nil, fmt.Errorf("XMLDefault.cnf.xml: %s twice", tag)
		}
		c.Load = strings.TrimSpace(e.Text)
		if c.Load == "" {
			return nil, fmt.Errorf("XMLDefault.cnf.xml: %s is empty", tag)
		}
	}
	if err := checkLoadName(c.Load); err != nil {
		return nil, err
	}
	var err error
	if c.CallManagers, err = callManagers(d.Members); err != nil {
		return nil, err
	}
	return c, nil
}

// decodeRoot decodes data into v, whose root element must be root. The
// XML must be well-formed to its end.
func decodeRoot(data []byte, root string, v any) error {
	if len(data) > maxConfigSize {
		return fmt.Errorf("configuration file of %d bytes: more than %d", len(data), maxConfigSize)
	}
	dec := xml.NewDecoder(bytes.NewReader(data))
	for {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("configuration file: no <%s>: %w", root, err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if se.Name.Local != root {
				return fmt.Errorf("configuration file: root <%s>, want <%s>", se.Name.Local, root)
			}
			if err := dec.DecodeElement(v, &se); err != nil {
				return fmt.Errorf("configuration file: %w", err)
			}
			break
		}
	}
	// Only comments, processing instructions and space may follow.
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("configuration file after </%s>: %w", root, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			return fmt.Errorf("configuration file: <%s> after </%s>", t.Name.Local, root)
		case xml.CharData:
			if len(bytes.TrimSpace(t)) > 0 {
				return fmt.Errorf("configuration file: text after </%s>", root)
			}
		}
	}
}

// callManagers checks the group's members and orders them by priority.
func callManagers(ms []cnfMember) ([]callManager, error) {
	if len(ms) == 0 {
		return nil, fmt.Errorf("configuration file: no CallManager in the group")
	}
	var cms []callManager
	for i, m := range ms {
		if i == maxCallManagers {
			break
		}
		cm := callManager{Host: strings.TrimSpace(m.Host)}
		if cm.Host == "" || len(cm.Host) > maxHostLen || strings.ContainsAny(cm.Host, " \t\r\n/") {
			return nil, fmt.Errorf("configuration file: member %d: processNodeName %q is not an address or host name", i, m.Host)
		}
		var err error
		if cm.Priority, err = number(m.Priority, 0, 0, maxCallManagers-1); err != nil {
			return nil, fmt.Errorf("configuration file: member %d: priority: %w", i, err)
		}
		if cm.SCCPPort, err = number(m.SCCPPort, 2000, 1, 65535); err != nil {
			return nil, fmt.Errorf("configuration file: member %d: ethernetPhonePort: %w", i, err)
		}
		if cm.SIPPort, err = number(m.SIPPort, 5060, 1, 65535); err != nil {
			return nil, fmt.Errorf("configuration file: member %d: sipPort: %w", i, err)
		}
		cms = append(cms, cm)
	}
	slices.SortStableFunc(cms, func(a, b callManager) int { return a.Priority - b.Priority })
	return cms, nil
}

// number parses a decimal in [lo, hi]; empty is def.
func number(s string, def, lo, hi int) (int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%q is not a number from %d to %d", s, lo, hi)
	}
	return n, nil
}

// checkLoadName accepts what a phone would turn into a file name:
// <load>.loads, one plain name.
func checkLoadName(load string) error {
	if load == "" {
		return nil
	}
	if len(load) > 64 || strings.ContainsAny(load, "/\\ \t") || load == "." || load == ".." {
		return fmt.Errorf("configuration file: loadInformation %q is not a load name", load)
	}
	for i := 0; i < len(load); i++ {
		if load[i] < 0x21 || load[i] > 0x7e {
			return fmt.Errorf("configuration file: loadInformation %q is not a load name", load)
		}
	}
	return nil
}
