package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/agent"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/control"
	"github.com/lifeboat-dr/lifeboat/internal/progress"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/sampleguest"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

type demoFlags struct {
	dir         string
	sizeMB      int64
	dataMB      int64
	cycles      int
	keep        bool
	fetchKernel bool
	json        bool
}

func (a *app) demoCmd() *cobra.Command {
	var f demoFlags
	c := &cobra.Command{
		Use:   "demo",
		Short: "Run a server and an agent, replicate a sample machine's disk, restore and verify its points, boot one as a VM",
		Long: `Demo builds a sample disk image holding a real ext4 filesystem (filled with
files copied from this machine), then runs the service in this process: a
server (CA, SQLite state, local vault, embedded process server) and an agent
enrolled over mutual TLS with a one-time token. It protects the disk with a
5-second policy, changes files inside the filesystem between points, shows
the status, then stops the service and, from the vault alone, restores an
older point and proves it byte for byte (SHA-256) and with e2fsck, serves
it over NBD (instant access), brings it forward to the newest point
incrementally, and checks every byte of the vault.

When QEMU, extlinux, a static busybox, root (a loop device) and a guest
kernel are at hand, the sample disk is a tiny machine that boots by itself
(MBR, extlinux, kernel, a busybox init that checks every sample file
against a manifest at boot), and the demo ends with a test failover: the
older point boots as a VM through a point server process, exactly as
"lifeboat recover boot --test" does, the guest's check is awaited on its
console, and a cleanup removes VM, point server and directory. The kernel
is the guest kernel cache's (` + sampleguest.DefaultCacheDir + `) or the
host's (/boot/vmlinuz-* with /lib/modules); the demo never downloads one
unless --fetch-kernel asks it to. When something is missing it says the
command that gets it.

It needs mkfs.ext4 and debugfs (Debian package e2fsprogs).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runDemoJSON(cmd.Context(), f) },
	}
	c.Flags().StringVar(&f.dir, "dir", "", "work directory (default: a new temporary directory, removed at the end)")
	c.Flags().Int64Var(&f.sizeMB, "size", 512, "disk image size in MiB")
	c.Flags().Int64Var(&f.dataMB, "data", 48, "MiB of files copied into the filesystem (the recovered guest checks them all at boot)")
	c.Flags().IntVar(&f.cycles, "cycles", 4, "replication cycles (the first is the full copy)")
	c.Flags().BoolVar(&f.keep, "keep", false, "keep the work directory")
	c.Flags().BoolVar(&f.json, "json", false, "print progress and the result as JSON lines: {\"phase\":…,\"msg\":…} or {\"phase\":…,\"done\":…,\"total\":…}, then {\"result\":…}")
	c.Flags().BoolVar(&f.fetchKernel, "fetch-kernel", false, "first download Debian's kernel into the guest kernel cache with apt-get download (needs the network and root), for the test failover")
	return c
}

func (a *app) say(format string, args ...any) { fmt.Fprintf(a.stdout, format+"\n", args...) }

// runDemoJSON runs the demo, with --json as JSON lines: every line it
// prints becomes a message of its phase, each point a counted step, and
// the last line the result.
func (a *app) runDemoJSON(ctx context.Context, f demoFlags) error {
	if !f.json {
		return a.runDemo(ctx, f)
	}
	jl := newJSONLines(a.stdout, demoPhase)
	a.stdout, a.lines = jl, jl
	clk := a.clock()
	start := clk.Now()
	if err := a.runDemo(ctx, f); err != nil {
		_ = jl.Result("failed", map[string]any{"error": err.Error(), "seconds": clk.Now().Sub(start).Seconds()})
		return err
	}
	return jl.Result("ok", map[string]any{"seconds": clk.Now().Sub(start).Seconds()})
}

// demoRun is one run of the demo: its directory, sample disk and points.
type demoRun struct {
	dir, img, vaultDir string
	pass               []byte
	guest              demoGuest
	bootable           bool // the sample disk boots by itself
	files              int  // the sample files its manifest names
	cuts               []demoCut
}

// demoCut is a point and the SHA-256 of the disk it was cut from.
type demoCut struct {
	point string
	sum   string
}

func (a *app) runDemo(ctx context.Context, f demoFlags) error {
	for _, tool := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if _, err := lookTool(tool); err != nil {
			return fmt.Errorf("the demo needs %s: install e2fsprogs (apt-get install e2fsprogs)", tool)
		}
	}
	if f.cycles < 2 {
		return &codeError{exitUsage, errors.New("--cycles must be at least 2")}
	}
	start := time.Now() // wallclock: the demo's duration, only shown
	dir := f.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "lifeboat-demo-")
		if err != nil {
			return err
		}
		dir = d
		if !f.keep {
			defer os.RemoveAll(dir)
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	r := &demoRun{dir: dir, img: filepath.Join(dir, "disk.img"), vaultDir: filepath.Join(dir, "vault"), pass: []byte("lifeboat-demo")}
	os.RemoveAll(r.vaultDir)
	var err error
	if r.guest, err = a.demoFindGuest(ctx, dir, f.fetchKernel); err != nil {
		return err
	}
	if err := a.demoSample(ctx, f, r); err != nil {
		return err
	}
	if err := a.demoReplicate(ctx, f, r); err != nil {
		return err
	}
	if err := a.demoRecover(ctx, r); err != nil {
		return err
	}
	a.say("demo finished in %.1fs", time.Since(start).Seconds()) // wallclock: only shown
	if f.keep || f.dir != "" {
		a.say("work directory kept: %s (vault passphrase %q)", dir, r.pass)
	}
	return nil
}

// demoSample makes the sample disk: a real ext4 file system holding
// files copied from this machine, on a disk that boots by itself when
// the guest's parts are at hand.
func (a *app) demoSample(ctx context.Context, f demoFlags, r *demoRun) error {
	src := filepath.Join(r.dir, "files")
	os.RemoveAll(src)
	defer os.RemoveAll(src)
	copied, err := copySample(src, f.dataMB<<20)
	if err != nil {
		return err
	}
	os.Remove(r.img)
	if r.guest.ok() {
		defer os.Remove(r.guest.initrd)
		if r.files, err = demoBootDisk(ctx, r.guest, src, r.img, f.sizeMB<<20); err != nil {
			return err
		}
		r.bootable = true
		a.say("== Sample machine: %s, a %d MiB disk that boots by itself: MBR, extlinux, kernel %s, a busybox init that checks a manifest of its files; ext4 holding %s of files from this machine (%d)",
			r.img, f.sizeMB, r.guest.kernel.Version, progress.Bytes(copied), r.files)
		return nil
	}
	if err := run(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096", "-d", src, r.img, fmt.Sprintf("%dM", f.sizeMB)); err != nil {
		return err
	}
	a.say("== Sample disk: %s, %d MiB ext4 filesystem holding %s of files from this machine (not bootable: see the end)", r.img, f.sizeMB, progress.Bytes(copied))
	return nil
}

// demoService is the service of the demo, running in this process.
type demoService struct {
	c                     *client.Client
	stop                  context.CancelFunc
	agentDone, serverDone chan error
	agentRuns             bool
}

// demoStart runs a server with its CA, state database, vault and
// embedded process server, and one agent protecting the sample disk.
func (a *app) demoStart(ctx context.Context, r *demoRun) (*demoService, error) {
	serverDir, agentDir := filepath.Join(r.dir, "server"), filepath.Join(r.dir, "agent")
	os.RemoveAll(serverDir)
	os.RemoveAll(agentDir)
	init, err := control.Init(ctx, control.InitOptions{DataDir: serverDir, VaultURL: r.vaultDir, Passphrase: r.pass,
		Listen: "127.0.0.1:0", IngestListen: "127.0.0.1:0"})
	if err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(ctx)
	svc := &demoService{stop: stop, agentDone: make(chan error, 1), serverDone: make(chan error, 1)}
	ready := make(chan control.Addrs, 1)
	go func() {
		svc.serverDone <- control.Run(ctx, control.RunOptions{DataDir: serverDir, Logger: a.log, Version: build().String(),
			Ready: func(ad control.Addrs) { ready <- ad }})
	}()
	var addrs control.Addrs
	select {
	case addrs = <-ready:
	case err := <-svc.serverDone:
		stop()
		return nil, fmt.Errorf("server: %w", err)
	}
	url := "https://" + addrs.API
	a.say("== Server: API %s, process server %s, vault %s, state in SQLite", url, addrs.Ingest, r.vaultDir)
	a.say("   same as: lifeboat server init --data %s --vault %s && lifeboat server run --data %s", serverDir, r.vaultDir, serverDir)
	a.say("   CA fingerprint %s…; admin token printed once by init", init.CAFingerprint[:16])
	if svc.c, err = client.New(client.Config{Server: url, Token: init.AdminToken}); err != nil {
		svc.halt()
		return nil, err
	}
	if err := a.demoAgent(ctx, r, svc, url, agentDir); err != nil {
		svc.halt()
		return nil, err
	}
	return svc, nil
}

// halt stops the service and waits for it.
func (svc *demoService) halt() {
	svc.stop()
	if svc.agentRuns {
		<-svc.agentDone
	}
	<-svc.serverDone
}

// demoAgent creates the policy, enrolls and runs the agent, and protects
// the machine.
func (a *app) demoAgent(ctx context.Context, r *demoRun, svc *demoService, url, agentDir string) error {
	c := svc.c
	pol := api.Policy{Name: "demo", CrashInterval: api.Duration(5 * time.Second), RPOThreshold: api.Duration(time.Minute),
		Retention: "1h:all", KeepApp: api.Duration(24 * time.Hour), HookTimeout: api.Duration(10 * time.Second)}
	if err := c.Do(ctx, http.MethodPost, client.Path("policies"), pol, nil); err != nil {
		return err
	}
	a.say("== Policy demo: a crash-consistent point every 5s (lifeboat policy create demo --crash-interval 5s --app-interval 0)")
	var tok api.TokenResponse
	if err := c.Do(ctx, http.MethodPost, client.Path("tokens"), api.TokenRequest{Role: api.RoleAgent, Name: "demo-vm", TTL: api.Duration(10 * time.Minute)}, &tok); err != nil {
		return err
	}
	if err := agent.Enroll(ctx, agent.EnrollOptions{Server: url, Token: tok.Token, Name: "demo-vm", StateDir: agentDir,
		Disks: []agent.DiskConfig{{Name: "root", Path: r.img}}}); err != nil {
		return err
	}
	acfg, err := agent.LoadConfig(agentDir)
	if err != nil {
		return err
	}
	ag, err := agent.New(acfg, agent.Options{Logger: a.log, Version: build().String()})
	if err != nil {
		return err
	}
	svc.agentRuns = true
	go func() { svc.agentDone <- ag.Run(ctx) }()
	a.say("== Agent demo-vm enrolled over mTLS with a one-time token, disk root=%s", r.img)
	a.say("   same as: lifeboat agent enroll --server %s --token $(lifeboat token create --role agent --name demo-vm) --name demo-vm --disk root=%s; lifeboat agent run", url, r.img)
	if err := c.Do(ctx, http.MethodPost, client.Path("machines", "demo-vm", "protect"), api.ProtectRequest{Policy: "demo"}, nil); err != nil {
		return err
	}
	a.say("== Protected: lifeboat protect demo-vm --policy demo")
	return nil
}

// demoReplicate runs the service until f.cycles points are cut at the
// policy's cadence, the file system changing right after each point
// (well before the next cycle), shows the status and stops the service:
// the vault then holds everything needed to recover.
func (a *app) demoReplicate(ctx context.Context, f demoFlags, r *demoRun) error {
	svc, err := a.demoStart(ctx, r)
	if err != nil {
		return err
	}
	defer svc.halt()
	sum, err := sha256File(r.img)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(2026, 11))
	var last time.Time
	lastPct := -1.0
	for i := range f.cycles {
		lp, err := a.demoNextPoint(ctx, svc.c, last, &lastPct, svc.agentDone, svc.serverDone)
		if err != nil {
			return err
		}
		last = lp.Time
		r.cuts = append(r.cuts, demoCut{lp.Point, sum})
		a.say("   point %s at %s: %s", shortID(lp.Point), lp.Time.Local().Format("15:04:05.000"), resultText(lp))
		if a.lines != nil {
			_ = a.lines.Progress("replicate", i+1, f.cycles, map[string]any{"point": lp.Point, "time": lp.Time})
		}
		if i == f.cycles-1 {
			break
		}
		what, err := churn(ctx, r.dir, demoFS(r.img, r.bootable), rng, i+1)
		if err != nil {
			return err
		}
		if sum, err = sha256File(r.img); err != nil {
			return err
		}
		a.say("   churn: %s", what)
	}
	var st api.Status
	if err := svc.c.Do(ctx, http.MethodGet, client.Path("status"), nil, &st); err != nil {
		return err
	}
	a.say("== lifeboat status")
	a.machineTable(st.Machines)
	a.processTable(st.Processes)
	return nil
}

// demoRecover works from the vault alone: lists the points, restores an
// older one and proves it, serves it over NBD, brings the restored image
// forward to the newest point, diffs, checks the vault, and boots the
// older point as a VM (or says what that needs).
func (a *app) demoRecover(ctx context.Context, r *demoRun) error {
	be, err := local.New(r.vaultDir)
	if err != nil {
		return err
	}
	v, err := vault.Open(ctx, backend.Retry(be, backend.RetryOptions{Logger: a.log}), r.pass, vault.Options{Logger: a.log})
	if err != nil {
		return err
	}
	if _, err := v.LoadIndex(ctx); err != nil {
		return err
	}
	a.say("== Recovery points in the vault (lifeboat points list --vault %s)", r.vaultDir)
	pts, _, err := v.Points(ctx)
	if err != nil {
		return err
	}
	for _, p := range pts {
		d := p.Disks[0]
		a.say("   %s  %s  %s  %s  %s", p.ID.Short(), p.Time.Local().Format("15:04:05.000"), p.Machine, p.Kind, progress.Bytes(d.Size))
	}
	old, err := v.FindPoint(ctx, r.cuts[1].point)
	if err != nil {
		return err
	}
	restored := filepath.Join(r.dir, "restored.img")
	if err := a.demoRestore(ctx, v, old, r, restored); err != nil {
		return err
	}
	if err := a.demoInstantAccess(ctx, v, old, restored, r.dir); err != nil {
		return fmt.Errorf("instant access: %w", err)
	}
	if err := a.demoForward(ctx, v, r, restored); err != nil {
		return err
	}
	if !r.bootable {
		a.say("== Test failover: skipped: booting the sample machine in a VM needs %s", r.guest.why())
		a.say("   run `%s` for a demo that ends with a test failover of the sample machine", r.guest.command())
		return nil
	}
	return a.demoTestFailover(ctx, v, old, r.dir, r.pass, r.files)
}

// demoRestore restores point p to restored and proves it: the SHA-256
// of the disk when the point was cut, and e2fsck.
func (a *app) demoRestore(ctx context.Context, v *vault.Vault, p *vault.Point, r *demoRun, restored string) error {
	os.Remove(restored)
	a.say("== Restoring point %s (the second) to %s", p.ID.Short(), restored)
	a.say("   same as: lifeboat restore %s --vault %s --disk root --to %s", p.ID.Short(), r.vaultDir, restored)
	t0 := time.Now() // wallclock: the restore's duration, only shown
	rr, err := recover.Restore(ctx, v, p, "root", restored, recover.Options{})
	if err != nil {
		return err
	}
	got, err := sha256File(restored)
	if err != nil {
		return err
	}
	if got != r.cuts[1].sum {
		return fmt.Errorf("restored image differs from the disk at that point: sha256 %s, want %s", got, r.cuts[1].sum)
	}
	a.say("   wrote %s in %.2fs; SHA-256 %s… equals the disk as it was at that point", progress.Bytes(rr.BytesWritten), time.Since(t0).Seconds(), got[:16]) // wallclock: only shown
	if out, err := exec.CommandContext(ctx, "e2fsck", "-fn", demoFS(restored, r.bootable)).CombinedOutput(); err != nil {
		return fmt.Errorf("e2fsck of the restored image failed: %w\n%s", err, out)
	}
	a.say("   e2fsck -fn: filesystem clean")
	return nil
}

// demoForward brings the restored image to the newest point, writing
// only what differs, then diffs the first and newest points and checks
// every byte of the vault.
func (a *app) demoForward(ctx context.Context, v *vault.Vault, r *demoRun, restored string) error {
	lastCut := r.cuts[len(r.cuts)-1]
	newest, err := v.FindPoint(ctx, lastCut.point)
	if err != nil {
		return err
	}
	a.say("== Incremental restore of the newest point %s onto %s (lifeboat restore ... --incremental)", newest.ID.Short(), restored)
	rr, err := recover.Restore(ctx, v, newest, "root", restored, recover.Options{Incremental: true})
	if err != nil {
		return err
	}
	got, err := sha256File(restored)
	if err != nil {
		return err
	}
	if got != lastCut.sum {
		return fmt.Errorf("incrementally restored image differs from the newest cut")
	}
	a.say("   compared %s, wrote only %s (%d blocks); SHA-256 matches the newest cut", progress.Bytes(rr.BytesRead), progress.Bytes(rr.BytesWritten), rr.BlocksWritten)
	first, err := v.FindPoint(ctx, r.cuts[0].point)
	if err != nil {
		return err
	}
	ra, _ := v.OpenDisk(first, "root")
	rb, _ := v.OpenDisk(newest, "root")
	dst, err := v.Diff(ctx, ra, rb, nil)
	if err != nil {
		return err
	}
	a.say("== Diff first vs newest point: %d blocks differ (%s), %d equal 64 MiB leaves skipped unread", dst.ChangedBlocks, progress.Bytes(dst.ChangedBytes), dst.LeavesSkipped)
	rep, err := v.Check(ctx, vault.CheckOptions{ReadData: true})
	if err != nil {
		return err
	}
	if !rep.OK() {
		return fmt.Errorf("vault check found damage: %+v", rep.Damage)
	}
	a.say("== lifeboat vault check --read-data: %d points, %d packs, %s read and verified, no damage", rep.Points, rep.Packs, progress.Bytes(rep.ReadBytes))
	return nil
}

// demoFiguresWait bounds how long the demo waits for the agent's figures
// of a point its process server reported first: they come with the
// agent's next heartbeat, which follows the cycle at once.
const demoFiguresWait = 30 * time.Second

// demoNextPoint polls the demo machine until a point newer than last is
// recorded with the agent's figures for its cycle (or they are still
// pending demoFiguresWait after the point appeared), printing the
// initial replication's progress meanwhile.
func (a *app) demoNextPoint(ctx context.Context, c *client.Client, last time.Time, lastPct *float64, agentDone, serverDone <-chan error) (api.CycleResult, error) {
	deadline := a.clock().Now().Add(5 * time.Minute)
	var appeared time.Time // when the point was first seen without figures
	for {
		if a.clock().Now().After(deadline) {
			return api.CycleResult{}, errors.New("no recovery point after 5 minutes; run with --log-level info to see why")
		}
		select {
		case err := <-agentDone:
			return api.CycleResult{}, stopped("agent", err)
		case err := <-serverDone:
			return api.CycleResult{}, stopped("server", err)
		case <-ctx.Done():
			return api.CycleResult{}, ctx.Err()
		case <-time.After(100 * time.Millisecond): // wallclock: how often the server is asked again; the bound is above
		}
		var m api.Machine
		if err := c.Do(ctx, http.MethodGet, client.Path("machines", "demo-vm"), nil, &m); err != nil {
			return api.CycleResult{}, err
		}
		if m.Progress != nil && m.State == api.StateInitial && m.Progress.Percent >= *lastPct+20 {
			*lastPct = m.Progress.Percent
			a.say("   %s", describeState(m))
		}
		lp := m.LastPoint
		switch {
		case lp == nil || lp.Point == "" || !lp.Time.After(last):
		case !lp.FiguresPending:
			return *lp, nil
		case appeared.IsZero():
			appeared = a.clock().Now()
		case a.clock().Now().Sub(appeared) > demoFiguresWait:
			return *lp, nil // printed as pending
		}
	}
}

// stopped says that a part of the demo stopped early, and why.
func stopped(who string, err error) error {
	if err == nil {
		return fmt.Errorf("%s stopped", who)
	}
	return fmt.Errorf("%s stopped: %w", who, err)
}

func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

func run(ctx context.Context, name string, args ...string) error {
	p, err := lookTool(name)
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, p, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v\n%s", name, err, out)
	}
	return nil
}

// copySample copies up to limit bytes of regular files from system
// directories into dst (real data: text, binaries, compressed files).
func copySample(dst string, limit int64) (int64, error) {
	var total int64
	stop := errors.New("enough")
	for _, root := range []string{"/usr/share/doc", "/usr/share/common-licenses", "/usr/share/zoneinfo", "/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/share"} {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			info, err := d.Info()
			if err != nil || info.Size() > 8<<20 || total+info.Size() > limit {
				return nil
			}
			rel, _ := filepath.Rel("/", p)
			if !sampleguest.ValidPath(rel) {
				return nil // a name the guest's manifest cannot hold
			}
			target := filepath.Join(dst, rel)
			if _, err := os.Stat(target); err == nil {
				return nil
			}
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			n, err := copyFile(p, target)
			if err != nil {
				return nil // unreadable: skip
			}
			total += n
			if total >= limit*95/100 {
				return stop
			}
			return nil
		})
		if errors.Is(err, stop) {
			break
		}
		if err != nil {
			return total, err
		}
	}
	if total == 0 {
		return 0, errors.New("found no files to copy into the sample disk")
	}
	return total, nil
}

func copyFile(src, dst string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// churn changes files inside the ext4 image with debugfs: new files of
// random and of repetitive content, and an overwritten file.
func churn(ctx context.Context, dir, img string, rng *rand.Rand, cycle int) (string, error) {
	var cmds []string
	added := int64(0)
	for i := range 3 {
		n := int64(256<<10 + rng.IntN(3<<20))
		buf := make([]byte, n)
		if i == 0 {
			for j := range buf {
				buf[j] = byte(rng.Uint32())
			}
		} else {
			line := []byte(fmt.Sprintf("cycle %d file %d: the quick brown fox jumps over the lazy dog\n", cycle, i))
			for j := range buf {
				buf[j] = line[j%len(line)]
			}
		}
		local := filepath.Join(dir, fmt.Sprintf("churn-%d-%d", cycle, i))
		if err := os.WriteFile(local, buf, 0o644); err != nil {
			return "", err
		}
		defer os.Remove(local)
		cmds = append(cmds, fmt.Sprintf("write %s /churn-%d-%d", local, cycle, i))
		added += n
	}
	if cycle > 1 {
		cmds = append(cmds, fmt.Sprintf("rm /churn-%d-1", cycle-1))
	}
	script := filepath.Join(dir, "churn.debugfs")
	if err := os.WriteFile(script, []byte(joinLines(cmds)), 0o644); err != nil {
		return "", err
	}
	defer os.Remove(script)
	if err := run(ctx, "debugfs", "-w", "-f", script, img); err != nil {
		return "", err
	}
	what := fmt.Sprintf("added 3 files (%s) inside the filesystem", progress.Bytes(added))
	if cycle > 1 {
		what += ", removed one"
	}
	return what, nil
}

func joinLines(s []string) string {
	out := ""
	for _, l := range s {
		out += l + "\n"
	}
	return out
}

func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
