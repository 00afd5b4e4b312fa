package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/engine"
)

// Progress phases.
const (
	PhaseInitial     = "initial"
	PhaseResync      = "resync"
	PhaseIncremental = "incremental"
)

// cycleSpec describes one cycle to run.
type cycleSpec struct {
	kind   string    // KindCrash or KindApp
	at     time.Time // point time (group cuts); zero: the instant of the snapshot
	cutID  string
	group  string
	resync bool // requested by the server: read every block
	// thawer is thawed right after every disk's Begin (app points).
	thawer *thawer
	// freezeNow, if set, runs the pre-freeze stage just before the
	// snapshot (self-scheduled app points); on failure the point is
	// taken crash-consistent.
	freezeNow *consistency
	// snapped, if set, is called once after the snapshot (nil error) or
	// when the cycle fails before it (the error).
	snapped func(err error)
	// labels are added to the point's labels (a planned failover's
	// final point says so).
	labels map[string]string
}

// ---- data loop ----

func (a *Agent) dataLoop(ctx context.Context) {
	defer a.closeOpenCut("agent stopping")
	for ctx.Err() == nil {
		cfg, have := a.serverConfig()
		if have && a.shutdownRequested(ctx, cfg) {
			a.setStatus("shut down")
			a.sleep(ctx, a.tick, a.cfgChanged)
			continue
		}
		if !have || !cfg.Protected || cfg.Paused {
			a.closeOpenCut("protection paused or removed")
			a.setStatus("idle")
			a.sleep(ctx, a.tick*5, a.cfgChanged)
			continue
		}
		if cfg.Group != "" {
			if !a.handleCuts(ctx, cfg) {
				a.sleep(ctx, a.tick, a.cfgChanged)
			}
			continue
		}
		a.closeOpenCut("machine left its group")
		now := a.clk.Now()
		a.mu.Lock()
		resync := a.st.resyncWanted(cfg)
		due, kind := nextCycle(now, a.st, cfg.Policy, resync)
		a.mu.Unlock()
		if now.Before(due) {
			a.setStatus("idle")
			a.sleep(ctx, min(due.Sub(now), a.tick), a.cfgChanged)
			continue
		}
		spec := cycleSpec{kind: kind, resync: resync}
		if kind == KindApp {
			spec.freezeNow = a.consistency(cfg, "")
		}
		a.runCycle(ctx, cfg, spec)
	}
}

// cycling reports whether a cycle is running.
func (a *Agent) cycling() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status == "cycling"
}

func (a *Agent) setStatus(s string) {
	a.mu.Lock()
	a.status = s
	a.mu.Unlock()
}

// consistency returns the pre-freeze/post-thaw runner for one point.
func (a *Agent) consistency(cfg api.AgentConfig, cutID string) *consistency {
	timeout := DefaultHookTimeout
	if cfg.Policy != nil && cfg.Policy.HookTimeout > 0 {
		timeout = cfg.Policy.HookTimeout.Std()
	}
	var quiesce func(context.Context) (func(context.Context) error, error)
	if a.cfg.vm != nil {
		quiesce = a.cfg.vm.quiesce
	}
	return &consistency{
		quiesce:  quiesce,
		hooksDir: a.cfg.hooksDir(),
		mounts:   a.cfg.FreezeMounts,
		timeout:  timeout,
		env:      []string{"LIFEBOAT_MACHINE=" + a.cfg.Machine, "LIFEBOAT_POINT_KIND=" + KindApp, "LIFEBOAT_CUT_ID=" + cutID},
		log:      a.log,
		freeze:   a.freeze,
		thaw:     a.thaw,
	}
}

// maxCutLateness is how far past a cut's instant a member may still take
// its snapshot (scheduling and polling jitter).
const maxCutLateness = time.Second

// hookTimeout is the policy's bound on hooks and on time spent frozen.
func hookTimeout(cfg api.AgentConfig) time.Duration {
	if cfg.Policy != nil && cfg.Policy.HookTimeout > 0 {
		return cfg.Policy.HookTimeout.Std()
	}
	return DefaultHookTimeout
}

