package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/sampleguest"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// demoGuestWait bounds the wait for the recovered guest's check of its
// files (a TCG boot and check of the sample takes seconds).
const demoGuestWait = 2 * time.Minute

// demoDrill runs test failover and cleanup jobs of the demo machine the
// way `lifeboat recover boot --test` and `recover remove` do: an
// orchestrator working from the vault alone, the qemu compute provider,
// a `lifeboat points serve` process per VM.
type demoDrill struct {
	vaultDir, siteDir string
	o                 *orchestrate.Orchestrator
	ps                *orchestrate.PointServers
	store             jobs.Store
	runner            *jobs.Runner
}

func (a *app) newDemoDrill(ctx context.Context, v *vault.Vault, vaultDir, siteDir string, pass []byte) (*demoDrill, error) {
	site := orchestrate.Site{Dir: siteDir}
	prov, err := orchestrate.NewProvider(site, a.log)
	if err != nil {
		return nil, err
	}
	ps := &orchestrate.PointServers{Vault: vaultDir, Env: []string{"LIFEBOAT_PASSPHRASE=" + string(pass)}, Logger: a.log}
	o := &orchestrate.Orchestrator{Vault: v, Site: site, Provider: prov, Points: ps, Logger: a.log}
	store := jobs.NewMemStore()
	r := jobs.NewRunner(jobs.Options{Store: store, Kinds: o.Kinds(), Logger: a.log})
	if err := r.Start(ctx); err != nil {
		return nil, err
	}
	return &demoDrill{vaultDir: vaultDir, siteDir: siteDir, o: o, ps: ps, store: store, runner: r}, nil
}

// demoJob submits a job and waits for its end, printing its steps.
func (a *app) demoJob(ctx context.Context, d *demoDrill, kind string, p orchestrate.Params) (jobs.Job, error) {
	j, err := d.runner.Submit(ctx, kind, p.Machine, p, "demo")
	if err != nil {
		return j, err
	}
	if j, err = a.demoFollow(ctx, d.store, j.ID); err != nil {
		return j, err
	}
	if j.State != jobs.StateSucceeded {
		return j, fmt.Errorf("%s of %s %s: %s", kind, p.Machine, j.State, j.Error)
	}
	return j, nil
}

// demoFollow prints each step of the job as it ends, until the job ends.
func (a *app) demoFollow(ctx context.Context, s jobs.Store, id string) (jobs.Job, error) {
	printed := map[string]bool{}
	t := a.clock().NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		j, err := s.GetJob(ctx, id)
		if err != nil {
			return j, err
		}
		for _, st := range j.Steps {
			ended := st.State == jobs.StepDone || st.State == jobs.StepFailed || st.State == jobs.StepSkipped
			if ended && !printed[st.Name] {
				printed[st.Name] = true
				a.say("   %-14s %-9s %s", st.Name, st.State, st.Message)
			}
		}
		if jobs.Terminal(j.State) {
			return j, nil
		}
		select {
		case <-ctx.Done():
			return j, ctx.Err()
		case <-t.C():
		}
	}
}

// demoTestFailover boots point p of the demo machine as a VM, as a drill
// does: its disk is served from the vault by a point server process and
// the VM boots through a copy-on-write overlay (the vault is not
// written), by the disk's own bootloader; the guest's init checks every
// sample file against the disk's manifest. Then a cleanup job removes
// the VM, and nothing may be left: no QEMU, no point server, no directory.
func (a *app) demoTestFailover(ctx context.Context, v *vault.Vault, p *vault.Point, dir string, pass []byte, files int) (err error) {
	vaultDir, siteDir := filepath.Join(dir, "vault"), filepath.Join(dir, "recovery")
	a.say("== Test failover: point %s (the second) boots as a VM, its disk served from the vault through a point server", p.ID.Short())
	a.say("   same as: lifeboat recover boot %s --point %s --test --vault %s --site-dir %s", p.Machine, p.ID.Short(), vaultDir, siteDir)
	// The jobs run to their end even when the demo is interrupted, so
	// that the cleanup always finds the VM: only the wait for the guest
	// stops at an interrupt.
	jctx := context.WithoutCancel(ctx)
	rctx, cancel := context.WithCancel(jctx)
	d, err := a.newDemoDrill(rctx, v, vaultDir, siteDir, pass)
	if err != nil {
		cancel()
		return err
	}
	defer func() { cancel(); d.runner.Wait() }()
	t0 := time.Now() // wallclock: durations of real processes, only shown
	j, err := a.demoJob(jctx, d, orchestrate.KindTestFailover, orchestrate.Params{Machine: p.Machine, Choice: orchestrate.Choice{Point: p.ID.String()}})
	var vm orchestrate.VMRecord
	if ok, _ := j.Get("vm", &vm); ok && vm.Dir != "" {
		// Whatever happens next, the VM goes: a cleanup job, as a drill ends.
		defer func() {
			if cerr := a.demoCleanup(jctx, d, vm); err == nil {
				err = cerr
			}
		}()
	}
	if err != nil {
		return err
	}
	running := time.Since(t0) // wallclock: only shown
	in, err := d.o.Provider.Inspect(ctx, vm.Name, vm.Dir)
	if err != nil {
		return err
	}
	a.say("   VM %s of point %s: QEMU running (pid %d, %s) %.2fs after the job was submitted",
		vm.Name, vm.Point[:12], in.PID, in.Accel, running.Seconds())
	t1 := time.Now() // wallclock: only shown
	line, err := demoWaitConsole(ctx, vm.Console, demoGuestWait)
	if err != nil {
		return err
	}
	a.say("   guest: %s", line)
	a.say("   its init checked all %d sample files against the manifest on its disk %.1fs after QEMU started (booted by its own bootloader: SeaBIOS, extlinux, kernel, initramfs)",
		files, time.Since(t1).Seconds()) // wallclock: only shown
	return nil
}

