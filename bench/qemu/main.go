// Command qemu benchmarks the qemu capture driver (issue 4).
//
//	go run ./bench/qemu                         # both parts, defaults below
//	go run ./bench/qemu -parts cycle -sizes 1,8  # cycle-time comparison only
//	go run ./bench/qemu -parts rpo -churn 50     # RPO under churn only
//
// Part "cycle": sparse raw images of each -sizes GiB hold the same
// -data-mib MiB of real /usr files in 4 MiB extents scattered over the
// disk. Each tool takes a full first copy (seed); then -churn-blocks
// 64 KiB blocks of the data (default 164: 1% of a 1 GiB disk, the same
// for every size) are rewritten through qemu-storage-daemon's writable
// NBD export, so QEMU's dirty bitmap sees the writes and the raw file
// holds them; then one incremental each, with a cold page cache: the
// qemu driver and the scan driver (each into its own Lifeboat vault
// through replicate.RunCycle), `restic backup` of the image file and
// `rsync --inplace --no-whole-file --sparse --ignore-times` to a copy
// (made with cp unless -rsync-seed). Then the same churn once more and the
// two Lifeboat drivers again with a warm page cache.
//
// Part "rpo": one -rpo-size GiB -rpo-format disk served by
// qemu-storage-daemon; a writer rewrites random 64 KiB..1 MiB extents
// through NBD at each -churn MB/s for -rpo-duration while qemu-driver
// cycles run back to back; it reports the points' spacing and the cycles.
//
// It needs root (to drop the page cache and read the daemon's /proc/PID/io),
// qemu-storage-daemon, qemu-img, restic and rsync.
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
)

const prog = "bench/qemu"

type config struct {
	work           string
	sizes          []int
	dataMiB        int
	churnBlocks    int
	drop           bool
	skipScanAbove  int
	skipPeersAbove int
	parts          map[string]bool
	rpoSize        int
	rpoFormat      string
	churn          []int
	rpoDuration    time.Duration
	keep           bool
	rsyncSeed      bool
	log            *slog.Logger
}

