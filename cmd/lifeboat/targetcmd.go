package main

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/progress"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/target"
	"github.com/lifeboat-dr/lifeboat/internal/units"
)

func (a *app) targetCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "target",
		Short: "The target writer: apply recovery points onto a machine's original disks (reprotect, failback)",
	}
	c.AddCommand(a.targetApplyCmd())
	return c
}

type targetApplyFlags struct {
	point, machine, disk, to string
	asJSON                   bool
	o                        target.Options
}

func (a *app) targetApplyCmd() *cobra.Command {
	var f targetApplyFlags
	c := &cobra.Command{
		Use:   "apply --point ID|latest --machine M --disk NAME --to FILE|DEVICE",
		Short: "Apply a disk of a recovery point onto the original disk, writing only differing blocks",
		Long: `Apply brings a disk image or block device to the content of a disk of a
recovery point. An existing target (original location) is read and compared
block by block, and only blocks that differ are written; a path that does
not exist becomes a new sparse file (alternate location) and every block is
written. A file smaller than the disk is grown; a smaller device is refused.

Progress is checkpointed in a journal (in --state-dir, by default the
target's directory; a device needs --state-dir) every --checkpoint bytes of
the disk, after the target's writes are fsynced: when the command is killed,
running it again for the same point and target resumes from the last
checkpoint. Another point, a replaced or resized target, or a damaged
journal starts over, saying why.

On success it writes the scan driver's state file for the target (--baseline,
by default TARGET.scan-baseline in the state directory) as if a scan cycle
had committed the point: give it to the agent as the disk's state file and
forward replication resumes with an incremental cycle, not a full read.

Refused (exit 2, nothing written): a target inside the vault or one of its
files, a block device that is mounted, swap, or part of another device.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.targetApply(cmd, &f) },
	}
	fl := c.Flags()
	fl.StringVar(&f.point, "point", "latest", `recovery point: an ID prefix or "latest" (of --machine)`)
	fl.StringVar(&f.machine, "machine", "", "machine the point belongs to")
	fl.StringVar(&f.disk, "disk", "", "disk name of the point (optional when it has one disk)")
	fl.StringVar(&f.to, "to", "", "target: the original disk image or block device, or a new file")
	fl.StringVar(&f.o.StateDir, "state-dir", "", "directory of the journal and the partial baseline (default: the target's directory)")
	fl.StringVar(&f.o.Baseline, "baseline", "", "scan state file to write for the target (default STATE-DIR/TARGET.scan-baseline)")
	f.o.CheckpointBytes = target.DefaultCheckpointBytes
	fl.Var(units.SizeFlag{P: &f.o.CheckpointBytes}, "checkpoint", "disk applied between two checkpoints: bytes, or a size such as 64MiB, 1GiB")
	fl.BoolVar(&f.asJSON, "json", false, `print JSON lines: progress objects {"phase":"apply","done":…,"total":…}, then {"result":"applied",…}`)
	a.vaultFlags(fl)
	return c
}

func (a *app) targetApply(cmd *cobra.Command, f *targetApplyFlags) error {
	ctx := cmd.Context()
	if f.to == "" {
		return &codeError{exitUsage, errors.New("give the target with --to FILE|DEVICE")}
	}
	var lines *jsonLines
	end := func(err error) error { return err }
	if f.asJSON {
		lines = newJSONLines(a.stdout, nil)
		end = func(err error) error {
			if err != nil {
				_ = lines.Result("failed", map[string]any{"error": err.Error()})
			}
			return err
		}
	}
	v, err := a.openVault(ctx)
	if err != nil {
		return end(err)
	}
	// Refused before the index is loaded; Apply checks again.
	if err := recover.CheckTarget(f.to, recover.VaultDir(v)); err != nil {
		return end(err)
	}
	ref := f.point
	if ref == "latest" && f.machine != "" {
		ref = "latest:" + f.machine
	}
	p, err := v.FindPoint(ctx, ref)
	if err != nil {
		return end(err)
	}
	if f.machine != "" && p.Machine != f.machine {
		return end(&codeError{exitUsage, fmt.Errorf("point %s is of machine %s, not %s", p.ID.Short(), p.Machine, f.machine)})
	}
	if f.disk == "" {
		if len(p.Disks) != 1 {
			return end(&codeError{exitUsage, fmt.Errorf("point %s has %d disks (%s): choose one with --disk", p.ID.Short(), len(p.Disks), diskList(p))})
		}
		f.disk = p.Disks[0].Name
	}
	if _, err := v.LoadIndex(ctx); err != nil {
		return end(err)
	}
	f.o.Logger = a.log
	finish := a.targetProgress(f, lines)
	start := time.Now() // wallclock: the duration and rate are only shown
	res, err := target.Apply(ctx, v, p, f.disk, f.to, f.o)
	finish()
	if err != nil {
		return end(err)
	}
	el := time.Since(start) // wallclock: only shown
	if lines != nil {
		return lines.Result("applied", map[string]any{"apply": res, "seconds": el.Seconds()})
	}
	what := "compared " + progress.Bytes(res.Compared)
	if res.Created {
		what = "new file"
	}
	fmt.Fprintf(a.stdout, "applied disk %s of point %s (%s, %s) to %s: %s, wrote %s in %d blocks", res.Disk, p.ID.Short(), p.Machine,
		p.Time.Local().Format("2006-01-02 15:04:05"), res.Target, what, progress.Bytes(res.Written), res.BlocksWritten)
	if res.Resumed > 0 {
		fmt.Fprintf(a.stdout, ", resumed after %s", progress.Bytes(res.Resumed))
	}
	fmt.Fprintf(a.stdout, ", %.2fs (%s/s)\nscan baseline for re-enable: %s\n", el.Seconds(),
		progress.Bytes(int64(float64(res.Size-res.Resumed)/max(el.Seconds(), 1e-9))), res.Baseline)
	return nil
}

// targetProgress sets f.o.Progress to a bar, or to JSON lines at every
// percent with the rate and the estimated time left; the returned function
// ends the bar.
func (a *app) targetProgress(f *targetApplyFlags, lines *jsonLines) func() {
	if lines == nil {
		var mu sync.Mutex
		var bar *progress.Bar
		f.o.Progress = func(p target.Progress) {
			mu.Lock()
			defer mu.Unlock()
			if bar == nil {
				bar = a.newBar("apply "+f.disk, p.Total)
			}
			bar.Set(p.Done, p.Total)
		}
		return func() {
			if bar != nil {
				bar.Finish()
			}
		}
	}
	var mu sync.Mutex
	last := int64(-1)
	start := time.Now() // wallclock: the rate and time left are only shown
	f.o.Progress = func(p target.Progress) {
		mu.Lock()
		defer mu.Unlock()
		pct := p.Done * 100 / max(p.Total, 1)
		if pct == last {
			return
		}
		last = pct
		el := time.Since(start).Seconds() // wallclock: only shown
		rate := float64(p.Done-p.Resumed) / max(el, 1e-9)
		fields := map[string]any{"resumed": p.Resumed, "bytes_per_second": int64(rate)}
		if rate > 0 {
			fields["eta_seconds"] = int64(float64(p.Total-p.Done) / rate)
		}
		_ = lines.Progress("apply", int(p.Done), int(p.Total), fields)
	}
	return func() {}
}
