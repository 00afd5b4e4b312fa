package target

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	capqemu "github.com/lifeboat-dr/lifeboat/internal/capture/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// DefaultEvery is how often a Writer reports to the server by default.
const DefaultEvery = 2 * time.Second

// Reporter sends a target writer's report on machine to the server and
// returns the machine's Reverse, whose Point is what to apply next (nil:
// nothing yet). `lifeboat target run` posts to
// /api/v1/machines/{machine}/reverse/target.
type Reporter interface {
	Report(ctx context.Context, machine string, r api.TargetReport) (*api.Reverse, error)
}

// ReporterFunc is a function that is a Reporter.
type ReporterFunc func(ctx context.Context, machine string, r api.TargetReport) (*api.Reverse, error)

// Report calls f.
func (f ReporterFunc) Report(ctx context.Context, machine string, r api.TargetReport) (*api.Reverse, error) {
	return f(ctx, machine, r)
}

// WriterOptions configure a Writer.
type WriterOptions struct {
	// Vault holds the points; it is only read. Its index is loaded
	// before every apply.
	Vault    *vault.Vault
	Reporter Reporter
	// Name is the target writer's name in its reports.
	Name string
	// Disks are, per machine, the path (file or block device: the
	// original disk, or a path that does not exist: an alternate
	// location) of each disk of the machine's points.
	Disks map[string]map[string]string
	// StateDir holds, per machine, the journals and scan baselines of
	// the applies and the record of the point applied
	// (StateDir/MACHINE/applied.json).
	StateDir string
	// Every is how often each machine is reported and its Reverse
	// asked for (default DefaultEvery).
	Every time.Duration
	// CheckpointBytes and Workers are passed to Apply (0: its defaults).
	CheckpointBytes int64
	Workers         int
	Clock           clock.Clock // default clock.System
	Logger          *slog.Logger
	// Start starts the original machine on its disks once they hold a
	// failback's final point; Stop stops it again (a cancelled
	// failback). Nil: this writer cannot, and says so in its reports.
	Start, Stop func(ctx context.Context, machine, point string) error
	// AgentState is the state directory of the host agent that
	// replicates the machines at this site (""): before Start, each qcow2
	// disk gets a persistent dirty bitmap and the agent's qemu driver
	// state is rebased onto the final point, so re-enabled replication
	// goes on incrementally from it instead of reading the disks whole.
	AgentState string
}

// Writer is the long-running target writer: every Every it reports each
// machine's disks to the server and, when the server names a reverse
// point the machine's disks do not hold yet, applies it onto every disk
// of the machine with Apply, reporting progress and then the result.
type Writer struct {
	o        WriterOptions
	machines []*machineState // by name
}

// machineState is what a Writer knows of one machine. Only Run's
// goroutine changes it.
type machineState struct {
	name  string
	dir   string     // StateDir/name
	disks []diskConf // by name
	done  appliedRecord
	err   string // the last apply's failure
	log   *slog.Logger

	reportFailing bool   // the last report failed (logged once)
	loggedErr     string // the last apply error logged at Error level
}

type diskConf struct{ name, path string }

// appliedRecord is StateDir/MACHINE/applied.json: the point applied in
// full onto the machine's disks, when, and what each disk's apply did;
// and the point being applied, if an apply began writing and has not
// finished (the disks then hold neither point in full).
type appliedRecord struct {
	Point     string           `json:"point,omitempty"`
	AppliedAt time.Time        `json:"applied_at,omitzero"`
	Disks     []api.TargetDisk `json:"disks,omitempty"`
	Applying  string           `json:"applying,omitempty"`
	// Started is the point the original machine was started on (Start),
	// until it is stopped again: no point is applied while it runs.
	// StartedBy is the reprotect job of that failback: a reverse
	// replication of another job means the machine was failed over again
	// since (its original shut down), and Started no longer holds.
	Started   string `json:"started,omitempty"`
	StartedBy string `json:"started_by,omitempty"`
}

