package retention

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

const (
	day  = 24 * time.Hour
	week = 7 * day
)

// Term is one SPAN:INTERVAL grid term.
type Term struct {
	Span     time.Duration
	Interval time.Duration // 0 means "all"
}

// String returns the term as written in a policy expression.
func (t Term) String() string {
	if t.Interval == 0 {
		return FormatDuration(t.Span) + ":all"
	}
	return FormatDuration(t.Span) + ":" + FormatDuration(t.Interval)
}

// Policy is a parsed retention policy. Use Parse, or check a Policy built by
// hand with Validate: Apply's stability guarantee holds for valid policies
// only.
type Policy struct {
	Terms    []Term        // grid terms, spans strictly increasing
	KeepApp  time.Duration // 0: no keep-app term
	KeepLast int           // at least 1
}

// String returns the canonical expression of p, which Parse accepts and
// turns back into p.
func (p Policy) String() string {
	var parts []string
	for _, t := range p.Terms {
		parts = append(parts, t.String())
	}
	if p.KeepApp != 0 {
		parts = append(parts, "keep-app="+FormatDuration(p.KeepApp))
	}
	if p.KeepLast != 1 || len(parts) == 0 {
		parts = append(parts, "keep-last="+strconv.Itoa(p.KeepLast))
	}
	return strings.Join(parts, ",")
}

// Validate reports the first rule of the package documentation that p
// breaks.
func (p Policy) Validate() error {
	for i, t := range p.Terms {
		if msg := checkTerm(p.Terms[:i], t); msg != "" {
			return termError(t.String(), msg)
		}
	}
	if p.KeepApp < 0 {
		return termError("keep-app="+FormatDuration(p.KeepApp), "duration must be positive")
	}
	if p.KeepLast < 1 {
		return termError("keep-last="+strconv.Itoa(p.KeepLast), "expected a whole number of at least 1")
	}
	return nil
}

// Parse parses a policy expression such as "1h:all,24h:5m,72h:1h,keep-app=15d".
// The package documentation gives the grammar and the rules.
func Parse(expr string) (Policy, error) {
	p := Policy{KeepLast: 1}
	if strings.TrimSpace(expr) == "" {
		return Policy{}, errors.New(`retention: empty policy; expected terms such as "1h:all,24h:5m,keep-last=3"`)
	}
	var seenApp, seenLast bool
	for i, raw := range strings.Split(expr, ",") {
		s := strings.TrimSpace(raw)
		switch {
		case s == "":
			return Policy{}, fmt.Errorf("retention: term %d is empty (stray comma?)", i+1)
		case strings.HasPrefix(s, "keep-app="):
			if seenApp {
				return Policy{}, termError(s, "keep-app given twice")
			}
			seenApp = true
			d, err := ParseDuration(strings.TrimPrefix(s, "keep-app="))
			if err != nil {
				return Policy{}, termError(s, err.Error())
			}
			if d <= 0 {
				return Policy{}, termError(s, "duration must be positive (leave the term out to disable it)")
			}
			p.KeepApp = d
		case strings.HasPrefix(s, "keep-last="):
			if seenLast {
				return Policy{}, termError(s, "keep-last given twice")
			}
			seenLast = true
			n, err := parseCount(strings.TrimPrefix(s, "keep-last="))
			if err != nil {
				return Policy{}, termError(s, err.Error())
			}
			p.KeepLast = n
		case strings.Contains(s, ":"):
			t, err := parseTerm(s)
			if err != nil {
				return Policy{}, termError(s, err.Error())
			}
			if msg := checkTerm(p.Terms, t); msg != "" {
				return Policy{}, termError(s, msg)
			}
			p.Terms = append(p.Terms, t)
		default:
			return Policy{}, termError(s, "expected SPAN:INTERVAL, keep-app=DURATION or keep-last=N")
		}
	}
	return p, nil
}

func termError(term, msg string) error {
	return fmt.Errorf("retention: term %q: %s", term, msg)
}

func parseTerm(s string) (Term, error) {
	span, interval, _ := strings.Cut(s, ":")
	sd, err := ParseDuration(span)
	if err != nil {
		return Term{}, fmt.Errorf("span: %v", err)
	}
	if sd <= 0 {
		return Term{}, errors.New("span must be positive")
	}
	if interval == "all" {
		return Term{Span: sd}, nil
	}
	id, err := ParseDuration(interval)
	if err != nil {
		return Term{}, fmt.Errorf(`interval: %v, or "all"`, err)
	}
	if id <= 0 {
		return Term{}, errors.New(`interval must be positive (use "all" to keep every point)`)
	}
	return Term{Span: sd, Interval: id}, nil
}

