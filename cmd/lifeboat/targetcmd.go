package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/progress"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/target"
	"github.com/lifeboat-dr/lifeboat/internal/units"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

func (a *app) targetCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "target",
		Short: "The target writer: apply recovery points onto a machine's original disks (reprotect, failback)",
	}
	c.AddCommand(a.targetApplyCmd(), a.targetRunCmd())
	return c
}

type targetApplyFlags struct {
	point, machine, disk, to string
	asJSON                   bool
	o                        target.Options
}

func (a *app) targetApplyCmd() *cobra.Command {
	var f targetApplyFlags
	c := &cobra.Command{
		Use:   "apply --point ID|latest --machine M --disk NAME --to FILE|DEVICE",
		Short: "Apply a disk of a recovery point onto the original disk, writing only differing blocks",
		Long: `Apply brings a disk image or block device to the content of a disk of a
recovery point. An existing target (original location) is read and compared
block by block, and only blocks that differ are written; a path that does
not exist becomes a new sparse file (alternate location) and every block is
written. A file smaller than the disk is grown; a smaller device is refused.

Progress is checkpointed in a journal (in --state-dir, by default the
target's directory; a device needs --state-dir) every --checkpoint bytes of
the disk, after the target's writes are fsynced: when the command is killed,
running it again for the same point and target resumes from the last
checkpoint. Another point, a replaced or resized target, or a damaged
journal starts over, saying why.

On success it writes the scan driver's state file for the target (--baseline,
by default TARGET.scan-baseline in the state directory) as if a scan cycle
had committed the point: give it to the agent as the disk's state file and
forward replication resumes with an incremental cycle, not a full read.

Refused (exit 2, nothing written): a target inside the vault or one of its
files, a block device that is mounted, swap, or part of another device.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.targetApply(cmd, &f) },
	}
	fl := c.Flags()
	fl.StringVar(&f.point, "point", "latest", `recovery point: an ID prefix or "latest" (of --machine)`)
	fl.StringVar(&f.machine, "machine", "", "machine the point belongs to")
	fl.StringVar(&f.disk, "disk", "", "disk name of the point (optional when it has one disk)")
	fl.StringVar(&f.to, "to", "", "target: the original disk image or block device, or a new file")
	fl.StringVar(&f.o.StateDir, "state-dir", "", "directory of the journal and the partial baseline (default: the target's directory)")
	fl.StringVar(&f.o.Baseline, "baseline", "", "scan state file to write for the target (default STATE-DIR/TARGET.scan-baseline)")
	f.o.CheckpointBytes = target.DefaultCheckpointBytes
	fl.Var(units.SizeFlag{P: &f.o.CheckpointBytes}, "checkpoint", "disk applied between two checkpoints: bytes, or a size such as 64MiB, 1GiB")
	fl.BoolVar(&f.asJSON, "json", false, `print JSON lines: progress objects {"phase":"apply","done":…,"total":…}, then {"result":"applied",…}`)
	a.vaultFlags(fl)
	return c
}

func (a *app) targetApply(cmd *cobra.Command, f *targetApplyFlags) error {
	ctx := cmd.Context()
	if f.to == "" {
		return &codeError{exitUsage, errors.New("give the target with --to FILE|DEVICE")}
	}
	var lines *jsonLines
	end := func(err error) error { return err }
	if f.asJSON {
		lines = newJSONLines(a.stdout, nil)
		end = func(err error) error {
			if err != nil {
				_ = lines.Result("failed", map[string]any{"error": err.Error()})
			}
			return err
		}
	}
	v, err := a.openVault(ctx)
	if err != nil {
		return end(err)
	}
	// Refused before the index is loaded; Apply checks again.
	if err := recover.CheckTarget(f.to, recover.VaultDir(v)); err != nil {
		return end(err)
	}
	ref := f.point
	if ref == "latest" && f.machine != "" {
		ref = "latest:" + f.machine
	}
	p, err := v.FindPoint(ctx, ref)
	if err != nil {
		return end(err)
	}
	if f.machine != "" && p.Machine != f.machine {
		return end(&codeError{exitUsage, fmt.Errorf("point %s is of machine %s, not %s", p.ID.Short(), p.Machine, f.machine)})
	}
	if f.disk == "" {
		if len(p.Disks) != 1 {
			return end(&codeError{exitUsage, fmt.Errorf("point %s has %d disks (%s): choose one with --disk", p.ID.Short(), len(p.Disks), diskList(p))})
		}
		f.disk = p.Disks[0].Name
	}
	if _, err := v.LoadIndex(ctx); err != nil {
		return end(err)
	}
	f.o.Logger = a.log
	finish := a.targetProgress(f, lines)
	start := time.Now() // wallclock: the duration and rate are only shown
	res, err := target.Apply(ctx, v, p, f.disk, f.to, f.o)
	finish()
	if err != nil {
		return end(err)
	}
	el := time.Since(start) // wallclock: only shown
	if lines != nil {
		return lines.Result("applied", map[string]any{"apply": res, "seconds": el.Seconds()})
	}
	what := "compared " + progress.Bytes(res.Compared)
	if res.Created {
		what = "new file"
	}
	fmt.Fprintf(a.stdout, "applied disk %s of point %s (%s, %s) to %s: %s, wrote %s in %d blocks", res.Disk, p.ID.Short(), p.Machine,
		p.Time.Local().Format("2006-01-02 15:04:05"), res.Target, what, progress.Bytes(res.Written), res.BlocksWritten)
	if res.Resumed > 0 {
		fmt.Fprintf(a.stdout, ", resumed after %s", progress.Bytes(res.Resumed))
	}
	fmt.Fprintf(a.stdout, ", %.2fs (%s/s)\nscan baseline for re-enable: %s\n", el.Seconds(),
		progress.Bytes(int64(float64(res.Size-res.Resumed)/max(el.Seconds(), 1e-9))), res.Baseline)
	return nil
}

// targetProgress sets f.o.Progress to a bar, or to JSON lines at every
// percent with the rate and the estimated time left; the returned function
// ends the bar.
func (a *app) targetProgress(f *targetApplyFlags, lines *jsonLines) func() {
	if lines == nil {
		var mu sync.Mutex
		var bar *progress.Bar
		f.o.Progress = func(p target.Progress) {
			mu.Lock()
			defer mu.Unlock()
			if bar == nil {
				bar = a.newBar("apply "+f.disk, p.Total)
			}
			bar.Set(p.Done, p.Total)
		}
		return func() {
			if bar != nil {
				bar.Finish()
			}
		}
	}
	var mu sync.Mutex
	last := int64(-1)
	start := time.Now() // wallclock: the rate and time left are only shown
	f.o.Progress = func(p target.Progress) {
		mu.Lock()
		defer mu.Unlock()
		pct := p.Done * 100 / max(p.Total, 1)
		if pct == last {
			return
		}
		last = pct
		el := time.Since(start).Seconds() // wallclock: only shown
		rate := float64(p.Done-p.Resumed) / max(el, 1e-9)
		fields := map[string]any{"resumed": p.Resumed, "bytes_per_second": int64(rate)}
		if rate > 0 {
			fields["eta_seconds"] = int64(float64(p.Total-p.Done) / rate)
		}
		_ = lines.Progress("apply", int(p.Done), int(p.Total), fields)
	}
	return func() {}
}

type targetRunFlags struct {
	name, stateDir    string
	startCmd, stopCmd string
	agentState        string
	disks             []string
	every             time.Duration
	client            clientFlags
}

func (a *app) targetRunCmd() *cobra.Command {
	var f targetRunFlags
	c := &cobra.Command{
		Use:   "run --state-dir DIR --disk MACHINE/DISK=PATH [--disk ...] [--name NAME] [--every 2s]",
		Short: "Run the target writer: apply the reverse points the server names onto the original disks (reprotect)",
		Long: `Run is the target writer of reprotect, at the primary site: after a
failover, the recovered machine replicates back into the vault (reverse
points), and this command applies those points onto the machine's original
disks, so that failing back has little left to copy.

Every --every it reports each machine named in --disk to the server (its
disks and their sizes, the point applied, the progress of an apply, the
last error) and the server answers with the machine's newest reverse point.
When the disks do not hold that point yet, it is applied onto every disk of
the machine as 'target apply' does: an existing file or block device
(original location) is compared block by block and only the blocks that
differ are written; a path that does not exist (alternate location) becomes
a new sparse file. Progress is reported every second and logged every
tenth; then the bytes compared and written per disk.

Each disk's apply is checkpointed in a journal in --state-dir/MACHINE: when
the command is stopped or killed, the next run resumes from the last
checkpoint. The point applied is recorded there (applied.json), so a
restart does not apply it again, as is each disk's scan baseline
(DISK.scan-baseline) for re-enabling forward replication with an
incremental cycle.

Refused, with the reason in the report and nothing written (and tried again
every --every, so a fixed disk is then applied): an existing disk smaller
than the point's (grow it or give an alternate location), a disk of the
point with no --disk, a --disk the point does not have, a point of another
machine or not in the vault, a target inside the vault, a block device that
is mounted, swap, or part of another device.

A qcow2 image is applied through qemu-storage-daemon, which exports its
guest view as a file over FUSE (its backing chain is read, its own file
written); the sizes compared are its virtual size.

Failback: once the disks hold a failback's final point, --start-command
starts the original machine (for example "virsh start web01"); a cancelled
failback runs --stop-command. Each runs with sh -c, bounded by 10 minutes,
with LIFEBOAT_MACHINE, LIFEBOAT_POINT and LIFEBOAT_DISK_<DISK>=PATH in its
environment; its output goes to the log. While the original machine runs,
no point is applied onto its disks. Before the start, each qcow2 disk
gets a persistent dirty bitmap and, with --agent-state, the host agent's
tracking of the machine is set to the final point and that bitmap: re-enable
then replicates only what the original wrote since it started.

The vault flags name the vault the server publishes into; it is only read.
A server that cannot be reached is logged and asked again next round. The
command runs until SIGINT or SIGTERM.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.targetRun(cmd.Context(), &f) },
	}
	fl := c.Flags()
	fl.StringVar(&f.name, "name", "", "the target writer's name in its reports (default: the hostname)")
	fl.StringArrayVar(&f.disks, "disk", nil, "MACHINE/DISK=PATH: apply disk DISK of MACHINE's points onto PATH, the original disk (file or block device) or a path that does not exist (alternate location); repeat for every disk")
	fl.StringVar(&f.stateDir, "state-dir", "", "directory of the journals, scan baselines and records of the points applied, one subdirectory per machine (required)")
	fl.DurationVar(&f.every, "every", target.DefaultEvery, "how often to report to the server and ask for the point to apply")
	fl.StringVar(&f.startCmd, "start-command", "", "shell command that starts the original machine in a failback, once its disks hold the final point")
	fl.StringVar(&f.stopCmd, "stop-command", "", "shell command that stops the original machine again when a failback is cancelled")
	fl.StringVar(&f.agentState, "agent-state", "", "state directory of the host agent on this host (its --state-dir): a failback rebases its tracking of qcow2 disks onto the final point, so re-enable reads only what changed since")
	a.addClientFlags(c, &f.client)
	// Nothing is printed: reports go to the server, progress to the logs
	// (--log-format json for JSON).
	_ = c.PersistentFlags().MarkHidden("json")
	a.vaultFlags(fl)
	return c
}