// thawOpenCut thaws the open cut but keeps it open: the member still
// takes part if the cut falls back to crash-consistent.
func (a *Agent) thawOpenCut() {
	a.mu.Lock()
	oc := a.openCut
	if oc != nil {
		oc.failed = true
	}
	a.mu.Unlock()
	if oc != nil && oc.thawer != nil {
		if err := oc.thawer.thaw(); err != nil {
			a.event(api.SeverityWarning, "hook_failed", fmt.Sprintf("thaw after cut %s: %v", oc.id, err))
		}
	}
}

// hookFailed reports a failed pre-freeze (the point becomes crash-consistent).
func (a *Agent) hookFailed(err error) {
	a.event(api.SeverityWarning, "hook_failed", fmt.Sprintf("app-consistent point not possible, taking it crash-consistent: %v", err))
}

// closeOpenCut thaws the open cut, if any, and forgets it.
func (a *Agent) closeOpenCut(why string) {
	a.mu.Lock()
	oc := a.openCut
	a.openCut = nil
	if oc != nil {
		a.st.markCut(oc.id)
		a.saveStateLocked()
	}
	a.mu.Unlock()
	if oc == nil {
		return
	}
	a.log.Info("cut abandoned", "cut", oc.id, "reason", why)
	if err := oc.thawer.thaw(); err != nil {
		a.event(api.SeverityWarning, "hook_failed", fmt.Sprintf("thaw after cut %s: %v", oc.id, err))
	}
}

// handleCuts acts on the group cuts of cfg. It reports whether it did
// something that deserves an immediate re-check (no sleep).
func (a *Agent) handleCuts(ctx context.Context, cfg api.AgentConfig) bool {
	now := a.clk.Now()
	cuts := slices.Clone(cfg.Cuts)
	slices.SortStableFunc(cuts, func(x, y api.Cut) int { return x.At.Compare(y.At) })

	a.mu.Lock()
	oc := a.openCut
	a.mu.Unlock()
	if oc != nil && !slices.ContainsFunc(cuts, func(c api.Cut) bool { return c.ID == oc.id }) {
		a.closeOpenCut("the server no longer lists the cut")
		return true
	}
	for _, cut := range cuts {
		a.mu.Lock()
		done := a.st.cutDone(cut.ID)
		a.mu.Unlock()
		if done || (len(cut.Members) > 0 && !slices.Contains(cut.Members, a.cfg.Machine)) {
			continue
		}
		isOpen := oc != nil && oc.id == cut.ID
		expired := !cut.Expires.IsZero() && now.After(cut.Expires) ||
			cut.Expires.IsZero() && isOpen && now.Sub(oc.started) > maxFreezeNoExp
		switch {
		case cut.Phase == api.PhaseAbort || cut.Phase == api.PhaseDone:
			if isOpen {
				a.closeOpenCut("cut " + cut.Phase)
			} else {
				a.markCut(cut.ID)
			}
			return true
		case expired:
			if isOpen {
				a.closeOpenCut("cut expired")
			} else {
				a.markCut(cut.ID)
			}
			a.ack(cut.ID, "failed", "the cut expired before its snapshot")
			return true
		case cut.Phase == api.PhaseFreeze:
			if isOpen {
				if oc.failed {
					return false // thawed; waiting for the crash-consistent snapshot
				}
				// Never keep an application frozen longer than the hook
				// timeout waiting for the rest of the group: thaw, and take
				// part crash-consistent if the cut goes on.
				if limit := hookTimeout(cfg); now.Sub(oc.started) > limit {
					a.thawOpenCut()
					a.hookFailed(fmt.Errorf("the group did not reach its barrier within %s of freezing", limit))
					a.ack(cut.ID, "failed", fmt.Sprintf("thawed after %s frozen: the group's barrier was not reached", limit))
					return true
				}
				// Repeat the ack: a server restarted since keeps acks in
				// memory only.
				if now.Sub(oc.lastAck) >= 2*time.Second {
					a.mu.Lock()
					oc.lastAck = now
					a.mu.Unlock()
					a.ack(cut.ID, "frozen", "")
				}
				return false // frozen; waiting for the snapshot phase
			}
			if oc != nil {
				a.closeOpenCut("another cut began")
			}
			a.freezeForCut(ctx, cfg, cut)
			return true
		case cut.Phase == api.PhaseSnapshot:
			if d := cut.At.Sub(now); d > 0 {
				a.sleep(ctx, min(d, a.tick))
				return true
			}
			// A point carries the cut's instant. Taking it later is only
			// right while this member is frozen for the cut; otherwise
			// (the agent was busy, restarting, or its server was down)
			// the instant is missed and the member sits this cut out
			// rather than publish a point that claims a time it was not
			// taken at.
			frozen := isOpen && !oc.failed && cut.Kind == KindApp
			if late := now.Sub(cut.At); late > maxCutLateness && !frozen {
				if oc != nil {
					a.closeOpenCut("missed the cut's instant")
				}
				a.markCut(cut.ID)
				a.ack(cut.ID, "failed", fmt.Sprintf("missed the cut's instant by %s", late.Round(time.Millisecond)))
				return true
			}
			if !isOpen && cut.Kind == KindApp {
				if oc != nil {
					a.closeOpenCut("another cut began")
				}
				a.freezeForCut(ctx, cfg, cut) // the freeze phase was missed (restart)
			}
			a.snapshotCut(ctx, cfg, cut)
			return true
		}
	}
	return false
}

