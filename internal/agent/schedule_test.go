package agent

import (
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

func TestNextCycle(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clk := clock.NewFake(t0)
	pol := &api.Policy{CrashInterval: api.Duration(5 * time.Minute), AppInterval: api.Duration(60 * time.Minute)}
	st := &state{}

	// First cycle: due at once, crash-consistent.
	due, kind := nextCycle(clk.Now(), st, pol, false)
	if !due.Equal(t0) || kind != KindCrash {
		t.Fatalf("initial: due %v kind %s", due, kind)
	}
	// After a point at t0, the next crash point is 5 min later.
	st.LastPointTime = t0
	clk.Advance(time.Minute)
	due, kind = nextCycle(clk.Now(), st, pol, false)
	if !due.Equal(t0.Add(5*time.Minute)) || kind != KindCrash {
		t.Fatalf("crash: due %v kind %s", due, kind)
	}
	// A requested resync is due at once.
	if due, _ := nextCycle(clk.Now(), st, pol, true); !due.Equal(clk.Now()) {
		t.Fatalf("resync due %v, want now", due)
	}
	// Without an app point yet, the app interval counts from the last
	// point; when the app point falls due it wins over the crash point.
	st.LastPointTime = t0.Add(55 * time.Minute)
	clk.Set(t0.Add(56 * time.Minute))
	due, kind = nextCycle(clk.Now(), st, pol, false)
	if !due.Equal(t0.Add(60*time.Minute)) || kind != KindCrash {
		t.Fatalf("before app interval from first point: due %v kind %s (app counts from the last point when there is no app point)", due, kind)
	}
	st.LastApp = t0
	due, kind = nextCycle(clk.Now(), st, pol, false)
	if !due.Equal(t0.Add(60*time.Minute)) || kind != KindApp {
		t.Fatalf("app: due %v kind %s", due, kind)
	}
	// An app point resets both clocks.
	st.LastPointTime, st.LastApp = t0.Add(60*time.Minute), t0.Add(60*time.Minute)
	due, kind = nextCycle(clk.Now(), st, pol, false)
	if !due.Equal(t0.Add(65*time.Minute)) || kind != KindCrash {
		t.Fatalf("after app: due %v kind %s", due, kind)
	}

	// Failures back off 10 s, 20 s, 40 s ... capped at the crash interval.
	st = &state{LastPointTime: t0, LastAttempt: t0.Add(5 * time.Minute)}
	for i, want := range []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 5 * time.Minute, 5 * time.Minute} {
		st.Failures = i + 1
		due, _ := nextCycle(clk.Now(), st, pol, false)
		if got := due.Sub(st.LastAttempt); got != want {
			t.Errorf("after %d failures: retry in %v, want %v", i+1, got, want)
		}
	}
	st.Failures = 1000 // no overflow
	if due, _ := nextCycle(clk.Now(), st, pol, false); due.Sub(st.LastAttempt) != 5*time.Minute {
		t.Errorf("many failures: retry at %v", due)
	}

	// No policy: the default crash interval; no app points.
	st = &state{LastPointTime: t0}
	due, kind = nextCycle(t0, st, nil, false)
	if !due.Equal(t0.Add(DefaultCrashInterval)) || kind != KindCrash {
		t.Fatalf("no policy: due %v kind %s", due, kind)
	}
}

// TestScheduleSimulation drives the schedule with the fake clock the way
// the data loop does (a check every tick) and counts the points taken.
func TestScheduleSimulation(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	clk := clock.NewFake(t0)
	pol := &api.Policy{CrashInterval: api.Duration(15 * time.Minute), AppInterval: api.Duration(4 * time.Hour)}
	st := &state{}
	var crash, app int
	for range 24 * 60 { // one day, a check per minute
		now := clk.Now()
		if due, kind := nextCycle(now, st, pol, false); !now.Before(due) {
			st.recordPoint("p", now, kind)
			if kind == KindApp {
				app++
			} else {
				crash++
			}
		}
		clk.Advance(time.Minute)
	}
	// 96 quarter hours in a day; every 16th is an app point.
	if crash+app != 96 || app != 5 {
		t.Fatalf("one day: %d crash + %d app points, want 96 in all with 5 app points", crash, app)
	}
}
