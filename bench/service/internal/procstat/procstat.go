// Package procstat reads the CPU time and memory of processes and of the
// whole machine from /proc, and summarises latency samples, for the
// service benchmarks.
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ: /proc reports CPU times in 1/100 s on Linux.
const clockTick = 100

// ProcCPU returns the user+system CPU time pid has used (its own threads,
// not waited-for children).
func ProcCPU(pid int) (time.Duration, error) { return procCPU(pid, false) }

func procCPU(pid int, children bool) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read CPU time of process %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces; fields after ')' start at 3.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("process %d: malformed /proc stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return 0, fmt.Errorf("process %d: short /proc stat", pid)
	}
	last := 12 // fields 14, 15: utime, stime
	if children {
		last = 14 // and 16, 17: cutime, cstime
	}
	var ticks int64
	for i := 11; i <= last; i++ {
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("process %d: malformed CPU times", pid)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTick, nil
}

// ProcRSS returns the resident set and its peak (VmRSS, VmHWM) of pid.
func ProcRSS(pid int) (rss, peak int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read memory of process %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "VmRSS":
			dst = &rss
		case "VmHWM":
			dst = &peak
		default:
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("process %d: malformed %s", pid, k)
		}
		*dst = n << 10
	}
	return rss, peak, nil
}

// MachineCPU returns the busy CPU time of the whole machine (all CPUs:
// user, nice, system, irq, softirq, steal) and the iowait time.
func MachineCPU() (busy, iowait time.Duration, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("read /proc/stat: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("malformed /proc/stat")
	}
	var v [9]int64
	for i := 1; i < 9; i++ {
		v[i], err = strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("malformed /proc/stat: %w", err)
		}
	}
	// user nice system idle iowait irq softirq steal
	ticks := v[1] + v[2] + v[3] + v[6] + v[7] + v[8]
	return time.Duration(ticks) * time.Second / clockTick, time.Duration(v[5]) * time.Second / clockTick, nil
}

// Sample is a snapshot of a set of processes' CPU and of the machine's.
type Sample struct {
	At      time.Time
	Procs   time.Duration // CPU of the processes given
	Machine time.Duration // busy CPU of the machine
	IOWait  time.Duration
}

// Take samples the CPU of pids and of the machine.
func Take(pids ...int) (Sample, error) {
	s := Sample{At: time.Now()}
	for _, p := range pids {
		c, err := ProcCPU(p)
		if err != nil {
			return s, err
		}
		s.Procs += c
	}
	var err error
	s.Machine, s.IOWait, err = MachineCPU()
	return s, err
}

// Window is what happened between two samples.
type Window struct {
	Wall   time.Duration
	CPU    time.Duration // of the processes sampled
	Others time.Duration // busy CPU of every other process on the machine
	IOWait time.Duration
}

// Since returns the window from a to b.
func Since(a, b Sample) Window {
	w := Window{Wall: b.At.Sub(a.At), CPU: b.Procs - a.Procs, IOWait: b.IOWait - a.IOWait}
	w.Others = max(0, b.Machine-a.Machine-w.CPU)
	return w
}

// Percentiles returns the given quantiles (0..1) of d, nearest-rank; d is
// sorted in place. Empty input gives zeros.
func Percentiles(d []time.Duration, qs ...float64) []time.Duration {
	out := make([]time.Duration, len(qs))
	if len(d) == 0 {
		return out
	}
	slices.Sort(d)
	for i, q := range qs {
		k := int(q*float64(len(d))+0.999999) - 1
		out[i] = d[min(max(k, 0), len(d)-1)]
	}
	return out
}

// Median returns the median of v (the mean of the middle two for an even
// count); v is sorted in place.
func Median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// CPUByName returns the summed CPU time of every process whose command
// name (/proc/PID/comm) is name, including the CPU time of their exited
// and reaped children (so PostgreSQL backends that come and go count, via
// the postmaster), and how many there are.
func CPUByName(name string) (time.Duration, int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, 0, fmt.Errorf("list /proc: %w", err)
	}
	var total time.Duration
	n := 0
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || strings.TrimSpace(string(comm)) != name {
			continue
		}
		c, err := procCPU(pid, true)
		if err != nil {
			continue // exited meanwhile
		}
		total += c
		n++
	}
	return total, n, nil
}
