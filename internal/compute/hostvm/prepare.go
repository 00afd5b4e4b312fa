package hostvm

import (
	"context"
	"fmt"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
)

// Disks says where Prepare puts a VM's images.
type Disks struct {
	QEMUImg string             // qemu-img
	Overlay func(i int) string // path of disk i's overlay
	Seed    string             // path of the seed disk (made when the spec has Guest)
	// TLS allows backings served with TLS (the hypervisor has client
	// credentials for them).
	TLS bool
}

// Prepare fills in what s leaves out — a MAC for every NIC without one
// (MAC), the size of a disk without one (asked of its export) — and
// makes the overlays (CreateOverlay, each with SinceBootBitmap, which
// only a new overlay may get: a stopped VM's bitmaps hold the guest's
// writes since it was created) and, when s.Guest is set, the NoCloud
// seed. It stops at the first error; the caller removes what
// was made.
func Prepare(ctx context.Context, s *compute.Spec, d Disks) error {
	s.NICs = append([]compute.NIC(nil), s.NICs...)
	for i := range s.NICs {
		if s.NICs[i].MAC == "" {
			s.NICs[i].MAC = MAC(s.Name, i)
		}
	}
	s.Disks = append([]compute.Disk(nil), s.Disks...)
	for i := range s.Disks {
		disk := &s.Disks[i]
		n, err := ParseNBD(disk.Backing)
		if err != nil {
			return fmt.Errorf("disk %s: %w", disk.Name, err)
		}
		if n.TLS && !d.TLS {
			return fmt.Errorf("disk %s: the backing %s uses TLS: give the provider client credentials for it", disk.Name, disk.Backing)
		}
		if disk.Size <= 0 {
			if disk.Size, err = ExportSize(ctx, d.QEMUImg, n); err != nil {
				return fmt.Errorf("disk %s has no size in the spec: %w", disk.Name, err)
			}
		}
		if err := CreateOverlay(ctx, d.QEMUImg, d.Overlay(i), disk.Size, n); err != nil {
			return fmt.Errorf("disk %s: %w", disk.Name, err)
		}
		if err := AddSinceBootBitmap(ctx, d.QEMUImg, d.Overlay(i)); err != nil {
			return fmt.Errorf("disk %s: %w", disk.Name, err)
		}
	}
	if s.Guest == nil {
		return nil
	}
	var mac string
	if len(s.NICs) > 0 {
		mac = s.NICs[0].MAC
	}
	files, err := SeedFiles(s.Name, s.Guest, mac)
	if err != nil {
		return err
	}
	return BuildSeed(ctx, d.Seed, files)
}
