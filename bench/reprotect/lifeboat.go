package main

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/compute/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/engine"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/reverse"
	"github.com/lifeboat-dr/lifeboat/internal/target"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

const (
	machine  = "web"
	diskName = "vda"
)

// seedPoint replicates the raw image into the vault with the scan driver:
// point P, the protected machine's last forward point before failover.
func seedPoint(ctx context.Context, v *vault.Vault, raw, stateFile string, log *slog.Logger) (*replicate.Result, error) {
	s, err := scan.New(scan.Options{Path: raw, StateFile: stateFile, BlockSize: blockSize, Logger: log})
	if err != nil {
		return nil, err
	}
	res, err := replicate.RunCycle(ctx, replicate.Options{Vault: v, Machine: machine,
		Disks: []replicate.Disk{{Name: diskName, Driver: s}}, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("seed point: %w", err)
	}
	return res, nil
}

// recoveredDisk makes the recovered VM's disk as the qemu provider leaves
// it: DIR/disk0.qcow2 with P's content and the since-boot dirty bitmap
// lifeboat-1 (64 KiB granularity), which records every write from then on.
func recoveredDisk(ctx context.Context, raw, vmDir string) (string, error) {
	if err := os.MkdirAll(vmDir, 0o700); err != nil {
		return "", err
	}
	img := filepath.Join(vmDir, qemu.OverlayFile(0))
	if _, err := run(ctx, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, img); err != nil {
		return "", err
	}
	if _, err := run(ctx, "qemu-img", "bitmap", "--add", "--enable", "-g", strconv.Itoa(blockSize), img, qemu.SinceBootBitmap); err != nil {
		return "", err
	}
	return img, nil
}

// cycleStats is what one reverse cycle did.
type cycleStats struct {
	res         *engine.Result
	vaultGrowth int64 // bytes the vault directory grew by: packs, index, point
}

// reverseCycle runs one offline reverse cycle of the stopped VM (its
// overlays opened in a qemu-storage-daemon by internal/reverse).
func reverseCycle(ctx context.Context, v *vault.Vault, vaultDir string, vm reverse.VM, log *slog.Logger) (cycleStats, error) {
	before, err := dirSize(vaultDir)
	if err != nil {
		return cycleStats{}, err
	}
	res, err := reverse.Cycle(ctx, vm, reverse.Options{Vault: v, Machine: machine, Offline: true, Logger: log})
	if err != nil {
		return cycleStats{}, fmt.Errorf("reverse cycle: %w", err)
	}
	after, err := dirSize(vaultDir)
	if err != nil {
		return cycleStats{}, err
	}
	return cycleStats{res: res, vaultGrowth: after - before}, nil
}

// applyPoint is the target writer's part: it opens the vault anew (as
// `lifeboat target run` does at the primary site), loads the point and
// the index and applies the point's disk onto the original image,
// comparing block by block and writing only the blocks that differ.
func applyPoint(ctx context.Context, vaultDir, point, original, stateDir string, log *slog.Logger) (*target.Result, error) {
	be, err := local.New(vaultDir)
	if err != nil {
		return nil, err
	}
	v, err := vault.Open(ctx, be, []byte(benchkit.Passphrase), vault.Options{Logger: log})
	if err != nil {
		return nil, err
	}
	id, err := vault.ParseID(point)
	if err != nil {
		return nil, err
	}
	p, err := v.LoadPoint(ctx, id)
	if err != nil {
		return nil, err
	}
	if _, err := v.LoadIndex(ctx); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, err
	}
	res, err := target.Apply(ctx, v, p, diskName, original, target.Options{StateDir: stateDir, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("apply point %s onto %s: %w", id.Short(), original, err)
	}
	return res, nil
}

// dirSize sums the sizes of the regular files under dir.
func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err == nil {
			n += fi.Size()
		}
		return err
	})
	return n, err
}
