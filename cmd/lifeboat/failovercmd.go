package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/units"
)

// The failover family: test-failover (and its cleanup), failover (and
// change-point, commit, cancel), and recovery settings. Each operation
// submits a durable job on the server and prints it; --wait follows it
// to its end (jobscmd.go).

// jobFlags are the flags of every command that submits a job.
type jobFlags struct {
	wait bool
}

func addJobFlags(cmd *cobra.Command, jf *jobFlags) {
	cmd.Flags().BoolVar(&jf.wait, "wait", false, "wait until the job ends; exit 1 if it failed or was cancelled")
}

// pointFlags choose a recovery point.
type pointFlags struct {
	point, at string
}

func addPointFlags(cmd *cobra.Command, pf *pointFlags) {
	cmd.Flags().StringVar(&pf.point, "point", "latest", "latest (waits for blocks a process server acknowledged), latest-processed, latest-app, latest-group, or a point ID (at least 4 hex characters)")
	cmd.Flags().StringVar(&pf.at, "at", "", "the newest point (of that kind) at or before TIME: RFC 3339, \"2006-01-02 15:04[:05]\" (local time), or how long ago (\"90m\")")
}

// choice is the point chosen; --at as a duration counts back from now.
func (pf pointFlags) choice(now time.Time) (string, time.Time, error) {
	at, err := parseAt(pf.at, now)
	if err != nil {
		return "", time.Time{}, &codeError{exitUsage, err}
	}
	return pf.point, at, nil
}

// parseAt reads --at.
func parseAt(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{time.DateTime, "2006-01-02 15:04", "2006-01-02T15:04:05", "2006-01-02T15:04"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	if d, err := time.ParseDuration(strings.TrimPrefix(s, "-")); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("--at %q: give an RFC 3339 time, \"2006-01-02 15:04:05\" (local time) or how long ago (\"90m\")", s)
}

// submit posts a failover-family action and prints (or follows) its job.
func (a *app) submit(cmd *cobra.Command, f *clientFlags, jf *jobFlags, machine, action string, body any) error {
	c, err := a.client(f)
	if err != nil {
		return err
	}
	var j api.Job
	if err := c.Do(cmd.Context(), http.MethodPost, client.Path("machines", machine)+"/"+action, body, &j); err != nil {
		return err
	}
	if jf.wait {
		if !f.json {
			fmt.Fprintf(a.stdout, "job %s: %s of %s\n", j.ID, j.Kind, j.Target)
		}
		return a.follow(cmd, c, f, j)
	}
	if f.json {
		return a.printJSON(j)
	}
	fmt.Fprintf(a.stdout, "job %s: %s of %s submitted; follow it with: lifeboat jobs watch %s\n", j.ID, j.Kind, j.Target, j.ID)
	return nil
}

func (a *app) testFailoverCmd() *cobra.Command {
	f := &clientFlags{}
	var jf jobFlags
	var pf pointFlags
	var hydrate bool
	cmd := &cobra.Command{
		Use:   "test-failover MACHINE [--point P] [--at TIME] [--hydrate] [--wait] [--json]",
		Short: "Boot a recovery point of a machine on the isolated test network (a drill); replication goes on",
		Long: `Starts a VM at the recovery site from a recovery point of MACHINE, on the
site's isolated test network, through a writable overlay: the vault and the
source's replication are not touched. One drill per machine at a time; end
it with "lifeboat test-failover cleanup MACHINE --notes ...".`,
		Example: `  lifeboat test-failover web01 --wait
  lifeboat test-failover web01 --point latest-app --hydrate --wait --json
  lifeboat test-failover web01 --at "2026-12-07 09:30" --wait
  lifeboat test-failover cleanup web01 --notes "app answered on :443, RTO 4 min" --wait`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			point, at, err := pf.choice(a.clock().Now())
			if err != nil {
				return err
			}
			return a.submit(cmd, f, &jf, args[0], "test-failover", api.TestFailoverRequest{Point: point, At: at, Hydrate: hydrate})
		},
	}
	addPointFlags(cmd, &pf)
	addJobFlags(cmd, &jf)
	cmd.Flags().BoolVar(&hydrate, "hydrate", false, "copy the disks to local images while the drill runs (the VM then no longer reads the vault)")
	a.addClientFlags(cmd, f)

	var notes string
	var cjf jobFlags
	cleanup := &cobra.Command{
		Use:   "cleanup MACHINE --notes TEXT [--wait] [--json]",
		Short: "End a machine's drill: remove its VM, overlays, point server and sockets, and record the notes",
		Example: `  lifeboat test-failover cleanup web01 --notes "booted, login OK, database consistent" --wait
  lifeboat jobs list --machine web01 --kind test-failover   # the drill history`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.submit(cmd, f, &cjf, args[0], "test-failover/cleanup", api.CleanupRequest{Notes: notes})
		},
	}
	cleanup.Flags().StringVar(&notes, "notes", "", "what the drill showed; kept in the drill history (required)")
	_ = cleanup.MarkFlagRequired("notes")
	addJobFlags(cleanup, &cjf)
	cmd.AddCommand(cleanup)
	return cmd
}

