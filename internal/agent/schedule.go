package agent

import (
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Scheduling defaults.
const (
	// DefaultCrashInterval applies when the policy sets no crash_interval.
	DefaultCrashInterval = 15 * time.Minute
	// retryBase is the first retry delay after a failed cycle; it doubles
	// with every further failure, up to the crash interval.
	retryBase = 10 * time.Second
)

// Point kinds (as in the vault).
const (
	KindCrash = "crash"
	KindApp   = "app"
)

// nextCycle decides when the next self-scheduled cycle is due and of which
// kind. Intervals are measured from the last successful cut: a crash point
// every crash_interval, an app-consistent point every app_interval (if
// > 0; an app point also counts as a crash point). The first cycle, and a
// requested resync, are due at once. After failures, a retry waits
// retryBase·2^(failures-1), capped at the crash interval.
func nextCycle(now time.Time, st *state, pol *api.Policy, resync bool) (due time.Time, kind string) {
	crash, app := DefaultCrashInterval, time.Duration(0)
	if pol != nil {
		if pol.CrashInterval > 0 {
			crash = pol.CrashInterval.Std()
		}
		app = max(0, pol.AppInterval.Std())
	}
	kind = KindCrash
	switch {
	case st.LastPointTime.IsZero() || resync:
		due = now
	default:
		due = st.LastPointTime.Add(crash)
		if app > 0 {
			base := st.LastApp
			if base.IsZero() {
				base = st.FirstPoint
			}
			if base.IsZero() {
				base = st.LastPointTime
			}
			if appDue := base.Add(app); !appDue.After(due) {
				due, kind = appDue, KindApp
			}
		}
	}
	if st.Failures > 0 && !st.LastAttempt.IsZero() {
		wait := crash
		if st.Failures <= 20 {
			wait = min(crash, retryBase<<(st.Failures-1))
		}
		if retry := st.LastAttempt.Add(wait); retry.After(due) {
			due = retry
		}
	}
	return due, kind
}
