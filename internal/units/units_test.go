package units

import "testing"

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "512": 512, "64KiB": 64 << 10, "256MiB": 256 << 20, "2GiB": 2 << 30,
		"1.5GiB": 3 << 29, "10MB": 10e6, " 3 GiB ": 3 << 30, "1TiB": 1 << 40, "4k": -1, "4K": 4096, "100B": 100} {
		got, err := ParseSize(in)
		if want < 0 {
			if err == nil {
				t.Errorf("%q: %d, want an error", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "MiB", "1.5", "0.3KiB", "1e3", "0x10", "9999999TiB", "NaN", "Inf", "1_000"} {
		if v, err := ParseSize(in); err == nil {
			t.Errorf("%q: %d, want an error", in, v)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	f.Add("256MiB")
	f.Add("1.5GB")
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSize(s)
		if err == nil && v < 0 {
			t.Fatalf("%q: negative %d", s, v)
		}
	})
}
