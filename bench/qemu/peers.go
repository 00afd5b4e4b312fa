package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
)

// run runs a command, timing it, and returns its resource usage (its own
// and its waited-for children's, from wait4).
func run(ctx context.Context, env []string, name string, args ...string) (time.Duration, usage, error) {
	c := exec.CommandContext(ctx, name, args...)
	c.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	start := time.Now()
	err := c.Run()
	wall := time.Since(start)
	if err != nil {
		return wall, usage{}, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, benchkit.Tail(out.String(), 2000))
	}
	return wall, childUsage(c), nil
}

// restic backs up the image into a repository in dir (on the same disk).
type restic struct {
	repo, cache string
}

func (r restic) env() []string {
	return []string{"RESTIC_PASSWORD=" + benchkit.Passphrase, "RESTIC_REPOSITORY=" + r.repo, "RESTIC_CACHE_DIR=" + r.cache}
}

func newRestic(ctx context.Context, dir string) (restic, error) {
	r := restic{repo: filepath.Join(dir, "repo"), cache: filepath.Join(dir, "cache")}
	if _, _, err := run(ctx, r.env(), "restic", "init"); err != nil {
		return r, fmt.Errorf("restic init (apt-get install restic): %w", err)
	}
	return r, nil
}

// backup runs `restic backup` of the image; the second run finds the
// first snapshot as its parent (same host and path) and reads the file
// again because its mtime changed.
func (r restic) backup(ctx context.Context, image string) (time.Duration, usage, error) {
	return run(ctx, r.env(), "restic", "backup", "--quiet", "--host", "bench", image)
}

// rsyncCopy updates dst from src in place with the delta algorithm.
// --ignore-times makes it compare the file even when size and mtime look
// unchanged (as bench/run.sh does; without it this rsync skipped the
// changed image).
// --sparse keeps the copy sparse like the source (otherwise a 32 GiB
// image would be written out in full); it does not change what the delta
// transfer reads.
func rsyncCopy(ctx context.Context, src, dst string) (time.Duration, usage, error) {
	return run(ctx, nil, "rsync", "--inplace", "--no-whole-file", "--sparse", "--ignore-times", src, dst)
}