func main() {
	var c config
	var sizes, parts, churn string
	var verbose bool
	flag.StringVar(&c.work, "work", "bench/out/qemu", "work directory (images, vaults, repositories; removed afterwards unless -keep)")
	flag.StringVar(&sizes, "sizes", "1,8,32", "disk sizes in GiB for the cycle-time comparison")
	flag.IntVar(&c.dataMiB, "data-mib", 512, "MiB of data (real /usr files) in every image, in 4 MiB extents")
	flag.IntVar(&c.churnBlocks, "churn-blocks", 164, "64 KiB blocks rewritten before the incremental (164 = 1% of 1 GiB), the same for every size")
	flag.BoolVar(&c.drop, "drop-caches", true, "drop the page cache before every timed command (root)")
	flag.IntVar(&c.skipScanAbove, "skip-scan-above", 0, "skip the scan driver on disks larger than this many GiB (0: never)")
	flag.IntVar(&c.skipPeersAbove, "skip-peers-above", 0, "skip restic and rsync on disks larger than this many GiB (0: never)")
	flag.StringVar(&parts, "parts", "cycle,rpo", "parts to run: cycle, rpo")
	flag.IntVar(&c.rpoSize, "rpo-size", 8, "disk size in GiB for the RPO part")
	flag.StringVar(&c.rpoFormat, "rpo-format", "qcow2", "image format for the RPO part: qcow2 or raw")
	flag.StringVar(&churn, "churn", "50,100", "write rates in MB/s (10^6 bytes) for the RPO part, one run each")
	flag.DurationVar(&c.rpoDuration, "rpo-duration", 60*time.Second, "how long each churn rate runs")
	flag.BoolVar(&c.rsyncSeed, "rsync-seed", false, "time rsync's first copy too (default: make the destination with cp --sparse=always, untimed)")
	flag.BoolVar(&c.keep, "keep", false, "keep the work directory")
	flag.BoolVar(&verbose, "v", false, "log the drivers' and the engine's messages")
	flag.Parse()

	var err error
	if c.sizes, err = ints(sizes); err != nil {
		benchkit.Fail(prog, fmt.Errorf("-sizes: %w", err))
	}
	if c.churn, err = ints(churn); err != nil {
		benchkit.Fail(prog, fmt.Errorf("-churn: %w", err))
	}
	c.parts = map[string]bool{}
	for _, p := range strings.Split(parts, ",") {
		switch p = strings.TrimSpace(p); p {
		case "cycle", "rpo":
			c.parts[p] = true
		default:
			benchkit.Fail(prog, fmt.Errorf("-parts: unknown part %q: use cycle and/or rpo", p))
		}
	}
	if c.rpoFormat != "qcow2" && c.rpoFormat != "raw" {
		benchkit.Fail(prog, fmt.Errorf("-rpo-format %q: use qcow2 or raw", c.rpoFormat))
	}
	c.log = benchkit.Logger(verbose)
	benchkit.Main(prog, func(ctx context.Context) error { return runAll(ctx, c) })
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive integer list", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func runAll(ctx context.Context, c config) error {
	tools := []string{"qemu-storage-daemon", "qemu-img"}
	if c.parts["cycle"] {
		tools = append(tools, "restic", "rsync")
	}
	work, err := benchkit.Setup(c.work, c.drop, "qemu-utils qemu-block-extra restic rsync", tools)
	if err != nil {
		return err
	}
	c.work = work
	sock, err := os.MkdirTemp("", "lbq")
	if err != nil {
		return err
	}
	defer os.RemoveAll(sock)

	host, _ := os.Hostname()
	start := time.Now()
	fmt.Printf("bench/qemu %s on %s, %d CPUs, %s\n", start.Format(time.RFC3339), host, numCPU(), goVersion())
	fmt.Printf("args: %s\n", strings.Join(os.Args[1:], " "))
	fmt.Printf("load average at start: %s\n", benchkit.LoadAvg())
	fmt.Printf("page cache dropped before each timed command: %v\n\n", c.drop)

	if c.parts["cycle"] {
		if err := cyclePart(ctx, c, sock); err != nil {
			return err
		}
	}
	if c.parts["rpo"] {
		if err := rpoPart(ctx, c, sock); err != nil {
			return err
		}
	}
	fmt.Printf("load average at end: %s; total %s\n", benchkit.LoadAvg(), time.Since(start).Round(time.Second))
	if !c.keep {
		return os.RemoveAll(c.work)
	}
	return nil
}

// measurement is one timed command.
type measurement struct {
	wall     time.Duration
	u        usage         // the tool's processes (the daemon included for qemu)
	other    time.Duration // CPU other processes used meanwhile
	pidCPU   time.Duration // of u.CPU, what the extra pids (qemu-storage-daemon) used
	examined int64         // bytes the tool had to look at (see the docs)
	note     string
}

// timed runs fn between two samples; pids are processes whose usage counts
// as the tool's besides this process's (fn returns its children's usage).
func timed(drop bool, pids []int, fn func() (usage, error)) (measurement, error) {
	if drop {
		if err := benchkit.DropCaches(); err != nil {
			return measurement{}, err
		}
	}
	sample := func() (self, extra usage, err error) {
		for _, p := range pids {
			pu, err := procUsage(p)
			if err != nil {
				return self, extra, err
			}
			extra = extra.add(pu)
		}
		return selfUsage(), extra, nil
	}
	s0, e0, err := sample()
	if err != nil {
		return measurement{}, err
	}
	m0 := benchkit.MachineBusy()
	t0 := time.Now()
	child, err := fn()
	wall := time.Since(t0)
	m1 := benchkit.MachineBusy()
	s1, e1, serr := sample()
	if err != nil {
		return measurement{}, err
	}
	if serr != nil {
		return measurement{}, serr
	}
	extra := e1.sub(e0)
	u := s1.sub(s0).add(extra).add(child)
	return measurement{wall: wall, u: u, pidCPU: extra.CPU, other: max(0, m1-m0-u.CPU)}, nil
}

