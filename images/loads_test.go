package images

import (
	"bytes"
	"strings"
	"testing"
)

const goodLoads = `# a comment
; another
[LOAD]
id=sip78xx.14-2-1-0001-14
models=CP-7821, CP-7841

[PLATFORM_1]
sboot=sboot78xx.14-2-1-0001-14.sbn 46638 00000000000000000000000000000000000000000000000000000000000000aa
kern = kern78xx.14-2-1-0001-14.sbn 0 00000000000000000000000000000000000000000000000000000000000000bb

[platform_2]
ROOTFS=rootfs2.78xx.14-2-1-0001-14.sbn 5668907 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
`

func TestParseLoads(t *testing.T) {
	lf, err := ParseLoads([]byte(goodLoads))
	if err != nil {
		t.Fatal(err)
	}
	if lf.ID != "sip78xx.14-2-1-0001-14" || strings.Join(lf.Models, "|") != "CP-7821|CP-7841" {
		t.Errorf("id %q models %q", lf.ID, lf.Models)
	}
	want := []Component{
		{Platform: 1, Role: "sboot", Name: "sboot78xx.14-2-1-0001-14.sbn", Size: 46638},
		{Platform: 1, Role: "kern", Name: "kern78xx.14-2-1-0001-14.sbn", Size: 0},
		{Platform: 2, Role: "rootfs", Name: "rootfs2.78xx.14-2-1-0001-14.sbn", Size: 5668907},
	}
	want[0].SHA256[31] = 0xaa
	want[1].SHA256[31] = 0xbb
	for i := range want[2].SHA256 {
		want[2].SHA256[i] = 0xaa
	}
	if len(lf.Files) != len(want) {
		t.Fatalf("got %d files, want %d", len(lf.Files), len(want))
	}
	for i := range want {
		if lf.Files[i] != want[i] {
			t.Errorf("file %d: got %+v, want %+v", i, lf.Files[i], want[i])
		}
	}
	// CRLF line ends read the same.
	crlf, err := ParseLoads([]byte(strings.ReplaceAll(goodLoads, "\n", "\r\n")))
	if err != nil || len(crlf.Files) != 3 || crlf.Files[2] != want[2] {
		t.Errorf("CRLF: %v %+v", err, crlf)
	}
}

