package qemu

import (
	"errors"
	"fmt"
	"os"
)

// SeedDisk is a known starting point of one disk's tracking: the dirty
// bitmap Bitmap on the disk's node has recorded every write since the
// disk held exactly the content of recovery point Baseline.
type SeedDisk struct {
	Name string // the vault's disk name, as in Disk.Name
	Node string // the disk's node reference, as in Disk.Node
	// Baseline is the recovery point the bitmap's changes apply to.
	Baseline string
	// Bitmap is a driver bitmap name, "lifeboat-<gen>" (a recovered
	// VM's overlays carry compute/qemu.SinceBootBitmap, "lifeboat-1").
	Bitmap string
	// Size is the disk's size in bytes at Baseline.
	Size int64
}

// Seed records, in the driver's state in stateDir, a baseline and bitmap
// for each disk the state has no record of, so that the disk's first
// cycle is incremental from that baseline: Baseline (after Open) returns
// it while QEMU's bitmap is there, records and is consistent, and ""
// (a full read, the reason logged) when it is missing or inconsistent
// (QEMU was killed). The caller vouches for what a SeedDisk says; it
// seeds before the driver's first cycle of the disk.
//
// A disk the state already has (a baseline, or a cycle the driver began)
// is left as it is, so a caller that restarted may seed again harmlessly.
// Every disk is checked before anything is written; the state file is
// replaced atomically. stateDir must exist (Options.StateDir).
func Seed(stateDir string, disks []SeedDisk) error {
	if fi, err := os.Stat(stateDir); err != nil || !fi.IsDir() {
		return fmt.Errorf("qemu: seed: state directory %s is not a directory (%v): give the driver's existing Options.StateDir", stateDir, err)
	}
	if err := checkSeed(disks); err != nil {
		return err
	}
	st, err := loadState(stateDir)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	changed := false
	for _, d := range disks {
		if _, ok := st.Disks[d.Name]; ok {
			continue
		}
		gen, _ := bitmapGen(d.Bitmap)
		st.Disks[d.Name] = &diskState{Node: d.Node, Baseline: d.Baseline, Bitmap: d.Bitmap, Gen: gen, Size: d.Size}
		changed = true
	}
	if !changed {
		return nil
	}
	if err := st.save(stateDir); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	return nil
}

// checkSeed refuses disks Seed cannot record.
func checkSeed(disks []SeedDisk) error {
	if len(disks) == 0 {
		return errors.New("qemu: seed: no disks: name at least one disk, its node, baseline point and bitmap")
	}
	seen := map[string]bool{}
	for _, d := range disks {
		switch {
		case d.Name == "" || d.Node == "":
			return fmt.Errorf("qemu: seed: disk %+v needs both Name and Node (as in Options.Disks)", d)
		case seen[d.Name]:
			return fmt.Errorf("qemu: seed: disk %q is listed twice", d.Name)
		case d.Baseline == "":
			return fmt.Errorf("qemu: seed: disk %s has no Baseline: name the recovery point its bitmap records changes from", d.Name)
		case d.Size <= 0:
			return fmt.Errorf("qemu: seed: disk %s has size %d: give its size at the baseline point", d.Name, d.Size)
		}
		if _, ok := bitmapGen(d.Bitmap); !ok {
			return fmt.Errorf("qemu: seed: disk %s: bitmap %q is not a driver bitmap: want %s<N>, N ≥ 1 (e.g. %s1)", d.Name, d.Bitmap, bitmapPrefix, bitmapPrefix)
		}
		seen[d.Name] = true
	}
	return nil
}

// Rebase records, for each disk, Baseline and Bitmap as the driver's
// tracking, replacing what the state said: the disk was rewritten to
// Baseline's content outside the driver (a failback's target writer) and
// Bitmap, added to the image right after, records every write since.
// The next cycle is then incremental from Baseline. The state directory
// is made if missing.
func Rebase(stateDir string, disks []SeedDisk) error {
	if err := checkSeed(disks); err != nil {
		return err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("qemu: rebase: %w", err)
	}
	st, err := loadState(stateDir)
	if err != nil {
		return fmt.Errorf("rebase: %w", err)
	}
	for _, d := range disks {
		gen, _ := bitmapGen(d.Bitmap)
		if old := st.Disks[d.Name]; old != nil {
			gen = max(gen, old.Gen)
		}
		st.Disks[d.Name] = &diskState{Node: d.Node, Baseline: d.Baseline, Bitmap: d.Bitmap, Gen: gen, Size: d.Size}
	}
	if err := st.save(stateDir); err != nil {
		return fmt.Errorf("rebase: %w", err)
	}
	return nil
}

// BitmapName is the driver's name of generation gen of a disk's dirty
// bitmap; NextGen is the generation after every driver bitmap in names.
func BitmapName(gen int64) string { return bitmapName(gen) }

// NextGen returns one more than the highest generation among the
// driver's bitmap names in names (1 if there is none).
func NextGen(names []string) int64 {
	var g int64
	for _, n := range names {
		if x, ok := bitmapGen(n); ok {
			g = max(g, x)
		}
	}
	return g + 1
}
