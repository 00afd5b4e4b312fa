package libvirt

import (
	"context"
	"fmt"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
)

const (
	hydratePoll = 500 * time.Millisecond
	// settle is how long a pull whose job ended may take to drop the
	// backing store from the live definition (libvirt does it when it
	// handles QEMU's completion event).
	settle = 30 * time.Second
)

// Hydrate block-pulls every disk's backing into its overlay while the VM
// runs and returns once no disk of the live domain has a backing store.
// It resumes: a pull that runs is watched; a disk without backing store
// is hydrated. If ctx ends, the pulls go on in libvirt.
func (p *Provider) Hydrate(ctx context.Context, name, dir string, progress func(compute.Progress)) error {
	inst, st, err := p.inspect(ctx, name, dir)
	if err != nil {
		return fmt.Errorf("hydrate VM %s: %w", name, err)
	}
	switch {
	case inst.State == compute.StateAbsent:
		return fmt.Errorf("hydrate VM %s: %w", name, compute.ErrNotFound)
	case allTrue(st.Hydrated):
		report(progress, st, nil)
		return nil
	case inst.State != compute.StateRunning:
		return fmt.Errorf("hydrate VM %s: the VM is stopped: hydration copies while it runs; start it first", name)
	}
	devs, _, _, err := targets(st.Spec.Disks)
	if err != nil {
		return fmt.Errorf("hydrate VM %s: %w", name, err)
	}
	h := &hydration{p: p, st: st, dir: dir, devs: devs, lastJob: map[int]time.Time{}}
	t := time.NewTicker(hydratePoll) // wallclock: how often libvirt is asked; its pulls run in real time
	defer t.Stop()
	for {
		jobs, err := h.step(ctx)
		if err != nil {
			return fmt.Errorf("hydrate VM %s: %w", name, err)
		}
		report(progress, st, jobs)
		if allTrue(st.Hydrated) {
			p.log.Info("VM hydrated: it no longer reads the point's export", "vm", name)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("hydrate VM %s (the pull goes on in libvirt; call Hydrate again to watch it): %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

// hydration is one Hydrate call's view of the pulls.
type hydration struct {
	p    *Provider
	st   *state
	dir  string
	devs []string
	// lastJob is when this call last saw (or started) disk i's job.
	lastJob map[int]time.Time
}

// job is a block job's progress.
type job struct{ cur, end int64 }

// step moves every disk on: it starts missing pulls and records disks
// whose live definition has no backing store any more.
func (h *hydration) step(ctx context.Context) (map[int]job, error) {
	live, active, err := h.p.domain(ctx, h.st.Spec.Name)
	if err != nil {
		return nil, err
	}
	if live == nil || !active {
		return nil, fmt.Errorf("the domain stopped during hydration")
	}
	jobs := map[int]job{}
	for i, dev := range h.devs {
		if h.st.Hydrated[i] {
			continue
		}
		disk := h.st.Spec.Disks[i].Name
		found, cur, end, err := h.jobInfo(ctx, dev)
		if err != nil {
			return nil, fmt.Errorf("disk %s: block job info: %w", disk, err)
		}
		if found {
			h.lastJob[i] = h.p.o.Clock.Now()
			jobs[i] = job{cur, end}
			continue
		}
		backed, ok := live.backed(dev)
		if !ok {
			return nil, fmt.Errorf("disk %s: the domain has no disk %s", disk, dev)
		}
		if !backed {
			if err := h.markHydrated(ctx, i); err != nil {
				return nil, err
			}
			continue
		}
		if t, ok := h.lastJob[i]; ok {
			if h.p.o.Clock.Now().Sub(t) > settle {
				return nil, fmt.Errorf("disk %s: the block pull ended but the disk still has its backing store: it failed (see libvirt's log); call Hydrate again to retry", disk)
			}
			jobs[i] = job{1, 1}
			continue
		}
		if err := h.pull(ctx, dev); err != nil {
			return nil, fmt.Errorf("disk %s: start the block pull: %w", disk, err)
		}
		h.p.log.Info("hydration started", "vm", h.st.Spec.Name, "disk", disk, "target", dev)
		h.lastJob[i] = h.p.o.Clock.Now()
		jobs[i] = job{0, h.st.Spec.Disks[i].Size}
	}
	return jobs, nil
}

func (h *hydration) jobInfo(ctx context.Context, dev string) (found bool, cur, end int64, err error) {
	err = h.p.c.Do(ctx, func(l *golibvirt.Libvirt) error {
		dom, err := l.DomainLookupByName(h.st.Spec.Name)
		if err != nil {
			return err
		}
		f, _, _, c, e, err := l.DomainGetBlockJobInfo(dom, dev, 0)
		found, cur, end = f == 1, int64(c), int64(e)
		return err
	})
	return found, cur, end, err
}

func (h *hydration) pull(ctx context.Context, dev string) error {
	return h.p.c.Do(ctx, func(l *golibvirt.Libvirt) error {
		dom, err := l.DomainLookupByName(h.st.Spec.Name)
		if err != nil {
			return err
		}
		return l.DomainBlockPull(dom, dev, 0, 0)
	})
}

// markHydrated records disk i as hydrated (under the VM's lock).
func (h *hydration) markHydrated(ctx context.Context, i int) error {
	h.st.Hydrated[i] = true
	unlock, err := hostvm.LockDir(ctx, h.dir, lockFile)
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := readState(h.dir)
	if err != nil || cur == nil {
		return fmt.Errorf("record hydrated disk %s: state file gone or damaged: %v", h.st.Spec.Disks[i].Name, err)
	}
	cur.Hydrated[i] = true
	h.p.log.Info("disk hydrated", "vm", h.st.Spec.Name, "disk", h.st.Spec.Disks[i].Name)
	return hostvm.WriteJSON(h.dir, stateFile, cur)
}

func report(progress func(compute.Progress), st *state, jobs map[int]job) {
	if progress == nil {
		return
	}
	var pr compute.Progress
	for i, d := range st.Spec.Disks {
		j, ok := jobs[i]
		switch {
		case st.Hydrated[i]:
			pr.Done += d.Size
			pr.Total += d.Size
		case ok && j.end > 0:
			// Scale the job's units (bytes of the chain) to the disk.
			pr.Done += int64(float64(d.Size) * float64(min(j.cur, j.end)) / float64(j.end))
			pr.Total += d.Size
		default:
			pr.Total += d.Size
		}
	}
	progress(pr)
}

func allTrue(b []bool) bool {
	for _, v := range b {
		if !v {
			return false
		}
	}
	return true
}
