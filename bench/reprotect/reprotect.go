package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
	"github.com/lifeboat-dr/lifeboat/internal/compute/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/reverse"
	"github.com/lifeboat-dr/lifeboat/internal/target"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// rig is the prepared scene and what the timed phases measured.
type rig struct {
	c                             config
	size                          int64
	original, rsyncDst, raw       string // Lifeboat's target, rsync's target, the full copy
	vmDir, vaultDir, qcow2        string
	v                             *vault.Vault
	vm                            reverse.VM
	changed                       int // blocks the recovered VM rewrote
	origAlloc                     int64
	cycle                         cycleStats
	apply                         *target.Result
	rsync                         rsyncStats
	rawAlloc                      int64
	mCycle, mApply, mFull, mRsync measurement
}

// prepare builds the original disk, point P, the recovered VM's disk,
// rsync's copy of the original, and the recovered VM's changes.
func prepare(ctx context.Context, c config, sock string) (*rig, error) {
	r := &rig{c: c, size: int64(c.sizeGiB) << 30, original: filepath.Join(c.work, "original.raw"),
		rsyncDst: filepath.Join(c.work, "rsync-dst.raw"), raw: filepath.Join(c.work, "recovered.raw"),
		vmDir: filepath.Join(c.work, "vm"), vaultDir: filepath.Join(c.work, "vault")}
	if err := r.checkSpace(); err != nil {
		return nil, err
	}
	t := time.Now()
	if err := buildOriginal(r.original, c.base, r.size, c.copies); err != nil {
		return nil, err
	}
	var err error
	if r.origAlloc, err = benchkit.AllocatedBytes(r.original); err != nil {
		return nil, err
	}
	fmt.Printf("original: %d GiB sparse raw, %s laid %d time(s) from offset 0: %.2f GB allocated (%s)\n",
		c.sizeGiB, c.base, c.copies, gb(r.origAlloc), since(t))
	t = time.Now()
	if r.v, err = benchkit.NewVault(ctx, r.vaultDir, blockSize, c.log); err != nil {
		return nil, err
	}
	seed, err := seedPoint(ctx, r.v, r.original, filepath.Join(c.work, "scan.table"), c.log)
	if err != nil {
		return nil, err
	}
	fmt.Printf("point P %s (scan driver, local vault): %.2f GB changed, %.2f GB stored after dedup and zstd (%s)\n",
		seed.Point.ID.Short(), gb(seed.Disks[0].ChangedBytes), gb(seed.Stored.StoredBytes), since(t))
	r.vm = reverse.VM{Name: "lb-bench-" + machine, Dir: r.vmDir, Point: seed.Point.ID.String(), Disks: []string{diskName}, Access: qemu.Disks(r.vmDir, 1)}
	t = time.Now()
	if r.qcow2, err = recoveredDisk(ctx, r.original, r.vmDir); err != nil {
		return nil, err
	}
	if _, err := run(ctx, "cp", "--sparse=always", r.original, r.rsyncDst); err != nil {
		return nil, err
	}
	fmt.Printf("recovered VM's disk %s (qcow2 of P + bitmap lifeboat-1) and rsync's copy of the original (%s)\n", r.qcow2, since(t))
	t = time.Now()
	nblocks := r.size / blockSize
	n := max(1, int64(float64(nblocks)*c.percent/100+0.5))
	offsets := pickBlocks(nblocks, n, c.seed)
	for i := range offsets {
		offsets[i] *= blockSize
	}
	if err := writeBlocks(ctx, r.qcow2, sock, offsets, c.seed); err != nil {
		return nil, err
	}
	r.changed = len(offsets)
	fmt.Printf("recovered VM wrote %d of %d blocks of 64 KiB (%.2f%%, %.1f MiB) at random, fresh random bytes, through NBD; clean stop (%s)\n\n",
		n, nblocks, 100*float64(n)/float64(nblocks), mib(n*blockSize), since(t))
	return r, nil
}