func (a *app) failoverCmd() *cobra.Command {
	f := &clientFlags{}
	var jf jobFlags
	var pf pointFlags
	var planned bool
	cmd := &cobra.Command{
		Use:   "failover MACHINE [--point P] [--at TIME] [--planned] [--wait] [--json]",
		Short: "Fail a machine over: boot a recovery point at the recovery site on the production recovery network",
		Long: `Starts MACHINE at the recovery site from a recovery point, on the network the
site's network map (or the machine's recovery settings) gives, and copies its
disks to local images. Replication of the source pauses; the machine is
"failed over (not committed)" until "lifeboat failover commit" (replication
of the old source stops for good) or "lifeboat failover cancel" (the VM goes
away, replication resumes). "lifeboat failover change-point" boots another
point before the commit.

Without --planned the source may be unreachable. With --planned the source's
agent shuts it down and cuts a final point after the shutdown, and that point
is booted: nothing written before the shutdown is lost.`,
		Example: `  lifeboat failover web01 --point latest --wait
  lifeboat failover web01 --planned --wait --json
  lifeboat failover change-point web01 --point 3fa2c1d0 --wait
  lifeboat failover commit web01 --wait`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			point, at, err := pf.choice(a.clock().Now())
			if err != nil {
				return err
			}
			if planned {
				if cmd.Flags().Changed("point") || at != (time.Time{}) {
					return &codeError{exitUsage, errors.New("--planned boots the point cut after the shutdown: give no --point or --at")}
				}
				point = ""
			}
			return a.submit(cmd, f, &jf, args[0], "failover", api.FailoverRequest{Point: point, At: at, Planned: planned})
		},
	}
	addPointFlags(cmd, &pf)
	addJobFlags(cmd, &jf)
	cmd.Flags().BoolVar(&planned, "planned", false, "shut the source down through its agent and boot a final point cut after the shutdown")
	a.addClientFlags(cmd, f)

	var cpf pointFlags
	var cpj, cmj, caj jobFlags
	change := &cobra.Command{
		Use:     "change-point MACHINE --point P [--at TIME] [--wait] [--json]",
		Short:   "Boot another recovery point instead (before the commit)",
		Example: `  lifeboat failover change-point web01 --point latest-app --wait`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			point, at, err := cpf.choice(a.clock().Now())
			if err != nil {
				return err
			}
			return a.submit(cmd, f, &cpj, args[0], "failover/change-point", api.ChangePointRequest{Point: point, At: at})
		},
	}
	addPointFlags(change, &cpf)
	addJobFlags(change, &cpj)
	commit := &cobra.Command{
		Use:     "commit MACHINE [--wait] [--json]",
		Short:   "Commit the failover: replication of the old source stops (its points are kept under its policy)",
		Example: `  lifeboat failover commit web01 --wait`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.submit(cmd, f, &cmj, args[0], "failover/commit", nil)
		},
	}
	addJobFlags(commit, &cmj)
	cancel := &cobra.Command{
		Use:     "cancel MACHINE [--wait] [--json]",
		Short:   "Cancel the failover before the commit: the recovery VM goes away and replication resumes",
		Example: `  lifeboat failover cancel web01 --wait`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.submit(cmd, f, &caj, args[0], "failover/cancel", nil)
		},
	}
	addJobFlags(cancel, &caj)
	cmd.AddCommand(change, commit, cancel)
	return cmd
}

