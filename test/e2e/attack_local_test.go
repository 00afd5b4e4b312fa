package e2e

// Hostile local inputs (issue 9, items 8 and 10): restore targets that
// would overwrite the vault or a device in use, things that are not disks
// given as disks, damaged key files, stray files in keys/, and a damaged
// config, through the real binary.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// runWithin runs the command and fails the test if it has not exited
// after d (it is killed then): refusals must come at once.
func (e *env) runWithin(d time.Duration, args ...string) result {
	e.t.Helper()
	cmd := e.cmd(args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			e.t.Fatal(err)
		}
		return result{out.String(), errb.String(), code}
	case <-time.After(d):
		_ = cmd.Process.Kill()
		<-done
		e.t.Fatalf("lifeboat %s: still running after %v (blocked?)\nstderr: %s", strings.Join(args, " "), d, errb.String())
		return result{}
	}
}

// replicatedEnv is a vault holding one point of a 4 MiB disk "root".
func replicatedEnv(t *testing.T) (*env, string) {
	t.Helper()
	e := newEnv(t)
	disk := filepath.Join(e.dir, "disk.img")
	makeDisk(t, disk, 4<<20, 2<<20, 21)
	e.mustRun("vault", "init", e.vault)
	e.mustRun("replicate", "--once", "--machine", "m", "--disk", "root="+disk)
	return e, disk
}

func TestAttackRestoreIntoTheVault(t *testing.T) {
	e, _ := replicatedEnv(t)
	before := listFiles(t, e.vault)
	var pack string
	for _, f := range before {
		if strings.Contains(f, "/data/") {
			pack = strings.Fields(f)[0]
			break
		}
	}
	link := filepath.Join(e.dir, "vault-link")
	if err := os.Symlink(e.vault, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(e.vault, "config"), filepath.Join(e.dir, "config-hardlink")); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--to", filepath.Join(e.vault, "restored.img")},
		{"--to", filepath.Join(link, "restored.img")},
		{"--to", filepath.Join(e.vault, "config"), "--force"},
		{"--to", filepath.Join(e.vault, "keys"), "--force"},
		{"--to", pack, "--incremental"},
		{"--to", filepath.Join(e.dir, "config-hardlink"), "--force"},
	} {
		r := e.run(append([]string{"restore", "latest", "--disk", "root"}, args...)...)
		expectFail(t, r, 2, "restore target refused", "vault", "--to")
	}
	// A relative path from inside the vault.
	cmd := e.cmd("restore", "latest", "--disk", "root", "--to", "../restored.img")
	cmd.Dir = filepath.Join(e.vault, "keys")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "inside the vault directory") {
		t.Fatalf("relative target inside the vault: %v %s", err, out)
	}
	if after := listFiles(t, e.vault); strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Fatalf("refused restores changed the vault:\nbefore %v\nafter %v", before, after)
	}
	e.mustRun("vault", "check", "--read-data")
}

