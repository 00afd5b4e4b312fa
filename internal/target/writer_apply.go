package target

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// apply applies point id onto every disk of the machine and reports the
// outcome. A failure is kept for the reports and the point is tried
// again next round; a stop (ctx) leaves the journals for the next run.
func (w *Writer) apply(ctx context.Context, ms *machineState, id string) {
	p, err := w.point(ctx, ms, id)
	if err == nil {
		err = w.check(ms, p)
	}
	if err == nil {
		var res []*Result
		if res, err = w.applyDisks(ctx, ms, p); err == nil {
			w.applied(ms, p, res)
		}
	}
	if ctx.Err() != nil {
		ms.log.Info("stopped while applying; the next run resumes from the journals", "point", short(id))
		return
	}
	if err != nil {
		ms.err = err.Error()
		if ms.err != ms.loggedErr {
			ms.log.Error("cannot apply the point; trying again every interval", "point", short(id), "every", w.o.Every, "err", err)
			ms.loggedErr = ms.err
		} else {
			ms.log.Debug("cannot apply the point", "point", short(id), "err", err)
		}
	}
	w.report(ctx, ms, w.baseReport(ms))
}

// point loads the point the server named and loads the vault's index,
// which must hold the point's blocks.
func (w *Writer) point(ctx context.Context, ms *machineState, id string) (*vault.Point, error) {
	vid, err := vault.ParseID(strings.ToLower(id))
	if err != nil {
		return nil, fmt.Errorf("the server names point %q to apply, which is not a point ID (%w): is the server of the same version?", id, err)
	}
	p, err := w.o.Vault.LoadPoint(ctx, vid)
	if backend.IsNotExist(err) {
		return nil, fmt.Errorf("point %s is not in the vault: is --vault the vault the server publishes reverse points into?", vid.Short())
	}
	if err != nil {
		return nil, fmt.Errorf("read point %s from the vault: %w", vid.Short(), err)
	}
	if p.Machine != ms.name {
		return nil, fmt.Errorf("the server names point %s of machine %s to apply onto machine %s: nothing written; check the server's reverse point of %s",
			vid.Short(), p.Machine, ms.name, ms.name)
	}
	if _, err := w.o.Vault.LoadIndex(ctx); err != nil {
		return nil, fmt.Errorf("load the vault's index: %w", err)
	}
	return p, nil
}