// NewWriter checks o and returns a Writer; it touches nothing on disk.
func NewWriter(o WriterOptions) (*Writer, error) {
	switch {
	case o.Vault == nil:
		return nil, errors.New("target writer: no vault")
	case o.Reporter == nil:
		return nil, errors.New("target writer: no reporter")
	case o.Name == "":
		return nil, errors.New("target writer: give it a name (--name)")
	case o.StateDir == "":
		return nil, errors.New("target writer: give a state directory for its journals and records (--state-dir)")
	case len(o.Disks) == 0:
		return nil, errors.New("target writer: no disks: give the path of each disk of a machine (--disk MACHINE/DISK=PATH)")
	case o.Every < 0:
		return nil, fmt.Errorf("target writer: interval %s is negative", o.Every)
	}
	if o.Every == 0 {
		o.Every = DefaultEvery
	}
	if o.Clock == nil {
		o.Clock = clock.System{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	w := &Writer{o: o}
	paths := map[string]string{} // absolute path → MACHINE/DISK
	for _, m := range slices.Sorted(maps.Keys(o.Disks)) {
		if err := vault.ValidateName("machine", m); err != nil {
			return nil, err
		}
		ms := &machineState{name: m, dir: filepath.Join(o.StateDir, m), log: o.Logger.With("machine", m)}
		for _, d := range slices.Sorted(maps.Keys(o.Disks[m])) {
			if err := vault.ValidateName("disk", d); err != nil {
				return nil, err
			}
			p := o.Disks[m][d]
			if p == "" {
				return nil, fmt.Errorf("disk %s/%s has no path: give --disk %s/%s=PATH", m, d, m, d)
			}
			abs, err := filepath.Abs(p)
			if err != nil {
				return nil, fmt.Errorf("disk %s/%s: %w", m, d, err)
			}
			if other, dup := paths[abs]; dup {
				return nil, fmt.Errorf("disks %s and %s/%s have the same path %s: give each disk its own", other, m, d, p)
			}
			paths[abs] = m + "/" + d
			ms.disks = append(ms.disks, diskConf{name: d, path: abs})
		}
		if len(ms.disks) == 0 {
			return nil, fmt.Errorf("machine %s has no disks: give --disk %s/DISK=PATH", m, m)
		}
		w.machines = append(w.machines, ms)
	}
	return w, nil
}

// Run reports and applies until ctx ends, and then returns ctx's error.
// Failed reports (the server is down) and failed applies are logged,
// reported when the server can be reached, and tried again next round;
// only a state directory that cannot be made ends it early. Run must not
// be called twice at once.
func (w *Writer) Run(ctx context.Context) error {
	for _, ms := range w.machines {
		if err := w.load(ms); err != nil {
			return err
		}
	}
	w.o.Logger.Info("target writer running", "name", w.o.Name, "machines", len(w.machines), "every", w.o.Every)
	for {
		for _, ms := range w.machines {
			if ctx.Err() != nil {
				break
			}
			w.round(ctx, ms)
		}
		t := w.o.Clock.NewTimer(w.o.Every)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C():
		}
	}
}

// round reports machine ms and applies the point the server names, if
// the machine's disks do not hold it yet.
func (w *Writer) round(ctx context.Context, ms *machineState) {
	rev, ok := w.report(ctx, ms, w.baseReport(ms))
	if !ok || rev == nil {
		return
	}
	if ms.done.Started != "" && ms.done.StartedBy != rev.Job {
		ms.log.Info("the machine was failed over again since its original was started: applying reverse points again", "reprotect_job", rev.Job)
		rec := ms.done
		rec.Started, rec.StartedBy = "", ""
		if err := writeApplied(ms.appliedFile(), rec); err != nil {
			ms.log.Error("record that the original machine is no longer started", "err", err)
		}
		ms.done = rec
	}
	if w.power(ctx, ms, rev.Job, rev.Failback) {
		w.report(ctx, ms, w.baseReport(ms)) // tell the server at once
		return
	}
	if ms.done.Started != "" || rev.Point == nil || rev.Point.ID == "" {
		return // the original machine runs on its disks: nothing is applied
	}
	if strings.EqualFold(rev.Point.ID, ms.done.Point) && ms.done.Applying == "" {
		return
	}
	w.apply(ctx, ms, rev.Point.ID)
}

// power starts the original machine when a failback asks and its disks
// hold the final point, and stops it when a cancelled failback asks; it
// reports whether it changed anything.
func (w *Writer) power(ctx context.Context, ms *machineState, job string, fb *api.Failback) bool {
	if fb == nil {
		return false
	}
	var run func(ctx context.Context, machine, point string) error
	var started, what string
	switch {
	case fb.Start && fb.Final != "" && ms.done.Point == fb.Final && ms.done.Applying == "" && ms.done.Started != fb.Final:
		run, started, what = w.o.Start, fb.Final, "start"
	case fb.Stop && ms.done.Started != "":
		run, started, what = w.o.Stop, "", "stop"
	default:
		return false
	}
	if run == nil {
		ms.err = fmt.Sprintf("the failback asks to %s %s, but this target writer has no --%s-command", what, ms.name, what)
		ms.log.Error(ms.err)
		return true
	}
	if what == "start" {
		if err := w.handOver(ctx, ms, fb.Final); err != nil {
			ms.err = fmt.Sprintf("prepare the forward replication of %s: %v", ms.name, err)
			ms.log.Error(ms.err)
			return true
		}
	}
	if err := run(ctx, ms.name, fb.Final); err != nil {
		ms.err = fmt.Sprintf("%s the original machine %s: %v", what, ms.name, err)
		ms.log.Error(ms.err)
		return true
	}
	rec := ms.done
	rec.Started, rec.StartedBy = started, ""
	if started != "" {
		rec.StartedBy = job
	}
	if err := writeApplied(ms.appliedFile(), rec); err != nil {
		ms.log.Error("record that the original machine was started or stopped", "err", err)
	}
	ms.done, ms.err = rec, ""
	ms.log.Info("original machine "+what+"ed", "point", short(fb.Final))
	return true
}

// report sends r and returns the server's answer; a failure is logged
// (once until the server answers again) and reported as not ok.
func (w *Writer) report(ctx context.Context, ms *machineState, r api.TargetReport) (*api.Reverse, bool) {
	rev, err := w.o.Reporter.Report(ctx, ms.name, r)
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, false
	case err != nil && !ms.reportFailing:
		ms.reportFailing = true
		ms.log.Warn("cannot report to the server; trying again every interval", "every", w.o.Every, "err", err)
		return nil, false
	case err != nil:
		ms.log.Debug("cannot report to the server", "err", err)
		return nil, false
	case ms.reportFailing:
		ms.reportFailing = false
		ms.log.Info("the server answers again")
	}
	return rev, true
}

