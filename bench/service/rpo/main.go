// Command rpo measures the recovery point objective under write load: one
// real `lifeboat server` (SQLite, embedded process server) and one real
// `lifeboat agent run` process protect an 8 GiB sparse disk image on the
// real disk, holding ~2 GiB of data, with a policy taking a crash-consistent
// point every 30 s (scan driver). A churn generator in this process
// rewrites random 64 KiB blocks of the data region at R MB/s; for each R of
// a ladder it samples the machine through the API every second and
// reports the worst RPO (now - time of the last point), the cycles'
// durations and bytes sent, and the highest R whose worst RPO stays under
// 60 s. The ladder stops at the first level whose RPO breaks.
//
//	go run ./bench/service/rpo                                   # ladder 2,5,10,20,40,80 MB/s, 100 s each
//	go run ./bench/service/rpo -rates 5,40 -level 60s            # quick run
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/service/internal/lbserver"
	"github.com/lifeboat-dr/lifeboat/bench/service/internal/procstat"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
)

const (
	blockSize = 64 << 10
	machine   = "rpo-bench"
	targetRPO = 60 * time.Second
)

func main() {
	var (
		dir      = flag.String("dir", filepath.Join(os.TempDir(), "lifeboat-bench-rpo"), "work directory on the disk to measure (image, vault, agent state); removed afterwards")
		bin      = flag.String("lifeboat", "", "lifeboat binary (default: go build ./cmd/lifeboat into -dir)")
		diskGiB  = flag.Int64("disk", 8, "disk image size, GiB (sparse)")
		dataMiB  = flag.Int64("data", 2048, "MiB of data written before protection; the churn rewrites blocks of this region")
		random   = flag.Float64("random", 0.5, "fraction of the initial data that is random (incompressible); the rest is Go source text. Churn writes are random.")
		rates    = flag.String("rates", "2,5,10,20,40,80", "churn ladder, MB/s (10^6 bytes)")
		levelDur = flag.Duration("level", 100*time.Second, "time per level (about 3 cycles at the 30 s interval)")
		interval = flag.Duration("interval", 30*time.Second, "policy crash interval")
		all      = flag.Bool("all", false, "run every level even after the RPO broke")
		keep     = flag.Bool("keep", false, "keep the work directory")
	)
	flag.Parse()
	var ladder []float64
	for _, f := range strings.Split(*rates, ",") {
		r, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || r < 0 {
			fail(fmt.Errorf("-rates: %q is not a rate in MB/s", f))
		}
		ladder = append(ladder, r)
	}
	if *dataMiB<<20 > *diskGiB<<30 || *dataMiB < 64 {
		fail(errors.New("-data must be at least 64 MiB and fit in -disk"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	_ = os.RemoveAll(*dir)
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		fail(err)
	}
	err := run(ctx, *dir, *bin, *diskGiB<<30, *dataMiB<<20, *random, ladder, *levelDur, *interval, *all)
	if !*keep {
		_ = os.RemoveAll(*dir)
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "rpo bench: FAILED:", err)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// cycle is one published point as the API showed it.
type cycle struct {
	time     time.Time
	duration time.Duration
	sent     int64
	changed  int64
}

type level struct {
	rate       float64 // MB/s asked
	written    int64   // bytes the churn wrote
	wall       time.Duration
	maxRPO     time.Duration
	meanRPO    time.Duration
	cycles     []cycle
	samples    int
	sampleErrs int
	serverCPU  time.Duration
	agentCPU   time.Duration
	churnCPU   time.Duration // this process: churn writes and API sampling
	others     time.Duration
	broke      bool
}

func run(ctx context.Context, dir, bin string, diskSize, dataSize int64, random float64, ladder []float64, levelDur, interval time.Duration, all bool) error {
	if bin == "" {
		logf("building lifeboat")
		var err error
		if bin, err = lbserver.Build(ctx, dir, "lifeboat-bench"); err != nil {
			return err
		}
	}
	img := filepath.Join(dir, "disk.img")
	logf("writing %d MiB of data into a %d GiB sparse image %s", dataSize>>20, diskSize>>30, img)
	if err := makeImage(img, diskSize, dataSize, random); err != nil {
		return err
	}
	logf("starting lifeboat server")
	srv, err := lbserver.Start(ctx, lbserver.Options{Bin: bin, Data: filepath.Join(dir, "server")})
	if err != nil {
		return err
	}
	defer srv.Stop()
	admin, err := srv.Admin()
	if err != nil {
		return err
	}
	var tok api.TokenResponse
	if err := admin.Do(ctx, "POST", client.Path("tokens"), api.TokenRequest{Role: api.RoleAgent, TTL: api.Duration(time.Hour)}, &tok); err != nil {
		return fmt.Errorf("create agent token: %w", err)
	}
	state := filepath.Join(dir, "agent")
	enroll := exec.CommandContext(ctx, bin, "agent", "enroll", "--server", srv.URL, "--token", tok.Token, "--name", machine,
		"--state-dir", state, "--disk", "d0="+img)
	if out, err := enroll.CombinedOutput(); err != nil {
		return fmt.Errorf("lifeboat agent enroll: %w\n%s", err, out)
	}
	agentLog, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		return err
	}
	defer agentLog.Close()
	agentCmd := exec.Command(bin, "agent", "run", "--state-dir", state)
	agentCmd.Stdout, agentCmd.Stderr = agentLog, agentLog
	if err := agentCmd.Start(); err != nil {
		return fmt.Errorf("start lifeboat agent run: %w", err)
	}
	agentDone := make(chan struct{})
	go func() { _ = agentCmd.Wait(); close(agentDone) }()
	defer func() {
		_ = agentCmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-agentDone:
		case <-time.After(20 * time.Second):
			_ = agentCmd.Process.Kill()
			<-agentDone
		}
	}()

	pol := api.Policy{Name: "rpo", CrashInterval: api.Duration(interval), RPOThreshold: api.Duration(targetRPO)}
	if err := admin.Do(ctx, "POST", client.Path("policies"), pol, nil); err != nil {
		return fmt.Errorf("create policy: %w", err)
	}
	if err := admin.Do(ctx, "POST", client.Path("machines", machine, "protect"), api.ProtectRequest{Policy: "rpo"}, nil); err != nil {
		return fmt.Errorf("protect: %w", err)
	}
	logf("protected %s (crash interval %s); waiting for the initial replication", machine, interval)
	t0 := time.Now()
	var first *api.CycleResult
	for first == nil {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-agentDone:
			return fmt.Errorf("the agent exited during the initial replication; log %s/agent.log", dir)
		case <-time.After(time.Second):
		}
		var m api.Machine
		if err := admin.Do(ctx, "GET", client.Path("machines", machine), nil, &m); err == nil && m.LastPoint != nil {
			first = m.LastPoint
		}
		if first != nil && first.Duration == 0 { // wait for the agent's own report
			first = nil
		}
		if time.Since(t0) > 15*time.Minute {
			return errors.New("no point within 15 minutes of protection")
		}
	}
	seed := time.Since(t0)
	logf("initial replication: first point after %.1f s (cycle %.1f s, sent %d MiB)", seed.Seconds(), first.Duration.Std().Seconds(), first.SentBytes>>20)
	// The seed's point is as old as the seed is long: wait for the first
	// incremental point so that the ladder starts from a steady state.
	for {
		var m api.Machine
		if err := admin.Do(ctx, "GET", client.Path("machines", machine), nil, &m); err == nil && m.LastPoint != nil &&
			m.LastPoint.Time.After(first.Time) && m.LastPoint.Duration > 0 {
			logf("first incremental point %.1f s after the seed's (cycle %.1f s)", m.LastPoint.Time.Sub(first.Time).Seconds(), m.LastPoint.Duration.Std().Seconds())
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-agentDone:
			return fmt.Errorf("the agent exited; log %s/agent.log", dir)
		case <-time.After(time.Second):
		}
		if time.Since(t0) > 20*time.Minute {
			return errors.New("no incremental point after the initial replication")
		}
	}

	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var levels []level
	for i, r := range ladder {
		lv, err := runLevel(ctx, admin, f, dataSize, r, levelDur, uint64(i), srv.Pid(), agentCmd.Process.Pid, agentDone)
		if err != nil {
			return err
		}
		levels = append(levels, lv)
		logf("R=%g MB/s: max RPO %.1f s, %d cycles, cycle %s, sent/cycle %s", r, lv.maxRPO.Seconds(), len(lv.cycles), durs(lv.cycles), sents(lv.cycles))
		if lv.broke && !all {
			logf("RPO broke at %g MB/s; stopping the ladder", r)
			break
		}
	}
	report(levels, diskSize, dataSize, interval, levelDur, seed, first)
	logf("stopping the agent (pid %d) and the server (pid %d)", agentCmd.Process.Pid, srv.Pid())
	return nil
}

