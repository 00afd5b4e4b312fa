// Command vmrpo measures the RPO through the whole service (issue 15):
// a host agent with the qemu driver, a stand-alone process server and a
// local vault, each a real `lifeboat` process, protecting QEMU VMs whose
// disks receive churn at a set rate through QEMU's block layer.
//
// For each case (N VMs × R MB/s each) it starts a fresh service: `lifeboat
// server` (SQLite, local vault, its embedded process server off), one
// `lifeboat process run`, N qemu-system-x86_64 processes (vCPUs stopped,
// one qcow2 disk each, writable through QEMU's NBD server) and one
// `lifeboat agent run` that discovers them through their QMP sockets. It
// pre-fills the disks, protects every VM with a policy taking a
// crash-consistent point every -interval (1 s: the least the server
// accepts), waits for the seeds, then churns every disk at R MB/s while
// it polls GET /api/v1/machines every -poll. Reported per case: the RPO
// as the service shows it (worst, p50, p99 over time; see rpo.go), points
// per minute, the process server's CPU-s per GB received, every process's
// CPU, where the worst peak's time went (from the agent's log), and the
// target (worst RPO ≤ 2 s at 50 MB/s).
//
//	go run ./bench/service/vmrpo                          # cases 1x50, 1x100, 10x10; ~2.5 min each
//	go run ./bench/service/vmrpo -cases 1x50 -duration 60s
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
	"github.com/lifeboat-dr/lifeboat/bench/service/internal/lbserver"
)

// Targets of issue 15.
const (
	targetRPO  = 2 * time.Second
	targetRate = 50 // MB/s on one VM disk
)

type config struct {
	dir, out, bin       string
	cases               []benchCase
	duration, warmup    time.Duration
	interval, poll      time.Duration
	diskGiB, prefillMiB int64
	profile, keep       bool
}

// benchCase is N VMs churned at R MB/s each.
type benchCase struct {
	vms  int
	rate float64 // MB/s (10^6 bytes) per VM
}

func (c benchCase) String() string { return fmt.Sprintf("%dx%g", c.vms, c.rate) }

func main() {
	var c config
	var cases string
	flag.StringVar(&c.dir, "dir", filepath.Join(os.TempDir(), "lifeboat-bench-vmrpo"), "work directory (images, vault, state, sockets: keep it short); removed afterwards unless -keep")
	flag.StringVar(&c.out, "out", "bench/out/vmrpo", "where results.json, the daemons' CPU profiles and their pprof tops go")
	flag.StringVar(&c.bin, "lifeboat", "", "lifeboat binary (default: go build ./cmd/lifeboat into -dir)")
	flag.StringVar(&cases, "cases", "1x50,1x100,10x10", "cases, VMSxMB/s each, comma-separated")
	flag.DurationVar(&c.duration, "duration", 90*time.Second, "measured window per case")
	flag.DurationVar(&c.warmup, "warmup", 10*time.Second, "churn before the window, so the cycles settle")
	flag.DurationVar(&c.interval, "interval", time.Second, "the policy's crash interval (the server accepts 1 s at least)")
	flag.DurationVar(&c.poll, "poll", 50*time.Millisecond, "how often the server's machines are read (the RPO's resolution)")
	flag.Int64Var(&c.diskGiB, "disk", 8, "GiB per VM disk (qcow2, sparse); the churn writes all over it")
	flag.Int64Var(&c.prefillMiB, "prefill", 256, "MiB written into each disk before protection (the seed)")
	flag.BoolVar(&c.profile, "profile", true, "CPU profiles of the process server and the host agent (whole run, seed included)")
	flag.BoolVar(&c.keep, "keep", false, "keep the work directory")
	flag.Parse()
	for _, s := range strings.Split(cases, ",") {
		bc, err := parseCase(strings.TrimSpace(s))
		if err != nil {
			benchkit.Fail("vmrpo", err)
		}
		c.cases = append(c.cases, bc)
	}
	benchkit.Main("vmrpo", func(ctx context.Context) error { return run(ctx, c) })
}

func parseCase(s string) (benchCase, error) {
	n, r, ok := strings.Cut(s, "x")
	vms, err1 := strconv.Atoi(n)
	rate, err2 := strconv.ParseFloat(r, 64)
	if !ok || err1 != nil || err2 != nil || vms < 1 || vms > 99 || rate <= 0 {
		return benchCase{}, fmt.Errorf("-cases: %q is not VMSxMB/s (like 10x10)", s)
	}
	return benchCase{vms: vms, rate: rate}, nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func run(ctx context.Context, c config) error {
	dir, err := benchkit.Setup(c.dir, false, "qemu-system-x86 qemu-utils", []string{"qemu-system-x86_64", "qemu-img"})
	if err != nil {
		return err
	}
	c.dir = dir
	if !c.keep {
		defer os.RemoveAll(dir)
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}
	if c.bin == "" {
		logf("building lifeboat")
		if c.bin, err = lbserver.Build(ctx, dir, "lifeboat"); err != nil {
			return err
		}
	}
	var results []result
	for i, bc := range c.cases {
		r, err := runCase(ctx, c, bc, fmt.Sprintf("c%d-%s", i+1, bc))
		if err != nil {
			return fmt.Errorf("case %s: %w", bc, err)
		}
		results = append(results, r)
		printCase(r)
	}
	printSummary(c, results)
	b, err := json.MarshalIndent(results, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.out, "results.json"), b, 0o644)
}

// runCase runs one case on a fresh service and stops it.
func runCase(ctx context.Context, c config, bc benchCase, tag string) (result, error) {
	dir := filepath.Join(c.dir, tag)
	if err := os.RemoveAll(dir); err != nil {
		return result{}, err
	}
	logf("== case %s: %d VM(s) × %g MB/s", tag, bc.vms, bc.rate)
	cl, err := startService(ctx, c, dir, tag)
	if cl != nil {
		defer cl.stop()
	}
	if err != nil {
		return result{}, err
	}
	if err := cl.startVMs(ctx, bc.vms, c.diskGiB<<30); err != nil {
		return result{}, err
	}
	if err := cl.prefill(ctx, c.prefillMiB<<20); err != nil {
		return result{}, err
	}
	if err := cl.startHostAgent(ctx); err != nil {
		return result{}, err
	}
	if err := cl.protect(ctx); err != nil {
		return result{}, err
	}
	seed, err := cl.waitSeeded(ctx)
	if err != nil {
		return result{}, err
	}
	logf("seeds done: every VM's first point after %.1f s, and an incremental one", seed.Seconds())
	w, err := cl.churnAndPoll(ctx, int64(bc.rate*1e6))
	if err != nil {
		return result{}, err
	}
	r, err := cl.analyse(ctx, bc, tag, w)
	if err != nil {
		return result{}, err
	}
	r.Seed = seed.Seconds()
	cl.stop() // the daemons write their CPU profiles as they stop
	r.Profiles = cl.profileTops(ctx)
	return r, nil
}
