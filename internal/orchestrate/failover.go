package orchestrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Kinds of jobs.
const (
	KindTestFailover = "test-failover"
	KindFailover     = "failover"
	KindChangePoint  = "change-point"
	KindCommit       = "commit"
	KindCancel       = "cancel"
	KindCleanup      = "cleanup"
)

// Params are a job's parameters.
type Params struct {
	Machine string `json:"machine"`
	Choice  Choice `json:"choice"`
	// Planned shuts the source down and cuts a final point first.
	Planned bool `json:"planned,omitempty"`
	// Notes are recorded with a test failover's cleanup (drill history).
	Notes string `json:"notes,omitempty"`
	// VM names the recovered VM a commit, cancel, cleanup or change of
	// point acts on (from the machine's failover state).
	VM *VMRecord `json:"vm,omitempty"`
	// Hydrate copies a test failover's disks too (failovers always do).
	Hydrate bool `json:"hydrate,omitempty"`
	// Overrides, from a recovery plan, go over the machine's own
	// recovery settings (their non-zero fields).
	Overrides *Overrides `json:"overrides,omitempty"`
	// Forward lists guest TCP ports the server must reach (a plan's TCP
	// conditions): on user networking the provider forwards them.
	Forward []int `json:"forward,omitempty"`
	// Policy is a reprotect's failback policy.
	Policy string `json:"policy,omitempty"`
	// ReverseAgent is a reprotect's: the instance of the agent inside the
	// recovered VM that replicates it back ("": the server does, through
	// the provider).
	ReverseAgent string `json:"reverse_agent,omitempty"`
}

// RecordFile is the VM record in a recovered VM's directory. The
// directory is shared with the compute provider: the orchestration's own
// files there are RecordFile, the point server's ready file (nbd.json),
// socket (nbd.sock) and log (pointserver.log); providers keep their own
// names (the qemu provider's state is vm.json).
const RecordFile = "recovery.json"

// VMRecord describes a recovered VM; it is kept as RecordFile in the
// VM's directory, so the VMs of a site can be listed without any
// database.
type VMRecord struct {
	Name     string    `json:"name"`
	Dir      string    `json:"dir"`
	Machine  string    `json:"machine"`
	Kind     string    `json:"kind"` // KindTestFailover or KindFailover
	Job      string    `json:"job"`
	Point    string    `json:"point"`
	Provider string    `json:"provider"`
	Created  time.Time `json:"created"`
	Console  string    `json:"console,omitempty"`
	// Disks are the local images (overlays) of the VM's disks.
	Disks    []compute.DiskImage `json:"disks,omitempty"`
	Hydrated bool                `json:"hydrated,omitempty"`
	// GuestAgent is the host end of the VM's guest agent channel.
	GuestAgent string `json:"guest_agent,omitempty"`
	// Forwards maps guest TCP ports to host addresses (user networking).
	Forwards map[int]string `json:"forwards,omitempty"`
	// Address is the static address the VM was given (overrides), "".
	Address string `json:"address,omitempty"`
}

// Control is what the orchestration needs from the control plane. The
// server implements it; `lifeboat recover --vault` runs with none (nil),
// and then planned failover is not possible.
type Control interface {
	// WaitPending returns once the blocks of machine a process server
	// has acknowledged are published as a point (or ctx ends).
	WaitPending(ctx context.Context, machine string) error
	// ShutdownSource shuts the source machine down through its agent and
	// returns once it is off.
	ShutdownSource(ctx context.Context, machine string) error
	// FinalPoint cuts a point of the stopped source and returns its ID.
	FinalPoint(ctx context.Context, machine string) (string, error)
	// Recovered records that machine runs vm at the recovery site, for a
	// test failover or a failover (kind); it is called again when the VM
	// changes (hydrated).
	Recovered(ctx context.Context, machine, kind string, vm *VMRecord) error
	// Removed records that vm no longer runs (a cleanup, a cancel): the
	// machine's record is cleared only if it still names that VM.
	Removed(ctx context.Context, vm VMRecord) error
	// Committed stops the replication of the old source after a commit;
	// Cancelled resumes it after a cancelled failover.
	Committed(ctx context.Context, machine string) error
	Cancelled(ctx context.Context, machine string) error
	// Event reports something an operator should see.
	Event(ctx context.Context, machine, severity, kind, msg string)
}

