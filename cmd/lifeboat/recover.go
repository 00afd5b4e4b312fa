package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// recoverFlags are shared by the recover subcommands.
type recoverFlags struct {
	siteDir, provider, accel, exec string
	json                           bool
}

func (a *app) recoverCmd() *cobra.Command {
	var f recoverFlags
	c := &cobra.Command{
		Use:   "recover",
		Short: "Recover machines from the vault alone: no server, no state database",
		Long: `recover works from the vault and its passphrase only, for the day the
configuration server is gone with its site. It lists the machines and
their points (from the vault), and boots any point as a VM at once with a
local compute provider — its disks served from the vault by a point server
and copied into local images while the VM runs — or removes such VMs.
The recovery site's configuration (provider, networks, their mapping) and
the machines' recovery settings come from the vault's catalog, which the
server keeps there; flags override them.`,
		Example: `  export LIFEBOAT_PASSPHRASE_FILE=/root/vault.pass
  lifeboat recover machines --vault s3://dr-bucket/lifeboat
  lifeboat recover boot web01 --vault /srv/vault --point latest-app --wait
  lifeboat recover list --vault /srv/vault
  lifeboat recover remove lb-1a2b3c4d-web01-9f2e --vault /srv/vault`,
	}
	pf := c.PersistentFlags()
	pf.StringVar(&f.siteDir, "site-dir", "", "directory of the recovered VMs (default: the catalog's, else ./lifeboat-recovery)")
	pf.StringVar(&f.provider, "provider", "", "compute provider: qemu, libvirt or exec (default: the catalog's, else qemu)")
	pf.StringVar(&f.accel, "accel", "", "qemu/libvirt accelerator: auto, kvm or tcg")
	pf.StringVar(&f.exec, "exec", "", "the exec provider's script (with --provider exec; default: the catalog's)")
	pf.BoolVar(&f.json, "json", false, "print JSON")
	a.vaultFlags(pf)
	a.indexCacheFlag(pf)
	c.AddCommand(a.recoverMachinesCmd(&f), a.recoverPointsCmd(&f), a.recoverBootCmd(&f), a.recoverPlanCmd(&f), a.recoverListCmd(&f), a.recoverRemoveCmd(&f))
	return c
}

// recoverSite reads the site configuration from the vault's catalog and
// applies the flags.
func (a *app) recoverSite(ctx context.Context, v *vault.Vault, f *recoverFlags) (orchestrate.Site, map[string]orchestrate.Overrides, error) {
	var site orchestrate.Site
	if _, err := v.GetCatalog(ctx, orchestrate.CatalogSite, &site); err != nil {
		a.log.Warn("the vault's site configuration cannot be read; using defaults", "err", err)
	}
	ov := map[string]orchestrate.Overrides{}
	if _, err := v.GetCatalog(ctx, orchestrate.CatalogMachines, &ov); err != nil {
		a.log.Warn("the vault's machine settings cannot be read; using none", "err", err)
	}
	if f.siteDir != "" {
		site.Dir = f.siteDir
	}
	if site.Dir == "" || f.siteDir == "" && !writableDir(site.Dir) {
		site.Dir = "lifeboat-recovery"
	}
	if abs, err := filepath.Abs(site.Dir); err == nil {
		site.Dir = abs
	}
	if f.provider != "" {
		site.Provider = f.provider
	}
	if f.accel != "" {
		site.Accel = f.accel
	}
	if f.exec != "" {
		site.Exec = f.exec
	}
	if err := site.Validate(); err != nil {
		return site, nil, &codeError{exitUsage, err}
	}
	return site, ov, nil
}

// writableDir reports whether dir exists (or can be made) and is writable.
func writableDir(dir string) bool {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false
	}
	f, err := os.CreateTemp(dir, ".probe")
	if err != nil {
		return false
	}
	f.Close()
	os.Remove(f.Name())
	return true
}