func (a *app) targetRun(ctx context.Context, f *targetRunFlags) error {
	disks, err := parseTargetDisks(f.disks)
	if err != nil {
		return err
	}
	if f.stateDir == "" {
		return &codeError{exitUsage, errors.New("give --state-dir DIR: the target writer keeps its journals and the record of the points applied there")}
	}
	if f.every <= 0 {
		return &codeError{exitUsage, fmt.Errorf("--every %s: give a positive interval such as 2s", f.every)}
	}
	if f.name == "" {
		if f.name, err = os.Hostname(); err != nil {
			return &codeError{exitUsage, fmt.Errorf("no --name and no hostname (%w): give --name", err)}
		}
	}
	c, err := a.client(&f.client)
	if err != nil {
		return err
	}
	v, err := a.openVault(ctx)
	if err != nil {
		return err
	}
	w, err := target.NewWriter(target.WriterOptions{Vault: v, Reporter: reverseReporter(c), Name: f.name, Disks: disks,
		StateDir: f.stateDir, Every: f.every, Clock: a.clock(), Logger: a.log,
		Start: a.powerCommand(f.startCmd, disks), Stop: a.powerCommand(f.stopCmd, disks), AgentState: f.agentState})
	if err != nil {
		return &codeError{exitUsage, err}
	}
	err = w.Run(ctx)
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		a.log.Info("target writer stopped")
		return nil
	}
	return err
}

