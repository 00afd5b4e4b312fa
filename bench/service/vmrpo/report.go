package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/service/internal/procstat"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
)

// result is one case's figures (seconds unless named otherwise).
type result struct {
	Case           string
	VMs            int
	RateMBs        float64 // asked, per VM
	WrittenMBs     float64 // achieved, per VM
	Window         float64
	Load0, Load1   string
	Worst          float64
	P50, P99, Mean float64
	WorstPerVM     []float64
	Shown          int     // points first shown inside the window, all VMs
	Listed         int     // points the server lists with a cut inside the window
	PointsPerMin   float64 // per VM
	CycleP50       float64 // the agent's cycle duration
	CycleMax       float64
	Duty           float64 // share of the window a VM's cycle was running (sum of cycle durations / window)
	ChangedP50MiB  float64 // changed data per point
	ReceivedGB     float64 // the process server's received block bytes, 10^9
	PSCPUPerGB     float64
	CPU            map[string]float64 // by role, plus others
	Busy           float64            // the machine's busy share of all its CPUs
	IOWait         float64
	Polls          int
	PollErrs       int
	PollP50ms      float64
	PollMaxms      float64
	WorstVM        string
	WorstPhases    map[string]float64
	WorstShares    map[string]float64 // how the CPUs were used during the worst peak
	Over           int                // peaks above the target RPO, all VMs
	OverShares     map[string]float64 // CPU use during them, averaged
	MedianPhases   map[string]float64
	Met            bool
	Seed           float64
	Profiles       map[string]string
}

// analyse turns the window into figures.
func (cl *cluster) analyse(ctx context.Context, bc benchCase, tag string, w *window) (result, error) {
	wall := w.s1.at.Sub(w.s0.at)
	r := result{Case: tag, VMs: bc.vms, RateMBs: bc.rate, Window: wall.Seconds(), Load0: w.s0.load, Load1: w.s1.load,
		WrittenMBs: float64(w.s1.written-w.s0.written) / 1e6 / wall.Seconds() / float64(bc.vms),
		CPU:        map[string]float64{}, Polls: w.polls, PollErrs: w.pollErrs, WorstPhases: map[string]float64{}, MedianPhases: map[string]float64{}, OverShares: map[string]float64{}}
	own := time.Duration(0)
	for _, role := range roles {
		d := w.s1.cpu[role] - w.s0.cpu[role]
		r.CPU[role] = d.Seconds()
		own += d
	}
	r.CPU["others"] = max(0, (w.s1.machine - w.s0.machine - own).Seconds())
	r.Busy = (w.s1.machine - w.s0.machine).Seconds() / wall.Seconds() / float64(runtime.NumCPU())
	r.IOWait = (w.s1.iowait - w.s0.iowait).Seconds()
	r.ReceivedGB = (w.s1.received - w.s0.received) / 1e9
	if r.ReceivedGB > 0 {
		r.PSCPUPerGB = r.CPU["process"] / r.ReceivedGB
	}
	lat := procstat.Percentiles(w.pollLat, 0.5, 1)
	r.PollP50ms, r.PollMaxms = ms(lat[0]), ms(lat[1])

	if err := cl.rpoFigures(&r, w); err != nil {
		return r, err
	}
	r.Met = r.Worst <= targetRPO.Seconds()
	return r, cl.listedPoints(ctx, &r, w)
}