func (a *app) recoverMachinesCmd(f *recoverFlags) *cobra.Command {
	return &cobra.Command{
		Use: "machines", Short: "List the machines the vault holds points of", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			v, err := a.openVault(ctx)
			if err != nil {
				return err
			}
			pts, _, err := v.Points(ctx)
			if err != nil {
				return err
			}
			type machine struct {
				Name   string    `json:"name"`
				Points int       `json:"points"`
				Newest time.Time `json:"newest"`
				Disks  []string  `json:"disks"`
				VM     bool      `json:"vm_spec"`
			}
			by := map[string]*machine{}
			for _, p := range pts {
				m := by[p.Machine]
				if m == nil {
					m = &machine{Name: p.Machine}
					by[p.Machine] = m
				}
				m.Points++
				if p.Time.After(m.Newest) {
					m.Newest, m.Disks, m.VM = p.Time, nil, len(p.VMSpec) > 0
					for _, d := range p.Disks {
						m.Disks = append(m.Disks, d.Name)
					}
				}
			}
			var out []machine
			for _, m := range by {
				out = append(out, *m)
			}
			slices.SortFunc(out, func(x, y machine) int { return strings.Compare(x.Name, y.Name) })
			if f.json {
				return a.printJSON(out)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "MACHINE\tPOINTS\tNEWEST\tDISKS\tVM SPEC")
			for _, m := range out {
				fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%v\n", m.Name, m.Points, m.Newest.Local().Format(time.DateTime), strings.Join(m.Disks, ","), m.VM)
			}
			return w.Flush()
		},
	}
}

func (a *app) recoverPointsCmd(f *recoverFlags) *cobra.Command {
	return &cobra.Command{
		Use: "points MACHINE", Short: "List a machine's points, newest last", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.vaultPointsList(cmd.Context(), args[0], f.json, false); err != nil {
				return err
			}
			return nil
		},
	}
}

func (a *app) recoverBootCmd(f *recoverFlags) *cobra.Command {
	var point, at string
	var test, hydrate, wait bool
	c := &cobra.Command{
		Use:   "boot MACHINE [--point latest|latest-app|latest-group|ID] [--at TIME] [--test] [--hydrate]",
		Short: "Boot a point of a machine as a VM at once, from the vault",
		Long: `boot starts the machine's point as a VM: a point server process serves its
disks from the vault, the VM boots through copy-on-write overlays (the
vault is never written), and --hydrate copies the disks into the overlays
while the VM runs, then stops the point server. --test puts the VM on the
site's isolated test network (default: QEMU user networking with no route
out); otherwise its NICs join the site's production networks. The VM and
its point server outlive this command; remove them with "recover remove".`,
		Example: `  lifeboat recover boot web01 --vault /srv/vault --point latest-app --hydrate
  lifeboat recover boot web01 --vault /srv/vault --at "2026-12-07 09:30" --test`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			choice := orchestrate.Choice{Point: point}
			if at != "" {
				t, err := parseTimeFlag(at)
				if err != nil {
					return &codeError{exitUsage, fmt.Errorf("--at: %w", err)}
				}
				choice.At = t
			}
			if err := choice.Validate(); err != nil {
				return &codeError{exitUsage, err}
			}
			kind := orchestrate.KindFailover
			if test {
				kind = orchestrate.KindTestFailover
			}
			p := orchestrate.Params{Machine: args[0], Choice: choice, Hydrate: hydrate}
			_ = wait // the job always runs to its end here: this process runs it
			return a.recoverRun(cmd.Context(), f, kind, args[0], p)
		},
	}
	c.Flags().StringVar(&point, "point", "", "latest (default), latest-app, latest-group or a point ID")
	c.Flags().StringVar(&at, "at", "", "the newest point at or before this time (RFC 3339, or \"2006-01-02 15:04[:05]\" local)")
	c.Flags().BoolVar(&test, "test", false, "a drill: the VM joins the isolated test network")
	c.Flags().BoolVar(&hydrate, "hydrate", false, "for --test: also copy the disks (a failover always does)")
	c.Flags().BoolVar(&wait, "wait", true, "wait for the job (always: this command runs it)")
	_ = c.Flags().MarkHidden("wait")
	return c
}

