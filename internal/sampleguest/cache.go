package sampleguest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// CachedImage returns dir/name, building it first with build when it is
// not there. build writes out, a file in a staging directory of dir;
// the result is published by an atomic rename under dir's lock file, so
// that concurrent processes build it once. name should hold a key of
// everything the image is made of (DiskOptions.Key): a cached image is
// never rebuilt.
func CachedImage(ctx context.Context, dir, name string, build func(ctx context.Context, out string) error) (string, error) {
	out := filepath.Join(dir, name)
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create image cache %s (set %s to a writable directory): %w", dir, CacheEnv, err)
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, ".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(out); err == nil {
		return out, nil // another process built it while we waited
	}
	stage, err := os.MkdirTemp(dir, ".stage-")
	if err != nil {
		return "", fmt.Errorf("create staging dir in the image cache: %w", err)
	}
	defer os.RemoveAll(stage)
	img := filepath.Join(stage, name)
	if err := build(ctx, img); err != nil {
		return "", err
	}
	if err := os.Chmod(img, 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(img, out); err != nil {
		return "", fmt.Errorf("publish %s: %w", out, err)
	}
	return out, nil
}
