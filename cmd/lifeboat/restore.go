package main

import (
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/progress"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
)

func (a *app) restoreCmd() *cobra.Command {
	var disk, to string
	var o recover.Options
	var asJSON bool
	c := &cobra.Command{
		Use:   "restore POINT --disk NAME --to FILE|DEVICE [--incremental]",
		Short: "Restore a disk of a recovery point to a file or device",
		Long: `Restore writes a disk as it was at a recovery point (an ID prefix, "latest"
or "latest:MACHINE"). To a new file it writes a sparse file (under a
temporary name, renamed when complete). With --incremental the target is
read first and only blocks that differ from the point are written: use it to
bring a disk that holds an older or newer point, or unknown content, to this
point. A block device is always compared first. Every block is verified
against its hash before it is written.

Refused (exit 2, nothing written): a target inside the vault's directory or
one of the vault's files, a block device that is mounted, used as swap,
holds a mounted partition or the vault, or is part of another device, and
anything that is neither a file nor a block device.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if to == "" {
				return &codeError{exitUsage, errors.New("give the target with --to FILE|DEVICE")}
			}
			v, err := a.openVaultIndexed(ctx, defaultStateDir(a.getenv))
			if err != nil {
				return err
			}
			defer v.Close()
			// Refused before the index is loaded; Restore checks again.
			if err := recover.CheckTarget(to, recover.VaultDir(v)); err != nil {
				return err
			}
			p, err := v.FindPoint(ctx, args[0])
			if err != nil {
				return err
			}
			if disk == "" {
				if len(p.Disks) != 1 {
					return &codeError{exitUsage, fmt.Errorf("point %s has %d disks (%s): choose one with --disk", p.ID.Short(), len(p.Disks), diskList(p))}
				}
				disk = p.Disks[0].Name
			}
			if d, ok := p.Disk(disk); ok && a.getenv("GOMEMLIMIT") == "" {
				debug.SetMemoryLimit(int64(agentMemoryBase) - runtimeOverhead + agentMemoryPerBlock*(d.Size/int64(d.BlockSize)+1))
			}
			if _, err := v.LoadIndex(ctx); err != nil {
				return err
			}
			var bar *progress.Bar
			o.Progress = func(done, total int64) {
				if bar == nil {
					bar = a.newBar("restore "+disk, total)
				}
				bar.Set(done, total)
			}
			start := time.Now() // wallclock: the duration and rate are only shown
			res, err := recover.Restore(ctx, v, p, disk, to, o)
			if bar != nil {
				bar.Finish()
			}
			if err != nil {
				return fmt.Errorf("restore of point %s disk %s to %s failed: %w", p.ID.Short(), disk, to, err)
			}
			el := time.Since(start) // wallclock: only shown
			if asJSON {
				return a.printJSON(newRestoreJSON(p, disk, to, res, el))
			}
			fmt.Fprintf(a.stdout, "restored disk %s of point %s (%s, %s) to %s: wrote %s in %d blocks", disk, p.ID.Short(),
				p.Machine, p.Time.Local().Format("2006-01-02 15:04:05"), to, progress.Bytes(res.BytesWritten), res.BlocksWritten)
			if res.BytesRead > 0 {
				fmt.Fprintf(a.stdout, ", compared %s", progress.Bytes(res.BytesRead))
			}
			fmt.Fprintf(a.stdout, ", %.2fs (%s/s of disk)\n", el.Seconds(), progress.Bytes(int64(float64(res.Size)/max(el.Seconds(), 1e-9))))
			return nil
		},
	}
	c.Flags().StringVar(&disk, "disk", "", "disk name (optional when the point has one disk)")
	c.Flags().StringVar(&to, "to", "", "target file or block device")
	c.Flags().BoolVar(&o.Incremental, "incremental", false, "update an existing target in place, writing only differing blocks")
	c.Flags().BoolVar(&o.Force, "force", false, "overwrite an existing file completely")
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object (point, disk, target, bytes and blocks written, time) instead of a summary line")
	a.vaultFlags(c.Flags())
	a.indexCacheFlag(c.Flags())
	return c
}
