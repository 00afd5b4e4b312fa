package tlslisten

import (
	"fmt"
	"math"

	"golang.org/x/sys/unix"
)

// minConns is the smallest cap FitToFileLimit leaves a listener.
const minConns = 16

// FileLimit is the process's soft limit on open files (RLIMIT_NOFILE).
// Go raises the soft limit to the hard one at start (since Go 1.19), so
// this is what `ulimit -Hn`, `prlimit --nofile` or systemd's LimitNOFILE
// allowed.
func FileLimit() (uint64, error) {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
		return 0, fmt.Errorf("read the open-file limit: %w", err)
	}
	return r.Cur, nil
}

// Reserve is how many file descriptors FitToFileLimit keeps out of the
// connection caps for everything else: the vault's packs and spool files,
// the ingest cache's segments, the state database, logs. A quarter of the
// limit, at least 256.
func Reserve(limit uint64) uint64 { return max(256, limit/4) }

// FitToFileLimit lowers the MaxConns of ls in proportion so that together
// they stay below limit minus Reserve(limit), and at least minConns each.
// It returns a sentence describing what it changed, or "" when the caps
// fit as they are.
func FitToFileLimit(limit uint64, ls ...*Limits) string {
	var want uint64
	for _, l := range ls {
		want += uint64(l.MaxConns)
	}
	if limit == unix.RLIM_INFINITY || limit > math.MaxInt32 {
		return ""
	}
	budget := uint64(0)
	if r := Reserve(limit); limit > r {
		budget = limit - r
	}
	if want <= budget {
		return ""
	}
	var got []int
	for _, l := range ls {
		n := max(int(uint64(l.MaxConns)*budget/want), minConns)
		l.MaxConns = n
		l.MaxHandshakesPerAddr = min(l.MaxHandshakesPerAddr, n)
		got = append(got, n)
	}
	return fmt.Sprintf("the open-file limit is %d: connection caps lowered from %d in all to %v to keep %d descriptors for the vault, cache and database; "+
		"raise LimitNOFILE (systemd) or ulimit -n to serve more connections", limit, want, got, Reserve(limit))
}