func TestParseLoadsErrors(t *testing.T) {
	const h = "0000000000000000000000000000000000000000000000000000000000000000"
	head := "[LOAD]\nid=x\n[PLATFORM_1]\n"
	for _, tc := range []struct {
		name, text, want string
	}{
		{"empty", "", "no [LOAD] id"},
		{"no files", "[LOAD]\nid=x\n", "lists no files"},
		{"key before section", "id=x\n", "before any section"},
		{"unknown section", "[FOO]\n", "unknown section"},
		{"platform 0", "[PLATFORM_0]\n", "not PLATFORM_1"},
		{"platform 10", "[PLATFORM_10]\n", "not PLATFORM_1"},
		{"platform letters", "[PLATFORM_x]\n", "not PLATFORM_1"},
		{"unclosed section", "[LOAD\n", "lacks its ]"},
		{"repeated section", "[LOAD]\n[LOAD]\n", "repeated"},
		{"no equals", "[LOAD]\nid\n", "neither"},
		{"empty key", "[LOAD]\n=x\n", "empty key"},
		{"repeated key", "[LOAD]\nid=x\nid=y\n", "repeated"},
		{"unknown load key", "[LOAD]\nfoo=x\n", "unknown key"},
		{"bad id", "[LOAD]\nid=a/b\n", "not a plain file name"},
		{"empty model", "[LOAD]\nid=x\nmodels=a,,b\n", "not a model name"},
		{"role upper-case is folded, role punctuation is not", head + "k-rn=a 1 " + h + "\n", "not a component role"},
		{"two fields", head + "kern=a 1\n", "got 2 fields"},
		{"four fields", head + "kern=a 1 " + h + " x\n", "got 4 fields"},
		{"traversal name", head + "kern=../a 1 " + h + "\n", "not a plain file name"},
		{"dot name", head + "kern=.. 1 " + h + "\n", "not a plain file name"},
		{"negative size", head + "kern=a -1 " + h + "\n", "not a decimal"},
		{"leading zero size", head + "kern=a 01 " + h + "\n", "not a decimal"},
		{"huge size", head + "kern=a 99999999999 " + h + "\n", "not a decimal"},
		{"short hash", head + "kern=a 1 abc\n", "not 64 hex"},
		{"non-hex hash", head + "kern=a 1 " + strings.Repeat("g", 64) + "\n", "not 64 hex"},
		{"same file twice", head + "kern=a 1 " + h + "\nrootfs=A 1 " + h + "\n", "listed twice"},
		{"control byte", "[LOAD]\nid=x\x01\n", "not printable"},
		{"non-ASCII", "[LOAD]\nid=é\n", "not printable"},
		{"too big", strings.Repeat("#", MaxLoadsSize+1), "more than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseLoads([]byte(tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	var many strings.Builder
	many.WriteString(head)
	for i := range MaxLoadsFiles + 1 {
		many.WriteString("r" + strings.Repeat("x", i/10) + string(rune('0'+i%10)) + "=f" + string(rune('0'+i%10)) + strings.Repeat("z", i/10) + " 1 " + h + "\n")
	}
	if _, err := ParseLoads([]byte(many.String())); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("%d files: got %v", MaxLoadsFiles+1, err)
	}
}

func TestLoadsFormatRoundTrip(t *testing.T) {
	lf, err := ParseLoads([]byte(goodLoads))
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseLoads(lf.Format())
	if err != nil {
		t.Fatalf("%v\n%s", err, lf.Format())
	}
	if !sameLoads(lf, again) {
		t.Errorf("round trip changed\n%+v\nto\n%+v", lf, again)
	}
}

func sameLoads(a, b *LoadsFile) bool {
	if a.ID != b.ID || strings.Join(a.Models, ",") != strings.Join(b.Models, ",") || len(a.Files) != len(b.Files) {
		return false
	}
	// Format groups by platform: compare per platform in order.
	for p := 1; p <= maxPlatform; p++ {
		var x, y []Component
		for _, c := range a.Files {
			if c.Platform == p {
				x = append(x, c)
			}
		}
		for _, c := range b.Files {
			if c.Platform == p {
				y = append(y, c)
			}
		}
		if len(x) != len(y) {
			return false
		}
		for i := range x {
			if x[i] != y[i] {
				return false
			}
		}
	}
	return true
}

func FuzzParseLoads(f *testing.F) {
	f.Add([]byte(goodLoads))
	f.Add([]byte("[LOAD]\nid=x\n[PLATFORM_9]\na=b 0 " + strings.Repeat("0", 64)))
	f.Add([]byte("[LOAD]\r\nid=x\r\n"))
	f.Add([]byte("[\n]\n=\n"))
	c, err := SyntheticCatalog()
	if err != nil {
		f.Fatal(err)
	}
	for _, l := range c.Loads {
		f.Add(l.Manifest().Format())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lf, err := ParseLoads(data)
		if err != nil {
			return
		}
		if len(lf.Files) == 0 || len(lf.Files) > MaxLoadsFiles || lf.ID == "" {
			t.Fatalf("accepted %+v", lf)
		}
		for _, c := range lf.Files {
			if checkFileName(c.Name) != nil || c.Size < 0 || c.Size > MaxComponentSize || c.Platform < 1 || c.Platform > maxPlatform {
				t.Fatalf("accepted component %+v", c)
			}
		}
		out := lf.Format()
		again, err := ParseLoads(out)
		if err != nil {
			t.Fatalf("own output rejected: %v\n%s", err, out)
		}
		if !sameLoads(lf, again) {
			t.Fatalf("round trip changed %+v to %+v", lf, again)
		}
		if !bytes.Equal(again.Format(), out) {
			t.Fatal("Format is not stable")
		}
	})
}

func BenchmarkParseLoads(b *testing.B) {
	c, err := SyntheticCatalog()
	if err != nil {
		b.Fatal(err)
	}
	data := c.Loads[0].Manifest().Format()
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := ParseLoads(data); err != nil {
			b.Fatal(err)
		}
	}
}