// makeImage writes dataSize bytes of mixed data at the start of a sparse
// image of diskSize bytes.
func makeImage(path string, diskSize, dataSize int64, random float64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(diskSize); err != nil {
		return err
	}
	text, err := goText(32 << 20)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewChaCha8([32]byte{'r', 'p', 'o'}))
	chunk := make([]byte, 4<<20)
	for off := int64(0); off < dataSize; off += int64(len(chunk)) {
		for b := 0; b < len(chunk); b += blockSize {
			blk := chunk[b : b+blockSize]
			if rng.Float64() < random {
				for i := 0; i < blockSize; i += 8 {
					binary.LittleEndian.PutUint64(blk[i:], rng.Uint64())
				}
			} else {
				o := rng.IntN((len(text)-blockSize)/4096) * 4096
				copy(blk, text[o:o+blockSize])
				binary.LittleEndian.PutUint64(blk, uint64(off)+uint64(b)+1) // distinct
			}
		}
		n := min(int64(len(chunk)), dataSize-off)
		if _, err := f.WriteAt(chunk[:n], off); err != nil {
			return err
		}
	}
	return f.Sync()
}

func goText(n int) ([]byte, error) {
	out := make([]byte, 0, n)
	root := filepath.Join(runtime.GOROOT(), "src")
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || len(out) >= n {
			return nil
		}
		b, err := os.ReadFile(p)
		if err == nil {
			out = append(out, b[:min(len(b), n-len(out))]...)
		}
		return nil
	})
	if len(out) < 1<<20 {
		return nil, fmt.Errorf("too little Go source under %s (%d bytes): %v", root, len(out), err)
	}
	return out, nil
}

