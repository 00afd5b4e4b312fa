package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
)

func numCPU() int       { return runtime.NumCPU() }
func goVersion() string { return runtime.Version() }

type rpoCycle struct {
	cut, published time.Time
	dur            time.Duration
	changed        int64 // bytes of blocks the driver reported
	nbdRead        int64
	stored         int64
	extents        int64
}

func rpoPart(ctx context.Context, c config, sock string) error {
	size := int64(c.rpoSize) << 30
	fmt.Printf("== Part 2: RPO under sustained churn: one %d GiB %s disk, qemu driver cycles back to back, %s per rate\n",
		c.rpoSize, c.rpoFormat, c.rpoDuration)
	dir := filepath.Join(c.work, "rpo")
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if !c.keep {
		defer os.RemoveAll(dir)
	}
	image := filepath.Join(dir, "disk."+c.rpoFormat)
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", c.rpoFormat, image, strconv.FormatInt(size, 10)).CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img create: %w: %s", err, out)
	}
	d, err := startDaemon(ctx, image, c.rpoFormat, sock, filepath.Join(dir, "qsd.log"))
	if err != nil {
		return err
	}
	defer d.Stop()
	qt, err := openQemuTool(ctx, filepath.Join(dir, "lb-qemu"), d, c.log)
	if err != nil {
		return err
	}
	defer qt.close()
	// Some data first (the writer's own pattern), then the seed point.
	seedCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if w, err := benchkit.StartWriter(seedCtx, d.nbd, writeExport, size, 200e6, 1); err != nil {
		cancel()
		return err
	} else {
		<-seedCtx.Done()
		for err := range w.Errc {
			cancel()
			return err
		}
		fmt.Printf("pre-filled %.0f MiB at random offsets\n", mib(w.Written.Load()))
	}
	cancel()
	t0 := time.Now()
	if _, err := qt.cycle(ctx); err != nil {
		return err
	}
	fmt.Printf("seed point in %s\n\n", time.Since(t0).Round(time.Millisecond))

	fmt.Println("| churn MB/s | written MB/s | points | interval median / p95 / max s | worst RPO s | cycle median / p95 / max s | changed MiB/cycle median (max) | NBD read MiB/cycle median | stored MiB/cycle median | bench+qsd CPU (qsd) | other CPU s | verdict (point every <= 10 s) |")
	fmt.Println("|---:|---:|---:|---|---:|---|---|---:|---:|---:|---:|---|")
	for i, rate := range c.churn {
		line, err := rpoRun(ctx, c, d, qt, size, int64(rate)*1e6, uint64(i+2))
		if err != nil {
			return fmt.Errorf("churn %d MB/s: %w", rate, err)
		}
		fmt.Println(line)
	}
	fmt.Println()
	return nil
}

func rpoRun(ctx context.Context, c config, d *daemon, qt *lbTool, size, rate int64, seed uint64) (string, error) {
	wctx, stopWriter := context.WithCancel(ctx)
	defer stopWriter()
	u0 := selfUsage()
	q0, err := procUsage(d.Pid())
	if err != nil {
		return "", err
	}
	m0 := benchkit.MachineBusy()
	w, err := benchkit.StartWriter(wctx, d.nbd, writeExport, size, rate, seed)
	if err != nil {
		return "", err
	}
	start := time.Now()
	var cycles []rpoCycle
	for time.Since(start) < c.rpoDuration {
		select {
		case err, ok := <-w.Errc:
			if ok {
				return "", err
			}
		default:
		}
		t := time.Now()
		res, err := qt.cycle(ctx)
		if err != nil {
			return "", err
		}
		rc := rpoCycle{cut: res.Point.Time, published: time.Now(), dur: time.Since(t), changed: res.Disks[0].ChangedBytes, stored: res.Stored.StoredBytes}
		if s, ok := qt.drv.qemuStats(); ok {
			rc.nbdRead, rc.extents = s.BytesRead, s.Extents
		}
		cycles = append(cycles, rc)
	}
	elapsed := time.Since(start)
	stopWriter()
	for err := range w.Errc {
		return "", err
	}
	written := w.Written.Load()
	u1 := selfUsage()
	q1, err := procUsage(d.Pid())
	if err != nil {
		return "", err
	}
	qsdCPU := q1.sub(q0).CPU
	own := u1.sub(u0).CPU + qsdCPU
	other := max(0, benchkit.MachineBusy()-m0-own)

	var intervals, durs []time.Duration
	var worst time.Duration
	var changed, nbdRead, stored []int64
	for i, rc := range cycles {
		durs = append(durs, rc.dur)
		changed, nbdRead, stored = append(changed, rc.changed), append(nbdRead, rc.nbdRead), append(stored, rc.stored)
		if i > 0 {
			intervals = append(intervals, rc.cut.Sub(cycles[i-1].cut))
			// Just before this point is published, the newest point is the previous one.
			worst = max(worst, rc.published.Sub(cycles[i-1].cut))
		}
	}
	p95 := percentile(intervals, 95)
	verdict := "MET"
	if len(intervals) == 0 || p95 > 10*time.Second {
		verdict = "MISSED"
	}
	if c.log.Enabled(ctx, slog.LevelInfo) {
		for _, rc := range cycles {
			fmt.Printf("   cycle %.2f s changed %.1f MiB extents %d\n", rc.dur.Seconds(), mib(rc.changed), rc.extents)
		}
	}
	sec := func(d time.Duration) string { return fmt.Sprintf("%.2f", d.Seconds()) }
	return fmt.Sprintf("| %d | %.1f | %d | %s / %s / %s | %s | %s / %s / %s | %.1f (%.1f) | %.1f | %.1f | %.1f s (%.1f s), %.0f%% of %d CPUs | %.1f | %s (p95) |",
		rate/1e6, float64(written)/1e6/elapsed.Seconds(), len(cycles),
		sec(percentile(intervals, 50)), sec(p95), sec(percentile(intervals, 100)), sec(worst),
		sec(percentile(durs, 50)), sec(percentile(durs, 95)), sec(percentile(durs, 100)),
		mib(median(changed)), mib(slices.Max(changed)), mib(median(nbdRead)), mib(median(stored)),
		own.Seconds(), qsdCPU.Seconds(), 100*own.Seconds()/elapsed.Seconds()/float64(numCPU()), numCPU(), other.Seconds(), verdict), nil
}

func median(v []int64) int64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