// checkSpace refuses to start without room for the original, rsync's
// copy, the recovered qcow2, the full copy and the vault.
func (r *rig) checkSpace() error {
	base, err := benchkit.AllocatedBytes(r.c.base)
	if err != nil {
		return fmt.Errorf("real-data image %s (build it with bench/run.sh, or give -base): %w", r.c.base, err)
	}
	fi, err := os.Stat(r.c.base)
	if err != nil {
		return err
	}
	laid := min(int64(r.c.copies), (r.size+fi.Size()-1)/fi.Size())
	est := base * laid
	if r.size < fi.Size() {
		est = base * r.size / fi.Size()
	}
	need := est*9/2 + int64(float64(r.size)*r.c.percent/100)*5 + 2<<30
	var st syscall.Statfs_t
	if err := syscall.Statfs(r.c.work, &st); err != nil {
		return err
	}
	if avail := int64(st.Bavail) * st.Bsize; avail < need {
		return fmt.Errorf("need about %.0f GB free under %s, have %.0f GB: lower -copies or -size", gb(need), r.c.work, gb(avail))
	}
	return nil
}

// measure runs the timed phases.
func (r *rig) measure(ctx context.Context) error {
	var err error
	if r.mCycle, err = timed(r.c.drop, func() error {
		var e error
		r.cycle, e = reverseCycle(ctx, r.v, r.vaultDir, r.vm, r.c.log)
		return e
	}); err != nil {
		return err
	}
	d := r.cycle.res.Disks[0]
	r.line("Lifeboat reverse cycle", r.mCycle, fmt.Sprintf("incremental %v, %d blocks changed (%.1f MiB), read %.1f MiB, sent %.1f MiB new, vault +%.1f MiB",
		d.Incremental, d.ChangedBlocks, mib(d.ChangedBytes), mib(d.ReadBytes), mib(r.cycle.res.Published.SentBytes), mib(r.cycle.vaultGrowth)))
	if !d.Incremental || d.ChangedBlocks != int64(r.changed) {
		fmt.Printf("   WARNING: the cycle reported %d changed blocks (incremental %v); the VM rewrote %d\n", d.ChangedBlocks, d.Incremental, r.changed)
	}
	if r.mApply, err = timed(r.c.drop, func() error {
		var e error
		r.apply, e = applyPoint(ctx, r.vaultDir, r.cycle.res.Point, r.original, filepath.Join(r.c.work, "target-state"), r.c.log)
		return e
	}); err != nil {
		return err
	}
	r.line("Lifeboat target apply", r.mApply, fmt.Sprintf("compared %.2f GB, wrote %.1f MiB in %d blocks, fetched %.1f MiB from the vault",
		gb(r.apply.Compared), mib(r.apply.Written), r.apply.BlocksWritten, mib(r.apply.Fetched)))
	if r.mFull, err = timed(r.c.drop, func() error { return fullCopy(ctx, r.qcow2, r.raw) }); err != nil {
		return err
	}
	if r.rawAlloc, err = benchkit.AllocatedBytes(r.raw); err != nil {
		return err
	}
	r.line("full copy (qemu-img convert)", r.mFull, fmt.Sprintf("%.2f GB allocated of %d GiB", gb(r.rawAlloc), r.c.sizeGiB))
	if r.mRsync, err = timed(r.c.drop, func() error {
		var e error
		r.rsync, e = rsyncDelta(ctx, r.raw, r.rsyncDst)
		return e
	}); err != nil {
		return err
	}
	r.line("rsync --inplace --no-whole-file", r.mRsync, fmt.Sprintf("literal %.1f MiB, matched %.2f GB, sent %.1f MiB, received %.1f MiB",
		mib(r.rsync.literal), gb(r.rsync.matched), mib(r.rsync.sent), mib(r.rsync.received)))
	return nil
}

func (r *rig) line(name string, m measurement, note string) {
	fmt.Printf("   %-32s %8.2f s  cpu %6.2f s (sys %5.2f)  disk read %8.1f MiB  other cpu %5.1f s  %s\n",
		name, m.wall.Seconds(), m.cpu.Seconds(), m.sys.Seconds(), mib(m.read), m.other.Seconds(), note)
}

