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
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/progress"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

type demoFlags struct {
	dir    string
	sizeMB int64
	dataMB int64
	cycles int
	keep   bool
}

func (a *app) demoCmd() *cobra.Command {
	var f demoFlags
	c := &cobra.Command{
		Use:   "demo",
		Short: "Replicate a sample ext4 disk through several cycles, then restore and verify a point",
		Long: `Demo builds a sample disk image holding a real ext4 filesystem (filled with
files copied from this machine), creates a local vault, replicates the disk
through several cycles while files are added and removed inside the
filesystem, lists the recovery points, restores an older point and proves it
byte for byte (SHA-256) and with e2fsck, brings the restored disk forward to
the newest point incrementally, and checks every byte of the vault.
It needs mkfs.ext4 and debugfs (Debian package e2fsprogs).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runDemo(cmd.Context(), f) },
	}
	c.Flags().StringVar(&f.dir, "dir", "", "work directory (default: a new temporary directory, removed at the end)")
	c.Flags().Int64Var(&f.sizeMB, "size", 512, "disk image size in MiB")
	c.Flags().Int64Var(&f.dataMB, "data", 96, "MiB of files copied into the filesystem")
	c.Flags().IntVar(&f.cycles, "cycles", 4, "replication cycles (the first is the full copy)")
	c.Flags().BoolVar(&f.keep, "keep", false, "keep the work directory")
	return c
}

func (a *app) say(format string, args ...any) { fmt.Fprintf(a.stdout, format+"\n", args...) }

func (a *app) runDemo(ctx context.Context, f demoFlags) error {
	for _, tool := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if _, err := lookTool(tool); err != nil {
			return fmt.Errorf("the demo needs %s: install e2fsprogs (apt-get install e2fsprogs)", tool)
		}
	}
	if f.cycles < 2 {
		return &codeError{exitUsage, errors.New("--cycles must be at least 2")}
	}
	start := time.Now()
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
	img := filepath.Join(dir, "disk.img")
	vaultDir := filepath.Join(dir, "vault")
	stateDir := filepath.Join(dir, "state")
	os.RemoveAll(vaultDir)
	os.RemoveAll(stateDir)

	// 1. A sample disk with a real filesystem.
	src := filepath.Join(dir, "files")
	os.RemoveAll(src)
	copied, err := copySample(src, f.dataMB<<20)
	if err != nil {
		return err
	}
	os.Remove(img)
	if err := run(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096", "-d", src, img, fmt.Sprintf("%dM", f.sizeMB)); err != nil {
		return err
	}
	os.RemoveAll(src)
	a.say("== Sample disk: %s, %d MiB ext4 filesystem holding %s of files from this machine", img, f.sizeMB, progress.Bytes(copied))

	// 2. A vault.
	pass := []byte("lifeboat-demo")
	be, err := local.Create(vaultDir)
	if err != nil {
		return err
	}
	v, err := vault.Init(ctx, backend.Retry(be, backend.RetryOptions{Logger: a.log}), pass,
		vault.InitOptions{Options: vault.Options{Logger: a.log}})
	if err != nil {
		return err
	}
	a.say("== Vault: %s (id %s, encrypted with XChaCha20-Poly1305, zstd, 64 KiB blocks)", vaultDir, v.Config().ID[:16])
	a.say("   same as: LIFEBOAT_PASSPHRASE=%s lifeboat vault init %s", pass, vaultDir)

	// 3. Cycles with churn inside the filesystem between them.
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	drv, err := scan.New(scan.Options{Path: img, StateFile: filepath.Join(stateDir, "root.hashes"), BlockSize: v.Config().BlockSize, Logger: a.log})
	if err != nil {
		return err
	}
	a.say("== Replicating (same as: lifeboat replicate --vault %s --machine demo-vm --disk root=%s --once)", vaultDir, img)
	rng := rand.New(rand.NewPCG(2026, 11))
	type cut struct {
		point *vault.Point
		sum   string
	}
	var cuts []cut
	for i := range f.cycles {
		if i > 0 {
			what, err := churn(ctx, dir, img, rng, i)
			if err != nil {
				return err
			}
			a.say("   churn: %s", what)
		}
		sum, err := sha256File(img)
		if err != nil {
			return err
		}
		res, err := replicate.RunCycle(ctx, replicate.Options{Vault: v, Machine: "demo-vm", Logger: a.log,
			Disks: []replicate.Disk{{Name: "root", Driver: drv}}, Labels: map[string]string{"demo": fmt.Sprint(i + 1)}})
		if err != nil {
			return err
		}
		fmt.Fprint(a.stdout, "   ")
		a.printCycle(res)
		cuts = append(cuts, cut{res.Point, sum})
	}

	// 4. The points.
	a.say("== Recovery points (lifeboat points list --vault %s)", vaultDir)
	pts, _, err := v.Points(ctx)
	if err != nil {
		return err
	}
	for _, p := range pts {
		d := p.Disks[0]
		a.say("   %s  %s  %s  %s  %s", p.ID.Short(), p.Time.Local().Format("15:04:05.000"), p.Machine, p.Kind, progress.Bytes(d.Size))
	}

	// 5. Restore an older point and prove it.
	old := cuts[1]
	restored := filepath.Join(dir, "restored.img")
	os.Remove(restored)
	a.say("== Restoring point %s (cycle 2) to %s", old.point.ID.Short(), restored)
	a.say("   same as: lifeboat restore %s --vault %s --disk root --to %s", old.point.ID.Short(), vaultDir, restored)
	t0 := time.Now()
	rr, err := recover.Restore(ctx, v, old.point, "root", restored, recover.Options{})
	if err != nil {
		return err
	}
	got, err := sha256File(restored)
	if err != nil {
		return err
	}
	if got != old.sum {
		return fmt.Errorf("restored image differs from the disk at cycle 2: sha256 %s, want %s", got, old.sum)
	}
	a.say("   wrote %s in %.2fs; SHA-256 %s… equals the disk as it was at cycle 2", progress.Bytes(rr.BytesWritten), time.Since(t0).Seconds(), got[:16])
	if out, err := exec.CommandContext(ctx, "e2fsck", "-fn", restored).CombinedOutput(); err != nil {
		return fmt.Errorf("e2fsck of the restored image failed: %v\n%s", err, out)
	}
	a.say("   e2fsck -fn: filesystem clean")

	// 6. Bring it forward to the newest point, writing only what differs.
	last := cuts[len(cuts)-1]
	a.say("== Incremental restore of the newest point %s onto %s (lifeboat restore ... --incremental)", last.point.ID.Short(), restored)
	rr, err = recover.Restore(ctx, v, last.point, "root", restored, recover.Options{Incremental: true})
	if err != nil {
		return err
	}
	if got, err = sha256File(restored); err != nil {
		return err
	}
	if got != last.sum {
		return fmt.Errorf("incrementally restored image differs from the newest cut")
	}
	a.say("   compared %s, wrote only %s (%d blocks); SHA-256 matches the newest cut", progress.Bytes(rr.BytesRead), progress.Bytes(rr.BytesWritten), rr.BlocksWritten)

	// 7. Diff and a full verification of the vault.
	ra, _ := v.OpenDisk(cuts[0].point, "root")
	rb, _ := v.OpenDisk(last.point, "root")
	st, err := v.Diff(ctx, ra, rb, nil)
	if err != nil {
		return err
	}
	a.say("== Diff first vs newest point: %d blocks differ (%s), %d equal 64 MiB leaves skipped unread", st.ChangedBlocks, progress.Bytes(st.ChangedBytes), st.LeavesSkipped)
	rep, err := v.Check(ctx, vault.CheckOptions{ReadData: true})
	if err != nil {
		return err
	}
	if !rep.OK() {
		return fmt.Errorf("vault check found damage: %+v", rep.Damage)
	}
	a.say("== lifeboat vault check --read-data: %d points, %d packs, %s read and verified, no damage", rep.Points, rep.Packs, progress.Bytes(rep.ReadBytes))
	a.say("demo finished in %.1fs", time.Since(start).Seconds())
	if f.keep || f.dir != "" {
		a.say("work directory kept: %s (passphrase %q)", dir, pass)
	}
	return nil
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