// Orchestrator runs failover jobs.
type Orchestrator struct {
	Vault     *vault.Vault
	Site      Site
	Overrides func(ctx context.Context, machine string) Overrides // nil: none
	Provider  compute.Provider
	Points    Exporter
	Control   Control // nil: recovery from the vault alone
	Logger    *slog.Logger
	// Machines submits the machines' jobs of a plan (nil: plans cannot run).
	Machines MachineJobs
	// RunDir holds a directory per plan job (script state, kept console
	// logs, the HTML report); "" is plan-runs beside Site.Dir.
	RunDir string
	// Clock times scripts, records their start and bounds their resume
	// (nil: clock.System{}).
	Clock clock.Clock
}

func (o *Orchestrator) clock() clock.Clock {
	if o.Clock == nil {
		return clock.System{}
	}
	return o.Clock
}

// Kinds are the job kinds the orchestrator runs.
func (o *Orchestrator) Kinds() []jobs.Kind {
	steps := func(defs ...jobs.StepDef) func(*jobs.Job) ([]jobs.StepDef, error) {
		return func(*jobs.Job) ([]jobs.StepDef, error) { return defs, nil }
	}
	choose := jobs.StepDef{Name: "choose point", Run: o.choosePoint}
	serve := jobs.StepDef{Name: "serve point", Run: o.servePoint}
	start := jobs.StepDef{Name: "start VM", Run: o.startVM}
	hydrate := jobs.StepDef{Name: "hydrate disks", Run: o.hydrate}
	return []jobs.Kind{
		{Name: KindTestFailover, Steps: func(j *jobs.Job) ([]jobs.StepDef, error) {
			var p Params
			if err := json.Unmarshal(j.Params, &p); err != nil {
				return nil, err
			}
			if p.Hydrate {
				return []jobs.StepDef{choose, serve, start, hydrate}, nil
			}
			return []jobs.StepDef{choose, serve, start}, nil
		}},
		{Name: KindFailover, Steps: func(j *jobs.Job) ([]jobs.StepDef, error) {
			var p Params
			if err := json.Unmarshal(j.Params, &p); err != nil {
				return nil, err
			}
			if p.Planned {
				return []jobs.StepDef{{Name: "shut down source", Run: o.shutdownSource}, {Name: "cut final point", Run: o.finalPoint},
					choose, serve, start, hydrate}, nil
			}
			return []jobs.StepDef{choose, serve, start, hydrate}, nil
		}},
		{Name: KindChangePoint, Steps: steps(choose, jobs.StepDef{Name: "remove previous VM", Run: o.removePrevious}, serve, start, hydrate)},
		{Name: KindCommit, Steps: steps(jobs.StepDef{Name: "hydrate disks", Run: o.hydrateRecorded}, jobs.StepDef{Name: "commit", Run: o.commit})},
		{Name: KindCancel, Steps: steps(jobs.StepDef{Name: "remove VM", Run: o.removeRecorded}, jobs.StepDef{Name: "resume replication", Run: o.cancelled})},
		{Name: KindCleanup, Steps: steps(jobs.StepDef{Name: "remove VM", Run: o.removeRecorded})},
	}
}

func params(sc *jobs.StepContext) (Params, error) {
	var p Params
	err := sc.Params(&p)
	return p, err
}