// check refuses, before anything is written, a point whose disks are not
// the configured ones and targets Apply must not or would not write as
// this writer must: unsafe ones (recover.CheckTarget) and existing disks
// smaller than the point's.
func (w *Writer) check(ms *machineState, p *vault.Point) error {
	var problems []string
	have := map[string]bool{}
	for _, d := range ms.disks {
		have[d.name] = true
	}
	for _, d := range p.Disks {
		if !have[d.Name] {
			problems = append(problems, fmt.Sprintf("point %s has disk %s, which has no path here: give --disk %s/%s=PATH", p.ID.Short(), d.Name, ms.name, d.Name))
		}
	}
	for _, c := range ms.disks {
		d, ok := p.Disk(c.name)
		if !ok {
			problems = append(problems, fmt.Sprintf("disk %s/%s is configured but point %s has no disk %s (it has %s): remove it or correct the name",
				ms.name, c.name, p.ID.Short(), c.name, diskNames(p)))
			continue
		}
		if err := recover.CheckTarget(c.path, recover.VaultDir(w.o.Vault)); err != nil {
			problems = append(problems, err.Error())
			continue
		}
		size, exists, err := targetSize(c.path)
		switch {
		case err != nil:
			problems = append(problems, err.Error())
		case exists && size < d.Size:
			problems = append(problems, fmt.Sprintf("the original disk %s (%s) is %d bytes, the recovered disk is %d: grow it or give an alternate location (a path that does not exist)",
				c.path, c.name, size, d.Size))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("not applying point %s, nothing written: %s", p.ID.Short(), strings.Join(problems, "; "))
	}
	return nil
}

func diskNames(p *vault.Point) string {
	names := make([]string, len(p.Disks))
	for i, d := range p.Disks {
		names[i] = d.Name
	}
	return strings.Join(names, ", ")
}

// targetSize is the size of the file or block device at path, and
// whether it exists.
func targetSize(path string) (int64, bool, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return 0, false, nil
	case err != nil:
		return 0, false, fmt.Errorf("target: %w", err)
	case fi.Mode().IsRegular():
		if size, ok, err := qcow2Size(path); err != nil || ok {
			return size, true, err // a qcow2 image: its virtual size
		}
		return fi.Size(), true, nil
	case fi.Mode()&fs.ModeDevice == 0 || fi.Mode()&fs.ModeCharDevice != 0:
		return 0, true, fmt.Errorf("%s is neither a file nor a block device: give a disk image, a block device or a path that does not exist", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, true, fmt.Errorf("target: %w", err)
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, true, fmt.Errorf("size of %s: %w", path, err)
	}
	return n, true, nil
}

// applyDisks applies p onto each disk of the machine in turn, reporting
// progress every second. The record says the point is being applied
// before the first write, so that a restart does not take the disks for
// the point applied before.
func (w *Writer) applyDisks(ctx context.Context, ms *machineState, p *vault.Point) ([]*Result, error) {
	if ms.done.Applying != p.ID.String() {
		rec := ms.done
		rec.Applying = p.ID.String()
		if err := writeApplied(ms.appliedFile(), rec); err != nil {
			return nil, err
		}
		ms.done = rec
	}
	pr := &applyProgress{clk: w.o.Clock, start: w.o.Clock.Now(), disk: ms.disks[0].name}
	for _, d := range p.Disks {
		pr.total += d.Size
	}
	ms.log.Info("applying point", "point", p.ID.Short(), "time", p.Time, "disks", len(ms.disks), "bytes", pr.total)
	stop := w.reportProgress(ctx, ms, p, pr)
	defer stop()
	var results []*Result
	for _, c := range ms.disks {
		d, _ := p.Disk(c.name)
		pr.startDisk(c.name)
		res, err := w.applyDisk(ctx, ms, p, c, pr)
		if err != nil {
			return nil, err
		}
		pr.endDisk(d.Size, res.Resumed)
		results = append(results, res)
	}
	return results, nil
}

// applyDisk applies p's disk onto c's path; a qcow2 image through a
// FUSE export of its guest view.
func (w *Writer) applyDisk(ctx context.Context, ms *machineState, p *vault.Point, c diskConf, pr *applyProgress) (*Result, error) {
	target := c.path
	var img *fuseImage
	if _, ok, _ := qcow2Size(c.path); ok {
		var err error
		if img, err = openQCOW2(ctx, c.path, ms.dir); err != nil {
			return nil, err
		}
		target = img.mnt
	}
	res, err := Apply(ctx, w.o.Vault, p, c.name, target, Options{
		StateDir: ms.dir, Baseline: filepath.Join(ms.dir, c.name+".scan-baseline"),
		CheckpointBytes: w.o.CheckpointBytes, Workers: w.o.Workers, Progress: pr.set, Logger: ms.log})
	if img != nil {
		if cerr := img.close(ms.log); err == nil && cerr != nil {
			return nil, cerr
		}
		if res != nil {
			res.Target = c.path
		}
	}
	return res, err
}

// applied records that the machine's disks hold p.
func (w *Writer) applied(ms *machineState, p *vault.Point, results []*Result) {
	rec := appliedRecord{Point: p.ID.String(), AppliedAt: w.o.Clock.Now(), Started: ms.done.Started, StartedBy: ms.done.StartedBy}
	var compared, written, resumed int64
	for i, r := range results {
		rec.Disks = append(rec.Disks, api.TargetDisk{Name: r.Disk, Path: ms.disks[i].path, Size: r.Size,
			Compared: r.Compared, Written: r.Written, Resumed: r.Resumed})
		compared, written, resumed = compared+r.Compared, written+r.Written, resumed+r.Resumed
	}
	ms.done, ms.err, ms.loggedErr = rec, "", ""
	ms.log.Info("applied point: the disks hold it", "point", p.ID.Short(), "compared", compared, "written", written, "resumed", resumed)
	if err := writeApplied(ms.appliedFile(), rec); err != nil {
		ms.log.Error("the disks hold the point, but the record of it could not be written: after a restart the point is compared again",
			"point", p.ID.Short(), "err", err)
	}
}

// reportProgress reports the apply at once and then every second until
// the returned function is called; it logs every tenth of the way.
func (w *Writer) reportProgress(ctx context.Context, ms *machineState, p *vault.Point, pr *applyProgress) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	logged := int64(0)
	send := func() {
		r := w.baseReport(ms)
		r.Applying = p.ID.String()
		tp := pr.snapshot()
		r.Progress = &tp
		if tenth := tp.Done * 10 / max(tp.Total, 1); tenth > logged && tp.Done < tp.Total {
			logged = tenth
			ms.log.Info("applying point", "point", p.ID.Short(), "disk", tp.Disk, "done", tp.Done, "total", tp.Total,
				"percent", tp.Done*100/max(tp.Total, 1), "eta", time.Duration(tp.ETA))
		}
		w.report(ctx, ms, r)
	}
	send()
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := w.o.Clock.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C():
				send()
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// applyProgress sums the progress of an apply over the machine's disks.
type applyProgress struct {
	clk   clock.Clock
	start time.Time
	total int64 // bytes of all disks

	mu      sync.Mutex
	disk    string
	base    int64    // bytes of the disks finished
	resumed int64    // of which skipped as applied before a restart
	cur     Progress // of the disk under way
}

func (pr *applyProgress) set(p Progress) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.cur = p
}

func (pr *applyProgress) startDisk(name string) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.disk, pr.cur = name, Progress{}
}

func (pr *applyProgress) endDisk(size, resumed int64) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.base, pr.resumed, pr.cur = pr.base+size, pr.resumed+resumed, Progress{}
}

// snapshot is the progress over all disks, with the time left at the
// rate of this run (bytes skipped by a resume do not count).
func (pr *applyProgress) snapshot() api.TargetProgress {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	done := pr.base + pr.cur.Done
	tp := api.TargetProgress{Disk: pr.disk, Done: done, Total: pr.total}
	work := done - pr.resumed - pr.cur.Resumed
	if el := pr.clk.Now().Sub(pr.start); work > 0 && el > 0 && done < pr.total {
		tp.ETA = api.Duration((time.Duration(float64(el) * float64(pr.total-done) / float64(work))).Round(time.Second))
	}
	return tp
}

// readApplied reads a machine's record of the point applied.
func readApplied(path string) (*appliedRecord, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rec appliedRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &rec, nil
}

// writeApplied replaces a machine's record atomically and durably.
func writeApplied(path string, rec appliedRecord) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := replaceFile(path, append(b, '\n')); err != nil {
		return fmt.Errorf("write the record of the point applied %s: %w (is the state directory writable?)", path, err)
	}
	return nil
}