// runLevel churns at rate MB/s for dur and samples the machine every second.
func runLevel(ctx context.Context, admin *client.Client, f *os.File, region int64, rate float64, dur time.Duration, seed uint64, serverPid, agentPid int, agentDone <-chan struct{}) (level, error) {
	lv := level{rate: rate}
	logf("level R=%g MB/s for %s", rate, dur)
	lctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	var written atomic.Int64
	churnErr := make(chan error, 1)
	go func() { churnErr <- churn(lctx, f, region, rate, seed, &written) }()

	s0, err := procstat.Take(serverPid, agentPid)
	if err != nil {
		return lv, err
	}
	a0, _ := procstat.ProcCPU(agentPid)
	me0, _ := procstat.ProcCPU(os.Getpid())
	start := time.Now()
	seen := map[time.Time]int{} // point time -> index in lv.cycles
	var sum time.Duration
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
loop:
	for {
		select {
		case <-lctx.Done():
			break loop
		case <-agentDone:
			return lv, errors.New("the agent exited; see agent.log in the work directory (-keep)")
		case <-tick.C:
		}
		var m api.Machine
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		err := admin.Do(rctx, "GET", client.Path("machines", machine), nil, &m)
		rcancel()
		if err != nil {
			lv.sampleErrs++
			continue
		}
		now := time.Now()
		lv.samples++
		rpo := m.RPO.Std()
		if m.LastPoint != nil {
			rpo = now.Sub(m.LastPoint.Time) // as the brief defines it: now - last point time
			// The process server's report of a point can come before the
			// agent's (which adds duration and bytes): keep the fuller one.
			if lp := m.LastPoint; lp.Time.After(start) {
				c := cycle{time: lp.Time, duration: lp.Duration.Std(), sent: lp.SentBytes, changed: lp.ChangedBytes}
				if i, ok := seen[lp.Time]; !ok {
					seen[lp.Time] = len(lv.cycles)
					lv.cycles = append(lv.cycles, c)
				} else if c.duration > 0 {
					lv.cycles[i] = c
				}
			}
		}
		sum += rpo
		lv.maxRPO = max(lv.maxRPO, rpo)
		if lv.maxRPO > 2*targetRPO+dur/2 {
			break loop // clearly broken; do not wait out the level
		}
	}
	cancel()
	if err := <-churnErr; err != nil {
		return lv, err
	}
	s1, err := procstat.Take(serverPid, agentPid)
	if err != nil {
		return lv, err
	}
	a1, _ := procstat.ProcCPU(agentPid)
	me1, _ := procstat.ProcCPU(os.Getpid())
	w := procstat.Since(s0, s1)
	lv.wall = w.Wall
	lv.agentCPU = a1 - a0
	lv.serverCPU = w.CPU - lv.agentCPU
	lv.churnCPU = me1 - me0
	lv.others = max(0, w.Others-lv.churnCPU)
	lv.written = written.Load()
	if lv.samples > 0 {
		lv.meanRPO = sum / time.Duration(lv.samples)
	}
	lv.broke = lv.maxRPO >= targetRPO || lv.samples == 0
	return lv, nil
}