// ---- recovery settings ----

func (a *app) recoveryCmd() *cobra.Command {
	f := &clientFlags{}
	cmd := &cobra.Command{Use: "recovery", Short: "Show and change a machine's recovery settings (vCPUs, memory, network, static IP)"}
	a.addClientFlags(cmd, f)
	show := &cobra.Command{
		Use: "show MACHINE", Short: "Show a machine's recovery settings", Args: cobra.ExactArgs(1),
		Example: `  lifeboat recovery show web01`,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(f)
			if err != nil {
				return err
			}
			var o api.RecoveryOverrides
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("machines", args[0], "recovery"), nil, &o); err != nil {
				return err
			}
			return a.showOverrides(f.json, args[0], o)
		},
	}
	var vcpus int
	var memory, network, ip, gateway, userData string
	var dns []string
	var reset bool
	set := &cobra.Command{
		Use:   "set MACHINE [--vcpus N] [--memory SIZE] [--network NAME] [--ip A/P] [--gateway G] [--dns D,...] [--reset]",
		Short: "Change a machine's recovery settings (only the flags given; --reset clears them all first)",
		Long: `Sets what a failover or drill of MACHINE gets instead of what its VM spec
says: vCPUs, memory (a number of MiB, or a size such as 4GiB), the site network
every NIC joins in a failover (one of "networks" in server.json's "recovery"
section), and a static IPv4 address for the first NIC with gateway and DNS,
handed to the guest through a cloud-init NoCloud seed (drills use the same
address on their isolated network).`,
		Example: `  lifeboat recovery set web01 --vcpus 4 --memory 8GiB --network prod --ip 10.20.0.15/24 --gateway 10.20.0.1 --dns 10.20.0.2
  lifeboat recovery set web01 --reset --memory 2048`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(f)
			if err != nil {
				return err
			}
			var o api.RecoveryOverrides
			if !reset {
				if err := c.Do(cmd.Context(), http.MethodGet, client.Path("machines", args[0], "recovery"), nil, &o); err != nil {
					return err
				}
			} else {
				o = api.RecoveryOverrides{}
			}
			fl := cmd.Flags()
			if fl.Changed("vcpus") {
				o.VCPUs = vcpus
			}
			if fl.Changed("memory") {
				if o.MemoryMiB, err = parseMemory(memory); err != nil {
					return &codeError{exitUsage, err}
				}
			}
			if fl.Changed("network") {
				o.Network = network
			}
			if fl.Changed("ip") {
				o.Address = ip
			}
			if fl.Changed("gateway") {
				o.Gateway = gateway
			}
			if fl.Changed("dns") {
				o.DNS = dns
			}
			if fl.Changed("user-data") {
				b, err := readUserData(userData)
				if err != nil {
					return &codeError{exitUsage, err}
				}
				o.UserData = b
			}
			var out api.RecoveryOverrides
			if err := c.Do(cmd.Context(), http.MethodPut, client.Path("machines", args[0], "recovery"), o, &out); err != nil {
				return err
			}
			return a.showOverrides(f.json, args[0], out)
		},
	}
	set.Flags().IntVar(&vcpus, "vcpus", 0, "vCPUs (0: the VM spec's)")
	set.Flags().StringVar(&memory, "memory", "", "memory: MiB, or a size such as 4GiB (0: the VM spec's)")
	set.Flags().StringVar(&network, "network", "", "site network for every NIC in a failover (\"\": the network map's)")
	set.Flags().StringVar(&ip, "ip", "", "static IPv4 address with prefix for the first NIC, e.g. 10.0.0.5/24")
	set.Flags().StringVar(&gateway, "gateway", "", "default gateway for --ip")
	set.Flags().StringSliceVar(&dns, "dns", nil, "DNS servers for --ip")
	set.Flags().StringVar(&userData, "user-data", "", "a file of cloud-init user-data for the guest's NoCloud seed (\"\": none)")
	set.Flags().BoolVar(&reset, "reset", false, "clear every setting first")
	cmd.AddCommand(show, set)
	return cmd
}