func (o *Orchestrator) log() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// choosePoint picks the point once and records it.
func (o *Orchestrator) choosePoint(ctx context.Context, sc *jobs.StepContext) error {
	var id string
	if ok, err := sc.Get("point", &id); ok || err != nil {
		return err
	}
	p, err := params(sc)
	if err != nil {
		return err
	}
	if final, _ := sc.Get("final_point", &id); final {
		p.Choice = Choice{Point: id}
	}
	if o.Control != nil && (p.Choice.Point == "" || p.Choice.Point == ChooseLatest) && p.Choice.At.IsZero() {
		sc.Log(ctx, "waiting for acknowledged blocks of %s to be published", p.Machine)
		if err := o.Control.WaitPending(ctx, p.Machine); err != nil {
			return err
		}
	}
	pt, err := Choose(ctx, o.Vault, p.Machine, p.Choice)
	if err != nil {
		return err
	}
	sc.Log(ctx, "point %s of %s (%s, %s, %s old)", pt.ID.Short(), pt.Machine, pt.Kind, pt.Time.Local().Format(time.DateTime),
		sc.Now().Sub(pt.Time).Round(time.Second))
	return sc.Set(ctx, "point", pt.ID.String())
}

// vmOf names the job's VM (recorded once, before anything is made).
func (o *Orchestrator) vmOf(ctx context.Context, sc *jobs.StepContext) (VMRecord, error) {
	var vm VMRecord
	if ok, err := sc.Get("vm", &vm); ok || err != nil {
		return vm, err
	}
	p, err := params(sc)
	if err != nil {
		return vm, err
	}
	var point string
	if _, err := sc.Get("point", &point); err != nil {
		return vm, err
	}
	kind := sc.Job().Kind
	if kind != KindTestFailover {
		kind = KindFailover
	}
	name := VMName(sc.ID(), p.Machine)
	vm = VMRecord{Name: name, Dir: o.Site.VMDir(name), Machine: p.Machine, Kind: kind, Job: sc.ID(), Point: point,
		Provider: o.Provider.Name(), Created: sc.Now().UTC()}
	return vm, sc.Set(ctx, "vm", vm)
}

// servePoint starts (or finds) the VM's point server.
func (o *Orchestrator) servePoint(ctx context.Context, sc *jobs.StepContext) error {
	vm, err := o.vmOf(ctx, sc)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(vm.Dir, 0o700); err != nil {
		return fmt.Errorf("create the VM's directory: %w", err)
	}
	if err := writeRecord(vm); err != nil {
		return err
	}
	s, err := o.Points.Ensure(ctx, vm.Dir, vm.Point)
	if err != nil {
		if ctx.Err() == nil {
			o.undo(ctx, vm)
		}
		return err
	}
	sc.Log(ctx, "point %s served on %s (pid %d)", vm.Point[:12], s.Socket, s.PID)
	return sc.Set(ctx, "exports", s.Exports)
}

// startVM starts (or finds) the VM.
func (o *Orchestrator) startVM(ctx context.Context, sc *jobs.StepContext) error {
	vm, err := o.vmOf(ctx, sc)
	if err != nil {
		return err
	}
	var exports map[string]string
	if _, err := sc.Get("exports", &exports); err != nil {
		return err
	}
	id, err := vault.ParseID(vm.Point)
	if err != nil {
		return err
	}
	pt, err := o.Vault.LoadPoint(ctx, id)
	if err != nil {
		return err
	}
	var ov Overrides
	if o.Overrides != nil {
		ov = o.Overrides(ctx, vm.Machine)
	}
	p, err := params(sc)
	if err != nil {
		return err
	}
	if p.Overrides != nil {
		ov = ov.Over(*p.Overrides)
	}
	spec, err := BuildSpec(pt, &o.Site, ov, vm.Name, vm.Dir, exports, vm.Kind == KindTestFailover)
	if err != nil {
		o.undo(ctx, vm)
		return err
	}
	spec.Forward = p.Forward
	if _, err := os.Stat(vm.Dir); err != nil {
		return fmt.Errorf("the VM's directory is gone: %w", err)
	}
	inst, err := o.Provider.Start(ctx, spec)
	if err != nil {
		if ctx.Err() == nil {
			o.undo(ctx, vm)
		}
		return fmt.Errorf("%s provider: %w", o.Provider.Name(), err)
	}
	vm.Console, vm.Disks, vm.GuestAgent, vm.Forwards = inst.Console, inst.Disks, inst.GuestAgent, inst.Forwards
	vm.Address = ov.Address
	if err := sc.Set(ctx, "vm", vm); err != nil {
		return err
	}
	if err := writeRecord(vm); err != nil {
		return err
	}
	sc.Log(ctx, "VM %s runs (%s); console log %s", vm.Name, runsOn(o.Provider.Name(), inst.Accel), inst.Console)
	if o.Control != nil {
		if err := o.Control.Recovered(ctx, vm.Machine, vm.Kind, &vm); err != nil {
			return err
		}
	}
	return nil
}