// markCut records a cut as done.
func (a *Agent) markCut(id string) {
	a.mu.Lock()
	a.st.markCut(id)
	a.saveStateLocked()
	a.mu.Unlock()
}

// freezeForCut runs the pre-freeze stage of an app cut and acknowledges
// frozen, or failed (after thawing what was frozen).
func (a *Agent) freezeForCut(ctx context.Context, cfg api.AgentConfig, cut api.Cut) {
	oc := &openCut{id: cut.ID, started: a.clk.Now()}
	if cut.Kind == KindApp {
		t, err := a.consistency(cfg, cut.ID).preFreeze(ctx)
		oc.thawer = t
		if err != nil {
			oc.failed = true
			if terr := t.thaw(); terr != nil {
				err = errors.Join(err, terr)
			}
			a.hookFailed(err)
			a.mu.Lock()
			a.openCut = oc
			a.mu.Unlock()
			a.ack(cut.ID, "failed", err.Error())
			return
		}
	}
	oc.lastAck = a.clk.Now()
	a.mu.Lock()
	a.openCut = oc
	a.mu.Unlock()
	a.ack(cut.ID, "frozen", "")
}

// snapshotCut takes the point of a cut in its snapshot phase.
func (a *Agent) snapshotCut(ctx context.Context, cfg api.AgentConfig, cut api.Cut) {
	a.mu.Lock()
	oc := a.openCut
	a.openCut = nil
	// Never act on the same cut twice, even across a crash.
	a.st.markCut(cut.ID)
	a.saveStateLocked()
	resync := a.st.resyncWanted(cfg)
	a.mu.Unlock()
	spec := cycleSpec{kind: cut.Kind, at: cut.At, cutID: cut.ID, group: cut.Group, resync: resync}
	if spec.kind != KindApp {
		spec.kind = KindCrash
	}
	if oc != nil && oc.id == cut.ID {
		spec.thawer = oc.thawer
		if oc.failed {
			spec.kind = KindCrash
		}
	} else if oc != nil {
		oc.thawer.thaw()
	}
	if spec.kind == KindApp && (spec.thawer == nil) {
		spec.kind = KindCrash
	}
	spec.snapped = func(err error) {
		if err != nil {
			a.ack(cut.ID, "failed", err.Error())
			return
		}
		a.ack(cut.ID, "snapped", "")
	}
	a.runCycle(ctx, cfg, spec)
}

// ---- one cycle ----

// progressTracker aggregates per-disk progress into api.Progress.
type progressTracker struct {
	mu      sync.Mutex
	a       *Agent
	phase   string
	started time.Time
	total   int64
	done    map[string]int64
	sent    func() int64
}

