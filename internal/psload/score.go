// Package psload weighs process servers for the control plane: the load
// score that chooses a machine's process server, the share of CPU time a
// process uses (from its own resource usage), and the rebalancer that
// decides when one machine should leave a process server far busier than
// another. It is pure apart from reading the process's own CPU time: the
// control plane feeds it what process servers report and the time from
// its clock.
//
// The score of a process server is
//
//	(machines + 1) × (1 + cpu + backlog + traffic)
//
// and a new machine goes to the online process server with the lowest.
// The three load terms are each between 0 and 1:
//
//   - cpu: the share of its host's CPU time the process used over its
//     last 30 s (hashing, compression, encryption);
//   - backlog: its cache's fill (used / limit), 1 while it refuses batches
//     for want of cache space;
//   - traffic: its ingest rate over its last 10 s against its own
//     bandwidth limit, or against a reference rate (1 Gbit/s by default)
//     when it has none.
//
// Why so: the machine count is the server's own figure and changes the
// moment it assigns a machine, while reports arrive every few seconds; a
// burst of enrollments therefore spreads at once instead of landing on
// whichever process server looked idle in its last report. The reported
// load says how heavy those machines are, and it multiplies the count so
// that it matters at any fleet size: a fully busy process server (factor
// 4) gets about a quarter of the machines of an idle one. Each term is
// capped at 1 and measured against the process server's own limits, never
// against the others, so no single figure dominates and nothing one
// process server reports changes another's score. A process server that
// reports no load (an older version) has factor 1 and is chosen by its
// machine count, as before. A process server that lies ("idle") gains at
// most that factor of 4 over an honest busy one: it still gets machines
// by its count, so it cannot take them all, and it cannot starve the
// others. Values that are not numbers, or are negative, count as fully
// loaded.
package psload

// DefaultRate is the ingest rate (bytes/s) that counts as fully busy for
// a process server without a bandwidth limit: 1 Gbit/s.
const DefaultRate = 125e6

// Report is what the score reads of one process server.
type Report struct {
	Machines   int     // machines the server assigned to it: the server's own count
	CPU        float64 // share of its host's CPU time its process used, 0-1, as reported
	CacheUsed  int64   // bytes in its cache, as reported
	CacheLimit int64   // its cache limit (0: unknown)
	Throttled  bool    // it refuses batches for want of cache space
	IngestRate float64 // bytes/s of block data it received over its last 10 s
	Bandwidth  int64   // its bandwidth limit, bytes/s (0: none)
}

// Score is a process server's load as the control plane weighs it.
type Score struct {
	CPU     float64 // the cpu term, 0-1
	Backlog float64 // the backlog term, 0-1
	Traffic float64 // the traffic term, 0-1
	Factor  float64 // 1 + CPU + Backlog + Traffic: 1 to 4
	Value   float64 // (machines + 1) × Factor: the lowest gets the next machine
}

// Compute scores r; rate is the reference ingest rate for a process
// server without a bandwidth limit (DefaultRate if 0 or less).
func Compute(r Report, rate float64) Score {
	if !(rate > 0) {
		rate = DefaultRate
	}
	if r.Bandwidth > 0 {
		rate = float64(r.Bandwidth)
	}
	var s Score
	s.CPU = unit(r.CPU)
	switch {
	case r.Throttled:
		s.Backlog = 1
	case r.CacheLimit > 0:
		s.Backlog = unit(float64(r.CacheUsed) / float64(r.CacheLimit))
	case r.CacheUsed < 0:
		s.Backlog = 1
	}
	s.Traffic = unit(r.IngestRate / rate)
	s.Factor = 1 + s.CPU + s.Backlog + s.Traffic
	s.Value = float64(max(r.Machines, 0)+1) * s.Factor
	return s
}

// unit keeps x in [0, 1]: above 1 is 1, and what is not a number or is
// negative is nonsense, which counts as fully loaded (1), so that a lie
// cannot make a process server look idler than idle.
func unit(x float64) float64 {
	if x >= 0 && x <= 1 {
		return x
	}
	return 1
}
