package units

import (
	"math"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "512": 512, "64KiB": 64 << 10, "256MiB": 256 << 20, "2GiB": 2 << 30,
		"1.5GiB": 3 << 29, "10MB": 10e6, " 3 GiB ": 3 << 30, "1TiB": 1 << 40, "4k": -1, "4K": 4096, "100B": 100,
		"1.5TB": 15e11, "512MiB": 512 << 20, "+7": 7, "-0": 0,
		"9223372036854775807": math.MaxInt64, "9007199254740993": 9007199254740993, "8388607TiB": 8388607 << 40} {
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

// Hostile input gets an error that names it and says what is wrong.
func TestParseSizeErrors(t *testing.T) {
	for in, want := range map[string]string{
		"-2GiB":                 "is negative",
		"-1":                    "is negative",
		"-1.5GB":                "is negative",
		"-99999999999999999999": "is negative",
		"9223372036854775808":   "too large",
		"8388608TiB":            "too large",
		"9999999999TB":          "too large",
		"1e30":                  "write a number of bytes",
		"2GiBs":                 "write a number of bytes",
		"2 XB":                  "write a number of bytes",
		"12PB":                  "write a number of bytes",
		"two GiB":               "write a number of bytes",
		"0.5B":                  "not a whole number",
		"1/2GiB":                "write a number of bytes",
	} {
		_, err := ParseSize(in)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), in) {
			t.Errorf("%q: %v, want an error naming it that says %q", in, err, want)
		}
	}
}

func TestFormatSizeRoundTrips(t *testing.T) {
	for _, n := range []int64{0, 1, 1000, 1024, 1536, 2 << 30, 10 << 40, 3<<20 + 1, math.MaxInt64} {
		s := FormatSize(n)
		if back, err := ParseSize(s); err != nil || back != n {
			t.Errorf("%d → %q → %d, %v", n, s, back, err)
		}
	}
	if FormatSize(2<<30) != "2GiB" || FormatSize(1536) != "1536" && FormatSize(1536) != "1536B" {
		t.Errorf("FormatSize: %q %q", FormatSize(2<<30), FormatSize(1536))
	}
}

func TestSizeFlag(t *testing.T) {
	var n int64 = 2 << 30
	f := SizeFlag{&n}
	if f.String() != "2GiB" || f.Type() != "size" {
		t.Errorf("%q %q", f.String(), f.Type())
	}
	if err := f.Set("512MiB"); err != nil || n != 512<<20 {
		t.Errorf("Set: %d, %v", n, err)
	}
	if err := f.Set("-1GiB"); err == nil || n != 512<<20 {
		t.Errorf("Set of a negative size: %d, %v", n, err)
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

func TestHuman(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 812: "812 B", 1024: "1.0 KiB", 1536 << 20: "1.5 GiB", 5 << 40: "5.0 TiB", -2048: "-2.0 KiB"} {
		if got := Human(n); got != want {
			t.Errorf("Human(%d) = %q, want %q", n, got, want)
		}
	}
}
