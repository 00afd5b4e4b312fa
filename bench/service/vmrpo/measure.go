package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
	"github.com/lifeboat-dr/lifeboat/bench/service/internal/procstat"
)

// usage is the CPU the processes and the machine have used so far.
type usage struct {
	at      time.Time
	cpu     map[string]time.Duration // by role: server, process, agent, qemu, bench
	machine time.Duration            // busy CPU of the whole machine
	iowait  time.Duration
}

// snapshot is the state of the counters at one edge of the window.
type snapshot struct {
	usage
	received float64 // lifeboat_ingest_received_bytes_total of the process server
	stored   float64 // lifeboat_ingest_stored_bytes_total
	written  int64   // bytes the churn writers have written
	load     string  // /proc/loadavg
}

// roles are the processes whose CPU the benchmark reports.
var roles = []string{"server", "process", "agent", "qemu", "bench"}

// sample reads the CPU time of every role's processes and the machine's.
func (cl *cluster) sample() (usage, error) {
	u := usage{at: time.Now(), cpu: map[string]time.Duration{}}
	pids := map[string][]int{"server": {cl.srv.Pid()}, "process": {cl.ps.pid()}, "agent": {cl.agent.pid()}, "bench": {os.Getpid()}}
	for _, v := range cl.vms {
		pids["qemu"] = append(pids["qemu"], v.proc.pid())
	}
	for role, ps := range pids {
		for _, p := range ps {
			c, err := procstat.ProcCPU(p)
			if err != nil {
				return u, fmt.Errorf("%s: %w", role, err)
			}
			u.cpu[role] += c
		}
	}
	var err error
	u.machine, u.iowait, err = procstat.MachineCPU()
	return u, err
}

// take reads every counter.
func (cl *cluster) take(ctx context.Context) (snapshot, error) {
	u, err := cl.sample()
	if err != nil {
		return snapshot{}, err
	}
	s := snapshot{usage: u, written: cl.written(), load: benchkit.LoadAvg()}
	m, err := scrape(ctx, cl.psMetrics)
	if err != nil {
		return s, fmt.Errorf("process server metrics: %w", err)
	}
	s.received, s.stored = m["lifeboat_ingest_received_bytes_total"], m["lifeboat_ingest_stored_bytes_total"]
	return s, nil
}

// shares is how the CPUs were used between two usages, as shares of
// all the machine's CPUs: each role, every other process, and iowait.
func shares(a, b usage, cpus int) map[string]float64 {
	wall := b.at.Sub(a.at).Seconds() * float64(cpus)
	out := map[string]float64{}
	if wall <= 0 {
		return out
	}
	own := time.Duration(0)
	for role, c := range b.cpu {
		d := c - a.cpu[role]
		own += d
		out[role] = d.Seconds() / wall
	}
	out["others"] = max(0, (b.machine-a.machine-own).Seconds()/wall)
	out["iowait"] = (b.iowait - a.iowait).Seconds() / wall
	out["idle"] = max(0, 1-(b.machine-a.machine).Seconds()/wall-out["iowait"])
	return out
}

// scrape reads the unlabelled samples of a Prometheus text exposition.
func scrape(ctx context.Context, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || strings.HasPrefix(f[0], "#") || strings.Contains(f[0], "{") {
			continue
		}
		if v, err := strconv.ParseFloat(f[1], 64); err == nil {
			out[f[0]] = v
		}
	}
	return out, sc.Err()
}

// window is what the benchmark saw while the churn ran.
type window struct {
	s0, s1   snapshot // the measured window's edges (after the warm-up)
	obs      map[string][]obs
	usages   []usage // one per poll
	polls    int
	pollErrs int
	pollLat  []time.Duration
}

// churnAndPoll runs the churn at rate bytes/s per VM for warmup +
// duration and polls the server's machines every cfg.poll meanwhile;
// the window measured is the last duration.
func (cl *cluster) churnAndPoll(ctx context.Context, rate int64) (*window, error) {
	wctx, stopWriters := context.WithCancel(ctx)
	defer stopWriters()
	if err := cl.startWriters(wctx, rate, 1); err != nil {
		return nil, err
	}
	w := &window{obs: map[string][]obs{}}
	start := time.Now()
	warmEnd, end := start.Add(cl.cfg.warmup), start.Add(cl.cfg.warmup+cl.cfg.duration)
	logf("churn %.0f MB/s on each of %d VM(s): %s warm-up, then %s measured", float64(rate)/1e6, len(cl.vms), cl.cfg.warmup, cl.cfg.duration)
	tick := time.NewTicker(cl.cfg.poll)
	defer tick.Stop()
	inWindow := false
	for {
		if err := cl.healthy(); err != nil {
			return nil, err
		}
		now := time.Now()
		if !inWindow && !now.Before(warmEnd) {
			s, err := cl.take(ctx)
			if err != nil {
				return nil, err
			}
			w.s0, inWindow = s, true
		}
		if !now.Before(end) {
			s, err := cl.take(ctx)
			if err != nil {
				return nil, err
			}
			w.s1 = s
			break
		}
		cl.poll(ctx, w, inWindow)
		if u, err := cl.sample(); err == nil {
			w.usages = append(w.usages, u)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
	stopWriters()
	for _, v := range cl.vms {
		for err := range v.w.Errc {
			return nil, fmt.Errorf("churn writer of %s: %w", v.name, err)
		}
	}
	return w, nil
}

// healthy fails if a writer or a daemon has stopped.
func (cl *cluster) healthy() error {
	if err := cl.writerErr(); err != nil {
		return err
	}
	for _, p := range []*proc{cl.ps, cl.agent} {
		if p.exited() {
			return fmt.Errorf("the %s exited (%v): see %s", p.name, p.err, p.log)
		}
	}
	return nil
}

// poll asks the server for its machines once and records each VM's
// newest point.
func (cl *cluster) poll(ctx context.Context, w *window, count bool) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	t := time.Now()
	ms, err := cl.machines(rctx)
	at := time.Now()
	if count {
		w.polls++
		w.pollLat = append(w.pollLat, at.Sub(t))
	}
	if err != nil {
		if count {
			w.pollErrs++
		}
		return
	}
	for _, m := range ms {
		if m.Host == "host1" && m.LastPoint != nil {
			w.obs[m.Name] = append(w.obs[m.Name], obs{at: at, point: m.LastPoint.Point, cut: m.LastPoint.Time})
		}
	}
}
