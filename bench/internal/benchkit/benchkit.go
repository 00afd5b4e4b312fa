// Package benchkit is what the benchmark programs bench/qemu and
// bench/reprotect share: their start (the -v logger, a run ended by
// SIGINT or SIGTERM, the check for the tools they call, the work
// directory), the machine's counters they sample around a timed phase
// (busy CPU, load average) and the page cache they drop before it, the
// data extents of sparse files, a qemu-storage-daemon serving an image,
// the churn writer that rewrites a disk through QEMU's NBD export at a
// set rate, and the local vault they replicate into.
package benchkit

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
)

// Fail prints "prog: FAILED: err" on stderr and exits with status 1.
func Fail(prog string, err error) {
	fmt.Fprintln(os.Stderr, prog+": FAILED:", err)
	os.Exit(1)
}

// Main runs fn with a context that ends at SIGINT or SIGTERM, and Fails
// if fn returns an error.
func Main(prog string, fn func(context.Context) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := fn(ctx); err != nil {
		Fail(prog, err)
	}
}

// Logger logs text to stderr: warnings and errors, and with verbose the
// drivers', the engine's and the target writer's messages too.
func Logger(verbose bool) *slog.Logger {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// Setup checks that tools are on the PATH (the error names the Debian
// packages pkgs that install them), drops the page cache if drop, and
// creates the work directory; it returns the directory's absolute path.
func Setup(work string, drop bool, pkgs string, tools []string) (string, error) {
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			return "", fmt.Errorf("%s not found: apt-get install -y --no-install-recommends %s: %w", t, pkgs, err)
		}
	}
	if drop {
		if err := DropCaches(); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(work, 0o700); err != nil {
		return "", err
	}
	return filepath.Abs(work)
}

// Tail returns the last n bytes of s, marked with "..." if cut.
func Tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
