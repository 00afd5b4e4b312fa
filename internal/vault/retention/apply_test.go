package retention

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// now is a Monday; in UTC, 1h buckets start on the hour and 1d buckets at
// midnight.
func testNow() time.Time { return time.Date(2025, 3, 10, 12, 0, 0, 0, time.UTC) }

func ago(d time.Duration) time.Time { return testNow().Add(-d) }

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

func mustParse(tb testing.TB, expr string) Policy {
	tb.Helper()
	p, err := Parse(expr)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// tags shortens reasons to what precedes ": ", joined by " + ".
func tags(reasons []string) string {
	var out []string
	for _, r := range reasons {
		tag, _, _ := strings.Cut(r, ": ")
		out = append(out, tag)
	}
	return strings.Join(out, " + ")
}

func TestApply(t *testing.T) {
	h, m := time.Hour, time.Minute
	tests := []struct {
		name   string
		policy string
		points []Point
		keep   []string          // IDs kept
		why    map[string]string // ID: tags of its reasons
	}{
		{
			name:   "empty input",
			policy: "1h:all",
		},
		{
			name:   "single point in the all band",
			policy: "1h:all",
			points: []Point{{ID: "a", Time: ago(10 * m)}},
			keep:   []string{"a"},
			why:    map[string]string{"a": "1h:all + keep-last=1"},
		},
		{
			name:   "single old point kept by keep-last",
			policy: "1h:all",
			points: []Point{{ID: "a", Time: ago(5 * h)}},
			keep:   []string{"a"},
			why:    map[string]string{"a": "keep-last=1"},
		},
		{
			name:   "all band keeps every point younger than its span",
			policy: "1h:all,keep-last=1",
			points: []Point{
				{ID: "a", Time: ago(h - 1)}, {ID: "b", Time: ago(30 * m)}, {ID: "c", Time: testNow()},
				{ID: "d", Time: ago(h)},
			},
			keep: []string{"a", "b", "c"},
			why: map[string]string{
				"a": "1h:all", "c": "1h:all + keep-last=1", "d": "older than the last span 1h",
			},
		},
		{
			name:   "bucket boundaries exactly at the interval",
			policy: "10m:all,1d:1h",
			points: []Point{
				{ID: "a", Time: at("2025-03-10T09:59:59.999999999Z")},
				{ID: "b", Time: at("2025-03-10T10:00:00Z")},
				{ID: "c", Time: at("2025-03-10T10:30:00Z")},
				{ID: "d", Time: at("2025-03-10T10:59:59.999999999Z")},
				{ID: "e", Time: at("2025-03-10T11:00:00Z")},
				{ID: "f", Time: at("2025-03-10T11:55:00Z")},
			},
			keep: []string{"a", "b", "e", "f"},
			why: map[string]string{
				"a": "1d:1h", "b": "1d:1h", "c": "1d:1h", "d": "1d:1h", "e": "1d:1h",
				"f": "10m:all + keep-last=1",
			},
		},
		{
			name:   "age equal to a span falls into the next band",
			policy: "1h:all,24h:2h",
			points: []Point{
				{ID: "x", Time: at("2025-03-10T10:30:00Z")},           // age 1h30m, bucket 10:00
				{ID: "y", Time: at("2025-03-10T11:00:00Z")},           // age 1h: thinned, same bucket
				{ID: "z", Time: at("2025-03-10T11:00:00.000000001Z")}, // age 1h-1ns: all band
				{ID: "w", Time: at("2025-03-10T11:30:00Z")},
			},
			keep: []string{"x", "z", "w"},
			why:  map[string]string{"x": "1d:2h", "y": "1d:2h", "z": "1h:all", "w": "1h:all + keep-last=1"},
		},
		{
			name:   "a bucket whose oldest point aged past the last span keeps nothing",
			policy: "1h:all,24h:2h",
			points: []Point{
				{ID: "a", Time: ago(24 * h)},      // age = last span: not kept; bucket 12:00-14:00
				{ID: "b", Time: ago(24*h - 1)},    // same bucket, younger: not promoted
				{ID: "c", Time: ago(23 * h)},      // same bucket
				{ID: "d", Time: ago(22 * h)},      // next bucket, its oldest
				{ID: "e", Time: ago(21*h + 59*m)}, // same bucket as d
				{ID: "n", Time: ago(m)},
			},
			keep: []string{"d", "n"},
			why: map[string]string{
				"a": "older than the last span 1d", "b": "1d:2h", "c": "1d:2h", "d": "1d:2h", "e": "1d:2h",
			},
		},
		{
			name:   "the oldest point of the bucket is kept when it is the oldest given",
			policy: "1h:all,24h:2h",
			points: []Point{
				{ID: "b", Time: ago(24*h - 1)},
				{ID: "c", Time: ago(23 * h)},
				{ID: "n", Time: ago(m)},
			},
			keep: []string{"b", "n"},
		},
		{
			name:   "only app points",
			policy: "1h:all,keep-app=2d",
			points: []Point{
				{ID: "a", Time: ago(30 * m), App: true}, {ID: "b", Time: ago(5 * h), App: true},
				{ID: "c", Time: ago(47 * h), App: true}, {ID: "d", Time: ago(48 * h), App: true},
				{ID: "e", Time: ago(49 * h), App: true},
			},
			keep: []string{"a", "b", "c"},
			why: map[string]string{
				"a": "1h:all + keep-app=2d + keep-last=1", "b": "keep-app=2d", "c": "keep-app=2d",
				"d": "older than the last span 1h", "e": "older than the last span 1h",
			},
		},
		{
			name:   "keep-app keeps only app-consistent points",
			policy: "1h:all,keep-app=1d",
			points: []Point{
				{ID: "a", Time: ago(2 * h)}, {ID: "b", Time: ago(3 * h), App: true}, {ID: "c", Time: ago(10 * m)},
			},
			keep: []string{"b", "c"},
			why:  map[string]string{"a": "older than the last span 1h", "b": "keep-app=1d"},
		},
		{
			name:   "keep-app and the grid both keep a point",
			policy: "1h:all,1d:1h,keep-app=1d",
			points: []Point{
				{ID: "a", Time: at("2025-03-10T09:00:00Z"), App: true},
				{ID: "b", Time: at("2025-03-10T09:10:00Z"), App: true},
				{ID: "n", Time: ago(m)},
			},
			keep: []string{"a", "b", "n"},
			why:  map[string]string{"a": "1d:1h + keep-app=1d", "b": "keep-app=1d"},
		},
		{
			name:   "keep-last larger than the number of points",
			policy: "1h:all,keep-last=10",
			points: []Point{{ID: "a", Time: ago(2 * h)}, {ID: "b", Time: ago(72 * h)}, {ID: "c", Time: ago(7 * 24 * h)}},
			keep:   []string{"a", "b", "c"},
			why:    map[string]string{"a": "keep-last=10", "b": "keep-last=10", "c": "keep-last=10"},
		},
		{
			name:   "keep-last takes the newest by time, not by input order",
			policy: "1h:all,keep-last=2",
			points: []Point{
				{ID: "a", Time: ago(5 * h)}, {ID: "b", Time: ago(3 * h)}, {ID: "c", Time: ago(4 * h)}, {ID: "d", Time: ago(2 * h)},
			},
			keep: []string{"b", "d"},
		},
		{
			name:   "policy without grid terms",
			policy: "keep-last=2",
			points: []Point{{ID: "a", Time: ago(h)}, {ID: "b", Time: ago(2 * h)}, {ID: "c", Time: ago(3 * h)}},
			keep:   []string{"a", "b"},
			why:    map[string]string{"a": "keep-last=2", "c": "no grid terms"},
		},
		{
			name:   "future points are kept and do not count for keep-last",
			policy: "1h:all",
			points: []Point{
				{ID: "f1", Time: testNow().Add(5 * m)}, {ID: "f2", Time: testNow().Add(1)},
				{ID: "a", Time: testNow()}, {ID: "b", Time: ago(2 * h)},
			},
			keep: []string{"f1", "f2", "a"},
			why: map[string]string{
				"f1": "future", "f2": "future", "a": "1h:all + keep-last=1", "b": "older than the last span 1h",
			},
		},
		{
			name:   "a future point does not displace the newest past point",
			policy: "1h:all",
			points: []Point{{ID: "f", Time: testNow().Add(h), App: true}, {ID: "a", Time: ago(3 * h)}},
			keep:   []string{"f", "a"},
			why:    map[string]string{"f": "future", "a": "keep-last=1"},
		},
		{
			name:   "duplicate times in a thinned band: the smaller ID is the older",
			policy: "10m:all,1d:1h",
			points: []Point{
				{ID: "b", Time: at("2025-03-10T10:00:00Z")}, {ID: "a", Time: at("2025-03-10T10:00:00Z")},
				{ID: "c", Time: at("2025-03-10T10:00:00Z"), App: true}, {ID: "n", Time: ago(m)},
			},
			keep: []string{"a", "n"},
		},
		{
			name:   "duplicate times in the all band",
			policy: "1h:all",
			points: []Point{{ID: "y", Time: ago(5 * m)}, {ID: "x", Time: ago(5 * m)}},
			keep:   []string{"x", "y"},
			why:    map[string]string{"x": "1h:all", "y": "1h:all + keep-last=1"},
		},
		{
			name:   "weekly buckets start on Thursday 00:00 UTC",
			policy: "1d:all,8w:1w",
			points: []Point{
				{ID: "w4", Time: at("2025-02-27T00:00:00Z")}, // Thursday
				{ID: "w5", Time: at("2025-03-05T00:00:00Z")},
				{ID: "w1", Time: at("2025-03-05T23:59:59Z")}, // Wednesday
				{ID: "w2", Time: at("2025-03-06T00:00:00Z")}, // Thursday
				{ID: "w3", Time: at("2025-03-06T12:00:00Z")},
				{ID: "n", Time: ago(h)},
			},
			keep: []string{"w4", "w2", "n"},
		},
		{
			name:   "buckets are in UTC whatever the time zone",
			policy: "1d:all,30d:1d",
			points: []Point{
				// Both on 6 March in +05:30, but on either side of UTC midnight.
				{ID: "a", Time: at("2025-03-05T23:30:00Z").In(time.FixedZone("IST", 5*3600+1800))},
				{ID: "b", Time: at("2025-03-06T00:30:00Z").In(time.FixedZone("IST", 5*3600+1800))},
				{ID: "c", Time: at("2025-03-06T01:30:00Z")},
				{ID: "n", Time: ago(h)},
			},
			keep: []string{"a", "b", "n"},
		},
		{
			name:   "nested bands: the hourly point is the oldest five-minute point",
			policy: "1h:all,24h:5m,72h:1h",
			points: []Point{
				{ID: "h0", Time: at("2025-03-08T10:00:00Z")}, // band 72h:1h
				{ID: "h1", Time: at("2025-03-08T10:05:00Z")},
				{ID: "h2", Time: at("2025-03-08T10:59:00Z")},
				{ID: "m0", Time: at("2025-03-10T10:00:00Z")}, // band 24h:5m
				{ID: "m1", Time: at("2025-03-10T10:04:59Z")},
				{ID: "m2", Time: at("2025-03-10T10:05:00Z")},
				{ID: "n", Time: ago(m)},
			},
			keep: []string{"h0", "m0", "m2", "n"},
			why:  map[string]string{"h0": "3d:1h", "h1": "3d:1h", "m0": "1d:5m", "m1": "1d:5m"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, tt.policy)
			ds := Apply(p, testNow(), tt.points)
			if len(ds) != len(tt.points) {
				t.Fatalf("got %d decisions for %d points", len(ds), len(tt.points))
			}
			checkNewestFirst(t, ds)
			var kept []string
			for _, d := range ds {
				if d.Keep {
					kept = append(kept, d.Point.ID)
				}
				if len(d.Reasons) == 0 {
					t.Errorf("%s: no reasons", d.Point.ID)
				}
				if !d.Keep && len(d.Reasons) != 1 {
					t.Errorf("%s: forgotten with %d reasons, want 1", d.Point.ID, len(d.Reasons))
				}
				if want, ok := tt.why[d.Point.ID]; ok && tags(d.Reasons) != want {
					t.Errorf("%s: reasons %q, want tags %q", d.Point.ID, d.Reasons, want)
				}
			}
			slices.Sort(kept)
			want := slices.Clone(tt.keep)
			slices.Sort(want)
			if !slices.Equal(kept, want) {
				t.Errorf("kept %v, want %v", kept, want)
			}
		})
	}
}