// rpoFigures fills r's RPO figures from the polls, and splits the peaks
// into phases from the logs.
func (cl *cluster) rpoFigures(r *result, w *window) error {
	al, err := readAgentLog(cl.agent.log)
	if err != nil {
		return err
	}
	if err := al.readPSLog(cl.ps.log); err != nil {
		return err
	}
	var all []time.Duration
	var worst gap
	perPhase := make([][]time.Duration, len(phaseNames))
	for _, v := range cl.vms {
		pts := transitions(w.obs[v.name])
		st := rpoOver(pts, w.s0.at, w.s1.at, 10*time.Millisecond)
		all = append(all, st.samples...)
		r.Shown += st.points
		r.WorstPerVM = append(r.WorstPerVM, st.worst.rpo.Seconds())
		if st.worst.rpo > worst.rpo {
			worst, r.WorstVM = st.worst, v.name
		}
		for k := 1; k < len(pts); k++ {
			if pts[k].first.Before(w.s0.at) || pts[k].first.After(w.s1.at) {
				continue
			}
			if pts[k].first.Sub(pts[k-1].cut) > targetRPO {
				r.Over++
				for name, v := range w.sharesBetween(pts[k-1].cut, pts[k].first) {
					r.OverShares[name] += v
				}
			}
			if p := al.phasesOf(v.name, pts[k-1], pts[k]); p.ok {
				for i, d := range p.list() {
					perPhase[i] = append(perPhase[i], d)
				}
			}
		}
	}
	r.Worst = worst.rpo.Seconds()
	for k := range r.OverShares {
		r.OverShares[k] /= float64(r.Over)
	}
	if worst.next != nil {
		r.WorstShares = w.sharesBetween(worst.prev.cut, worst.next.first)
		if p := al.phasesOf(r.WorstVM, worst.prev, *worst.next); p.ok {
			for i, d := range p.list() {
				r.WorstPhases[phaseNames[i]] = d.Seconds()
			}
		}
	}
	for i, ds := range perPhase {
		r.MedianPhases[phaseNames[i]] = procstat.Percentiles(ds, 0.5)[0].Seconds()
	}
	if len(all) > 0 {
		var sum time.Duration
		for _, d := range all {
			sum += d
		}
		r.Mean = (sum / time.Duration(len(all))).Seconds()
		p := procstat.Percentiles(all, 0.5, 0.99)
		r.P50, r.P99 = p[0].Seconds(), p[1].Seconds()
	}
	return nil
}

// sharesBetween is how the CPUs were used from t0 to t1, from the
// samples taken at every poll (the nearest ones outside the span).
func (w *window) sharesBetween(t0, t1 time.Time) map[string]float64 {
	a, b := -1, -1
	for i, u := range w.usages {
		if !u.at.After(t0) {
			a = i
		}
		if b < 0 && !u.at.Before(t1) {
			b = i
		}
	}
	if a < 0 || b < 0 {
		return nil
	}
	return shares(w.usages[a], w.usages[b], runtime.NumCPU())
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// listedPoints counts, from the server's point records, the points cut
// inside the window, and their cycles' figures.
func (cl *cluster) listedPoints(ctx context.Context, r *result, w *window) error {
	var durs []time.Duration
	var sum time.Duration
	var changed []float64
	for _, v := range cl.vms {
		var pts []api.Point
		path := client.Path("points") + "?machine=" + v.name + "&limit=10000"
		if err := cl.admin.Do(ctx, "GET", path, nil, &pts); err != nil {
			return fmt.Errorf("list points of %s: %w", v.name, err)
		}
		for _, p := range pts {
			if p.Time.Before(w.s0.at) || p.Time.After(w.s1.at) {
				continue
			}
			r.Listed++
			if p.CycleFigures != nil {
				durs = append(durs, p.Duration.Std())
				sum += p.Duration.Std()
				changed = append(changed, float64(p.ChangedBytes)/(1<<20))
			}
		}
	}
	r.PointsPerMin = float64(r.Listed) / float64(r.VMs) / (r.Window / 60)
	r.Duty = sum.Seconds() / r.Window / float64(r.VMs)
	if len(durs) > 0 {
		d := procstat.Percentiles(durs, 0.5, 1)
		r.CycleP50, r.CycleMax = d[0].Seconds(), d[1].Seconds()
		r.ChangedP50MiB = procstat.Median(changed)
	}
	return nil
}

// profileTops runs `go tool pprof -top` on the daemons' CPU profiles,
// writes each into the output directory and returns their first lines.
func (cl *cluster) profileTops(ctx context.Context) map[string]string {
	out := map[string]string{}
	if !cl.cfg.profile {
		return out
	}
	for _, role := range []string{"process", "agent"} {
		prof := cl.outFile(role + ".pprof")
		b, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount=40", cl.cfg.bin, prof).CombinedOutput()
		if err != nil {
			out[role] = fmt.Sprintf("go tool pprof %s: %v: %s", prof, err, b)
			continue
		}
		_ = os.WriteFile(cl.outFile(role+".top.txt"), b, 0o644)
		lines := strings.Split(string(b), "\n")
		out[role] = strings.Join(lines[:min(len(lines), 22)], "\n")
	}
	return out
}

func printCase(r result) {
	fmt.Printf("\n== %s: %d VM(s) × %g MB/s asked, %.1f MB/s written per VM; %.0f s window; load %s -> %s\n",
		r.Case, r.VMs, r.RateMBs, r.WrittenMBs, r.Window, r.Load0, r.Load1)
	fmt.Printf("RPO as the server shows it: worst %.2f s (%s), p50 %.2f s, p99 %.2f s, mean %.2f s; worst per VM %s\n",
		r.Worst, r.WorstVM, r.P50, r.P99, r.Mean, secs(r.WorstPerVM))
	fmt.Printf("points: %d listed with a cut in the window (%.1f per minute per VM), %d first shown in it; cycle p50 %.2f s, max %.2f s, running %.0f%% of the time; changed p50 %.1f MiB/point\n",
		r.Listed, r.PointsPerMin, r.Shown, r.CycleP50, r.CycleMax, 100*r.Duty, r.ChangedP50MiB)
	fmt.Printf("process server: %.2f GB received, %.1f CPU-s, %.2f CPU-s/GB\n", r.ReceivedGB, r.CPU["process"], r.PSCPUPerGB)
	fmt.Printf("CPU s in the window (%% of one CPU):")
	for _, role := range append(slices.Clone(roles), "others") {
		fmt.Printf(" %s %.1f (%.0f%%)", role, r.CPU[role], 100*r.CPU[role]/r.Window)
	}
	fmt.Printf("; machine busy %.0f%% of %d CPUs, iowait %.1f s\n", 100*r.Busy, runtime.NumCPU(), r.IOWait)
	fmt.Printf("polls: %d (%d failed), answer p50 %.1f ms, max %.1f ms\n", r.Polls, r.PollErrs, r.PollP50ms, r.PollMaxms)
	fmt.Printf("where a peak's time goes, median over all peaks / the worst peak:\n")
	for _, n := range phaseNames {
		fmt.Printf("  %-14s %6.3f s / %6.3f s\n", n, r.MedianPhases[n], r.WorstPhases[n])
	}
	if r.WorstShares != nil {
		fmt.Printf("CPU use during the worst peak (shares of all %d CPUs): %s\n", runtime.NumCPU(), shareList(r.WorstShares))
	}
	if r.Over > 0 {
		fmt.Printf("%d peak(s) above %s; CPU use during them, averaged: %s\n", r.Over, targetRPO, shareList(r.OverShares))
	}
	for role, top := range r.Profiles {
		fmt.Printf("CPU profile of the %s (whole run):\n%s\n", role, top)
	}
}

func shareList(m map[string]float64) string {
	var s []string
	for _, k := range append(slices.Clone(roles), "others", "iowait", "idle") {
		s = append(s, fmt.Sprintf("%s %.0f%%", k, 100*m[k]))
	}
	return strings.Join(s, ", ")
}

func secs(v []float64) string {
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprintf("%.2f", x))
	}
	return "[" + strings.Join(s, " ") + "]"
}