// parseMemory reads --memory: a bare number is MiB.
func parseMemory(s string) (int64, error) {
	if n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("--memory %q: not negative", s)
		}
		return n, nil
	}
	b, err := units.ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("--memory: %w", err)
	}
	return b >> 20, nil
}

func (a *app) showOverrides(asJSON bool, machine string, o api.RecoveryOverrides) error {
	if asJSON {
		return a.printJSON(o)
	}
	w := a.table()
	fmt.Fprintf(w, "machine\t%s\n", machine)
	fmt.Fprintf(w, "vcpus\t%s\n", orSpec(o.VCPUs > 0, strconv.Itoa(o.VCPUs)))
	fmt.Fprintf(w, "memory\t%s\n", orSpec(o.MemoryMiB > 0, fmt.Sprintf("%d MiB", o.MemoryMiB)))
	fmt.Fprintf(w, "network\t%s\n", orSpecText(o.Network, "the site's network map"))
	fmt.Fprintf(w, "address\t%s\n", orSpecText(o.Address, "the guest's own configuration"))
	if o.Address != "" {
		fmt.Fprintf(w, "gateway\t%s\n", dash(o.Gateway))
		fmt.Fprintf(w, "dns\t%s\n", dash(strings.Join(o.DNS, ", ")))
	}
	return w.Flush()
}

func orSpec(set bool, v string) string {
	if set {
		return v
	}
	return "(the VM spec's)"
}

func orSpecText(v, def string) string {
	if v != "" {
		return v
	}
	return "(" + def + ")"
}

// recoveryLines adds a machine's recovery state to `machines show`.
func recoveryLines(w io.Writer, m api.Machine) {
	if r := m.Recovery; r != nil {
		for _, v := range []struct {
			what string
			vm   *api.RecoveredVM
		}{{"test failover", r.Drill}, {"failover", r.Failover}} {
			if v.vm == nil {
				continue
			}
			fmt.Fprintf(w, "%s\tVM %s (%s) from point %s, job %s\n", v.what, v.vm.Name, v.vm.Provider, shortID(v.vm.Point), v.vm.Job)
			if v.vm.Console != "" {
				fmt.Fprintf(w, "%s console\t%s\n", v.what, v.vm.Console)
			}
		}
		if r.Committed {
			fmt.Fprintf(w, "committed\t%s\n", r.CommittedAt.Local().Format(time.DateTime))
		}
		if ack := r.ShutdownAck; ack != nil {
			fmt.Fprintf(w, "planned shutdown\t%s %s%s\n", ack.State, shortID(ack.Point), ack.Error)
		}
		reverseLines(w, r)
	}
	if o := m.RecoveryOverrides; o != nil {
		var p []string
		if o.VCPUs > 0 {
			p = append(p, fmt.Sprintf("%d vCPUs", o.VCPUs))
		}
		if o.MemoryMiB > 0 {
			p = append(p, fmt.Sprintf("%d MiB", o.MemoryMiB))
		}
		if o.Network != "" {
			p = append(p, "network "+o.Network)
		}
		if o.Address != "" {
			p = append(p, "address "+o.Address)
		}
		fmt.Fprintf(w, "recovery settings\t%s\n", strings.Join(p, ", "))
	}
}

