// Package units parses the sizes operators write on command lines and in
// configuration files: "512", "64KiB", "256MiB", "2GiB", "1.5GB", "10MB".
// Binary prefixes (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones
// (KB, MB, GB, TB) powers of 1000; a bare number is bytes.
package units

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

type multiplier struct {
	suffix string
	n      int64
}

// multipliers returns the suffixes, longest first where they overlap.
func multipliers() []multiplier {
	return []multiplier{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
		{"B", 1},
	}
}

// ParseSize parses a size in bytes. It refuses negative sizes, fractions
// of a byte, sizes beyond int64 and unknown units, with an error that
// names the input.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	num, mult := t, int64(1)
	for _, m := range multipliers() {
		if rest, ok := strings.CutSuffix(t, m.suffix); ok {
			num, mult = strings.TrimSpace(rest), m.n
			break
		}
	}
	// Whole numbers exactly, without float rounding.
	if i, err := strconv.ParseInt(num, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		switch {
		case strings.HasPrefix(num, "-") && (i != 0 || err != nil):
			return 0, fmt.Errorf("size %q is negative", s)
		case err != nil || i > math.MaxInt64/mult:
			return 0, fmt.Errorf("size %q is too large (at most %d bytes)", s, int64(math.MaxInt64))
		}
		return i * mult, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" || strings.ContainsAny(num, "eExXpP_") {
		return 0, fmt.Errorf("size %q: write a number of bytes, optionally with KiB, MiB, GiB, TiB (or KB, MB, GB, TB)", s)
	}
	v := f * float64(mult)
	switch {
	case math.IsNaN(v) || v < 0:
		return 0, fmt.Errorf("size %q is negative", s)
	case v >= math.MaxInt64:
		return 0, fmt.Errorf("size %q is too large (at most %d bytes)", s, int64(math.MaxInt64))
	case v != math.Trunc(v):
		return 0, fmt.Errorf("size %q is not a whole number of bytes", s)
	}
	return int64(v), nil
}

// FormatSize writes n in the largest binary unit that divides it
// exactly ("2GiB", "1536KiB"), else in bytes; ParseSize reads it back.
func FormatSize(n int64) string {
	if n != 0 {
		for _, u := range []struct {
			suffix string
			n      int64
		}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
			if n%u.n == 0 {
				return strconv.FormatInt(n/u.n, 10) + u.suffix
			}
		}
	}
	return strconv.FormatInt(n, 10)
}

// Human writes n for people: in the largest binary unit that keeps it at
// least 1, with one decimal ("1.5 GiB", "812 B"). It is not read back.
func Human(n int64) string {
	f, units := float64(n), []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := 0
	for (f >= 1024 || f <= -1024) && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return strconv.FormatInt(n, 10) + " B"
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + " " + units[i]
}

// SizeFlag is a command-line flag (a pflag.Value, and a flag.Value) of a
// size in bytes that takes ParseSize's forms.
type SizeFlag struct{ P *int64 }

// String shows the size as FormatSize does.
func (f SizeFlag) String() string {
	if f.P == nil {
		return "0"
	}
	return FormatSize(*f.P)
}

// Set parses s with ParseSize.
func (f SizeFlag) Set(s string) error {
	n, err := ParseSize(s)
	if err != nil {
		return err
	}
	*f.P = n
	return nil
}

// Type names the flag's value in help.
func (SizeFlag) Type() string { return "size" }
