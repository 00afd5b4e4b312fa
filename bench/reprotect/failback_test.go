package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
	"github.com/lifeboat-dr/lifeboat/internal/compute/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/reverse"
	"github.com/lifeboat-dr/lifeboat/internal/sampleguest"
	"github.com/lifeboat-dr/lifeboat/internal/target"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// failbackChange is what the recovered VM writes before the reprotect's
// reverse point and again between that point and its shutdown.
const failbackChange = 64 << 20

// BenchmarkFailback models a failback's downtime, from the recovery VM's
// shutdown to the original VM's first console line, on the real bootable
// test guest (guest.BuildBootable, disks of 1 GiB and 16 GiB):
//
//	nice -n 19 go test ./bench/reprotect -run '^$' -bench Failback -benchtime 1x -v
//
// Setup: the guest's disk is the original; point P is its scan-driver
// replica in a local vault; the recovered VM's disk is a qcow2 of P with
// the since-boot bitmap lifeboat-1. The VM writes 64 MiB (random 64 KiB
// blocks in the guest file system's free blocks, so the disk still boots)
// through a qemu-storage-daemon NBD export, stopped cleanly; a reverse
// cycle makes the reprotect's point, which is applied onto the original.
// Then the VM writes 64 MiB more and stops (its shutdown), and, each after
// dropping the page cache, the benchmark times (a) the offline final
// reverse cycle, (b) target.Apply of the final point onto the original
// and (c) QEMU booting the original to its first console line (and, for
// the record, to the guest's ready line). The original is checked equal
// to the recovered disk after (b), and its guest must pass its manifest
// check in (c).
//
// Not measured: the recovery VM's guest shutting down (ACPI), the
// server's failback job steps and the target writer's report interval
// (2 s by default) before the apply and before the start command.
func BenchmarkFailback(b *testing.B) {
	for _, gib := range []int64{1, 16} {
		b.Run(fmt.Sprintf("%dGiB", gib), func(b *testing.B) { failback(b, gib<<30) })
	}
}

// failbackRig is one disk size's scene after the reprotect.
type failbackRig struct {
	dir, original, vaultDir, sock string
	img                           *guest.BootImage
	v                             *vault.Vault
	vm                            reverse.VM
	qcow2                         string
	last                          string  // the newest reverse point (VM.Point stays P, the point the VM booted)
	free                          []int64 // disk offsets of free 64 KiB blocks of the guest's file system
	log                           *slog.Logger
}

func failback(b *testing.B, size int64) {
	ctx := context.Background()
	r := newFailbackRig(b, size)
	var cycle, apply, first, ready time.Duration
	for i := range b.N {
		r.change(b, uint64(i+2))
		var cs cycleStats
		m := r.timed(b, func() (err error) {
			cs, err = reverseCycle(ctx, r.v, r.vaultDir, r.vm, r.log)
			return err
		})
		d := cs.res.Disks[0]
		b.Logf("(a) final reverse cycle %.3f s (cpu %.2f s, other cpu %.1f s): incremental %v, %d blocks changed, read %.1f MiB, vault +%.1f MiB",
			m.wall.Seconds(), m.cpu.Seconds(), m.other.Seconds(), d.Incremental, d.ChangedBlocks, mib(d.ReadBytes), mib(cs.vaultGrowth))
		if !d.Incremental || d.ChangedBlocks != failbackChange/blockSize {
			b.Fatalf("the final cycle read %d blocks (incremental %v), the VM wrote %d", d.ChangedBlocks, d.Incremental, failbackChange/blockSize)
		}
		cycle += m.wall
		r.last = cs.res.Point
		var res *target.Result
		m = r.timed(b, func() (err error) {
			res, err = applyPoint(ctx, r.vaultDir, r.last, r.original, filepath.Join(r.dir, "target-state"), r.log)
			return err
		})
		b.Logf("(b) target apply %.3f s (cpu %.2f s, sys %.2f s, other cpu %.1f s): compared %.2f GB, wrote %.1f MiB in %d blocks",
			m.wall.Seconds(), m.cpu.Seconds(), m.sys.Seconds(), m.other.Seconds(), gb(res.Compared), mib(res.Written), res.BlocksWritten)
		apply += m.wall
		if out, err := run(ctx, "qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", r.original, r.qcow2); err != nil {
			b.Fatalf("the original differs from the recovered disk after the final apply: %v %s", err, out)
		}
		f, rd := r.boot(b)
		first += f
		ready += rd
	}
	n := float64(b.N)
	b.ReportMetric(cycle.Seconds()/n, "s-final-cycle")
	b.ReportMetric(apply.Seconds()/n, "s-apply")
	b.ReportMetric(first.Seconds()/n, "s-boot-to-first-line")
	b.ReportMetric((cycle+apply+first).Seconds()/n, "s-downtime-sum")
	b.ReportMetric(ready.Seconds()/n, "s-boot-to-guest-ready")
}