// powerCommand runs a --start-command or --stop-command (nil when none).
func (a *app) powerCommand(command string, disks map[string]map[string]string) func(ctx context.Context, machine, point string) error {
	if command == "" {
		return nil
	}
	return func(ctx context.Context, machine, point string) error {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "sh", "-c", command)
		cmd.Env = append(os.Environ(), "LIFEBOAT_MACHINE="+machine, "LIFEBOAT_POINT="+point)
		for d, p := range disks[machine] {
			cmd.Env = append(cmd.Env, "LIFEBOAT_DISK_"+strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(d))+"="+p)
		}
		out, err := cmd.CombinedOutput()
		a.log.Info("ran the failback command", "command", command, "machine", machine, "output", strings.TrimSpace(string(out)), "err", err)
		if err != nil {
			return fmt.Errorf("%s: %w: %s", command, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
}

// parseTargetDisks reads --disk MACHINE/DISK=PATH flags into machine →
// disk → path.
func parseTargetDisks(specs []string) (map[string]map[string]string, error) {
	if len(specs) == 0 {
		return nil, &codeError{exitUsage, errors.New("no disks: give --disk MACHINE/DISK=PATH for each disk of each machine to apply")}
	}
	disks := map[string]map[string]string{}
	for _, s := range specs {
		left, path, ok := strings.Cut(s, "=")
		machine, disk, ok2 := strings.Cut(left, "/")
		if !ok || !ok2 || machine == "" || disk == "" || path == "" {
			return nil, &codeError{exitUsage, fmt.Errorf("--disk %q: use MACHINE/DISK=PATH", s)}
		}
		err := vault.ValidateName("machine", machine)
		if err == nil {
			err = vault.ValidateName("disk", disk)
		}
		if err != nil {
			return nil, &codeError{exitUsage, fmt.Errorf("--disk %q (MACHINE/DISK=PATH): %w", s, err)}
		}
		if disks[machine] == nil {
			disks[machine] = map[string]string{}
		}
		if _, dup := disks[machine][disk]; dup {
			return nil, &codeError{exitUsage, fmt.Errorf("--disk %q: disk %s/%s is given twice", s, machine, disk)}
		}
		disks[machine][disk] = path
	}
	return disks, nil
}

// reverseReporter posts a target writer's reports to the server, which
// answers with the machine's Reverse.
func reverseReporter(c *client.Client) target.Reporter {
	return target.ReporterFunc(func(ctx context.Context, machine string, r api.TargetReport) (*api.Reverse, error) {
		var rev api.Reverse
		if err := c.Do(ctx, http.MethodPost, client.Path("machines", machine, "reverse", "target"), r, &rev); err != nil {
			return nil, err
		}
		return &rev, nil
	})
}
