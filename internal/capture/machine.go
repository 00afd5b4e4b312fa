package capture

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// DriverNamer is implemented by machines whose disks are tracked by
// drivers of different kinds (Drivers, Join).
type DriverNamer interface {
	// DriverOf returns the driver kind of the named disk ("scan").
	DriverOf(disk string) string
}

// DriverOf returns the driver kind that tracks disk in m: m's own name
// unless m tells disk by disk (DriverNamer).
func DriverOf(m Machine, disk string) string {
	if n, ok := m.(DriverNamer); ok {
		return n.DriverOf(disk)
	}
	return m.Name()
}

// ReadCounter is implemented by cycles that count the bytes they read
// from the disk (holes and clean extents skipped are not read).
type ReadCounter interface {
	// BytesRead is complete once Changes returned.
	BytesRead() int64
}

// DiskDriver is one disk tracked by a per-disk Driver.
type DiskDriver struct {
	Disk   string
	Driver Driver
}

// Drivers makes one Machine of per-disk drivers, so that an engine sees
// only machines. Begin begins the named disks one after the other, in the
// order given here: nearly the same instant, not one transaction. On error
// it aborts the cycles it began. Close does nothing (drivers hold nothing
// between cycles).
func Drivers(disks ...DiskDriver) Machine { return drivers(slices.Clone(disks)) }

type drivers []DiskDriver

func (ds drivers) find(disk string) (Driver, error) {
	for _, d := range ds {
		if d.Disk == disk {
			return d.Driver, nil
		}
	}
	return nil, fmt.Errorf("disk %s: no driver tracks it", disk)
}

// Name lists the drivers' kinds, once each ("scan").
func (ds drivers) Name() string {
	var names []string
	for _, d := range ds {
		if n := d.Driver.Name(); !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return strings.Join(names, "+")
}

func (ds drivers) DriverOf(disk string) string {
	if d, err := ds.find(disk); err == nil {
		return d.Name()
	}
	return ""
}

func (ds drivers) Baseline(ctx context.Context, disk string) (string, error) {
	d, err := ds.find(disk)
	if err != nil {
		return "", err
	}
	return d.Baseline(ctx)
}

func (ds drivers) Begin(ctx context.Context, bases map[string]string) (map[string]Cycle, error) {
	for disk := range bases {
		if _, err := ds.find(disk); err != nil {
			return nil, err
		}
	}
	cycles := map[string]Cycle{}
	for _, d := range ds {
		base, ok := bases[d.Disk]
		if !ok {
			continue
		}
		c, err := d.Driver.Begin(ctx, base)
		if err != nil {
			abortAll(ctx, cycles)
			return nil, fmt.Errorf("disk %s: %w", d.Disk, err)
		}
		cycles[d.Disk] = c
	}
	return cycles, nil
}

func (ds drivers) Close() error { return nil }

// abortAll aborts cycles begun by a Begin that fails; their errors are
// dropped (a driver cleans up in its next Begin).
func abortAll(ctx context.Context, cycles map[string]Cycle) {
	for _, c := range cycles {
		_ = c.Abort(context.WithoutCancel(ctx))
	}
}

// Part is a machine that tracks some of the disks of a Join.
type Part struct {
	Machine Machine
	Disks   []string
}

// Join makes one Machine of parts that each cut some disks: a VM's disks
// read through its hypervisor and other disks scanned by the agent. Begin
// cuts the parts one after the other, in the order given; a part's error
// is prefixed with its driver's name unless it is a Drivers machine (whose
// errors name the disk). Close closes every part.
func Join(parts ...Part) Machine { return join(slices.Clone(parts)) }

type join []Part

func (j join) part(disk string) (Part, error) {
	for _, p := range j {
		if slices.Contains(p.Disks, disk) {
			return p, nil
		}
	}
	return Part{}, fmt.Errorf("disk %s: no driver tracks it", disk)
}

// Name lists the parts' names.
func (j join) Name() string {
	var names []string
	for _, p := range j {
		names = append(names, p.Machine.Name())
	}
	return strings.Join(names, "+")
}

func (j join) DriverOf(disk string) string {
	if p, err := j.part(disk); err == nil {
		return DriverOf(p.Machine, disk)
	}
	return ""
}

func (j join) Baseline(ctx context.Context, disk string) (string, error) {
	p, err := j.part(disk)
	if err != nil {
		return "", err
	}
	return p.Machine.Baseline(ctx, disk)
}

func (j join) Begin(ctx context.Context, bases map[string]string) (map[string]Cycle, error) {
	for disk := range bases {
		if _, err := j.part(disk); err != nil {
			return nil, err
		}
	}
	all := map[string]Cycle{}
	for _, p := range j {
		sub := map[string]string{}
		for _, d := range p.Disks {
			if base, ok := bases[d]; ok {
				sub[d] = base
			}
		}
		if len(sub) == 0 {
			continue
		}
		cycles, err := p.Machine.Begin(ctx, sub)
		if err == nil {
			for d := range sub {
				if cycles[d] == nil {
					err = fmt.Errorf("returned no cycle for disk %s", d)
				}
			}
			if err != nil {
				abortAll(ctx, cycles)
			}
		}
		if err != nil {
			abortAll(ctx, all)
			if _, ok := p.Machine.(drivers); !ok {
				err = fmt.Errorf("%s driver: %w", p.Machine.Name(), err)
			}
			return nil, err
		}
		for d, c := range cycles {
			all[d] = c
		}
	}
	return all, nil
}

func (j join) Close() error {
	var errs []error
	for _, p := range j {
		errs = append(errs, p.Machine.Close())
	}
	return errors.Join(errs...)
}
