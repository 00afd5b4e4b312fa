package main

import (
	"testing"
	"time"
)

func TestRPOSawtooth(t *testing.T) {
	t0 := time.Date(2026, 12, 8, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// Points cut every second, each shown 400 ms after its cut, except
	// p3, shown 900 ms after; polls every 100 ms repeat what they show.
	var answers []obs
	cuts := map[string]int{"p0": 0, "p1": 1000, "p2": 2000, "p3": 3000, "p4": 4000}
	shownAt := map[string]int{"p0": 400, "p1": 1400, "p2": 2400, "p3": 3900, "p4": 4400}
	order := []string{"p0", "p1", "p2", "p3", "p4"}
	cur := ""
	for ms := 0; ms <= 5000; ms += 100 {
		for _, p := range order {
			if shownAt[p] <= ms {
				cur = p
			}
		}
		if cur != "" {
			answers = append(answers, obs{at(ms), cur, at(cuts[cur])})
		}
	}
	pts := transitions(answers)
	if len(pts) != 5 || pts[3].id != "p3" || !pts[3].first.Equal(at(3900)) {
		t.Fatalf("transitions: %+v", pts)
	}
	st := rpoOver(pts, at(1000), at(5000), 10*time.Millisecond)
	// Peaks: p1 shown at 1.4 s (1.4 s after p0's cut), p2 1.4, p3 at
	// 3.9 s (1.9 s after p2's cut), p4 1.4, the window's end 1.0.
	if st.worst.rpo != 1900*time.Millisecond || st.worst.prev.id != "p2" || st.worst.next == nil || st.worst.next.id != "p3" {
		t.Fatalf("worst: %+v", st.worst)
	}
	if st.points != 4 {
		t.Fatalf("points shown in the window: %d, want 4", st.points)
	}
	if len(st.samples) != 400 {
		t.Fatalf("%d samples, want 400", len(st.samples))
	}
	// At 1.0 s p0 is shown (cut 0): RPO 1.0 s; at 1.39 s, 1.39 s; at 1.4 s, 0.4 s.
	for i, want := range map[int]time.Duration{0: time.Second, 39: 1390 * time.Millisecond, 40: 400 * time.Millisecond} {
		if st.samples[i] != want {
			t.Errorf("sample %d: %s, want %s", i, st.samples[i], want)
		}
	}
	// A window that ends while the newest point is getting old: the end
	// is the peak.
	st = rpoOver(pts[:3], at(2500), at(5000), 10*time.Millisecond)
	if st.worst.rpo != 3*time.Second || st.worst.next != nil {
		t.Fatalf("worst at the window's end: %+v", st.worst)
	}
}
