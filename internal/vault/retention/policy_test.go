package retention

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	h, m := time.Hour, time.Minute
	tests := []struct {
		expr      string
		want      Policy
		canonical string
	}{
		{"1h:all,24h:5m,72h:1h,keep-app=15d",
			Policy{Terms: []Term{{h, 0}, {24 * h, 5 * m}, {72 * h, h}}, KeepApp: 15 * day, KeepLast: 1},
			"1h:all,1d:5m,3d:1h,keep-app=15d"},
		{" 1h:all , 1d12h:30m,keep-last=3 ",
			Policy{Terms: []Term{{h, 0}, {36 * h, 30 * m}}, KeepLast: 3},
			"1h:all,1d12h:30m,keep-last=3"},
		{"keep-last=5,keep-app=1w,30d:1d",
			Policy{Terms: []Term{{30 * day, day}}, KeepApp: week, KeepLast: 5},
			"30d:1d,keep-app=1w,keep-last=5"},
		{"keep-last=1", Policy{KeepLast: 1}, "keep-last=1"},
		{"keep-app=36h", Policy{KeepApp: 36 * h, KeepLast: 1}, "keep-app=1d12h"},
		{"1.5h:all,2h:30m", Policy{Terms: []Term{{90 * m, 0}, {2 * h, 30 * m}}, KeepLast: 1}, "1h30m:all,2h:30m"},
		{"1w:1d,4w:1w,52w:4w", Policy{Terms: []Term{{week, day}, {4 * week, week}, {52 * week, 4 * week}}, KeepLast: 1}, "1w:1d,4w:1w,52w:4w"},
		{"10s:1500ms,1m:3s", Policy{Terms: []Term{{10 * time.Second, 1500 * time.Millisecond}, {time.Minute, 3 * time.Second}}, KeepLast: 1}, "10s:1s500ms,1m:3s"},
		{"2h:1h,3h:1h", Policy{Terms: []Term{{2 * h, h}, {3 * h, h}}, KeepLast: 1}, "2h:1h,3h:1h"},
		{"1µs:1ns,1ms:1us", Policy{Terms: []Term{{time.Microsecond, 1}, {time.Millisecond, time.Microsecond}}, KeepLast: 1}, "1us:1ns,1ms:1us"},
		{"7d:all", Policy{Terms: []Term{{week, 0}}, KeepLast: 1}, "1w:all"},
		{"1h:1h", Policy{Terms: []Term{{h, h}}, KeepLast: 1}, "1h:1h"},
	}
	for _, tt := range tests {
		p, err := Parse(tt.expr)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.expr, err)
			continue
		}
		if !reflect.DeepEqual(p, tt.want) {
			t.Errorf("Parse(%q) = %+v, want %+v", tt.expr, p, tt.want)
		}
		if got := p.String(); got != tt.canonical {
			t.Errorf("Parse(%q).String() = %q, want %q", tt.expr, got, tt.canonical)
		}
		if err := p.Validate(); err != nil {
			t.Errorf("Parse(%q).Validate(): %v", tt.expr, err)
		}
		checkRoundTrip(t, p)
	}
}

