package local_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

// TestFullDisk fills a 4 MiB tmpfs: the Put that hits ENOSPC must fail
// with a Permanent, explicit error and leave no temporary file, and the
// objects stored before must be intact.
func TestFullDisk(t *testing.T) {
	cannot := func(why string) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf("full-disk test cannot run in CI: %s", why)
		}
		t.Skipf("skipping full-disk test: %s", why)
	}
	if os.Geteuid() != 0 {
		cannot("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=4m,mode=0700"); err != nil {
		cannot(fmt.Sprintf("mount tmpfs on %s: %v", dir, err))
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	be, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()

	stored := map[string][]byte{}
	var full error
	for i := range 64 { // 64 × 256 KiB = 16 MiB > 4 MiB
		name := fmt.Sprintf("data/%02x/obj%03d", i%4, i)
		data := make([]byte, 256<<10)
		rand.Read(data)
		if err := be.Put(ctx, name, bytes.NewReader(data), int64(len(data))); err != nil {
			full = err
			break
		}
		stored[name] = data
	}
	if full == nil {
		t.Fatal("stored 16 MiB on a 4 MiB tmpfs without error")
	}
	t.Logf("after %d objects: %v", len(stored), full)
	if !backend.IsPermanent(full) || !errors.Is(full, syscall.ENOSPC) {
		t.Errorf("error is not a Permanent ENOSPC: %v", full)
	}
	for _, s := range []string{"no space left on device", "free space", dir} {
		if !strings.Contains(full.Error(), s) {
			t.Errorf("error %q does not mention %q", full, s)
		}
	}
	checkNoTempFiles(t, dir)
	for name, data := range stored {
		rc, err := be.Get(ctx, name, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		_, err = got.ReadFrom(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got.Bytes(), data) {
			t.Errorf("%s damaged after ENOSPC: %v", name, err)
		}
	}

	// Freeing space makes Put work again.
	for name := range stored {
		if err := be.Delete(ctx, name); err != nil {
			t.Fatal(err)
		}
		break
	}
	if err := be.Put(ctx, "index/after", bytes.NewReader([]byte("ok")), 2); err != nil {
		t.Errorf("Put after freeing space: %v", err)
	}
}
