package lldp

import "testing"

// BenchmarkAppendFrame: a port's advertisement into a reused buffer.
func BenchmarkAppendFrame(b *testing.B) {
	p, err := NewPort(testPortConfig())
	if err != nil {
		b.Fatal(err)
	}
	m := p.Advertisement()
	buf := make([]byte, 0, 1514)
	b.ReportAllocs()
	for b.Loop() {
		buf, err = m.AppendFrame(buf[:0])
		if err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}

// BenchmarkAdvertisement: building the message and encoding it.
func BenchmarkAdvertisement(b *testing.B) {
	p, err := NewPort(testPortConfig())
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 0, 1514)
	b.ReportAllocs()
	for b.Loop() {
		buf, err = p.Advertisement().AppendFrame(buf[:0])
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	p, err := NewPort(testPortConfig())
	if err != nil {
		b.Fatal(err)
	}
	adv, err := p.Advertisement().AppendFrame(nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name  string
		frame []byte
	}{{"switch", adv}, {"lldpdMED", lldpdMED}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.frame)))
			for b.Loop() {
				if _, err := Decode(bc.frame); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