// demoWaitConsole waits for the guest's verdict on its manifest and
// returns that console line.
func demoWaitConsole(ctx context.Context, console string, limit time.Duration) (string, error) {
	deadline := time.Now().Add(limit) // wallclock: a bound on a real guest's boot
	for {
		b, _ := os.ReadFile(console)
		for _, l := range strings.Split(string(b), "\n") {
			// The line may start with the console's escape sequences.
			for _, m := range []string{sampleguest.ManifestPassMarker, sampleguest.ManifestFailMarker, sampleguest.FailMarker} {
				i := strings.Index(l, m)
				switch {
				case i < 0:
				case m == sampleguest.ManifestPassMarker:
					return strings.TrimSpace(l[i:]), nil
				default:
					return "", fmt.Errorf("the recovered guest failed its check: %s\n%s", strings.TrimSpace(l[i:]), consoleTail(b))
				}
			}
		}
		if time.Now().After(deadline) { // wallclock: as above
			return "", fmt.Errorf("the recovered guest printed no %s within %s:\n%s", sampleguest.ManifestPassMarker, limit, consoleTail(b))
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond): // wallclock: how often the console is read again
		}
	}
}

func consoleTail(b []byte) string {
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// demoCleanup removes the drill's VM with a cleanup job and checks that
// nothing is left of it.
func (a *app) demoCleanup(ctx context.Context, d *demoDrill, vm orchestrate.VMRecord) error {
	var qemuPID, serverPID int
	if in, err := d.o.Provider.Inspect(ctx, vm.Name, vm.Dir); err == nil {
		qemuPID = in.PID
	}
	if s, ok := d.ps.Running(vm.Dir); ok {
		serverPID = s.PID
	}
	a.say("== Cleanup of the test failover (lifeboat recover remove %s --vault %s --site-dir %s)", vm.Name, d.vaultDir, d.siteDir)
	t0 := time.Now() // wallclock: durations of real processes, only shown
	if _, err := a.demoJob(ctx, d, orchestrate.KindCleanup, orchestrate.Params{Machine: vm.Machine, VM: &vm}); err != nil {
		return err
	}
	var left []string
	for _, p := range []struct {
		what string
		pid  int
	}{{"QEMU", qemuPID}, {"point server", serverPID}} {
		if p.pid > 0 && !demoGone(ctx, p.pid) {
			left = append(left, fmt.Sprintf("%s (pid %d) still runs", p.what, p.pid))
		}
	}
	if _, err := os.Stat(vm.Dir); !errors.Is(err, os.ErrNotExist) {
		left = append(left, fmt.Sprintf("the VM's directory %s is still there (%v)", vm.Dir, err))
	}
	if len(left) > 0 {
		return fmt.Errorf("the cleanup left %s", strings.Join(left, "; "))
	}
	a.say("   removed in %.2fs: QEMU (pid %d) and the point server (pid %d) have exited, the VM's directory is gone; the vault was only read",
		time.Since(t0).Seconds(), qemuPID, serverPID) // wallclock: only shown
	return nil
}

// demoGone waits briefly for pid to be gone; a zombie (an exited QEMU
// that init has not reaped yet) counts as gone.
func demoGone(ctx context.Context, pid int) bool {
	for range 50 {
		if !hostvm.Alive(pid) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond): // wallclock: how often the kernel is asked again
		}
	}
	return false
}