// checkTerm returns what is wrong with t following the terms prev, which are
// assumed valid, or "".
func checkTerm(prev []Term, t Term) string {
	if t.Span <= 0 {
		return "span must be positive"
	}
	if t.Interval < 0 {
		return `interval must be positive (use "all" to keep every point)`
	}
	var prevSpan, prevInterval time.Duration
	if len(prev) > 0 {
		prevSpan = prev[len(prev)-1].Span
		prevInterval = prev[len(prev)-1].Interval
	}
	if t.Span <= prevSpan {
		return fmt.Sprintf("span %s must be greater than the previous span %s (spans must strictly increase)",
			FormatDuration(t.Span), FormatDuration(prevSpan))
	}
	switch {
	case t.Interval == 0 && prevInterval != 0:
		return fmt.Sprintf(`"all" cannot follow a thinned term (%s): its points are already thinned`, prev[len(prev)-1])
	case t.Interval == 0:
		return ""
	case len(prev) == 0 && t.Interval > t.Span:
		return fmt.Sprintf("interval %s is longer than the span %s",
			FormatDuration(t.Interval), FormatDuration(t.Span))
	case t.Interval > t.Span-prevSpan:
		return fmt.Sprintf("interval %s is longer than the band it thins (span %s minus previous span %s = %s)",
			FormatDuration(t.Interval), FormatDuration(t.Span), FormatDuration(prevSpan), FormatDuration(t.Span-prevSpan))
	case prevInterval != 0 && t.Interval%prevInterval != 0:
		msg := fmt.Sprintf("interval %s must be a whole multiple of the previous interval %s",
			FormatDuration(t.Interval), FormatDuration(prevInterval))
		if k := t.Interval / prevInterval; k > 0 {
			msg += fmt.Sprintf(" (such as %s)", FormatDuration(k*prevInterval))
		}
		return msg
	}
	return ""
}

func parseCount(s string) (int, error) {
	const want = "expected a whole number of at least 1"
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, errors.New(want)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, errors.New("number too large")
	}
	if n < 1 {
		return 0, errors.New(want)
	}
	return n, nil
}

// ParseDuration parses NUMBER UNIT pairs such as "1d12h", "15d" or "1.5h"
// (units ns, us, ms, s, m, h, d, w), as retention grids and policies take them.
func ParseDuration(s string) (time.Duration, error) {
	const want = "expected a duration such as 90m, 36h or 1d12h (units ns, us, ms, s, m, h, d, w)"
	if s == "" {
		return 0, errors.New("missing duration; " + want)
	}
	var total time.Duration
	for s != "" {
		num := s[:len(s)-len(strings.TrimLeft(s, "0123456789."))]
		s = s[len(num):]
		unit := s[:len(s)-len(strings.TrimLeft(s, "abcdefghijklmnopqrstuvwxyzµμ"))]
		s = s[len(unit):]
		if num == "" || num == "." || strings.Count(num, ".") > 1 {
			return 0, errors.New(want)
		}
		if unit == "" {
			return 0, fmt.Errorf("missing unit after %q; %s", num, want)
		}
		base, mult := unit, time.Duration(1)
		switch unit {
		case "ns", "us", "µs", "μs", "ms", "s", "m", "h":
		case "d":
			base, mult = "h", 24
		case "w":
			base, mult = "h", 7*24
		default:
			return 0, fmt.Errorf("unknown unit %q; %s", unit, want)
		}
		v, err := time.ParseDuration(num + base)
		if err != nil || v > math.MaxInt64/mult || total > math.MaxInt64-v*mult {
			return 0, errors.New("duration too large (the maximum is about 292 years)")
		}
		total += v * mult
	}
	return total, nil
}

// FormatDuration writes d in the canonical form read by ParseDuration:
// whole weeks as "Nw", otherwise days, hours, minutes, seconds and
// sub-second units, largest first, zeros left out ("1d12h", "1s500ms").
func FormatDuration(d time.Duration) string {
	if d <= 0 {
		return d.String()
	}
	if d%week == 0 {
		return strconv.FormatInt(int64(d/week), 10) + "w"
	}
	var b strings.Builder
	for _, u := range []struct {
		name string
		d    time.Duration
	}{{"d", day}, {"h", time.Hour}, {"m", time.Minute}, {"s", time.Second},
		{"ms", time.Millisecond}, {"us", time.Microsecond}, {"ns", time.Nanosecond}} {
		if n := d / u.d; n > 0 {
			b.WriteString(strconv.FormatInt(int64(n), 10))
			b.WriteString(u.name)
			d -= n * u.d
		}
	}
	return b.String()
}
