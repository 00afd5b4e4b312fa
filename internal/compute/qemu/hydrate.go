package qemu

import (
	"context"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// hydratePoll is how often Hydrate asks QEMU how its streams are going.
const hydratePoll = 500 * time.Millisecond

// Hydrate streams every disk's backing data into its overlay (QMP
// block-stream, job "hydrate-diskN", not dismissed automatically) while
// the VM runs, reporting progress, and returns once no overlay has a
// backing file. It resumes: a stream that runs is watched, a concluded
// one is dismissed (its error returned), and a disk without backing is
// hydrated. If ctx ends, the streams go on in QEMU.
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
	t := time.NewTicker(hydratePoll)
	defer t.Stop()
	logged := false
	for {
		var jobs map[string]job
		err := qmpDo(ctx, inst.QMP, func(c *qmp.Conn) error {
			var err error
			jobs, err = p.hydrateStep(ctx, c, st, dir)
			return err
		})
		if err != nil {
			return fmt.Errorf("hydrate VM %s: %w", name, err)
		}
		report(progress, st, jobs)
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

// job is one entry of query-jobs.
type job struct {
	ID      string `json:"id"`
	Status  string `json:"status"`
	Current int64  `json:"current-progress"`
	Total   int64  `json:"total-progress"`
	Error   string `json:"error"`
}

// hydrateStep moves every disk one step on: it starts missing streams,
// dismisses concluded ones and records disks whose overlay has no backing
// any more. It returns the jobs that run.
func (p *Provider) hydrateStep(ctx context.Context, c *qmp.Conn, st *state, dir string) (map[string]job, error) {
	var list []job
	if err := c.Execute(ctx, "query-jobs", nil, &list); err != nil {
		return nil, err
	}
	jobs := map[string]job{}
	for _, j := range list {
		jobs[j.ID] = j
	}
	backing, err := backingFiles(ctx, c)
	if err != nil {
		return nil, err
	}
	running := map[string]job{}
	for i := range st.Spec.Disks {
		if st.Hydrated[i] {
			continue
		}
		disk := st.Spec.Disks[i].Name
		if j, ok := jobs[jobID(i)]; ok {
			if j.Status != "concluded" {
				running[j.ID] = j
				continue
			}
			if err := c.Execute(ctx, "job-dismiss", map[string]any{"id": j.ID}, nil); err != nil {
				return nil, err
			}
			if j.Error != "" {
				return nil, fmt.Errorf("disk %s: the copy failed: %s (call Hydrate again to retry)", disk, j.Error)
			}
			running[j.ID] = job{ID: j.ID, Current: j.Total, Total: j.Total}
			continue // the backing is checked on the next step
		}
		b, ok := backing[nodeName(i)]
		if !ok {
			return nil, fmt.Errorf("disk %s: QEMU has no block node %s", disk, nodeName(i))
		}
		if b == "" {
			if err := p.markHydrated(ctx, st, dir, i); err != nil {
				return nil, err
			}
			continue
		}
		args := map[string]any{"job-id": jobID(i), "device": nodeName(i), "auto-dismiss": false}
		if err := c.Execute(ctx, "block-stream", args, nil); err != nil {
			return nil, fmt.Errorf("disk %s: start the copy: %w", disk, err)
		}
		p.log.Info("hydration started", "vm", st.Spec.Name, "disk", disk)
		running[jobID(i)] = job{ID: jobID(i), Total: st.Spec.Disks[i].Size}
	}
	return running, nil
}

// backingFiles maps each block node with a device to its backing file
// ("" for none).
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

// markHydrated records disk i as hydrated in the state file (under the
// VM's lock, re-reading the file so no other change is lost).
func (p *Provider) markHydrated(ctx context.Context, st *state, dir string, i int) error {
	st.Hydrated[i] = true
	unlock, err := hostvm.LockDir(ctx, dir, lockFile)
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := readState(dir)
	if err != nil || cur == nil {
		return fmt.Errorf("record hydrated disk %s: state file gone or damaged: %v", st.Spec.Disks[i].Name, err)
	}
	cur.Hydrated[i] = true
	p.log.Info("disk hydrated", "vm", st.Spec.Name, "disk", st.Spec.Disks[i].Name)
	return writeState(dir, cur)
}

// report sums the streams' progress: hydrated disks count in full.
func report(progress func(compute.Progress), st *state, running map[string]job) {
	if progress == nil {
		return
	}
	var pr compute.Progress
	for i, d := range st.Spec.Disks {
		j, ok := running[jobID(i)]
		switch {
		case st.Hydrated[i]:
			pr.Done += d.Size
			pr.Total += d.Size
		case ok && j.Total > 0:
			pr.Done += j.Current
			pr.Total += j.Total
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