// loopDev attaches a file of size bytes as a loop device (root only; CI
// runs as root).
func loopDev(t *testing.T, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root for loop devices")
	}
	back := filepath.Join(t.TempDir(), "backing")
	if err := os.WriteFile(back, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(back, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", back).CombinedOutput()
	if err != nil {
		skipOrFail(t, fmt.Sprintf("losetup: %v %s", err, out))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// holdsDisk reports whether any data block of the disk image sits on
// dev at its own offset: what a restore of it there would have written.
// (Comparing the device before and after is not a test: a mounted ext4
// rewrites its superblock and journal by itself.)
func holdsDisk(t *testing.T, dev, disk string) bool {
	t.Helper()
	img, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const bs = 64 << 10
	got := make([]byte, bs)
	for off := 0; off+bs <= len(img); off += bs {
		if bytes.Count(img[off:off+bs], []byte{0}) == bs {
			continue
		}
		if _, err := f.ReadAt(got, int64(off)); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(got, img[off:off+bs]) {
			return true
		}
	}
	return false
}

func TestAttackRestoreOntoDevicesInUse(t *testing.T) {
	e, disk := replicatedEnv(t)
	t.Run("mounted", func(t *testing.T) {
		dev := loopDev(t, 16<<20)
		if out, err := exec.Command("mkfs.ext4", "-q", "-F", dev).CombinedOutput(); err != nil {
			skipOrFail(t, fmt.Sprintf("mkfs.ext4: %v %s", err, out))
		}
		mnt := t.TempDir()
		if out, err := exec.Command("mount", dev, mnt).CombinedOutput(); err != nil {
			skipOrFail(t, fmt.Sprintf("mount: %v %s", err, out))
		}
		t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() })
		for _, extra := range [][]string{nil, {"--incremental"}} {
			r := e.run(append([]string{"restore", "latest", "--disk", "root", "--to", dev}, extra...)...)
			expectFail(t, r, 2, dev+" is mounted at "+mnt, "umount "+mnt)
		}
		if holdsDisk(t, dev, disk) {
			t.Fatal("a refused restore wrote to the mounted device")
		}
	})
	t.Run("swap", func(t *testing.T) {
		dev := loopDev(t, 16<<20)
		if out, err := exec.Command("mkswap", dev).CombinedOutput(); err != nil {
			skipOrFail(t, fmt.Sprintf("mkswap: %v %s", err, out))
		}
		if out, err := exec.Command("swapon", dev).CombinedOutput(); err != nil {
			skipOrFail(t, fmt.Sprintf("swapon: %v %s", err, out))
		}
		t.Cleanup(func() { _ = exec.Command("swapoff", dev).Run() })
		expectFail(t, e.run("restore", "latest", "--disk", "root", "--to", dev), 2, "in use as swap", "swapoff")
		if holdsDisk(t, dev, disk) {
			t.Fatal("a refused restore wrote to the swap device")
		}
	})
	t.Run("free device is restored", func(t *testing.T) {
		dev := loopDev(t, 16<<20)
		out := e.mustRun("restore", "latest", "--disk", "root", "--to", dev)
		if !strings.Contains(out, "restored disk root") || !holdsDisk(t, dev, disk) {
			t.Fatalf("restore onto a free device: %s", out)
		}
	})
}

func TestAttackNotADiskAsDisk(t *testing.T) {
	e, disk := replicatedEnv(t)
	fifo := filepath.Join(e.dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	const deadline = 20 * time.Second
	for _, tc := range []struct{ what, path string }{
		{"a named pipe (FIFO)", fifo}, // first: nothing may open it for reading (that blocks)
		{"a character device", "/dev/null"},
		{"a directory", e.dir},
	} {
		r := e.runWithin(deadline, "replicate", "--once", "--machine", "m", "--disk", "root="+disk, "--disk", "data="+tc.path)
		expectFail(t, r, 2, "--disk data", tc.path+" is "+tc.what, "block device")
	}
	// agent enroll refuses before it spends the one-time token.
	r := e.runWithin(deadline, "agent", "enroll", "--server", "https://127.0.0.1:1", "--token", "lbt1.x.y",
		"--state-dir", filepath.Join(e.dir, "agent"), "--disk", "root="+fifo)
	expectFail(t, r, 2, "named pipe (FIFO)")
	// A FIFO as a restore target, even with --incremental.
	for _, extra := range []string{"--force", "--incremental"} {
		r := e.runWithin(deadline, "restore", "latest", "--disk", "root", "--to", fifo, extra)
		expectFail(t, r, 2, "neither a regular file nor a block device")
	}
	if n := len(e.points()); n != 1 {
		t.Fatalf("%d points, want 1: a refused replicate published one", n)
	}
}

// keyFile returns the path of the vault's only key file.
func keyFile(t *testing.T, e *env) string {
	t.Helper()
	keys, err := filepath.Glob(filepath.Join(e.vault, "keys", "*"))
	if err != nil || len(keys) != 1 {
		t.Fatalf("key files %v: %v", keys, err)
	}
	return keys[0]
}

func TestAttackTruncatedKeyFile(t *testing.T) {
	e, _ := replicatedEnv(t)
	kf := keyFile(t, e)
	b, err := os.ReadFile(kf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kf, b[:len(b)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	name := "keys/" + filepath.Base(kf)
	for _, args := range [][]string{{"points", "list"}, {"vault", "check"}, {"restore", "latest", "--to", filepath.Join(e.dir, "x.img")}} {
		r := e.run(args...)
		expectFail(t, r, 3, "damaged key file "+name)
		if strings.Contains(r.stderr, "wrong passphrase:") {
			t.Fatalf("%v: a damaged key file reported as a wrong passphrase:\n%s", args, r.stderr)
		}
	}
	// Intact again: a wrong passphrase is still a wrong passphrase.
	if err := os.WriteFile(kf, b, 0o600); err != nil {
		t.Fatal(err)
	}
	expectFail(t, newEnvLike(e, "LIFEBOAT_PASSPHRASE=not-it").run("points", "list"), 1, "wrong passphrase")
}

func TestAttackStrayFileInKeys(t *testing.T) {
	e, _ := replicatedEnv(t)
	kf := keyFile(t, e)
	b, err := os.ReadFile(kf)
	if err != nil {
		t.Fatal(err)
	}
	// A well-formed key file under a name no Lifeboat writes, and junk
	// beside the index.
	if err := os.WriteFile(filepath.Join(e.vault, "keys", "backdoor.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.vault, "index", "README"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.mustRun("points", "list") // readers ignore both
	r := e.run("vault", "check")
	expectFail(t, r, 3, "found 1 damaged object")
	if !strings.Contains(r.stdout, "DAMAGED keys/backdoor.json: not a key file") || !strings.Contains(r.stdout, "warning: index/README: not an object") {
		t.Fatalf("check output does not name the stray files:\n%s", r.stdout)
	}
}

func damageFile(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x20
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestAttackDamagedConfig(t *testing.T) {
	e, disk := replicatedEnv(t)
	for _, name := range []string{"config", "config.copy"} {
		if _, err := os.Stat(filepath.Join(e.vault, name)); err == nil || name == "config" {
			damageFile(t, filepath.Join(e.vault, name))
		}
	}
	for _, args := range [][]string{
		{"points", "list"},
		{"vault", "check"},
		{"replicate", "--once", "--machine", "m", "--disk", "root=" + disk},
		{"restore", "latest", "--to", filepath.Join(e.dir, "x.img")},
		{"vault", "repair", "config"},
	} {
		expectFail(t, e.run(args...), 3, "damaged config", "restore the config from a copy of the vault")
	}
	// Not JSON behind authentication is the same: plain text as config.
	for _, name := range []string{"config", "config.copy"} {
		if err := os.WriteFile(filepath.Join(e.vault, name), []byte(`{"version":1}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	expectFail(t, e.run("points", "list"), 3, "damaged config")
}

func TestAttackOneDamagedConfigCopy(t *testing.T) {
	e, _ := replicatedEnv(t)
	primary, copy := filepath.Join(e.vault, "config"), filepath.Join(e.vault, "config.copy")
	a, err := os.ReadFile(primary)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(copy); err != nil || !bytes.Equal(a, b) {
		t.Fatalf("vault init did not store the config twice: %v", err)
	}
	for _, bad := range []string{copy, primary} {
		damageFile(t, bad)
		r := e.run("points", "list")
		if r.code != 0 || !strings.Contains(r.stderr, "vault config copy damaged") || !strings.Contains(r.stderr, filepath.Base(bad)) {
			t.Fatalf("one damaged copy (%s): exit %d\n%s", bad, r.code, r.stderr)
		}
		r = e.run("vault", "check")
		expectFail(t, r, 3)
		if !strings.Contains(r.stdout, "DAMAGED "+filepath.Base(bad)+": ") || !strings.Contains(r.stdout, "vault repair config") {
			t.Fatalf("check does not report %s:\n%s", bad, r.stdout)
		}
		if out := e.mustRun("vault", "repair", "config"); !strings.Contains(out, "rewrote "+filepath.Base(bad)) {
			t.Fatalf("repair config: %s", out)
		}
		if r := e.run("points", "list"); r.code != 0 || strings.Contains(r.stderr, "WARN") {
			t.Fatalf("after repair: exit %d\n%s", r.code, r.stderr)
		}
		e.mustRun("vault", "check")
	}
	// A vault made before the copy existed (only config): it opens with a
	// warning, check warns, and repair adds the copy.
	if err := os.Remove(copy); err != nil {
		t.Fatal(err)
	}
	if r := e.run("points", "list"); r.code != 0 || !strings.Contains(r.stderr, "vault config copy missing") {
		t.Fatalf("one copy only: exit %d\n%s", r.code, r.stderr)
	}
	if out := e.mustRun("vault", "check"); !strings.Contains(out, "warning: config.copy is missing") {
		t.Fatalf("check of a one-copy vault: %s", out)
	}
	e.mustRun("vault", "repair", "config")
	if b, err := os.ReadFile(copy); err != nil || !bytes.Equal(a, b) {
		t.Fatalf("repair did not restore the copy: %v", err)
	}
}
