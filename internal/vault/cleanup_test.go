package vault

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
	"github.com/lifeboat-dr/lifeboat/internal/vault/retention"
)

// TestPruneRemovesLeftoversOfKilledProcesses: a lock of a process that is
// gone and a temporary file of an upload killed midway are removed; a
// fresh temporary file (an upload in progress) is not.
func TestPruneRemovesLeftoversOfKilledProcesses(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	be, err := local.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := Init(ctx, be, []byte("pw"), InitOptions{Options: Options{KDF: testKDF, SpoolDir: t.TempDir()}})
	if err != nil {
		t.Fatal(err)
	}
	// A lock left by a killed writer on this host.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	info := LockInfo{Kind: LockWrite, Hostname: v.opts.Hostname, PID: dead.Process.Pid, Created: time.Now(), Refreshed: time.Now()}
	l := &Lock{v: v, info: LockInfo{Name: "locks/0123456789abcdef"}}
	if err := l.write(ctx, info); err != nil {
		t.Fatal(err)
	}
	// Temporary upload files: one abandoned an hour ago, one being written.
	if err := os.MkdirAll(filepath.Join(dir, "data", "ab"), 0o700); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(dir, "data", "ab", ".tmp-abandoned")
	fresh := filepath.Join(dir, "data", "ab", ".tmp-inflight")
	for _, p := range []string{old, fresh} {
		if err := os.WriteFile(p, make([]byte, 1000), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	hourAgo := time.Now().Add(-time.Hour)
	if err := os.Chtimes(old, hourAgo, hourAgo); err != nil {
		t.Fatal(err)
	}
	pol, _ := retention.Parse("1h:all")
	rep, err := v.Prune(ctx, PruneOptions{Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	if rep.StaleLocksRemoved != 1 || rep.TempFilesRemoved != 1 || rep.TempBytesRemoved != 1000 {
		t.Fatalf("report %+v", rep)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Fatal("abandoned temporary file still there")
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Fatal("in-flight temporary file removed")
	}
	if locks, _ := v.Locks(ctx); len(locks) != 0 {
		t.Fatalf("locks left: %+v", locks)
	}
}
