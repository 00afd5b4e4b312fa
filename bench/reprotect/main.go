// Command reprotect benchmarks reprotect (issue 13): bringing the
// original disk of a failed-over machine up to date with what its
// recovered VM wrote, against a full copy and rsync.
//
//	nice -n 19 go run ./bench/reprotect                    # 16 GiB disk, 1% changed
//	nice -n 19 go run ./bench/reprotect -size 4 -copies 1  # a smaller, quicker run
//
// Setup (untimed): the original disk is a sparse raw image of -size GiB
// holding bench/run.sh's cached real-data ext4 image (-base) laid -copies
// times from offset 0. It is replicated into a local vault with the scan
// driver (point P, the last forward point). The recovered VM's disk is
// what the qemu provider leaves: a qcow2 with P's content and the
// since-boot dirty bitmap lifeboat-1. The "guest" then changes -percent of
// the disk's 64 KiB blocks, picked at random, with fresh random bytes
// through a qemu-storage-daemon NBD export, and the daemon is stopped
// cleanly (the bitmap is saved). rsync's destination is a copy of the
// original (cp --sparse=always).
//
// Timed, each after dropping the page cache:
//
//   - Lifeboat: reverse.Cycle (offline: the stopped VM's overlay in a
//     qemu-storage-daemon, only the blocks the bitmap marks are read)
//     into the vault, then target.Apply of that point onto the original
//     (a fresh vault handle, index loaded, compared block by block, only
//     differing blocks written).
//   - Full copy: qemu-img convert -O raw of the recovered disk (sparse
//     output); its bytes are the disk's allocated data.
//   - rsync --inplace --no-whole-file --stats from that raw copy onto the
//     copy of the original.
//
// Then both targets are compared byte for byte with the recovered disk's
// raw copy, and the ratios are printed against the targets (Lifeboat
// bytes <= 0.1x the full copy's, Lifeboat time <= 0.5x rsync's). It needs
// root (page cache), qemu-storage-daemon, qemu-img and rsync, and about
// 4.5x the original's allocated data free under -work, which is removed
// at the end unless -keep.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
)

const prog = "bench/reprotect"

type config struct {
	work    string
	base    string
	sizeGiB int
	percent float64
	copies  int
	seed    uint64
	drop    bool
	keep    bool
	log     *slog.Logger
}

func main() {
	var c config
	var verbose bool
	flag.StringVar(&c.work, "work", "bench/out/reprotect", "work directory (images, vault; removed afterwards unless -keep)")
	flag.StringVar(&c.base, "base", "bench/out/cache/base.img", "real-data image laid into the original disk (bench/run.sh builds and caches it)")
	flag.IntVar(&c.sizeGiB, "size", 16, "disk size in GiB")
	flag.Float64Var(&c.percent, "percent", 1, "percentage of the disk's 64 KiB blocks the recovered VM changes")
	flag.IntVar(&c.copies, "copies", 4, "how many times -base is laid into the disk, one after the other from offset 0 (1: only the first 4 GiB hold data)")
	flag.Uint64Var(&c.seed, "seed", 1, "picks the changed blocks and their bytes")
	flag.BoolVar(&c.drop, "drop-caches", true, "drop the page cache before every timed phase (root)")
	flag.BoolVar(&c.keep, "keep", false, "keep the work directory")
	flag.BoolVar(&verbose, "v", false, "log the drivers', the engine's and the target writer's messages")
	flag.Parse()
	if c.sizeGiB <= 0 || c.percent <= 0 || c.percent > 100 || c.copies <= 0 {
		benchkit.Fail(prog, fmt.Errorf("-size and -copies must be positive and -percent in (0, 100]"))
	}
	c.log = benchkit.Logger(verbose)
	benchkit.Main(prog, func(ctx context.Context) error { return runAll(ctx, c) })
}

func numCPU() int       { return runtime.NumCPU() }
func goVersion() string { return runtime.Version() }

func runAll(ctx context.Context, c config) error {
	work, err := benchkit.Setup(c.work, c.drop, "qemu-utils qemu-block-extra rsync", []string{"qemu-storage-daemon", "qemu-img", "rsync"})
	if err != nil {
		return err
	}
	c.work = work
	if !c.keep {
		defer os.RemoveAll(c.work)
	}
	sock, err := os.MkdirTemp("", "lbr")
	if err != nil {
		return err
	}
	defer os.RemoveAll(sock)

	start := time.Now()
	fmt.Printf("bench/reprotect %s\n", start.Format(time.RFC3339))
	fmt.Printf("args: %s\n", strings.Join(os.Args[1:], " "))
	fmt.Printf("machine: %s\n", machineFacts(ctx, c.work))
	fmt.Printf("load average at start: %s; page cache dropped before each timed phase: %v; one run\n\n", benchkit.LoadAvg(), c.drop)

	r, err := prepare(ctx, c, sock)
	if err != nil {
		return err
	}
	if err := r.measure(ctx); err != nil {
		return err
	}
	if err := r.verify(); err != nil {
		return err
	}
	r.report()
	fmt.Printf("\nload average at end: %s; total %s\n", benchkit.LoadAvg(), time.Since(start).Round(time.Second))
	return nil
}
