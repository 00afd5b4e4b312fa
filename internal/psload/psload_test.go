package psload

import (
	"math"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

func TestCompute(t *testing.T) {
	for _, c := range []struct {
		name                  string
		r                     Report
		cpu, backlog, traffic float64
		value                 float64
	}{
		{"nothing reported: the machine count alone", Report{Machines: 3}, 0, 0, 0, 4},
		{"idle, no machines", Report{}, 0, 0, 0, 1},
		{"half busy", Report{Machines: 1, CPU: 0.5, CacheUsed: 50, CacheLimit: 100, IngestRate: DefaultRate / 2}, 0.5, 0.5, 0.5, 2 * 2.5},
		{"throttled counts as a full cache", Report{CacheUsed: 1, CacheLimit: 100, Throttled: true}, 0, 1, 0, 2},
		{"traffic against its own bandwidth limit", Report{IngestRate: 5e6, Bandwidth: 10e6}, 0, 0, 0.5, 1.5},
		{"over the reference rate is 1", Report{IngestRate: 10 * DefaultRate}, 0, 0, 1, 2},
		{"cache over its limit is 1", Report{CacheUsed: 300, CacheLimit: 100}, 0, 1, 0, 2},
		{"huge values are capped", Report{CPU: 1e308, CacheUsed: math.MaxInt64, CacheLimit: 1, IngestRate: math.MaxFloat64}, 1, 1, 1, 4},
		{"NaN counts as fully loaded", Report{CPU: math.NaN(), IngestRate: math.NaN()}, 1, 0, 1, 3},
		{"negative counts as fully loaded", Report{CPU: -1, CacheUsed: -5, CacheLimit: 100, IngestRate: -1}, 1, 1, 1, 4},
		{"infinity counts as fully loaded", Report{CPU: math.Inf(1), IngestRate: math.Inf(-1)}, 1, 0, 1, 3},
		{"a negative cache without a limit", Report{CacheUsed: -1}, 0, 1, 0, 2},
	} {
		s := Compute(c.r, 0)
		if s.CPU != c.cpu || s.Backlog != c.backlog || s.Traffic != c.traffic || s.Value != c.value || s.Factor != 1+c.cpu+c.backlog+c.traffic {
			t.Errorf("%s: %+v, want cpu %v backlog %v traffic %v value %v", c.name, s, c.cpu, c.backlog, c.traffic, c.value)
		}
	}
	if s := Compute(Report{IngestRate: 1e6}, 2e6); s.Traffic != 0.5 {
		t.Errorf("reference rate 2e6: traffic %v", s.Traffic)
	}
}

// TestComputeBoundsALiar: a process server reporting no load at all gains
// at most a factor of 4 over a fully busy one.
func TestComputeBoundsALiar(t *testing.T) {
	busy := Report{CPU: 1, Throttled: true, IngestRate: DefaultRate}
	liar, honest := 0, 0
	for range 50 {
		l := Compute(Report{Machines: liar}, 0)
		busy.Machines = honest
		if l.Value <= Compute(busy, 0).Value {
			liar++
		} else {
			honest++
		}
	}
	if honest == 0 || liar > 4*(honest+1) {
		t.Fatalf("liar %d machines, honest busy one %d", liar, honest)
	}
}

type fakeRusage struct {
	mu   sync.Mutex
	used time.Duration
	ok   bool
}

func (f *fakeRusage) read() (time.Duration, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.used, f.ok
}

func (f *fakeRusage) add(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.used += d
}

func TestCPU(t *testing.T) {
	clk := clock.NewFake(time.Unix(1e9, 0))
	ru := &fakeRusage{ok: true}
	c := newCPU(clk, 30*time.Second, 4, ru.read)
	if _, ok := c.Sample(); ok {
		t.Fatal("the first sample gave a share")
	}
	if _, ok := c.Sample(); ok {
		t.Fatal("a sample with no time passed gave a share")
	}
	// 5 s of wall time on 4 CPUs, 10 s of CPU time: half.
	clk.Advance(5 * time.Second)
	ru.add(10 * time.Second)
	if s, ok := c.Sample(); !ok || s != 0.5 {
		t.Fatalf("share %v %v, want 0.5", s, ok)
	}
	// Every 5 s for a minute at one CPU: the window forgets the start.
	for range 12 {
		clk.Advance(5 * time.Second)
		ru.add(5 * time.Second)
		c.Sample()
	}
	clk.Advance(5 * time.Second)
	ru.add(5 * time.Second)
	if s, ok := c.Sample(); !ok || s != 0.25 {
		t.Fatalf("share %v %v, want 0.25", s, ok)
	}
	if n := len(c.samples); n > 8 {
		t.Fatalf("%d samples kept for a 30 s window at 5 s", n)
	}
	// More CPU time than wall time × CPUs (accounting jitter) is capped.
	clk.Advance(time.Second)
	ru.add(time.Hour)
	if s, _ := c.Sample(); s != 1 {
		t.Fatalf("share %v, want 1", s)
	}
	// Sampled without the clock moving: bounded.
	for range 2 * maxSamples {
		c.Sample()
	}
	if len(c.samples) > maxSamples {
		t.Fatalf("%d samples kept", len(c.samples))
	}
	ru.ok = false
	if _, ok := c.Sample(); ok {
		t.Fatal("a share without a reading")
	}
}

// TestCPUOwnProcess reads this process's own CPU time.
func TestCPUOwnProcess(t *testing.T) {
	a, ok := processCPUTime()
	if !ok {
		t.Skip("no rusage on this platform")
	}
	x := 0.0
	for i := range 20_000_000 {
		x += math.Sqrt(float64(i))
	}
	b, _ := processCPUTime()
	if b <= a || x == 0 {
		t.Fatalf("CPU time %v then %v after a busy loop", a, b)
	}
}

func cand(name string, machines int, r Report) Candidate {
	r.Machines = machines
	return Candidate{Name: name, Report: r, Score: Compute(r, 0)}
}

func TestRebalancer(t *testing.T) {
	clk := clock.NewFake(time.Unix(1e9, 0))
	busy := Report{CPU: 1, Throttled: true, IngestRate: DefaultRate}
	r := NewRebalancer(2, 10*time.Minute)
	cs := []Candidate{cand("a", 4, busy), cand("b", 4, Report{}), cand("c", 5, Report{})}
	// a: 5 × 4 = 20; b: 5; c: 6. a is over 2 × 5.
	if _, ok := r.Decide(clk.Now(), cs); ok {
		t.Fatal("a move at the first look")
	}
	clk.Advance(9 * time.Minute)
	if _, ok := r.Decide(clk.Now(), cs); ok {
		t.Fatal("a move before the period")
	}
	// A round below the ratio starts the period again.
	if _, ok := r.Decide(clk.Now(), []Candidate{cand("a", 1, Report{}), cs[1], cs[2]}); ok {
		t.Fatal("a move below the ratio")
	}
	clk.Advance(time.Minute)
	if _, ok := r.Decide(clk.Now(), cs); ok {
		t.Fatal("a move although a was below the ratio a minute ago")
	}
	clk.Advance(10 * time.Minute)
	m, ok := r.Decide(clk.Now(), cs)
	if !ok || m.From.Name != "a" || m.To.Name != "b" {
		t.Fatalf("move %+v %v, want a to b", m, ok)
	}
	r.Moved(clk.Now())
	cs = []Candidate{cand("a", 3, busy), cand("b", 5, Report{}), cs[2]} // a: 16; b: 6; c: 6
	clk.Advance(5 * time.Minute)
	if _, ok := r.Decide(clk.Now(), cs); ok {
		t.Fatal("a move during the pause after one")
	}
	clk.Advance(10 * time.Minute)
	if m, ok := r.Decide(clk.Now(), cs); !ok || m.From.Name != "a" || m.To.Name != "b" {
		t.Fatalf("second move %+v %v", m, ok)
	}

	// A move that would leave the source below the target by the count
	// alone does not happen, however long it waits.
	r = NewRebalancer(2, time.Minute)
	few := []Candidate{cand("a", 1, busy), cand("b", 2, Report{})} // a: 8; b: 3; after: a 4, b 4
	for range 5 {
		if m, ok := r.Decide(clk.Now(), few); ok {
			t.Fatalf("move %+v of a's last machine", m)
		}
		clk.Advance(time.Minute)
	}
	// Off, or alone: never.
	for _, r := range []*Rebalancer{NewRebalancer(0, time.Minute), NewRebalancer(2, time.Minute)} {
		one := cs
		if r.ratio != 0 {
			one = cs[:1]
		}
		for range 3 {
			if _, ok := r.Decide(clk.Now(), one); ok {
				t.Fatal("a move with rebalancing off or one process server")
			}
			clk.Advance(time.Hour)
		}
	}
	// A process server that leaves forgets its time over the ratio.
	r = NewRebalancer(2, time.Minute)
	r.Decide(clk.Now(), cs)
	r.Decide(clk.Now(), cs[1:])
	if len(r.over) != 0 {
		t.Fatalf("over %v after a left", r.over)
	}
}
