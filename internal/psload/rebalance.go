package psload

import (
	"sync"
	"time"
)

// MinRatio is the smallest rebalancing ratio: below it, machines would
// move back and forth on the noise of reports.
const MinRatio = 1.5

// Candidate is one online process server the rebalancer weighs.
type Candidate struct {
	Name   string
	Report Report
	Score  Score
}

// Move is one machine the rebalancer would move: from the busiest
// process server to the least loaded.
type Move struct {
	From, To Candidate
}

// Rebalancer decides when one machine should leave a process server that
// has stayed far busier than the least loaded one. It moves slowly on
// purpose: the process server must have scored at least ratio times the
// lowest for a whole period `after`, the move must leave it still at or
// above the other by the machine count alone (so that the next period
// does not move the machine back), and after a move the next waits
// `after` too, for the reports to show the new loads. Which machine moves,
// and when that is safe, is the caller's choice.
type Rebalancer struct {
	ratio float64 // 0: never
	after time.Duration

	mu       sync.Mutex
	over     map[string]time.Time // since when each has been over ratio × the lowest
	lastMove time.Time
}

// NewRebalancer rebalances at ratio (0: never) after `after`.
func NewRebalancer(ratio float64, after time.Duration) *Rebalancer {
	return &Rebalancer{ratio: ratio, after: after, over: map[string]time.Time{}}
}

// Decide weighs the online process servers at now (ties go to the first
// in cs) and returns the move it recommends, if any.
func (r *Rebalancer) Decide(now time.Time, cs []Candidate) (Move, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ratio <= 0 || len(cs) < 2 {
		clear(r.over)
		return Move{}, false
	}
	low := 0
	for i, c := range cs {
		if c.Score.Value < cs[low].Score.Value {
			low = i
		}
	}
	seen := map[string]bool{}
	high := -1
	for i, c := range cs {
		seen[c.Name] = true
		if i == low || c.Score.Value < r.ratio*cs[low].Score.Value {
			delete(r.over, c.Name)
			continue
		}
		since, ok := r.over[c.Name]
		if !ok {
			r.over[c.Name] = now
			continue
		}
		if now.Sub(since) >= r.after && (high < 0 || c.Score.Value > cs[high].Score.Value) {
			high = i
		}
	}
	for name := range r.over {
		if !seen[name] {
			delete(r.over, name)
		}
	}
	if high < 0 || !r.lastMove.IsZero() && now.Sub(r.lastMove) < r.after {
		return Move{}, false
	}
	from, to := cs[high], cs[low]
	// By the machine count alone, after the move: from has one fewer,
	// to one more.
	if from.Report.Machines < 1 || float64(from.Report.Machines)*from.Score.Factor <= float64(to.Report.Machines+2)*to.Score.Factor {
		return Move{}, false
	}
	return Move{From: from, To: to}, true
}

// Moved records that a machine moved at now: the next move waits a
// period, and every process server's time over the ratio starts again.
func (r *Rebalancer) Moved(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastMove = now
	clear(r.over)
}