// readUserData reads a user-data file for `recovery set --user-data`
// ("" clears it).
func readUserData(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--user-data: %w", err)
	}
	if len(b) > orchestrate.MaxUserData {
		return "", fmt.Errorf("--user-data %s has %d bytes: at most %d", path, len(b), orchestrate.MaxUserData)
	}
	return string(b), nil
}

// ---- the way back ----

func (a *app) reprotectCmd() *cobra.Command {
	f := &clientFlags{}
	var jf jobFlags
	var policy, planName string
	cmd := &cobra.Command{
		Use:   "reprotect MACHINE|--plan PLAN [--policy P] [--wait] [--json]",
		Short: "Replicate a machine's committed failover back to the primary site",
		Long: `Reprotect starts reverse replication of a machine whose failover is
committed: the server cuts the recovered VM's disks every crash interval of
the failback policy and publishes reverse points (label direction=reverse)
into the vault. The first holds only the blocks the guest wrote at the
recovery site (the provider's since-boot dirty bitmap); blocks the vault
already holds are not stored again.

A target writer at the primary site applies them onto the machine's original
disks, writing only the blocks that differ:

  lifeboat target run --name primary1 --disk web01/disk0=/var/lib/images/web01.img \
      --state-dir /var/lib/lifeboat/target --server URL --token TOKEN --vault VAULT

The job ends when the target writer has applied a reverse point in full: the
machine is then "reprotected" and can fail back. With --wait --json the job
printed at the end holds the reverse point (bytes changed and sent) and the
target's apply (bytes compared and written per disk).

The failback policy is --policy, or failback-<the machine's policy>, made
from the machine's policy if it does not exist.`,
		Example: `  lifeboat reprotect web01 --wait
  lifeboat reprotect --plan shop --wait`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if planName != "" {
				if len(args) > 0 || policy != "" {
					return &codeError{exitUsage, errors.New("give a MACHINE or --plan PLAN, not both (a plan's machines get their default failback policy)")}
				}
				return a.submitPlan(cmd, f, &jf, planName, "reprotect", api.PlanRunRequest{})
			}
			if len(args) != 1 {
				return &codeError{exitUsage, errors.New("give the MACHINE to reprotect, or --plan PLAN")}
			}
			return a.submit(cmd, f, &jf, args[0], "reprotect", api.ReprotectRequest{Policy: policy})
		},
	}
	a.addClientFlags(cmd, f)
	addJobFlags(cmd, &jf)
	cmd.Flags().StringVar(&policy, "policy", "", "failback policy (default failback-<the machine's policy>)")
	cmd.Flags().StringVar(&planName, "plan", "", "reprotect every machine of this recovery plan, group by group")
	return cmd
}

func (a *app) failbackCmd() *cobra.Command {
	f := &clientFlags{}
	var fj, cmj, caj jobFlags
	var planName string
	cmd := &cobra.Command{
		Use:   "failback MACHINE|--plan PLAN [--wait] [--json]",
		Short: "Fail a reprotected machine back to the primary site, losing no write",
		Long: `Failback is a planned failover back. The recovery VM's guest is shut down
(ACPI, within the recovery site's shutdown_timeout), a final reverse point is
cut from its disks, the target writer at the primary site applies it onto the
original disks (only the blocks that differ since the last reverse point it
applied) and then starts the original machine with its --start-command.

Until "failback commit", "failback cancel" undoes it: the target writer stops
the original machine (--stop-command), the recovery VM boots again and reverse
replication resumes. After the commit the recovery VM is removed and the
machine is "failed-back"; "lifeboat re-enable" protects it forward again.`,
		Example: `  lifeboat failback web01 --wait
  lifeboat failback commit web01 --wait
  lifeboat re-enable web01 --wait
  lifeboat failback --plan shop --wait     # group by group, with the plan's actions`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if planName != "" {
				if len(args) > 0 {
					return &codeError{exitUsage, errors.New("give a MACHINE or --plan PLAN, not both")}
				}
				return a.submitPlan(cmd, f, &fj, planName, "failback", api.PlanRunRequest{})
			}
			if len(args) != 1 {
				return &codeError{exitUsage, errors.New("give the MACHINE to fail back, or --plan PLAN")}
			}
			return a.submit(cmd, f, &fj, args[0], "failback", nil)
		},
	}
	a.addClientFlags(cmd, f)
	addJobFlags(cmd, &fj)
	cmd.Flags().StringVar(&planName, "plan", "", "fail back every machine of this recovery plan, group by group (lifeboat plan failback-commit PLAN commits)")
	commit := &cobra.Command{
		Use:     "commit MACHINE [--wait] [--json]",
		Short:   "Commit the failback: the recovery VM is removed; the machine waits for re-enable",
		Example: `  lifeboat failback commit web01 --wait`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.submit(cmd, f, &cmj, args[0], "failback/commit", nil)
		},
	}
	addJobFlags(commit, &cmj)
	cancel := &cobra.Command{
		Use:     "cancel MACHINE [--wait] [--json]",
		Short:   "Cancel the failback before commit: the original stops, the recovery VM runs again, reverse replication resumes",
		Example: `  lifeboat failback cancel web01 --wait`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.submit(cmd, f, &caj, args[0], "failback/cancel", nil)
		},
	}
	addJobFlags(cancel, &caj)
	cmd.AddCommand(commit, cancel)
	return cmd
}