// verify compares Lifeboat's and rsync's targets with the full copy.
func (r *rig) verify() error {
	t := time.Now()
	for _, p := range []string{r.original, r.rsyncDst} {
		off, err := compareFiles(p, r.raw)
		if err != nil {
			return err
		}
		if off >= 0 {
			return fmt.Errorf("%s differs from the recovered disk (%s) in the 4 MiB at offset %d", p, r.raw, off)
		}
	}
	fmt.Printf("\ncheck: the original after the apply and rsync's copy are byte for byte the recovered disk (qemu-img convert's raw copy), %d GiB each (%s)\n",
		r.c.sizeGiB, since(t))
	return nil
}

// report prints the summary table and the ratios against the targets.
func (r *rig) report() {
	lb := r.mCycle.wall + r.mApply.wall
	lbBytes := r.cycle.vaultGrowth
	fmt.Printf("\nReprotect of a %d GiB disk after %.4g%% of its blocks changed at the recovery site (one run, cold cache)\n\n", r.c.sizeGiB, r.c.percent)
	fmt.Println("| method | wall s | CPU s | disk read MiB | bytes sent | other CPU s |")
	fmt.Println("|---|---:|---:|---:|---|---:|")
	row := func(name string, m measurement, sent string) {
		fmt.Printf("| %s | %.2f | %.2f | %.1f | %s | %.1f |\n", name, m.wall.Seconds(), m.cpu.Seconds(), mib(m.read), sent, m.other.Seconds())
	}
	row("Lifeboat: reverse cycle (offline)", r.mCycle, fmt.Sprintf("%.1f MiB stored (%.1f MiB new data)", mib(lbBytes), mib(r.cycle.res.Published.SentBytes)))
	row("Lifeboat: target apply", r.mApply, fmt.Sprintf("%.1f MiB fetched, %.1f MiB written", mib(r.apply.Fetched), mib(r.apply.Written)))
	fmt.Printf("| **Lifeboat reprotect** | **%.2f** | %.2f | %.1f | **%.1f MiB** | %.1f |\n", lb.Seconds(), (r.mCycle.cpu + r.mApply.cpu).Seconds(),
		mib(r.mCycle.read+r.mApply.read), mib(lbBytes), (r.mCycle.other + r.mApply.other).Seconds())
	row("full copy: qemu-img convert -O raw", r.mFull, fmt.Sprintf("%.1f MiB allocated (%d GiB logical)", mib(r.rawAlloc), r.c.sizeGiB))
	row("rsync --inplace --no-whole-file", r.mRsync, fmt.Sprintf("%.1f MiB (literal %.1f + sent overhead %.1f + checksums received %.1f)",
		mib(r.rsync.link()), mib(r.rsync.literal), mib(r.rsync.sent-r.rsync.literal), mib(r.rsync.received)))

	byteRatio := float64(lbBytes) / float64(r.rawAlloc)
	timeRatio := lb.Seconds() / r.mRsync.wall.Seconds()
	fmt.Println("\n| ratio | measured | target | verdict |")
	fmt.Println("|---|---:|---:|---|")
	fmt.Printf("| Lifeboat bytes / full copy bytes (allocated) | %.4f | <= 0.1 | %s |\n", byteRatio, verdict(byteRatio <= 0.1))
	fmt.Printf("| Lifeboat bytes / full copy bytes (logical %d GiB) | %.4f | | |\n", r.c.sizeGiB, float64(lbBytes)/float64(r.size))
	fmt.Printf("| Lifeboat bytes / rsync bytes | %.4f | | |\n", float64(lbBytes)/float64(r.rsync.link()))
	fmt.Printf("| Lifeboat time / rsync time | %.4f | <= 0.5 | %s |\n", timeRatio, verdict(timeRatio <= 0.5))
}

func verdict(ok bool) string {
	if ok {
		return "MET"
	}
	return "MISSED"
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
func gb(n int64) float64  { return float64(n) / 1e9 }

func since(t time.Time) string { return time.Since(t).Round(100 * time.Millisecond).String() }
