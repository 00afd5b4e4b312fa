package psload

import (
	"runtime"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

// DefaultCPUWindow is the window over which CPU measures.
const DefaultCPUWindow = 30 * time.Second

// maxSamples bounds what CPU keeps when it is sampled faster than the
// clock moves.
const maxSamples = 256

// CPU measures the share of its host's CPU time this process uses, over
// a recent window, from its own resource usage (user plus system time,
// getrusage) and the number of CPUs it may run on.
type CPU struct {
	clock  clock.Clock
	window time.Duration
	cpus   int
	read   func() (time.Duration, bool) // the process's CPU time so far

	mu      sync.Mutex
	samples []cpuSample // oldest first
}

type cpuSample struct {
	at   time.Time
	used time.Duration
}

// NewCPU measures this process over window (DefaultCPUWindow if 0) on c.
func NewCPU(c clock.Clock, window time.Duration) *CPU {
	return newCPU(c, window, runtime.NumCPU(), processCPUTime)
}

func newCPU(c clock.Clock, window time.Duration, cpus int, read func() (time.Duration, bool)) *CPU {
	if window <= 0 {
		window = DefaultCPUWindow
	}
	return &CPU{clock: c, window: window, cpus: max(cpus, 1), read: read}
}

// Sample records the process's CPU time now and returns the share of the
// host's CPU time it used since the newest earlier sample at least a
// window old (or the oldest one it has), from 0 to 1. It returns false
// at the first sample, when no time passed, or where the platform does
// not say (not unix).
func (c *CPU) Sample() (float64, bool) {
	used, ok := c.read()
	if !ok {
		return 0, false
	}
	now := c.clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.samples = append(c.samples, cpuSample{at: now, used: used})
	for len(c.samples) > 2 && !c.samples[1].at.After(now.Add(-c.window)) || len(c.samples) > maxSamples {
		c.samples = c.samples[1:]
	}
	base := c.samples[0]
	wall := now.Sub(base.at)
	if len(c.samples) < 2 || wall <= 0 {
		return 0, false
	}
	share := float64(used-base.used) / (float64(wall) * float64(c.cpus))
	return min(max(share, 0), 1), true
}