// churn writes random 64 KiB blocks at random places of [0, region) at
// rate MB/s, in 50 ms steps, until ctx ends.
func churn(ctx context.Context, f *os.File, region int64, rate float64, seed uint64, written *atomic.Int64) error {
	if rate <= 0 {
		<-ctx.Done()
		return nil
	}
	rng := rand.New(rand.NewChaCha8([32]byte{'c', 'h', 'u', 'r', 'n', byte(seed)}))
	pool := make([]byte, 16<<20)
	for i := 0; i < len(pool); i += 8 {
		binary.LittleEndian.PutUint64(pool[i:], rng.Uint64())
	}
	blk := make([]byte, blockSize)
	blocks := region / blockSize
	const step = 50 * time.Millisecond
	start := time.Now()
	t := time.NewTicker(step)
	defer t.Stop()
	var n int64
	for k := uint64(0); ; {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		due := int64(rate * 1e6 * time.Since(start).Seconds())
		for n+blockSize <= due {
			o := rng.IntN(len(pool)/4096-blockSize/4096) * 4096
			copy(blk, pool[o:o+blockSize])
			k++
			binary.LittleEndian.PutUint64(blk, k^seed<<56) // every write distinct
			if _, err := f.WriteAt(blk, rng.Int64N(blocks)*blockSize); err != nil {
				return fmt.Errorf("churn write: %w", err)
			}
			n += blockSize
			written.Store(n)
			if ctx.Err() != nil {
				return nil
			}
		}
	}
}

func durs(cs []cycle) string {
	if len(cs) == 0 {
		return "-"
	}
	v := make([]float64, len(cs))
	mx := 0.0
	for i, c := range cs {
		v[i] = c.duration.Seconds()
		mx = max(mx, v[i])
	}
	return fmt.Sprintf("%.1f s (max %.1f)", procstat.Median(v), mx)
}

func sents(cs []cycle) string {
	if len(cs) == 0 {
		return "-"
	}
	v := make([]float64, len(cs))
	for i, c := range cs {
		v[i] = float64(c.sent) / (1 << 20)
	}
	return fmt.Sprintf("%.0f MiB", procstat.Median(v))
}

func report(ls []level, diskSize, dataSize int64, interval, levelDur, seed time.Duration, first *api.CycleResult) {
	fmt.Printf("\n== RPO under load: real `lifeboat server` (SQLite, embedded process server) + real `lifeboat agent run` (scan driver)\n")
	fmt.Printf("== %d GiB sparse image with %d MiB of data; policy crash interval %s; churn rewrites random 64 KiB blocks of the data region with random bytes\n",
		diskSize>>30, dataSize>>20, interval)
	fmt.Printf("== %d CPUs shared by server, agent and churn; %s per level; RPO sampled every second through GET /api/v1/machines/%s\n", runtime.NumCPU(), levelDur, machine)
	fmt.Printf("== initial replication: first point %.1f s after protect (cycle %.1f s, %d MiB sent)\n\n", seed.Seconds(), first.Duration.Std().Seconds(), first.SentBytes>>20)
	fmt.Printf("%-8s %9s %9s %9s %7s %18s %13s %9s %9s %8s %8s %8s %7s\n", "R MB/s", "written", "max RPO", "mean RPO", "cycles", "cycle s", "sent/cycle", "server", "agent", "churn", "others", "samples", "RPO<60")
	fmt.Printf("%-8s %9s %9s %9s %7s %18s %13s %9s %9s %8s %8s %8s %7s\n", "------", "MiB", "s", "s", "", "median (max)", "median", "CPU s", "CPU s", "CPU s", "CPU s", "(errs)", "")
	best := -1.0
	for _, l := range ls {
		ok := "yes"
		if l.broke {
			ok = "NO"
		} else {
			best = max(best, l.rate)
		}
		fmt.Printf("%-8g %9d %9.1f %9.1f %7d %18s %13s %9.1f %9.1f %8.1f %8.1f %8s %7s\n", l.rate, l.written>>20, l.maxRPO.Seconds(), l.meanRPO.Seconds(),
			len(l.cycles), durs(l.cycles), sents(l.cycles), l.serverCPU.Seconds(), l.agentCPU.Seconds(), l.churnCPU.Seconds(), l.others.Seconds(),
			fmt.Sprintf("%d(%d)", l.samples, l.sampleErrs), ok)
	}
	fmt.Println()
	if best < 0 {
		fmt.Printf("No level kept the RPO under 60 s.\n")
	} else {
		fmt.Printf("Highest churn with max RPO < 60 s: %g MB/s (%.2f TB/day of changed data for one machine).\n", best, best*86400/1e6)
	}
	fmt.Printf("cycles: points published during the level (cut after the level started); cycle s and sent/cycle as the agent reported them.\n")
	fmt.Printf("Target (issue 3): RPO < 60 s with a 30 s crash interval.\n")
}