// runsOn says what a VM runs on: the provider, and the accelerator if
// the provider reports one (the exec and libvirt providers may not).
func runsOn(provider, accel string) string {
	if accel == "" {
		return provider
	}
	return provider + ", " + accel
}

// hydrate copies the VM's disks into its overlays, then stops its point
// server: from then on the VM needs neither the vault nor the server.
func (o *Orchestrator) hydrate(ctx context.Context, sc *jobs.StepContext) error {
	vm, err := o.vmOf(ctx, sc)
	if err != nil {
		return err
	}
	if err := o.hydrateVM(ctx, sc, &vm); err != nil {
		return err
	}
	return sc.Set(ctx, "vm", vm)
}

func (o *Orchestrator) hydrateVM(ctx context.Context, sc *jobs.StepContext, vm *VMRecord) error {
	if !vm.Hydrated {
		last := time.Time{}
		err := o.Provider.Hydrate(ctx, vm.Name, vm.Dir, func(p compute.Progress) {
			if now := sc.Now(); now.Sub(last) >= time.Second || p.Done == p.Total {
				last = now
				sc.Progress(ctx, p.Done, p.Total, fmt.Sprintf("%d of %d MiB copied", p.Done>>20, p.Total>>20))
			}
		})
		if err != nil {
			return fmt.Errorf("%s provider: hydrate: %w", o.Provider.Name(), err)
		}
		vm.Hydrated = true
		if err := writeRecord(*vm); err != nil {
			return err
		}
	}
	if err := o.Points.Stop(ctx, vm.Dir); err != nil {
		return err
	}
	sc.Log(ctx, "disks of %s copied to %s; the point server is stopped", vm.Name, vm.Dir)
	if o.Control != nil {
		return o.Control.Recovered(ctx, vm.Machine, vm.Kind, vm)
	}
	return nil
}

// undo removes what a failed start made: no half-made VM is left.
func (o *Orchestrator) undo(ctx context.Context, vm VMRecord) {
	ctx = context.WithoutCancel(ctx)
	if err := o.Provider.Remove(ctx, vm.Name, vm.Dir); err != nil {
		o.log().Warn("removing a VM that failed to start", "vm", vm.Name, "err", err)
	}
	if err := o.Points.Stop(ctx, vm.Dir); err != nil {
		o.log().Warn("stopping the point server of a VM that failed to start", "vm", vm.Name, "err", err)
	}
	os.RemoveAll(vm.Dir)
}

// remove deletes a recovered VM, its point server and its directory.
func (o *Orchestrator) remove(ctx context.Context, vm VMRecord) error {
	if err := o.Provider.Remove(ctx, vm.Name, vm.Dir); err != nil {
		return fmt.Errorf("%s provider: remove %s: %w", o.Provider.Name(), vm.Name, err)
	}
	if err := o.Points.Stop(ctx, vm.Dir); err != nil {
		return err
	}
	if err := os.RemoveAll(vm.Dir); err != nil {
		return fmt.Errorf("remove %s: %w", vm.Dir, err)
	}
	return nil
}

