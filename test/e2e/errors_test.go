package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// listFiles returns every file under dir with its size, for "nothing
// changed" comparisons.
func listFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			out = append(out, fmt.Sprintf("%s %d", p, fi.Size()))
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func expectFail(t *testing.T, r result, code int, wants ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
	}
	for _, w := range wants {
		if !strings.Contains(r.stderr, w) {
			t.Fatalf("stderr does not say %q:\n%s", w, r.stderr)
		}
	}
}

func TestWrongPassphraseAndMissingVault(t *testing.T) {
	e := newEnv(t)
	disk := filepath.Join(e.dir, "disk.img")
	makeDisk(t, disk, 4<<20, 2<<20, 3)
	e.mustRun("vault", "init", e.vault)
	e.mustRun("replicate", "--once", "--machine", "m", "--disk", "root="+disk)
	before := listFiles(t, e.vault)

	wrong := newEnvLike(e, "LIFEBOAT_PASSPHRASE=not-the-passphrase")
	for _, args := range [][]string{
		{"points", "list"},
		{"replicate", "--once", "--machine", "m", "--disk", "root=" + disk},
		{"vault", "prune", "--gc-margin", "0s"},
		{"restore", "latest", "--to", filepath.Join(e.dir, "x.img")},
	} {
		expectFail(t, wrong.run(args...), 1, "wrong passphrase")
	}
	if _, err := os.Stat(filepath.Join(e.dir, "x.img")); err == nil {
		t.Fatal("restore with a wrong passphrase created its target")
	}
	if after := listFiles(t, e.vault); strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Fatalf("commands with a wrong passphrase changed the vault:\nbefore %v\nafter %v", before, after)
	}

	empty := t.TempDir()
	expectFail(t, e.run("points", "list", "--vault", empty), 1, "no vault config", "lifeboat vault init")
	expectFail(t, e.run("points", "list", "--vault", filepath.Join(empty, "nope")), 1, "does not exist")
	expectFail(t, e.run("vault", "init", e.vault), 1, "already exists")

	// No passphrase and no terminal: a usage error naming the ways to give one.
	cmd := exec.Command(e.bin, "points", "list", "--vault", e.vault)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + e.dir}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "LIFEBOAT_PASSPHRASE") {
		t.Fatalf("no passphrase: %v %s", err, out)
	}
}

func newEnvLike(e *env, extra ...string) *env {
	c := *e
	c.extra = append(append([]string{}, e.extra...), extra...)
	return &c
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestUnreachableS3(t *testing.T) {
	e := newEnvLike(newEnv(t), "AWS_ACCESS_KEY_ID=k", "AWS_SECRET_ACCESS_KEY=s")
	endpoint := fmt.Sprintf("http://127.0.0.1:%d", freePort(t)) // nothing listens there
	for _, args := range [][]string{
		{"vault", "init", "s3://bucket/prefix"},
		{"points", "list", "--vault", "s3://bucket/prefix"},
	} {
		start := time.Now()
		r := e.run(append(args, "--s3-endpoint", endpoint)...)
		expectFail(t, r, 1, "cannot reach S3 endpoint 127.0.0.1")
		if el := time.Since(start); el > 20*time.Second {
			t.Fatalf("%v took %s to fail", args, el)
		}
	}
}

// mountTmpfs mounts a small tmpfs (root only; CI runs as root).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mount tmpfs: %v %s", err, out)
		}
		t.Skipf("needs root to mount a tmpfs (run as root, as CI does): %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

func TestFullDisk(t *testing.T) {
	e := newEnv(t)
	full := mountTmpfs(t, "24m")
	e.vault = filepath.Join(full, "vault")
	disk := filepath.Join(e.dir, "disk.img")
	makeDisk(t, disk, 8<<20, 6<<20, 4)
	e.mustRun("vault", "init", e.vault, "--pack-size", fmt.Sprint(1<<20))
	e.mustRun("replicate", "--once", "--machine", "m", "--disk", "root="+disk, "--label", "run=small")
	want := map[string]string{"small": fileSHA(t, disk)}

	// A disk larger than the free space: the cycle fails, says why, and
	// publishes nothing.
	big := filepath.Join(e.dir, "big.img")
	makeDisk(t, big, 40<<20, 40<<20, 5)
	r := e.run("replicate", "--once", "--machine", "m", "--disk", "root="+big, "--label", "run=big")
	expectFail(t, r, 1, "no space left")
	if n := len(e.points()); n != 1 {
		t.Fatalf("%d points after the failed cycle, want 1", n)
	}
	verifyAll(t, e, want, true)
	for _, f := range listFiles(t, e.vault) {
		if strings.Contains(f, ".tmp-") || strings.Contains(f, "lifeboat-pack-") {
			t.Fatalf("left behind after the failed cycle: %s", f)
		}
	}

	// A restore target on a full filesystem: an error, and no partial file.
	small := mountTmpfs(t, "2m")
	target := filepath.Join(small, "restored.img")
	p := e.points()[0]
	expectFail(t, e.run("restore", p.ID[:12], "--to", target), 1, "no space left")
	if left := listFiles(t, small); len(left) != 0 {
		t.Fatalf("failed restore left %v", left)
	}
}