// newFailbackRig builds the original, P, the recovered VM's disk, and
// does the reprotect: a first change, a reverse point, its apply.
func newFailbackRig(b *testing.B, size int64) *failbackRig {
	ctx := context.Background()
	dir := b.TempDir()
	r := &failbackRig{dir: dir, vaultDir: filepath.Join(dir, "vault"), log: slog.New(slog.DiscardHandler)}
	t := time.Now()
	r.img = guest.BuildBootable(b, guest.BootOptions{DiskSize: size, Dir: dir})
	r.original = r.img.Disk
	r.free = freeBlocks(b, r.original)
	if int64(len(r.free))*blockSize < 2*failbackChange {
		b.Fatalf("the guest's file system has only %d free 64 KiB blocks", len(r.free))
	}
	var err error
	if r.v, err = benchkit.NewVault(ctx, r.vaultDir, blockSize, r.log); err != nil {
		b.Fatal(err)
	}
	seed, err := seedPoint(ctx, r.v, r.original, filepath.Join(dir, "scan.table"), r.log)
	if err != nil {
		b.Fatal(err)
	}
	r.vm = reverse.VM{Name: "lb-bench-" + machine, Dir: filepath.Join(dir, "vm"), Point: seed.Point.ID.String(), Disks: []string{diskName}, Access: qemu.Disks(filepath.Join(dir, "vm"), 1)}
	if r.qcow2, err = recoveredDisk(ctx, r.original, r.vm.Dir); err != nil {
		b.Fatal(err)
	}
	if r.sock, err = os.MkdirTemp("", "lbf"); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(r.sock) })
	r.change(b, 1)
	cs, err := reverseCycle(ctx, r.v, r.vaultDir, r.vm, r.log)
	if err != nil {
		b.Fatal(err)
	}
	r.last = cs.res.Point
	res, err := applyPoint(ctx, r.vaultDir, r.last, r.original, filepath.Join(dir, "target-state"), r.log)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("%d GiB guest disk, %.0f MiB allocated, %d free 64 KiB blocks; P %s; reprotect: reverse point of %d blocks, apply wrote %.1f MiB (setup %s)",
		size>>30, mib(mustAllocated(b, r.original)), len(r.free), seed.Point.ID.Short(), cs.res.Disks[0].ChangedBlocks, mib(res.Written), since(t))
	return r
}

// change "runs the recovered VM": failbackChange bytes of random 64 KiB
// blocks among the file system's free blocks, then a clean stop.
func (r *failbackRig) change(b *testing.B, seed uint64) {
	b.Helper()
	idx := pickBlocks(int64(len(r.free)), failbackChange/blockSize, seed)
	offs := make([]int64, len(idx))
	for i, k := range idx {
		offs[i] = r.free[k]
	}
	if err := writeBlocks(context.Background(), r.qcow2, r.sock, offs, seed); err != nil {
		b.Fatal(err)
	}
}

func (r *failbackRig) timed(b *testing.B, fn func() error) measurement {
	b.Helper()
	m, err := timed(true, fn)
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// boot starts QEMU on the original disk (guest.BootImage.Start: TCG,
// SeaBIOS, the disk's own bootloader) and returns the time to the first
// console line and to the guest's ready line; the guest must pass its
// manifest check.
func (r *failbackRig) boot(b *testing.B) (first, ready time.Duration) {
	b.Helper()
	if err := benchkit.DropCaches(); err != nil {
		b.Fatal(err)
	}
	serial := filepath.Join(filepath.Dir(r.original), "serial-"+r.img.Firmware+".log")
	os.Remove(serial)
	got := make(chan time.Duration, 1)
	stop := make(chan struct{})
	start := time.Now()
	go func() {
		for {
			if s, _ := os.ReadFile(serial); len(strings.TrimSpace(string(s))) > 0 {
				got <- time.Since(start)
				return
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	vm := r.img.Start(b)
	ready = time.Since(start)
	close(stop)
	defer vm.Kill()
	select {
	case first = <-got:
	default:
		b.Fatal("the guest reached its ready line without a first console line seen")
	}
	if want := fmt.Sprintf("%s seq %d files %d", guest.ManifestPassMarker, guest.BootSeq, guest.BootFiles); !strings.Contains(vm.Log(), want) {
		b.Fatalf("the original's guest did not pass its manifest check after the failback:\n%s", benchkit.Tail(vm.Log(), 2000))
	}
	b.Logf("(c) boot of the original: first console line %.3f s, guest ready %.2f s (manifest check passed)", first.Seconds(), ready.Seconds())
	return first, ready
}

// freeBlocks returns the disk offsets of the 64 KiB blocks that are free
// in the guest's root file system (dumpe2fs's block bitmaps), so writing
// there leaves the guest bootable.
func freeBlocks(b *testing.B, disk string) []int64 {
	b.Helper()
	out, err := exec.Command("dumpe2fs", fmt.Sprintf("%s?offset=%d", disk, sampleguest.RootOffset)).Output()
	if err != nil {
		b.Fatalf("dumpe2fs of the guest's root file system: %v", err)
	}
	var bs int64
	var offs []int64
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Block size:"); ok {
			bs, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
		// A group's free ranges; the header's total is not indented.
		v, ok := strings.CutPrefix(line, "  Free blocks: ")
		if !ok || bs == 0 {
			continue
		}
		for _, rg := range strings.Split(v, ",") {
			lo, hi, ok := parseRange(strings.TrimSpace(rg))
			if !ok {
				continue
			}
			per := blockSize / bs
			for k := (lo + per - 1) / per * per; k+per-1 <= hi; k += per {
				offs = append(offs, sampleguest.RootOffset+k*bs)
			}
		}
	}
	if bs == 0 {
		b.Fatalf("dumpe2fs printed no block size:\n%s", benchkit.Tail(string(out), 2000))
	}
	return offs
}

// parseRange reads "A-B" or "A" (file system block numbers).
func parseRange(s string) (lo, hi int64, ok bool) {
	a, c, found := strings.Cut(s, "-")
	lo, err := strconv.ParseInt(a, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	hi = lo
	if found {
		if hi, err = strconv.ParseInt(c, 10, 64); err != nil {
			return 0, 0, false
		}
	}
	return lo, hi, true
}

func mustAllocated(b *testing.B, path string) int64 {
	b.Helper()
	n, err := benchkit.AllocatedBytes(path)
	if err != nil {
		b.Fatal(err)
	}
	return n
}