func (a *app) reEnableCmd() *cobra.Command {
	f := &clientFlags{}
	var jf jobFlags
	cmd := &cobra.Command{
		Use:   "re-enable MACHINE [--wait] [--json]",
		Short: "Protect a failed-back machine forward again (its agent replicates it to the recovery site)",
		Long: `Re-enable ends the way back: the machine's agent is told to replicate it
again under its policy, and the job ends with the first forward point (its
bytes changed and sent). Blocks the vault holds already, those of the reverse
points the target writer applied, are not sent again.`,
		Example: `  lifeboat re-enable web01 --wait --json`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.submit(cmd, f, &jf, args[0], "re-enable", nil)
		},
	}
	a.addClientFlags(cmd, f)
	addJobFlags(cmd, &jf)
	return cmd
}

// reverseLines shows the way back: reverse replication, the target
// writer, a failback under way or committed.
func reverseLines(w io.Writer, r *api.Recovery) {
	if rv := r.Reverse; rv != nil {
		line := fmt.Sprintf("every %s (policy %s), %d points", rv.Interval.Std(), rv.Policy, rv.Cycles)
		if p := rv.Point; p != nil {
			line += fmt.Sprintf(", newest %s at %s: %s changed, %s sent", shortID(p.ID), p.Time.Local().Format(time.DateTime),
				units.FormatSize(p.ChangedBytes), units.FormatSize(p.SentBytes))
		}
		fmt.Fprintf(w, "reverse replication\t%s\n", line)
		if rv.LastError != "" {
			fmt.Fprintf(w, "reverse error\t%s\n", rv.LastError)
		}
		if t := rv.Target; t != nil {
			line := "target " + t.Name
			if t.Applied != "" {
				line += " holds " + shortID(t.Applied)
			}
			if p := t.Progress; p != nil {
				line += fmt.Sprintf(", applying %s: %s of %s", shortID(t.Applying), units.FormatSize(p.Done), units.FormatSize(p.Total))
			}
			if t.Started != "" {
				line += ", original started on " + shortID(t.Started)
			}
			if t.Error != "" {
				line += ", error: " + t.Error
			}
			fmt.Fprintf(w, "target writer\t%s\n", line)
		}
		if fb := rv.Failback; fb != nil {
			fmt.Fprintf(w, "failback\tjob %s, final point %s, recovery VM shut down %v\n", fb.Job, orDash(shortID(fb.Final)), fb.Halted)
		}
	}
	if fb := r.FailedBack; fb != nil {
		fmt.Fprintf(w, "failed back\t%s on point %s by target %s (job %s)\n", fb.At.Local().Format(time.DateTime), shortID(fb.Point), fb.Target, fb.Job)
	}
}