// parseTimeFlag reads RFC 3339 or a local "2006-01-02 15:04[:05]".
func parseTimeFlag(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{time.DateTime, "2006-01-02 15:04"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q: give RFC 3339 (2026-12-07T09:30:00Z) or local \"2026-12-07 09:30\"", s)
}

// recoverEnv builds an orchestrator that works from the vault alone.
func (a *app) recoverEnv(ctx context.Context, f *recoverFlags) (*orchestrate.Orchestrator, error) {
	v, err := a.openVaultIndexed(ctx, defaultStateDir(a.getenv))
	if err != nil {
		return nil, err
	}
	site, ov, err := a.recoverSite(ctx, v, f)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(site.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("site directory: %w", err)
	}
	if _, err := v.LoadIndex(ctx); err != nil {
		return nil, err
	}
	prov, err := orchestrate.NewProvider(site, a.log)
	if err != nil {
		return nil, &codeError{exitUsage, err}
	}
	ps := &orchestrate.PointServers{Vault: a.vaultLoc, CacheBytes: site.CacheBytes, Logger: a.log}
	if a.passphraseFile != "" {
		abs, err := filepath.Abs(a.passphraseFile)
		if err != nil {
			return nil, err
		}
		ps.PassphraseFile = abs
	} else {
		pass, err := a.passphrase("Vault passphrase", false)
		if err != nil {
			return nil, err
		}
		ps.Env = append(ps.Env, "LIFEBOAT_PASSPHRASE="+string(pass))
	}
	if loc, err := filepath.Abs(a.vaultLoc); err == nil && !strings.Contains(a.vaultLoc, "://") {
		ps.Vault = loc
	}
	return &orchestrate.Orchestrator{Vault: v, Site: site, Provider: prov, Points: ps, Logger: a.log,
		Overrides: func(_ context.Context, m string) orchestrate.Overrides { return ov[m] }}, nil
}

// recoverJSON starts the JSON lines of --json: the job's steps as they
// change, then {"result": STATE, "job": …}, or {"result": "failed",
// "error": …} when the job could not run.
func (a *app) recoverJSON(f *recoverFlags) func(j *jobs.Job, err error) error {
	if !f.json {
		return func(_ *jobs.Job, err error) error { return err }
	}
	a.lines = newJSONLines(a.stdout, nil)
	return func(j *jobs.Job, err error) error {
		if j == nil {
			_ = a.lines.Result("failed", map[string]any{"error": err.Error()})
			return err
		}
		fields := map[string]any{"job": j}
		if err != nil {
			fields["error"] = err.Error()
		}
		if werr := a.lines.Result(j.State, fields); werr != nil && err == nil {
			return werr
		}
		return err
	}
}

// recoverRun runs one job in this process and prints its outcome.
func (a *app) recoverRun(ctx context.Context, f *recoverFlags, kind, target string, p orchestrate.Params) error {
	end := a.recoverJSON(f)
	o, err := a.recoverEnv(ctx, f)
	if err != nil {
		return end(nil, err)
	}
	store := jobs.NewMemStore()
	r := jobs.NewRunner(jobs.Options{Store: store, Kinds: o.Kinds(), Logger: a.log})
	rctx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); r.Wait() }()
	if err := r.Start(rctx); err != nil {
		return end(nil, err)
	}
	j, err := r.Submit(ctx, kind, target, p, "recover")
	if err != nil {
		return end(nil, err)
	}
	j, err = a.followJob(ctx, store, j.ID)
	if err != nil {
		return end(nil, err)
	}
	if !f.json {
		a.printRecoverJob(j)
	}
	if j.State != jobs.StateSucceeded {
		return end(&j, fmt.Errorf("%s of %s %s: %s", kind, target, j.State, j.Error))
	}
	return end(&j, nil)
}

// followJob prints step changes until the job ends.
func (a *app) followJob(ctx context.Context, s jobs.Store, id string) (jobs.Job, error) {
	return a.followUntil(ctx, s, id, func(jobs.Job) bool { return false })
}

