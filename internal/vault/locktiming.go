package vault

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Default lock timing (§11): holders rewrite their lock every LockRefresh;
// GC treats a lock not rewritten for LockStaleAfter as stale.
const (
	LockRefresh    = 2 * time.Minute
	LockStaleAfter = 15 * time.Minute
)

// LockTimingEnv names the environment variable that shortens the lock
// timing of a Lifeboat process, for tests of real processes only (see
// docs/operations.md): "refresh=500ms,stale=6s".
const LockTimingEnv = "LIFEBOAT_TEST_VAULT_LOCK_TIMING"

// lockBound is how long after its last successful refresh a holder still
// considers its lock valid: a third of the stale age (§11).
func lockBound(stale time.Duration) time.Duration { return stale / 3 }

// defaultRefresh keeps the default ratio (2 min of 15 min).
func defaultRefresh(stale time.Duration) time.Duration { return stale * 2 / 15 }

// checkLockTiming fills in and checks Options.LockRefresh and
// LockStaleAfter.
func (o *Options) checkLockTiming() error {
	if o.LockRefresh < 0 || o.LockStaleAfter < 0 {
		return fmt.Errorf("vault lock timing: negative durations (refresh %s, stale after %s)", o.LockRefresh, o.LockStaleAfter)
	}
	if o.LockStaleAfter == 0 {
		o.LockStaleAfter = LockStaleAfter
	}
	if o.LockRefresh == 0 {
		o.LockRefresh = min(LockRefresh, defaultRefresh(o.LockStaleAfter))
	}
	if o.LockRefresh <= 0 || o.LockRefresh >= lockBound(o.LockStaleAfter) {
		return fmt.Errorf("vault lock timing: the refresh interval (%s) must be positive and shorter than a third of the stale age (%s), the longest a holder trusts its lock without a refresh", o.LockRefresh, o.LockStaleAfter)
	}
	return nil
}

// ParseLockTiming parses the value of LockTimingEnv: comma-separated
// refresh=DURATION and stale=DURATION (either may be left out; a missing
// refresh keeps the default ratio to the stale age).
func ParseLockTiming(s string) (refresh, stale time.Duration, err error) {
	bad := func(format string, args ...any) (time.Duration, time.Duration, error) {
		return 0, 0, fmt.Errorf("%s=%q: %s (want e.g. refresh=500ms,stale=6s; for tests only)", LockTimingEnv, s, fmt.Sprintf(format, args...))
	}
	if strings.TrimSpace(s) == "" {
		return bad("empty")
	}
	seen := map[string]bool{}
	for part := range strings.SplitSeq(s, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return bad("%q is not KEY=DURATION", part)
		}
		if seen[k] {
			return bad("%s given twice", k)
		}
		seen[k] = true
		d, perr := time.ParseDuration(val)
		if perr != nil || d <= 0 {
			return bad("%s: %q is not a positive duration", k, val)
		}
		switch k {
		case "refresh":
			refresh = d
		case "stale":
			stale = d
		default:
			return bad("unknown key %q (refresh, stale)", k)
		}
	}
	o := Options{LockRefresh: refresh, LockStaleAfter: stale}
	if err := o.checkLockTiming(); err != nil {
		return bad("%v", err)
	}
	return o.LockRefresh, o.LockStaleAfter, nil
}

// ApplyTestLockTiming sets LockRefresh and LockStaleAfter from
// LockTimingEnv when getenv has it (tests of real processes). It leaves
// the options alone when the variable is unset, and fails on a bad value.
func (o *Options) ApplyTestLockTiming(getenv func(string) string) error {
	if getenv == nil {
		return errors.New("ApplyTestLockTiming: nil getenv")
	}
	s := getenv(LockTimingEnv)
	if s == "" {
		return nil
	}
	refresh, stale, err := ParseLockTiming(s)
	if err != nil {
		return err
	}
	o.LockRefresh, o.LockStaleAfter = refresh, stale
	return nil
}

// sinceRefresh is how long ago last was by now, on whichever clock says
// longer: the monotonic reading (SIGSTOP: the process stood still while
// the machine ran) or the wall clock (a suspended VM: its monotonic clock
// stood still too, but its wall clock jumps when it is corrected).
func sinceRefresh(now, last time.Time) time.Duration {
	return max(now.Sub(last), now.Round(0).Sub(last.Round(0)))
}

// fmtDur prints a duration to a useful precision: 7m12s, 15m, 8.064s.
func fmtDur(d time.Duration) string {
	if d >= time.Minute {
		d = d.Round(time.Second)
	} else {
		d = d.Round(time.Millisecond)
	}
	s := d.String()
	s, _ = strings.CutSuffix(s, "m0s")
	if len(s) < len(d.String()) {
		s += "m"
	}
	if t, ok := strings.CutSuffix(s, "h0m"); ok {
		s = t + "h"
	}
	return s
}