func checkNewestFirst(t *testing.T, ds []Decision) {
	t.Helper()
	for i := 1; i < len(ds); i++ {
		if comparePoints(ds[i-1].Point, ds[i].Point) < 0 {
			t.Fatalf("decisions not newest first: %s before %s", ds[i-1].Point.ID, ds[i].Point.ID)
		}
	}
}

func TestApplyReasonText(t *testing.T) {
	p := mustParse(t, "1h:all,1d:1h,keep-app=1d,keep-last=2")
	ds := Apply(p, testNow(), []Point{
		{ID: "a", Time: at("2025-03-10T09:00:00Z"), App: true},
		{ID: "b", Time: at("2025-03-10T09:10:00Z")},
		{ID: "f", Time: at("2025-03-10T09:05:00Z")},
		{ID: "c", Time: testNow().Add(time.Second)},
		{ID: "d", Time: ago(time.Minute)},
		{ID: "e", Time: ago(48 * time.Hour)},
	})
	got := map[string][]string{}
	for _, d := range ds {
		got[d.Point.ID] = d.Reasons
	}
	want := map[string][]string{
		"a": {"1d:1h: oldest point of the bucket starting 2025-03-10T09:00:00Z", "keep-app=1d: app-consistent and younger than 1d"},
		"b": {"keep-last=2: one of the 2 newest points"},
		"f": {"1d:1h: not the oldest point of the bucket starting 2025-03-10T09:00:00Z"},
		"c": {"future: point time is after now (clock skew)"},
		"d": {"1h:all: every point of the band is kept", "keep-last=2: one of the 2 newest points"},
		"e": {"older than the last span 1d"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("reasons:\n got %q\nwant %q", got, want)
	}
}

func TestApplyOrderIndependentAndPure(t *testing.T) {
	p := mustParse(t, "10m:all,1d:1h,keep-app=12h,keep-last=2")
	var pts []Point
	for i := range 50 {
		pts = append(pts, Point{
			ID:   string(rune('A' + i%26)),
			Time: ago(time.Duration(i*i) * 7 * time.Minute),
			App:  i%3 == 0,
		})
	}
	pts = append(pts, pts[3], pts[10]) // exact duplicates
	orig := slices.Clone(pts)
	want := Apply(p, testNow(), pts)
	if !reflect.DeepEqual(pts, orig) {
		t.Fatal("Apply modified its input")
	}
	for i := range 20 {
		shuffled := slices.Clone(pts)
		for j := range shuffled { // deterministic shuffle
			k := (j*31 + i*17) % len(shuffled)
			shuffled[j], shuffled[k] = shuffled[k], shuffled[j]
		}
		if got := Apply(p, testNow(), shuffled); !reflect.DeepEqual(got, want) {
			t.Fatalf("shuffle %d: decisions differ", i)
		}
	}
}

func TestApplyRegularSeries(t *testing.T) {
	// A point every 2 minutes for 80 hours, aligned to the hour.
	p := mustParse(t, "1h:all,24h:5m,72h:1h")
	var pts []Point
	for d := time.Duration(0); d < 80*time.Hour; d += 2 * time.Minute {
		pts = append(pts, Point{ID: ago(d).Format(time.RFC3339), Time: ago(d)})
	}
	count := map[string]int{}
	for _, d := range Apply(p, testNow(), pts) {
		if !d.Keep {
			continue
		}
		term, _, _ := strings.Cut(d.Reasons[0], ":")
		count[term]++
		age := testNow().Sub(d.Point.Time)
		switch {
		case age >= 24*time.Hour && d.Point.Time.Minute() != 0:
			t.Errorf("%s kept in the hourly band but not on the hour", d.Point.ID)
		case age >= time.Hour && age < 24*time.Hour && d.Point.Time.Minute()%5 > 1:
			t.Errorf("%s kept in the 5-minute band but not the oldest of its bucket", d.Point.ID)
		}
	}
	// 1h:all: ages 0 to 58m. 1d:5m: buckets 12:05 yesterday to 11:00 today
	// (the 12:00 bucket's oldest point has age 24h). 3d:1h: buckets 13:00
	// three days ago to 12:00 yesterday.
	want := map[string]int{"1h": 30, "1d": 276, "3d": 48}
	if !reflect.DeepEqual(count, want) {
		t.Errorf("kept per band %v, want %v", count, want)
	}
}

func TestBucketStart(t *testing.T) {
	for _, d := range []time.Duration{time.Nanosecond, 7, time.Second, 1500 * time.Millisecond, time.Hour, 7 * time.Hour, day, week, 30 * day, 1<<63 - 1} {
		for _, tm := range []time.Time{
			time.Unix(0, 0), time.Unix(0, -1), time.Unix(-86400*365, 5), at("1969-12-31T23:59:59Z"),
			testNow(), testNow().Add(-1), at("2262-01-01T00:00:00Z"), at("1700-06-01T00:00:00Z"),
		} {
			got := bucketStart(tm, d)
			if got.After(tm) || !got.Add(d).After(tm) {
				t.Errorf("bucketStart(%v, %v) = %v: does not hold the time", tm, d, got)
			}
			// Start is a multiple of d from the epoch: check with exact
			// arithmetic where UnixNano is defined.
			if tm.Year() > 1700 && tm.Year() < 2262 && got.Year() > 1678 {
				if n := got.UnixNano(); n%int64(d) != 0 {
					t.Errorf("bucketStart(%v, %v) = %v: not aligned to the epoch", tm, d, got)
				}
			}
		}
	}
}

func TestForget(t *testing.T) {
	if got := Forget(nil); got != nil {
		t.Errorf("Forget(nil) = %v", got)
	}
	p := mustParse(t, "1h:all")
	ds := Apply(p, testNow(), []Point{
		{ID: "a", Time: ago(3 * time.Hour)}, {ID: "b", Time: ago(time.Minute)},
		{ID: "c", Time: ago(2 * time.Hour)}, {ID: "d", Time: ago(4 * time.Hour)},
	})
	var ids []string
	for _, pt := range Forget(ds) {
		ids = append(ids, pt.ID)
	}
	if want := []string{"c", "a", "d"}; !slices.Equal(ids, want) {
		t.Errorf("Forget = %v, want %v", ids, want)
	}
}
