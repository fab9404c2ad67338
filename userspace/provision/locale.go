package provision

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// userLocales maps the user locale names Cisco's locale installers use (the
// directory a phone fetches its locale files from) to the language code
// <userLocale><langCode> carries.
var userLocales = map[string]string{
	"Chinese_China":              "zh_CN",
	"Danish_Denmark":             "da_DK",
	"Dutch_Netherlands":          "nl_NL",
	"English_United_Kingdom":     "en_GB",
	"English_United_States":      "en_US",
	"Finnish_Finland":            "fi_FI",
	"French_Canada":              "fr_CA",
	"French_France":              "fr_FR",
	"German_Germany":             "de_DE",
	"Italian_Italy":              "it_IT",
	"Japanese_Japan":             "ja_JP",
	"Korean_Korea_Republic":      "ko_KR",
	"Norwegian_Norway":           "no_NO",
	"Polish_Poland":              "pl_PL",
	"Portuguese_Brazil":          "pt_BR",
	"Portuguese_Portugal":        "pt_PT",
	"Russian_Russian_Federation": "ru_RU",
	"Spanish_Spain":              "es_ES",
	"Swedish_Sweden":             "sv_SE",
	"Chinese_Taiwan":             "zh_TW",
}

func unknownLocale(name string) string {
	return fmt.Sprintf("%q is not a user locale (known: %s)", name, strings.Join(slices.Sorted(maps.Keys(userLocales)), ", "))
}