func (a *app) printRecoverJob(j jobs.Job) {
	var vm orchestrate.VMRecord
	if ok, _ := j.Get("vm", &vm); !ok || j.State != jobs.StateSucceeded {
		fmt.Fprintf(a.stdout, "%s of %s: %s %s\n", j.Kind, j.Target, j.State, j.Error)
		return
	}
	took := j.Ended.Sub(j.Started).Round(time.Millisecond)
	fmt.Fprintf(a.stdout, "%s of %s: VM %s runs from point %s (%s), in %s\n", j.Kind, j.Target, vm.Name, vm.Point[:12], vm.Provider, took)
	fmt.Fprintf(a.stdout, "  console log: %s\n  directory:   %s\n", vm.Console, vm.Dir)
	if vm.Hydrated {
		fmt.Fprintln(a.stdout, "  disks hydrated: the VM no longer needs the vault")
	}
	fmt.Fprintf(a.stdout, "  remove it with: lifeboat recover remove %s --vault %s\n", vm.Name, a.vaultLoc)
}

func (a *app) recoverListCmd(f *recoverFlags) *cobra.Command {
	return &cobra.Command{
		Use: "list", Short: "List the VMs recovered in the site directory", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o, err := a.recoverEnv(cmd.Context(), f)
			if err != nil {
				return err
			}
			recs, err := orchestrate.ReadRecords(o.Site.Dir)
			if err != nil {
				return err
			}
			if f.json {
				return a.printJSON(recs)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "VM\tMACHINE\tKIND\tPOINT\tSTATE\tHYDRATED\tCONSOLE")
			for _, r := range recs {
				in, err := o.Provider.Inspect(cmd.Context(), r.Name, r.Dir)
				state := in.State
				if err != nil {
					state = "unknown: " + err.Error()
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%v\t%s\n", r.Name, r.Machine, r.Kind, r.Point[:min(12, len(r.Point))], state, r.Hydrated, r.Console)
			}
			return w.Flush()
		},
	}
}

func (a *app) recoverRemoveCmd(f *recoverFlags) *cobra.Command {
	return &cobra.Command{
		Use: "remove VM|MACHINE", Short: "Remove a recovered VM, its point server and its directory", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := a.recoverEnv(cmd.Context(), f)
			if err != nil {
				return err
			}
			recs, err := orchestrate.ReadRecords(o.Site.Dir)
			if err != nil {
				return err
			}
			var match []orchestrate.VMRecord
			for _, r := range recs {
				if r.Name == args[0] || r.Machine == args[0] {
					match = append(match, r)
				}
			}
			switch {
			case len(match) == 0:
				return fmt.Errorf("no recovered VM named %s (or of machine %s) in %s: see `lifeboat recover list`", args[0], args[0], o.Site.Dir)
			case len(match) > 1:
				return &codeError{exitUsage, errors.New("several VMs of that machine: give the VM's name (lifeboat recover list)")}
			}
			vm := match[0]
			return a.recoverRunKind(cmd.Context(), f, o, orchestrate.KindCleanup, vm)
		},
	}
}

// recoverRunKind runs a cleanup of vm with the orchestrator o.
func (a *app) recoverRunKind(ctx context.Context, f *recoverFlags, o *orchestrate.Orchestrator, kind string, vm orchestrate.VMRecord) error {
	end := a.recoverJSON(f)
	store := jobs.NewMemStore()
	r := jobs.NewRunner(jobs.Options{Store: store, Kinds: o.Kinds(), Logger: a.log})
	rctx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); r.Wait() }()
	if err := r.Start(rctx); err != nil {
		return end(nil, err)
	}
	j, err := r.Submit(ctx, kind, vm.Machine, orchestrate.Params{Machine: vm.Machine, VM: &vm}, "recover")
	if err != nil {
		return end(nil, err)
	}
	if j, err = a.followJob(ctx, store, j.ID); err != nil {
		return end(nil, err)
	}
	if !f.json && j.State == jobs.StateSucceeded {
		fmt.Fprintf(a.stdout, "removed VM %s of %s\n", vm.Name, vm.Machine)
	}
	if j.State != jobs.StateSucceeded {
		return end(&j, fmt.Errorf("remove %s: %s", vm.Name, j.Error))
	}
	return end(&j, nil)
}