// The host agent keeps a VM's capture driver state in
// STATE/vms/NAME/capture (internal/agent: VMDir).
const (
	agentVMDir      = "vms"
	agentCaptureDir = "capture"
)

// handOver prepares forward replication from the final point before the
// original starts: each qcow2 disk gets a new persistent dirty bitmap
// and, with AgentState, the host agent's qemu driver records the final
// point and that bitmap as its baseline. Disks of other formats are left
// to a full read (deduplicated) at re-enable.
func (w *Writer) handOver(ctx context.Context, ms *machineState, final string) error {
	var seeds []capqemu.SeedDisk
	for _, d := range ms.disks {
		size, ok, err := qcow2Size(d.path)
		if err != nil || !ok {
			continue
		}
		img, err := openQCOW2(ctx, d.path, ms.dir)
		if err != nil {
			return err
		}
		name, err := img.addBitmap(ctx)
		if cerr := img.close(ms.log); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		ms.log.Info("dirty bitmap added for forward replication", "disk", d.name, "bitmap", name, "point", short(final))
		seeds = append(seeds, capqemu.SeedDisk{Name: d.name, Node: d.name, Baseline: final, Bitmap: name, Size: size})
	}
	if len(seeds) == 0 || w.o.AgentState == "" {
		return nil
	}
	dir := filepath.Join(w.o.AgentState, agentVMDir, ms.name, agentCaptureDir)
	if err := capqemu.Rebase(dir, seeds); err != nil {
		return err
	}
	ms.log.Info("host agent's tracking rebased onto the final point", "state", dir, "disks", len(seeds))
	return nil
}

