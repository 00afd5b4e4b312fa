package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/progress"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// defaultStateDir is where capture drivers keep their per-disk state.
func defaultStateDir(getenv func(string) string) string {
	if d := getenv("LIFEBOAT_STATE_DIR"); d != "" {
		return d
	}
	if d := getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "lifeboat")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "lifeboat")
	}
	return filepath.Join(os.TempDir(), "lifeboat-state")
}

type replicateFlags struct {
	disks    []string
	machine  string
	interval time.Duration
	once     bool
	stateDir string
	snapshot string
	labels   []string
	vmSpec   string
	resync   bool
	json     bool
	workers  int
}

func (a *app) replicateCmd() *cobra.Command {
	var f replicateFlags
	c := &cobra.Command{
		Use:   "replicate --vault V --disk NAME=PATH [--disk ...] [--interval 30s | --once]",
		Short: "Replicate disks into the vault, one recovery point per cycle",
		Long: `Replicate reads the disks (image files or block devices) with the scan
driver, stores the blocks that changed since the last cycle and publishes
one recovery point per cycle for all disks together. The first cycle copies
every non-empty block (with a progress bar); later cycles read the disks but
send only changed blocks. The per-disk block hashes live in --state-dir, so
a restart does not send the disks again.

With --snapshot reflink each cycle reads an instant reflink copy of image
files (XFS, btrfs), so points are crash-consistent while the disks change.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runReplicate(cmd.Context(), f) },
	}
	fl := c.Flags()
	fl.StringArrayVar(&f.disks, "disk", nil, "disk to protect as NAME=PATH (repeatable)")
	fl.StringVar(&f.machine, "machine", "", "machine name recorded in the points (default: this host's name)")
	fl.DurationVar(&f.interval, "interval", 30*time.Second, "time between cycle starts")
	fl.BoolVar(&f.once, "once", false, "run one cycle and exit")
	fl.StringVar(&f.stateDir, "state-dir", defaultStateDir(a.getenv), "where per-disk capture state is kept (env LIFEBOAT_STATE_DIR)")
	fl.StringVar(&f.snapshot, "snapshot", "none", "point-in-time view of image files: none or reflink")
	fl.StringArrayVar(&f.labels, "label", nil, "label KEY=VALUE for the points (repeatable)")
	fl.StringVar(&f.vmSpec, "vm-spec", "", "file with the machine's VM spec, stored with every point")
	fl.BoolVar(&f.resync, "resync", false, "ignore saved state and compare every block (sends only what the vault lacks)")
	fl.BoolVar(&f.json, "json", false, "print one JSON object per cycle instead of a summary line")
	fl.IntVar(&f.workers, "workers", 0, "blocks hashed, compressed and encrypted in parallel (default: number of CPUs)")
	_ = fl.MarkHidden("workers")
	a.vaultFlags(c.Flags())
	a.indexCacheFlag(c.Flags())
	return c
}

func (a *app) runReplicate(ctx context.Context, f replicateFlags) error {
	if len(f.disks) == 0 {
		return &codeError{exitUsage, errors.New("no disks: give --disk NAME=PATH at least once")}
	}
	if f.machine == "" {
		h, err := os.Hostname()
		if err != nil {
			return err
		}
		f.machine = h
	}
	if err := vault.ValidateName("machine", f.machine); err != nil {
		return &codeError{exitUsage, err}
	}
	if f.snapshot != "none" && f.snapshot != "reflink" {
		return &codeError{exitUsage, fmt.Errorf("--snapshot %q: use none or reflink", f.snapshot)}
	}
	labels := map[string]string{}
	for _, l := range f.labels {
		k, val, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return &codeError{exitUsage, fmt.Errorf("--label %q: use KEY=VALUE", l)}
		}
		labels[k] = val
	}
	if err := checkDiskFlags(f.disks); err != nil {
		return err
	}
	var spec []byte
	if f.vmSpec != "" {
		var err error
		if spec, err = os.ReadFile(f.vmSpec); err != nil {
			return err
		}
	}
	v, err := a.openVaultIndexed(ctx, f.stateDir)
	if err != nil {
		return err
	}
	defer v.Close()
	cfg := v.Config()
	var disks []replicate.Disk
	var paths []string
	seen := map[string]bool{}
	for _, d := range f.disks {
		name, path, ok := strings.Cut(d, "=")
		if !ok || name == "" || path == "" {
			return &codeError{exitUsage, fmt.Errorf("--disk %q: use NAME=PATH", d)}
		}
		if err := vault.ValidateName("disk", name); err != nil {
			return &codeError{exitUsage, err}
		}
		if seen[name] {
			return &codeError{exitUsage, fmt.Errorf("disk %q given twice", name)}
		}
		seen[name] = true
		dir := filepath.Join(f.stateDir, cfg.ID[:16], f.machine)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("state directory: %w", err)
		}
		drv, err := scan.New(scan.Options{Path: path, StateFile: filepath.Join(dir, name+".hashes"),
			BlockSize: cfg.BlockSize, Snapshot: f.snapshot, Logger: a.log})
		if err != nil {
			return fmt.Errorf("disk %s: %w", name, err)
		}
		disks = append(disks, replicate.Disk{Name: name, Driver: drv})
		paths = append(paths, path)
	}
	a.limitMemory(paths, cfg.BlockSize)
	// Packs a killed run stored but never indexed are indexed now, so
	// their blocks are not sent again.
	if _, err := v.LoadIndex(ctx); err != nil {
		return err
	}
	if _, err := v.AdoptOrphans(ctx); err != nil {
		return err
	}

	clk := a.clock()
	for cycle := 0; ; cycle++ {
		start := clk.Now()
		var bar *progress.Bar
		var barDisk string
		o := replicate.Options{Vault: v, Machine: f.machine, Disks: disks, Labels: labels, VMSpec: spec,
			Resync: f.resync && cycle == 0, Logger: a.log, Workers: f.workers,
			Progress: func(disk string, p capture.Progress) {
				if bar == nil || barDisk != disk {
					if bar != nil {
						bar.Finish()
					}
					bar, barDisk = a.newBar("disk "+disk, p.Total), disk
				}
				bar.Set(p.Done, p.Total)
			}}
		res, err := replicate.RunCycle(ctx, o)
		if bar != nil {
			bar.Finish()
		}
		switch {
		case err == nil && f.json:
			if err := a.printCycleJSON(res); err != nil {
				return err
			}
		case err == nil:
			a.printCycle(res)
		case ctx.Err() != nil:
			a.announce("stopped: the interrupted cycle published nothing; the next run continues from the last point\n",
				"stopped: the interrupted cycle published nothing; the next run continues from the last point")
			return nil
		case f.once:
			return err
		default:
			a.log.Error("cycle failed; retrying at the next interval", "err", err)
			if !a.jsonLogs { // with JSON logs the record above is all
				fmt.Fprintf(a.stderr, "cycle failed: %v\n", err)
			}
		}
		if f.once {
			return nil
		}
		t := clk.NewTimer(max(start.Add(f.interval).Sub(clk.Now()), 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
	}
}

// checkDiskFlags refuses at once a --disk NAME=PATH whose path is a FIFO,
// socket, character device, directory or anything else that is not a
// regular file or block device (scan.ErrNotDisk, exit 2). A path that
// does not exist yet is left to the cycles, which report it.
func checkDiskFlags(specs []string) error {
	for _, d := range specs {
		name, path, ok := strings.Cut(d, "=")
		if !ok || path == "" {
			continue // reported with the other --disk checks
		}
		if err := scan.CheckDisk(path); errors.Is(err, scan.ErrNotDisk) {
			return &codeError{exitUsage, fmt.Errorf("--disk %s: %w", name, err)}
		}
	}
	return nil
}

// cycleJSON is the --json form of a cycle.
type cycleJSON struct {
	Point   string                 `json:"point"`
	Machine string                 `json:"machine"`
	Time    time.Time              `json:"time"`
	Disks   []replicate.DiskResult `json:"disks"`
	Stored  vault.WriterStats      `json:"stored"`
	Seconds float64                `json:"seconds"`
}

func (a *app) printCycleJSON(res *replicate.Result) error {
	b, err := json.Marshal(cycleJSON{Point: res.Point.ID.String(), Machine: res.Point.Machine, Time: res.Point.Time,
		Disks: res.Disks, Stored: res.Stored, Seconds: res.Duration.Seconds()})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(a.stdout, "%s\n", b)
	return err
}

// agentMemoryBase and agentMemoryPerBlock are the replication agent's
// memory budget: 64 MiB plus 16 bytes per block of protected disk.
const (
	agentMemoryBase     = 64 << 20
	agentMemoryPerBlock = 16
	runtimeOverhead     = 12 << 20 // stacks, runtime structures, fragmentation
)

// limitMemory sets the Go runtime's soft memory limit to the agent's
// budget, unless GOMEMLIMIT says otherwise. The live heap of a cycle is
// about 25 MiB; without a limit the collector lets the heap grow to twice
// that before it runs.
func (a *app) limitMemory(paths []string, blockSize int) {
	if a.getenv("GOMEMLIMIT") != "" {
		return
	}
	var blocks int64
	for _, p := range paths {
		f, _, err := scan.OpenDisk(p)
		if err != nil {
			continue
		}
		if n, err := f.Seek(0, io.SeekEnd); err == nil { // works for block devices too
			blocks += (n + int64(blockSize) - 1) / int64(blockSize)
		}
		f.Close()
	}
	limit := int64(agentMemoryBase) - runtimeOverhead + agentMemoryPerBlock*blocks
	debug.SetMemoryLimit(limit)
	a.log.Debug("memory limit set", "bytes", limit, "blocks", blocks)
}

func (a *app) printCycle(res *replicate.Result) {
	var blocks, bytes int64
	full := false
	for _, d := range res.Disks {
		blocks += d.ChangedBlocks
		bytes += d.ChangedBytes
		full = full || !d.Incremental
	}
	kind := "incremental"
	if full {
		kind = "full"
	}
	fmt.Fprintf(a.stdout, "point %s %s %s: %d disk(s), %s cycle, %d changed blocks (%s), new to vault %s (stored %s), %.2fs\n",
		res.Point.ID.Short(), res.Point.Machine, res.Point.Time.Local().Format("2006-01-02 15:04:05"),
		len(res.Disks), kind, blocks, progress.Bytes(bytes), progress.Bytes(res.Stored.NewBytes),
		progress.Bytes(res.Stored.StoredBytes), res.Duration.Seconds())
}