func checkRoundTrip(t *testing.T, p Policy) {
	t.Helper()
	s := p.String()
	q, err := Parse(s)
	if err != nil {
		t.Fatalf("Parse(%q) (String of %+v): %v", s, p, err)
	}
	if !reflect.DeepEqual(p, q) {
		t.Fatalf("round trip through %q: got %+v, want %+v", s, q, p)
	}
	if s2 := q.String(); s2 != s {
		t.Fatalf("String not canonical: %q then %q", s, s2)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ expr, want string }{
		{"", "empty policy"},
		{"   ", "empty policy"},
		{"1h:all,,24h:5m", "term 2 is empty"},
		{"1h:all,", "term 2 is empty"},
		{"garbage", `term "garbage": expected SPAN:INTERVAL, keep-app=DURATION or keep-last=N`},
		{"1h", `term "1h": expected SPAN:INTERVAL`},
		{"1y:all", `term "1y:all": span: unknown unit "y"`},
		{"1h:5x", `term "1h:5x": interval: unknown unit "x"`},
		{"1H:all", `term "1H:all": span: missing unit after "1"`},
		{"h:all", `span: expected a duration`},
		{"1h30:all", `span: missing unit after "30"`},
		{"1.2.3h:all", `span: expected a duration`},
		{"-1h:all", `span: expected a duration`},
		{":all", `span: missing duration`},
		{"1h:", `interval: missing duration`},
		{"1h:All", `interval: expected a duration`},
		{"0h:all", `term "0h:all": span must be positive`},
		{"1h:0s", `term "1h:0s": interval must be positive (use "all" to keep every point)`},
		{"1h:0.1ns", `interval must be positive`},
		{"24h:5m,1h:all", `term "1h:all": span 1h must be greater than the previous span 1d (spans must strictly increase)`},
		{"24h:5m,24h:1h", `span 1d must be greater than the previous span 1d`},
		{"1h:2h", `term "1h:2h": interval 2h is longer than the span 1h`},
		{"1d:1h,36h:1d", `term "36h:1d": interval 1d is longer than the band it thins (span 1d12h minus previous span 1d = 12h)`},
		{"1w:1d,8w:1w,365d:30d", `term "365d:30d": interval 30d must be a whole multiple of the previous interval 1w (such as 4w)`},
		{"1d:1h,30d:30m", `interval 30m must be a whole multiple of the previous interval 1h`},
		{"1h:5m,1d:all", `term "1d:all": "all" cannot follow a thinned term (1h:5m)`},
		{"keep-app=0s", `term "keep-app=0s": duration must be positive`},
		{"keep-app=", `term "keep-app=": missing duration`},
		{"keep-app=1d,keep-app=2d", `term "keep-app=2d": keep-app given twice`},
		{"keep-last=0", `term "keep-last=0": expected a whole number of at least 1`},
		{"keep-last=-1", `expected a whole number of at least 1`},
		{"keep-last=+1", `expected a whole number of at least 1`},
		{"keep-last=1.5", `expected a whole number of at least 1`},
		{"keep-last=", `expected a whole number of at least 1`},
		{"keep-last=2,keep-last=3", `keep-last given twice`},
		{"keep-last=99999999999999999999", `number too large`},
		{"keep-other=1", `expected SPAN:INTERVAL, keep-app=DURATION or keep-last=N`},
		{"99999999999999999999h:all", `span: duration too large`},
		{"300y:all", `unknown unit "y"`},
		{"15251w:all", `span: duration too large`},
		{"106752d:all", `span: duration too large`},
		{"106751d23h48m:all", `span: duration too large`},
		{"1h:all,24h:5m:1", `term "24h:5m:1": interval: expected a duration`},
		{"1 h:all", `span: missing unit after "1"`},
	}
	for _, tt := range tests {
		p, err := Parse(tt.expr)
		if err == nil {
			t.Errorf("Parse(%q) = %v, want error containing %q", tt.expr, p, tt.want)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) error %q, want it to contain %q", tt.expr, err, tt.want)
		}
		if !strings.HasPrefix(err.Error(), "retention: ") {
			t.Errorf("Parse(%q) error %q lacks the package prefix", tt.expr, err)
		}
	}
}

func TestParseDurationLimits(t *testing.T) {
	// The largest duration is accepted and formats back to itself.
	max := time.Duration(1<<63 - 1)
	p := Policy{Terms: []Term{{max, 0}}, KeepApp: max, KeepLast: 1<<31 - 1}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	checkRoundTrip(t, p)
	if d, err := ParseDuration("1d1d"); err != nil || d != 2*day {
		t.Errorf(`ParseDuration("1d1d") = %v, %v; want 48h`, d, err)
	}
	if d, err := ParseDuration("0.5d"); err != nil || d != 12*time.Hour {
		t.Errorf(`ParseDuration("0.5d") = %v, %v; want 12h`, d, err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		p    Policy
		want string
	}{
		{Policy{}, `term "keep-last=0"`},
		{Policy{Terms: []Term{{time.Hour, -time.Minute}}, KeepLast: 1}, "interval must be positive"},
		{Policy{Terms: []Term{{-time.Hour, 0}}, KeepLast: 1}, "span must be positive"},
		{Policy{Terms: []Term{{2 * time.Hour, time.Hour}, {3 * time.Hour, 90 * time.Minute}}, KeepLast: 1}, `term "3h:1h30m": interval 1h30m is longer than the band`},
		{Policy{KeepApp: -time.Hour, KeepLast: 1}, "keep-app"},
	}
	for _, tt := range tests {
		err := tt.p.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v.Validate() = %v, want error containing %q", tt.p, err, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"1h:all,24h:5m,72h:1h,keep-app=15d",
		"1w:1d,4w:1w,52w:4w,keep-last=3",
		"keep-last=1", "1.5h:all", "1d12h:1h", "10s:1500ms", "1µs:1ns",
		"", ",", "1h:", ":all", "99999999999999999999h:all", "keep-app=1d,keep-app=1d",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		p, err := Parse(expr)
		if err != nil {
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("Parse(%q) gave an invalid policy: %v", expr, err)
		}
		checkRoundTrip(t, p)
	})
}
