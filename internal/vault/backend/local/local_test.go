package local_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/backendtest"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

func newLocal(t testing.TB) *local.Backend {
	t.Helper()
	be, err := local.Create(filepath.Join(t.TempDir(), "vault"))
	if err != nil {
		t.Fatal(err)
	}
	return be
}

func TestSuite(t *testing.T) {
	backendtest.RunSuite(t, func(t *testing.T) backend.Backend {
		be := newLocal(t)
		t.Cleanup(func() { checkNoTempFiles(t, be.Location()) })
		return be
	})
}

func BenchmarkLocal(b *testing.B) {
	backendtest.RunBenchmarks(b, func(b *testing.B) backend.Backend { return newLocal(b) })
}

// checkNoTempFiles fails t if dir holds temporary files of Put.
func checkNoTempFiles(t testing.TB, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Errorf("walk %s: %v", p, err)
			return nil
		}
		if strings.HasPrefix(d.Name(), ".tmp-") {
			t.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
}

func TestNewMissingDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nope")
	_, err := local.New(dir)
	if err == nil || !backend.IsPermanent(err) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("New(missing dir): got %v, want a Permanent error naming %s", err, dir)
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := local.New(file); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("New(file): got %v, want 'not a directory'", err)
	}
	be, err := local.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	if be.Location() != dir {
		t.Errorf("Location: %q, want %q", be.Location(), dir)
	}
	if _, err := local.New(dir); err != nil {
		t.Fatalf("New after Create: %v", err)
	}
}

func TestLayoutAndTempFiles(t *testing.T) {
	be := newLocal(t)
	ctx := t.Context()
	if err := be.Put(ctx, "data/ab/abc", bytes.NewReader([]byte("hi")), 2); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(be.Location(), "data", "ab", "abc")
	if b, err := os.ReadFile(p); err != nil || string(b) != "hi" {
		t.Fatalf("object file %s: %q, %v", p, b, err)
	}
	// A temporary file left by a crash is not listed, and its name is
	// not a valid object name.
	if err := os.WriteFile(filepath.Join(be.Location(), "data", "ab", ".tmp-123"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	var names []string
	if err := be.List(ctx, "", func(fi backend.Info) error { names = append(names, fi.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(names) != 1 || names[0] != "data/ab/abc" {
		t.Errorf("List: %v, want [data/ab/abc]", names)
	}
	if _, err := be.Stat(ctx, "data/ab/.tmp-123"); !errors.Is(err, backend.ErrInvalidName) {
		t.Errorf("Stat(temporary file): %v, want ErrInvalidName", err)
	}
}