func printSummary(c config, rs []result) {
	fmt.Printf("\n== RPO through the whole service: host agent (qemu driver) -> process server -> local vault; crash interval %s; %d CPUs; poll %s\n\n",
		c.interval, runtime.NumCPU(), c.poll)
	fmt.Println("| case | written MB/s per VM | worst RPO s | p50 / p99 s | points/min per VM | cycle p50 / max s | PS CPU-s/GB | CPU s: server / PS / agent / QEMU / bench / others | machine busy | load before -> after | worst <= 2 s |")
	fmt.Println("|---|---:|---:|---|---:|---|---:|---|---:|---|---|")
	for _, r := range rs {
		verdict := "met"
		if !r.Met {
			verdict = fmt.Sprintf("MISSED by %.2f s", r.Worst-targetRPO.Seconds())
		}
		if r.VMs == 1 && r.RateMBs == targetRate {
			verdict = "**" + verdict + "** (the target)"
		}
		fmt.Printf("| %d × %g MB/s | %.1f | %.2f | %.2f / %.2f | %.1f | %.2f / %.2f | %.2f | %.1f / %.1f / %.1f / %.1f / %.1f / %.1f | %.0f%% | %s -> %s | %s |\n",
			r.VMs, r.RateMBs, r.WrittenMBs, r.Worst, r.P50, r.P99, r.PointsPerMin, r.CycleP50, r.CycleMax, r.PSCPUPerGB,
			r.CPU["server"], r.CPU["process"], r.CPU["agent"], r.CPU["qemu"], r.CPU["bench"], r.CPU["others"], 100*r.Busy, r.Load0, r.Load1, verdict)
	}
}