func (p *progressTracker) update(disk string, done int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done[disk] = done
	var d int64
	for _, v := range p.done {
		d += v
	}
	pr := &api.Progress{Phase: p.phase, Done: d, Total: p.total, Started: p.started}
	if p.sent != nil {
		pr.Sent = p.sent()
	}
	if p.total > 0 {
		pr.Percent = float64(d) * 100 / float64(p.total)
	}
	if elapsed := p.a.clk.Now().Sub(p.started); d > 0 && elapsed > 0 && d < p.total {
		pr.ETA = api.Duration(time.Duration(float64(elapsed) * float64(p.total-d) / float64(d)))
	}
	p.a.mu.Lock()
	p.a.progress = pr
	p.a.mu.Unlock()
}

// runCycle runs one cycle and records its result. It never panics on
// errors: they become the result's Error, and the next cycle retries.
// It returns the result and the cycle's error too.
func (a *Agent) runCycle(ctx context.Context, cfg api.AgentConfig, spec cycleSpec) (api.CycleResult, error) {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.mu.Lock()
	a.status = "cycling"
	a.cycleCancel = cancel
	a.mu.Unlock()
	start := a.clk.Now()
	res, err := a.guardedCycle(cctx, cfg, &spec)
	// Whatever happened, the freeze ends and the cut is acknowledged.
	if spec.thawer != nil {
		if terr := spec.thawer.thaw(); terr != nil {
			a.event(api.SeverityWarning, "hook_failed", fmt.Sprintf("post-thaw: %v", terr))
		}
	}
	if spec.snapped != nil {
		spec.snapped(err)
		spec.snapped = nil
	}
	res.Kind, res.CutID, res.Group = spec.kind, spec.cutID, spec.group
	res.Duration = api.Duration(a.clk.Now().Sub(start))
	if res.Time.IsZero() {
		res.Time = start
	}
	a.mu.Lock()
	a.cycleCancel = nil
	a.progress = nil
	a.st.LastAttempt = start
	if err != nil {
		if ctx.Err() != nil {
			a.status = "idle"
			a.mu.Unlock()
			return res, err // the agent is stopping: not a failure to report
		}
		res.Error = err.Error()
		a.st.Failures++
		a.status = "error"
	} else {
		a.st.recordPoint(res.Point, res.Time, spec.kind)
		if spec.resync {
			a.st.ResyncDone = true
			a.st.ResyncVersion = cfg.Version
		}
		a.status = "idle"
	}
	a.st.addResult(res)
	a.saveStateLocked()
	a.mu.Unlock()
	a.metrics.cycle(a.cfg.Machine, res)
	if err != nil {
		a.log.Error("cycle failed; the next one retries", "kind", spec.kind, "cut", spec.cutID, "err", err)
	} else {
		a.log.Info("point published", "point", res.Point, "kind", spec.kind, "time", res.Time, "changed", res.ChangedBytes,
			"read", res.ReadBytes, "sent", res.SentBytes, "took", res.Duration.Std().Round(time.Millisecond), "cut", spec.cutID)
	}
	wake(a.kick)
	return res, err
}

// selectDisks returns the configured disks the server protects (all when
// its list is empty).
func (a *Agent) selectDisks(names []string) ([]DiskConfig, error) {
	if len(names) == 0 {
		if len(a.cfg.Disks) == 0 {
			return nil, errors.New("no disks configured: add them to \"disks\" in agent.json and restart the agent")
		}
		return a.cfg.Disks, nil
	}
	var out []DiskConfig
	for _, n := range names {
		i := slices.IndexFunc(a.cfg.Disks, func(d DiskConfig) bool { return d.Name == n })
		if i < 0 {
			return nil, fmt.Errorf("the server protects disk %q, which agent.json does not list: add it there or change the protected disks", n)
		}
		out = append(out, a.cfg.Disks[i])
	}
	return out, nil
}

// snapshotMode resolves (once per disk) the snapshot mode of a disk.
func (a *Agent) snapshotMode(d DiskConfig) string {
	a.mu.Lock()
	m, ok := a.snapModes[d.Name]
	a.mu.Unlock()
	if ok {
		return m
	}
	m = snapshotFor(a.cfg.Snapshot, d.Path)
	a.mu.Lock()
	a.snapModes[d.Name] = m
	a.mu.Unlock()
	a.log.Info("snapshot mode", "disk", d.Name, "mode", m)
	return m
}

// scanKey is what a scan driver depends on.
type scanKey struct {
	path, stateFile string
	blockSize       int
	snapshot        string
}

