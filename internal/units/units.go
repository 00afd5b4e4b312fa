// Package units parses the sizes operators write on command lines and in
// configuration files: "512", "64KiB", "256MiB", "2GiB", "1.5GB", "10MB".
// Binary prefixes (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones
// (KB, MB, GB, TB) powers of 1000; a bare number is bytes.
package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var multipliers = []struct {
	suffix string
	n      float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
	{"B", 1},
}

// ParseSize parses a size in bytes. It refuses negative sizes, fractions
// of a byte and sizes beyond int64.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	num, mult := t, 1.0
	for _, m := range multipliers {
		if rest, ok := strings.CutSuffix(t, m.suffix); ok {
			num, mult = strings.TrimSpace(rest), m.n
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" || strings.ContainsAny(num, "eExXpP_") {
		return 0, fmt.Errorf("size %q: write a number of bytes, optionally with KiB, MiB, GiB, TiB (or KB, MB, GB, TB)", s)
	}
	v := f * mult
	switch {
	case math.IsNaN(v) || v < 0:
		return 0, fmt.Errorf("size %q is negative", s)
	case v >= math.MaxInt64:
		return 0, fmt.Errorf("size %q is too large", s)
	case v != math.Trunc(v):
		return 0, fmt.Errorf("size %q is not a whole number of bytes", s)
	}
	return int64(v), nil
}