// Remove deletes a recovered VM, its point server and its directory (a
// committed failback).
func (o *Orchestrator) Remove(ctx context.Context, vm VMRecord) error { return o.remove(ctx, vm) }

// recorded is the VM a commit, cancel or cleanup acts on.
func recorded(sc *jobs.StepContext) (VMRecord, error) {
	p, err := params(sc)
	if err != nil {
		return VMRecord{}, err
	}
	if p.VM == nil {
		return VMRecord{}, errors.New("the job names no recovered VM")
	}
	return *p.VM, nil
}

func (o *Orchestrator) removeRecorded(ctx context.Context, sc *jobs.StepContext) error {
	vm, err := recorded(sc)
	if err != nil {
		return err
	}
	if err := o.remove(ctx, vm); err != nil {
		return err
	}
	p, _ := params(sc)
	sc.Log(ctx, "removed VM %s of %s", vm.Name, vm.Machine)
	if o.Control != nil {
		if err := o.Control.Removed(ctx, vm); err != nil {
			return err
		}
		if sc.Job().Kind == KindCleanup {
			o.Control.Event(ctx, vm.Machine, "info", "drill_cleaned_up",
				fmt.Sprintf("test failover of %s from point %s cleaned up; notes: %s", vm.Machine, vm.Point[:12], p.Notes))
		}
	}
	return nil
}

func (o *Orchestrator) removePrevious(ctx context.Context, sc *jobs.StepContext) error {
	vm, err := recorded(sc)
	if err != nil {
		return err
	}
	return o.remove(ctx, vm)
}

func (o *Orchestrator) hydrateRecorded(ctx context.Context, sc *jobs.StepContext) error {
	vm, err := recorded(sc)
	if err != nil {
		return err
	}
	return o.hydrateVM(ctx, sc, &vm)
}

func (o *Orchestrator) commit(ctx context.Context, sc *jobs.StepContext) error {
	vm, err := recorded(sc)
	if err != nil {
		return err
	}
	if o.Control != nil {
		return o.Control.Committed(ctx, vm.Machine)
	}
	return nil
}

func (o *Orchestrator) cancelled(ctx context.Context, sc *jobs.StepContext) error {
	vm, err := recorded(sc)
	if err != nil {
		return err
	}
	if o.Control != nil {
		return o.Control.Cancelled(ctx, vm.Machine)
	}
	return nil
}

func (o *Orchestrator) shutdownSource(ctx context.Context, sc *jobs.StepContext) error {
	p, err := params(sc)
	if err != nil {
		return err
	}
	if o.Control == nil {
		return errors.New("a planned failover shuts the source down through its agent: it needs the server")
	}
	sc.Log(ctx, "shutting %s down through its agent", p.Machine)
	return o.Control.ShutdownSource(ctx, p.Machine)
}

func (o *Orchestrator) finalPoint(ctx context.Context, sc *jobs.StepContext) error {
	var id string
	if ok, err := sc.Get("final_point", &id); ok || err != nil {
		return err
	}
	p, err := params(sc)
	if err != nil {
		return err
	}
	if o.Control == nil {
		return errors.New("a planned failover needs the server")
	}
	if id, err = o.Control.FinalPoint(ctx, p.Machine); err != nil {
		return err
	}
	sc.Log(ctx, "final point %s of %s cut after the shutdown", id[:min(12, len(id))], p.Machine)
	return sc.Set(ctx, "final_point", id)
}

// writeRecord writes RecordFile in the VM's directory.
func writeRecord(vm VMRecord) error {
	b, err := json.MarshalIndent(vm, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(vm.Dir, RecordFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("record the VM: %w", err)
	}
	return nil
}

// ReadRecords lists the recovered VMs of a site directory.
func ReadRecords(dir string) ([]VMRecord, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []VMRecord
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), RecordFile))
		if err != nil {
			continue
		}
		var vm VMRecord
		if json.Unmarshal(b, &vm) == nil && vm.Name == e.Name() {
			out = append(out, vm)
		}
	}
	return out, nil
}