// cachedScan is a scan driver kept across cycles.
type cachedScan struct {
	key scanKey
	drv *scan.Driver
}

// scanDriver returns the scan driver of disk d, the one of the previous
// cycles unless what it depends on changed. A driver holds nothing between
// cycles but its settings, and one cycle at a time is active.
func (a *Agent) scanDriver(d DiskConfig, blockSize int, rev *api.AgentReverse) (*scan.Driver, error) {
	key := scanKey{path: d.Path, stateFile: filepath.Join(trackingDir(a.cfg.StateDir, rev), d.Name), blockSize: blockSize, snapshot: a.snapshotMode(d)}
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.scans[d.Name]; ok && c.key == key {
		return c.drv, nil
	}
	if err := os.MkdirAll(filepath.Dir(key.stateFile), 0o700); err != nil {
		return nil, fmt.Errorf("disk %s: tracking state: %w", d.Name, err)
	}
	drv, err := scan.New(scan.Options{Path: key.path, StateFile: key.stateFile, BlockSize: blockSize, Snapshot: key.snapshot, Logger: a.log})
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", d.Name, err)
	}
	if a.scans == nil {
		a.scans = map[string]cachedScan{}
	}
	a.scans[d.Name] = cachedScan{key: key, drv: drv}
	return drv, nil
}

// trackingDir is where the scan drivers keep their state: disks/ in
// the state directory, or, for the agent of a recovered VM replicating it
// back, reverse/JOB/disks/: the reverse direction starts its own tracking
// (its first point reads the disks whole and sends what the vault lacks),
// and the forward state the VM's copy of the disk holds stays as it was.
func trackingDir(stateDir string, rev *api.AgentReverse) string {
	if rev != nil {
		return filepath.Join(stateDir, "reverse", rev.ID, "disks")
	}
	return filepath.Join(stateDir, "disks")
}

// cycleMachine returns the machine that cuts disks: the scan drivers of
// the disks scanned here and the VM's hypervisor machine for the others.
// The caller closes it.
func (a *Agent) cycleMachine(ctx context.Context, cfg api.AgentConfig, disks []DiskConfig, blockSize int) (capture.Machine, error) {
	var scans []capture.DiskDriver
	var vmDisks []DiskConfig
	var vmNames []string
	vmDriver := ""
	for _, d := range disks {
		driver := a.driverFor(cfg, d)
		if driver == api.DriverScan {
			if d.Format == "qcow2" {
				return nil, fmt.Errorf("disk %s is a qcow2 image: the scan driver reads raw disks only; protect it with --driver qemu", d.Name)
			}
			drv, err := a.scanDriver(d, blockSize, cfg.Reverse)
			if err != nil {
				return nil, err
			}
			scans = append(scans, capture.DiskDriver{Disk: d.Name, Driver: drv})
			continue
		}
		driver, err := a.machineDriver(driver, d)
		if err != nil {
			return nil, err
		}
		if vmDriver == "" {
			vmDriver = driver
		}
		vmDisks, vmNames = append(vmDisks, d), append(vmNames, d.Name)
	}
	var parts []capture.Part
	if len(vmDisks) > 0 {
		m, err := a.cfg.vm.open(ctx, vmDisks, blockSize)
		if err != nil {
			return nil, fmt.Errorf("%s driver: %w", vmDriver, err)
		}
		// The machine's disks first, in one cut; then the scanned disks.
		parts = append(parts, capture.Part{Machine: m, Disks: vmNames})
	}
	if len(scans) > 0 {
		var names []string
		for _, s := range scans {
			names = append(names, s.Disk)
		}
		parts = append(parts, capture.Part{Machine: capture.Drivers(scans...), Disks: names})
	}
	return capture.Join(parts...), nil
}

// pointVMSpec is the VM spec recorded in the point, or nil.
func (a *Agent) pointVMSpec() []byte {
	vmspec, err := readVMSpec(a.cfg.VMSpec)
	if a.cfg.vm != nil {
		vmspec, err = json.Marshal(a.cfg.vm.spec)
	}
	if err != nil {
		a.log.Warn("point taken without VM spec", "err", err)
		return nil
	}
	return vmspec
}