type row struct {
	sizeGiB          int
	tool             string
	seed, incr, warm measurement
	seedNote         string // instead of a seed time
	skipped          string
}

func cyclePart(ctx context.Context, c config, sock string) error {
	fmt.Printf("== Part 1: one incremental cycle after the same churn, disks of %v GiB\n", c.sizes)
	t0 := time.Now()
	data := loadData(c.dataMiB << 20)
	extents := c.dataMiB << 20 / extentSize
	blocks := churnBlocks(c.churnBlocks, extents*extentSize/blockSize)
	fmt.Printf("data: %d MiB of /usr files in %d extents of 4 MiB (loaded in %s); churn: %d blocks of 64 KiB = %.2f MiB, fresh random bytes\n\n",
		c.dataMiB, extents, time.Since(t0).Round(time.Millisecond), len(blocks), float64(len(blocks)*blockSize)/(1<<20))

	var rows []row
	for _, gib := range c.sizes {
		rs, err := cycleSize(ctx, c, sock, gib, data, extents, blocks)
		if err != nil {
			return fmt.Errorf("%d GiB: %w", gib, err)
		}
		rows = append(rows, rs...)
	}
	printCycleTable(rows, c.sizes)
	return nil
}

func cycleSize(ctx context.Context, c config, sock string, gib int, data []byte, extents int, blocks []int) ([]row, error) {
	size := int64(gib) << 30
	dir := filepath.Join(c.work, fmt.Sprintf("%dg", gib))
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if !c.keep {
		defer os.RemoveAll(dir)
	}
	fmt.Printf("-- %d GiB (load %s)\n", gib, benchkit.LoadAvg())
	l, err := newLayout(size, extents)
	if err != nil {
		return nil, err
	}
	image := filepath.Join(dir, "disk.raw")
	if err := writeImage(image, size, data, l); err != nil {
		return nil, err
	}
	allocated, err := benchkit.AllocatedBytes(image)
	if err != nil {
		return nil, err
	}
	d, err := startDaemon(ctx, image, "raw", sock, filepath.Join(dir, "qsd.log"))
	if err != nil {
		return nil, err
	}
	defer d.Stop()

	qt, err := openQemuTool(ctx, filepath.Join(dir, "lb-qemu"), d, c.log)
	if err != nil {
		return nil, err
	}
	defer qt.close()
	var st *lbTool
	if c.skipScanAbove == 0 || gib <= c.skipScanAbove {
		if st, err = openScanTool(ctx, filepath.Join(dir, "lb-scan"), image, c.log); err != nil {
			return nil, err
		}
	}
	peers := c.skipPeersAbove == 0 || gib <= c.skipPeersAbove
	var rr restic
	if peers {
		if rr, err = newRestic(ctx, filepath.Join(dir, "restic")); err != nil {
			return nil, err
		}
	}
	rsyncDst := filepath.Join(dir, "rsync-copy.raw")

	type tool struct {
		name string
		pids []int
		run  func() (usage, int64, string, error) // children's usage, bytes examined, note
	}
	lb := func(t *lbTool, examined func(*lbTool) (int64, string)) func() (usage, int64, string, error) {
		return func() (usage, int64, string, error) {
			res, err := t.cycle(ctx)
			if err != nil {
				return usage{}, 0, "", err
			}
			n, note := examined(t)
			dr := res.Disks[0]
			note = fmt.Sprintf("incr=%v changed=%d blocks; vault +%.1f MiB stored; %s; %s", dr.Incremental, dr.ChangedBlocks, mib(res.Stored.StoredBytes), t.drv.times, note)
			return usage{}, n, note, nil
		}
	}
	tools := []tool{{name: "qemu", pids: []int{d.Pid()}, run: lb(qt, func(t *lbTool) (int64, string) {
		s, _ := t.drv.qemuStats()
		return s.BytesRead, fmt.Sprintf("dirty extents %d (%.1f MiB)", s.Extents, mib(s.ExtentBytes))
	})}}
	if st != nil {
		tools = append(tools, tool{name: "scan", run: lb(st, func(*lbTool) (int64, string) { return allocated, "" })})
	}
	if peers {
		tools = append(tools,
			tool{name: "restic", run: func() (usage, int64, string, error) {
				_, u, err := rr.backup(ctx, image)
				return u, size, "", err
			}},
			tool{name: "rsync", run: func() (usage, int64, string, error) {
				_, u, err := rsyncCopy(ctx, image, rsyncDst)
				return u, size, "", err
			}})
	}
	measure := func(t tool, phase string, drop bool) (measurement, error) {
		var examined int64
		var note string
		m, err := timed(drop, t.pids, func() (usage, error) {
			u, n, nt, err := t.run()
			examined, note = n, nt
			return u, err
		})
		if err != nil {
			return m, fmt.Errorf("%s %s: %w", t.name, phase, err)
		}
		m.examined, m.note = examined, note
		if len(t.pids) > 0 {
			m.note += fmt.Sprintf("; qemu-storage-daemon cpu %.2f s", m.pidCPU.Seconds())
		}
		fmt.Printf("   %-6s %-5s %8.2f s  cpu %6.2f s  disk read %8.1f MiB  other cpu %5.1f s  %s\n",
			t.name, phase, m.wall.Seconds(), m.u.CPU.Seconds(), mib(m.u.ReadBytes), m.other.Seconds(), m.note)
		return m, nil
	}

	rows := make([]row, len(tools))
	for i, t := range tools {
		rows[i] = row{sizeGiB: gib, tool: t.name}
		if t.name == "rsync" && !c.rsyncSeed {
			// The first copy only makes the destination; cp is much
			// faster than rsync's first run on a mostly sparse image.
			if _, _, err := run(ctx, nil, "cp", "--sparse=always", image, rsyncDst); err != nil {
				return nil, err
			}
			rows[i].seedNote = "cp"
			continue
		}
		if rows[i].seed, err = measure(t, "seed", c.drop); err != nil {
			return nil, err
		}
	}
	checkQemu := func() {
		if s, ok := qt.drv.qemuStats(); ok && s.BlocksEmitted != int64(len(blocks)) {
			fmt.Printf("   WARNING: the qemu driver reported %d blocks, %d were rewritten\n", s.BlocksEmitted, len(blocks))
		}
	}
	// The same churn for every size, then one cold incremental each.
	if err := rewrite(ctx, d, l, blocks, 1); err != nil {
		return nil, err
	}
	for i, t := range tools {
		if rows[i].incr, err = measure(t, "incr", c.drop); err != nil {
			return nil, err
		}
	}
	checkQemu()
	// The same churn again (new bytes), then the Lifeboat drivers once
	// more with a warm page cache: the steady state of back-to-back cycles.
	if err := rewrite(ctx, d, l, blocks, 2); err != nil {
		return nil, err
	}
	for i, t := range tools {
		if t.name != "qemu" && t.name != "scan" {
			continue
		}
		if rows[i].warm, err = measure(t, "warm", false); err != nil {
			return nil, err
		}
	}
	checkQemu()
	if st == nil {
		rows = append(rows, row{sizeGiB: gib, tool: "scan", skipped: fmt.Sprintf("skipped (-skip-scan-above %d)", c.skipScanAbove)})
	}
	if !peers {
		for _, n := range []string{"restic", "rsync"} {
			rows = append(rows, row{sizeGiB: gib, tool: n, skipped: fmt.Sprintf("skipped (-skip-peers-above %d)", c.skipPeersAbove)})
		}
	}
	if st != nil {
		st.close()
	}
	return rows, nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func printCycleTable(rows []row, sizes []int) {
	fmt.Printf("\nIncremental cycle after %s churn (cold cache); seed = first full copy\n\n", "the same")
	fmt.Println("| disk | tool | seed s | incremental s | incr CPU s | incr disk read MiB | incr examined MiB | other CPU s | warm incr s |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		if r.skipped != "" {
			fmt.Printf("| %d GiB | %s | %s | | | | | | |\n", r.sizeGiB, r.tool, r.skipped)
			continue
		}
		seed := fmt.Sprintf("%.2f", r.seed.wall.Seconds())
		if r.seedNote != "" {
			seed = r.seedNote
		}
		warm := "-"
		if r.warm.wall > 0 {
			warm = fmt.Sprintf("%.3f", r.warm.wall.Seconds())
		}
		fmt.Printf("| %d GiB | %s | %s | %.3f | %.2f | %.1f | %.1f | %.1f | %s |\n", r.sizeGiB, r.tool, seed,
			r.incr.wall.Seconds(), r.incr.u.CPU.Seconds(), mib(r.incr.u.ReadBytes), mib(r.incr.examined), r.incr.other.Seconds(), warm)
	}
	find := func(gib int, tool string) (measurement, bool) {
		for _, r := range rows {
			if r.sizeGiB == gib && r.tool == tool && r.skipped == "" {
				return r.incr, true
			}
		}
		return measurement{}, false
	}
	fmt.Println("\n| disk | qemu/restic time | qemu/rsync time | qemu/scan time | qemu/restic disk read | qemu/scan disk read | target qemu <= 0.05x restic |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---|")
	ratio := func(gib int, a, b string, read bool) string {
		x, ok1 := find(gib, a)
		y, ok2 := find(gib, b)
		if !ok1 || !ok2 {
			return "-"
		}
		if read {
			if y.u.ReadBytes == 0 {
				return "-"
			}
			return fmt.Sprintf("%.4f", float64(x.u.ReadBytes)/float64(y.u.ReadBytes))
		}
		return fmt.Sprintf("%.4f", x.wall.Seconds()/y.wall.Seconds())
	}
	for _, gib := range sizes {
		verdict := "-"
		if r := ratio(gib, "qemu", "restic", false); r != "-" {
			verdict = "MET"
			if v, _ := strconv.ParseFloat(r, 64); v > 0.05 {
				verdict = "MISSED"
			}
		}
		fmt.Printf("| %d GiB | %s | %s | %s | %s | %s | %s |\n", gib, ratio(gib, "qemu", "restic", false), ratio(gib, "qemu", "rsync", false),
			ratio(gib, "qemu", "scan", false), ratio(gib, "qemu", "restic", true), ratio(gib, "qemu", "scan", true), verdict)
	}
	var q []time.Duration
	worst := 0.0
	for _, gib := range sizes {
		if m, ok := find(gib, "qemu"); ok {
			q = append(q, m.wall)
		}
		if m, ok := find(gib, "qemu"); ok {
			if r, ok := find(gib, "restic"); ok {
				worst = max(worst, m.wall.Seconds()/r.wall.Seconds())
			}
		}
	}
	if len(q) > 0 {
		lo, hi := slices.Min(q), slices.Max(q)
		fmt.Printf("\nqemu incremental (cold) across sizes: %.3f s .. %.3f s (max/min %.2f)\n", lo.Seconds(), hi.Seconds(), hi.Seconds()/lo.Seconds())
	}
	if worst > 0 {
		verdict := "MET"
		if worst > 0.05 {
			verdict = "MISSED"
		}
		fmt.Printf("target qemu <= 0.05x restic incremental time: worst ratio %.4f: %s\n\n", worst, verdict)
	}
}

// percentile returns the p-th percentile (nearest rank) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.SortFunc(s, cmp.Compare)
	i := int(p/100*float64(len(s)) + 0.5)
	return s[min(max(i-1, 0), len(s)-1)]
}
