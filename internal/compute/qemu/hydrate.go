package qemu

import (
	"context"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// hydratePoll is how often Hydrate asks QEMU how its copies are going. A
// copy waits for the next poll to be finished (see copy.go), so the
// interval is short: each poll is a few QMP commands.
const hydratePoll = 100 * time.Millisecond

// Hydrate copies every disk's point data into a local base image beside
// its overlay and re-points the overlay's backing at it, while the VM
// runs (see copy.go), reporting progress; it returns once no overlay
// reads the export. It resumes: a copy that runs in QEMU is watched, a
// finished one is attached, a failed one is started again, and a disk
// whose overlay's backing is local (or none: streamed by an older
// version) is hydrated. If ctx ends, the copies go on in QEMU.
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
	t := time.NewTimer(hydratePoll) // wallclock: how often QEMU is asked; its copies run in real time
	defer t.Stop()
	logged := false
	var last sample
	for {
		jobs, err := p.hydrateStep(ctx, inst.QMP, st, dir)
		if err != nil {
			return fmt.Errorf("hydrate VM %s: %w", name, err)
		}
		report(progress, st, jobs)
		now := sampleOf(jobs)
		t.Reset(pollAfter(last, now))
		last = now
		if allTrue(st.Hydrated) {
			p.log.Info("VM hydrated: it no longer reads the point's export", "vm", name)
			return nil
		}
		if !logged {
			p.log.Info("hydrating", "vm", name, "disks", len(st.Hydrated))
			logged = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("hydrate VM %s (the copy goes on in QEMU; call Hydrate again to watch it): %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

// sample is the copies' progress at a time.
type sample struct {
	at          time.Time
	done, total int64
}

func sampleOf(jobs map[string]job) sample {
	s := sample{at: time.Now()} // wallclock: measures the rate of QEMU's copies
	for _, j := range jobs {
		s.done += j.Current
		s.total += j.Total
	}
	return s
}

// pollAfter is how long Hydrate waits for its next step: hydratePoll, or
// less when the copies will be done sooner at the rate they went since
// the last step (a copy of a few seconds is not made to wait a tenth of
// a second more for its end to be seen).
func pollAfter(prev, cur sample) time.Duration {
	const soon = 5 * time.Millisecond
	switch {
	case cur.total > 0 && cur.done >= cur.total:
		return soon // copied: the job is about to be ready
	case prev.at.IsZero() || cur.done <= prev.done || cur.total != prev.total:
		return hydratePoll
	}
	rate := float64(cur.done-prev.done) / cur.at.Sub(prev.at).Seconds()
	eta := time.Duration(float64(cur.total-cur.done) / rate * float64(time.Second))
	return min(hydratePoll, max(eta, soon))
}

// job is one entry of query-jobs.
type job struct {
	ID      string `json:"id"`
	Type    string `json:"type"`
	Status  string `json:"status"`
	Current int64  `json:"current-progress"`
	Total   int64  `json:"total-progress"`
	Error   string `json:"error"`
}

// hydrateStep moves every disk one step on, under the VM's lock (so a
// Stop or another Hydrate does not interleave) and over one QMP
// connection. It returns the copies that run.
func (p *Provider) hydrateStep(ctx context.Context, sock string, st *state, dir string) (map[string]job, error) {
	unlock, err := hostvm.LockDir(ctx, dir, lockFile)
	if err != nil {
		return nil, err
	}
	defer unlock()
	running := map[string]job{}
	err = qmpDo(ctx, sock, func(c *qmp.Conn) error {
		var list []job
		if err := c.Execute(ctx, "query-jobs", nil, &list); err != nil {
			return err
		}
		jobs := map[string]job{}
		for _, j := range list {
			jobs[j.ID] = j
		}
		backing, err := backingFiles(ctx, c)
		if err != nil {
			return err
		}
		for i := range st.Spec.Disks {
			if st.Hydrated[i] {
				continue
			}
			d := &diskCopy{p: p, c: c, st: st, dir: dir, i: i}
			j, err := d.step(ctx, jobs, backing)
			if err != nil {
				return fmt.Errorf("disk %s: %w", st.Spec.Disks[i].Name, err)
			}
			if j != nil {
				running[j.ID] = *j
			}
		}
		return nil
	})
	return running, err
}

// backingFiles maps each block node with a device to the backing file
// its image's header names ("" for none).
func backingFiles(ctx context.Context, c *qmp.Conn) (map[string]string, error) {
	var blocks []struct {
		Inserted *struct {
			Node    string `json:"node-name"`
			Backing string `json:"backing_file"`
		} `json:"inserted"`
	}
	if err := c.Execute(ctx, "query-block", nil, &blocks); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, b := range blocks {
		if b.Inserted != nil {
			out[b.Inserted.Node] = b.Inserted.Backing
		}
	}
	return out, nil
}

// markHydrated records disk i as hydrated in the state file, re-reading
// the file so no other change is lost. The caller holds the VM's lock.
func (p *Provider) markHydrated(st *state, dir string, i int) error {
	st.Hydrated[i] = true
	cur, err := readState(dir)
	if err != nil || cur == nil {
		return fmt.Errorf("record hydrated disk %s: state file gone or damaged: %v", st.Spec.Disks[i].Name, err)
	}
	cur.Hydrated[i] = true
	p.log.Info("disk hydrated", "vm", st.Spec.Name, "disk", st.Spec.Disks[i].Name)
	return writeState(dir, cur)
}

// report sums the copies' progress, each scaled to its disk's size:
// hydrated disks count in full.
func report(progress func(compute.Progress), st *state, running map[string]job) {
	if progress == nil {
		return
	}
	var pr compute.Progress
	for i, d := range st.Spec.Disks {
		j, ok := running[jobID(i)]
		pr.Total += d.Size
		switch {
		case st.Hydrated[i]:
			pr.Done += d.Size
		case ok && j.Total > 0:
			pr.Done += int64(float64(d.Size) * float64(min(j.Current, j.Total)) / float64(j.Total))
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