// cycle does the work of one cycle: cut every disk, ship the changes in
// one ingest session, and commit the drivers once the point is published
// (internal/engine, with the ingest sink of sink.go).
func (a *Agent) cycle(ctx context.Context, cfg api.AgentConfig, spec *cycleSpec) (api.CycleResult, error) {
	var res api.CycleResult
	if cfg.ProcessURL == "" {
		return res, errors.New("no process server assigned to this machine yet: the server assigns one when it protects the machine")
	}
	disks, err := a.selectDisks(cfg.Disks)
	if err != nil {
		return res, err
	}
	if rv := cfg.Reverse; rv != nil { // a reverse point of the recovered VM
		spec.labels = maps.Clone(spec.labels)
		if spec.labels == nil {
			spec.labels = map[string]string{}
		}
		spec.labels[api.LabelDirection], spec.labels["vm"] = api.DirectionReverse, rv.VM
	}
	sink, err := a.openSink(ctx, cfg.ProcessURL, cfg.Bandwidth)
	if err != nil {
		return res, err
	}
	mach, err := a.cycleMachine(ctx, cfg, disks, sink.BlockSize())
	if err != nil {
		return res, err
	}
	defer mach.Close()
	o := a.engineOptions(spec, sink, &res)
	for _, d := range disks {
		o.Disks = append(o.Disks, d.Name)
	}
	er, err := engine.Run(ctx, mach, sink, o)
	if er != nil {
		res.Time, spec.kind = er.Time, er.Kind
	}
	if err != nil {
		return res, err
	}
	for _, d := range er.Disks {
		res.ReadBytes += d.ReadBytes
	}
	res.Point = er.Point
	res.ChangedBytes, res.SentBytes = er.Published.ChangedBytes, er.Published.SentBytes
	return res, nil
}

// engineOptions maps spec to the engine's options and hooks: the
// pre-freeze right before the cut, the thaw and the group cut's ack right
// after it, progress by phase.
func (a *Agent) engineOptions(spec *cycleSpec, sink *ingestSink, res *api.CycleResult) engine.Options {
	labels := map[string]string{"agent": a.version}
	maps.Copy(labels, spec.labels)
	var snapAt time.Time
	var pt *progressTracker
	return engine.Options{
		Machine: a.cfg.Machine, Kind: spec.kind, At: spec.at, Group: spec.group, CutID: spec.cutID,
		Labels: labels, VMSpec: a.pointVMSpec(), Resync: spec.resync, Logger: a.log,
		Now: func() time.Time {
			t := a.clk.Now()
			if snapAt.IsZero() {
				snapAt = t // the first snapshot's instant
			}
			return t
		},
		BeforeCut: func(ctx context.Context) bool {
			if spec.freezeNow == nil {
				return true
			}
			t, err := spec.freezeNow.preFreeze(ctx)
			spec.thawer = t
			if err != nil {
				if terr := t.thaw(); terr != nil {
					err = errors.Join(err, terr)
				}
				spec.kind = KindCrash
				a.hookFailed(err)
				return false
			}
			return true
		},
		// The snapshot is taken: thaw at once, then acknowledge.
		AfterCut: func() {
			if spec.thawer != nil {
				if terr := spec.thawer.thaw(); terr != nil {
					a.event(api.SeverityWarning, "hook_failed", fmt.Sprintf("post-thaw: %v", terr))
				}
			}
			if spec.snapped != nil {
				spec.snapped(nil)
				spec.snapped = nil
			}
		},
		Streaming: func(cut engine.Cut) {
			phase := PhaseIncremental
			for _, d := range cut.Disks {
				if d.Base == "" {
					a.mu.Lock()
					phase = PhaseResync
					if a.st.LastPoint == "" {
						phase = PhaseInitial
					}
					a.mu.Unlock()
					res.Resync = phase == PhaseResync
				}
			}
			pt = &progressTracker{a: a, phase: phase, started: snapAt, done: map[string]int64{}, sent: sink.sent}
			for _, d := range cut.Disks {
				pt.total += d.Size
			}
			pt.update("", 0)
		},
		Progress: func(disk string, p capture.Progress) { pt.update(disk, p.Done) },
	}
}