// baseReport is the machine's report outside an apply: its disks with
// their sizes and the last apply's counts, the point applied, the last
// error.
func (w *Writer) baseReport(ms *machineState) api.TargetReport {
	r := api.TargetReport{Name: w.o.Name, Applied: ms.done.Point, AppliedAt: ms.done.AppliedAt, Error: ms.err, Started: ms.done.Started}
	for _, d := range ms.disks {
		td := api.TargetDisk{Name: d.name, Path: d.path}
		size, _, err := targetSize(d.path)
		if err != nil {
			ms.log.Debug("cannot tell the disk's size", "disk", d.name, "err", err)
		}
		td.Size = size
		for _, a := range ms.done.Disks {
			if a.Name == d.name {
				td.Compared, td.Written, td.Resumed = a.Compared, a.Written, a.Resumed
			}
		}
		r.Disks = append(r.Disks, td)
	}
	return r
}

// appliedFile is the record of the point applied onto a machine's disks.
func (ms *machineState) appliedFile() string { return filepath.Join(ms.dir, "applied.json") }

// load makes the machine's state directory and reads its record of the
// point applied. A record that cannot be read, or is for other paths
// than the ones configured now, is ignored with a warning: the next
// point is then applied in full (comparing, writing what differs).
func (w *Writer) load(ms *machineState) error {
	if err := os.MkdirAll(ms.dir, 0o700); err != nil {
		return fmt.Errorf("target writer state directory: %w (give a writable --state-dir)", err)
	}
	rec, err := readApplied(ms.appliedFile())
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		ms.log.Warn("ignoring the record of the point applied; the next point is compared in full", "err", err)
		return nil
	}
	if why := rec.mismatch(ms.disks); why != "" {
		ms.log.Warn("ignoring the record of the point applied: "+why+"; the next point is compared in full", "file", ms.appliedFile())
		return nil
	}
	ms.done = *rec
	if rec.Point != "" {
		ms.log.Info("the disks held a point applied earlier", "point", short(rec.Point), "applied_at", rec.AppliedAt)
	}
	if rec.Applying != "" {
		ms.err = fmt.Sprintf("an apply of point %s did not finish: the disks hold no point in full until one is applied", short(rec.Applying))
		ms.log.Warn(ms.err)
	}
	return nil
}

// mismatch says why the record does not describe the disks configured
// now, or "" if it does.
func (rec *appliedRecord) mismatch(disks []diskConf) string {
	if rec.Point == "" {
		return "" // nothing applied in full yet
	}
	if len(rec.Disks) != len(disks) {
		return fmt.Sprintf("it is of %d disks, %d are configured", len(rec.Disks), len(disks))
	}
	for i, d := range disks {
		if rec.Disks[i].Name != d.name || rec.Disks[i].Path != d.path {
			return fmt.Sprintf("it is of disk %s at %s, configured is disk %s at %s", rec.Disks[i].Name, rec.Disks[i].Path, d.name, d.path)
		}
	}
	return ""
}

// short is the short form of a point ID, as vault.ID.Short writes it.
func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}
