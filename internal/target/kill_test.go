package target

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// childEnv makes the test binary run one apply (runChild) instead of the
// tests; the child reads its arguments from these variables.
const (
	childEnv    = "LIFEBOAT_TARGET_TEST_CHILD"
	childVault  = "LIFEBOAT_TARGET_TEST_VAULT"
	childPoint  = "LIFEBOAT_TARGET_TEST_POINT"
	childTarget = "LIFEBOAT_TARGET_TEST_TARGET"
	childState  = "LIFEBOAT_TARGET_TEST_STATE"
)

// runChild applies the point with small checkpoints and, past 60% of the
// disk, stops every worker on a read of stdin (a pipe the parent never
// writes) until it is killed.
func runChild() int {
	ctx := context.Background()
	v, err := openVault(ctx, os.Getenv(childVault))
	if err == nil {
		pt, ferr := v.FindPoint(ctx, os.Getenv(childPoint))
		if ferr != nil {
			err = ferr
		} else {
			_, err = Apply(ctx, v, pt, "d", os.Getenv(childTarget), Options{
				StateDir: os.Getenv(childState), CheckpointBytes: 4 * bs * 16, Workers: 2,
				Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
				Progress: func(p Progress) {
					if p.Done >= p.Total*6/10 {
						os.Stdin.Read(make([]byte, 1))
					}
				},
			})
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// An apply killed (SIGKILL) after a checkpoint resumes from it: the
// target ends equal to the point, and the second run compares less than
// the whole disk.
func TestApplyResumesAfterKill(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	rng := rand.New(rand.NewPCG(5, 5))
	img := randomImage(rng, 2048*bs, bs) // 128 leaves of 64 KiB
	writeFile(t, filepath.Join(dir, "src.img"), img)
	p := storePoint(t, v, filepath.Join(dir, "src.img"))

	// The original disk holds an older state: a block in every leaf differs.
	target, state := filepath.Join(dir, "orig.img"), t.TempDir()
	old := append([]byte(nil), img...)
	for k := 1; k < 2048; k += 16 {
		changeBlocks(old, bs, k)
	}
	writeFile(t, target, old)

	stdin, hold, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", childVault+"="+filepath.Join(dir, "vault"),
		childPoint+"="+p.ID.String(), childTarget+"="+target, childState+"="+state)
	cmd.Stdin = stdin
	var log logBuf
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var checkpoint *journal
	testutil.Eventually(t, 60*time.Second, func() bool {
		select {
		case err := <-exited:
			t.Fatalf("the child exited before a checkpoint: %v\n%s", err, log.String())
		default:
		}
		js, _ := filepath.Glob(filepath.Join(state, ".*.journal"))
		if len(js) == 1 {
			checkpoint, _ = readJournal(js[0])
		}
		return checkpoint != nil && checkpoint.Leaf >= 40
	}, "no checkpoint past leaf 40 from the child")
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = <-exited
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child: %v, want killed by SIGKILL\n%s", err, log.String())
	}
	t.Logf("child killed after a checkpoint at leaf %d of 128", checkpoint.Leaf)

	var log2 logBuf
	res, err := Apply(ctx, v, p, "d", target, Options{StateDir: state, Logger: log2.logger()})
	if err != nil {
		t.Fatal(err)
	}
	sameContent(t, target, img)
	if res.Resumed == 0 || res.Compared >= int64(len(img)) || res.Resumed+res.Compared != int64(len(img)) {
		t.Fatalf("resumed run: %+v, want it to skip what the checkpoint vouched for", res)
	}
	t.Logf("resumed at %d bytes; compared %d of %d, wrote %d", res.Resumed, res.Compared, len(img), res.Written)
	checkBaseline(t, res.Baseline, target, p.ID.String())
}
