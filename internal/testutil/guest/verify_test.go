package guest

import (
	"context"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/sampleguest"
)

// TestVerifyImage checks Verify on ext4 images made by mkfs.ext4 -d,
// without a VM: a matching manifest passes, a wrong checksum, a missing
// file or a missing manifest fail.
func TestVerifyImage(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			need(t, "Verify needs "+tool)
		}
	}
	ctx := context.Background()
	mkimg := func(t *testing.T, files map[string]string, manifest string) string {
		dir := t.TempDir()
		root := filepath.Join(dir, "root")
		for p, c := range files {
			if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(root, p), []byte(c), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if manifest != "" {
			if err := os.WriteFile(filepath.Join(root, "manifest"), []byte(manifest), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		img := filepath.Join(dir, "disk.raw")
		if err := os.WriteFile(img, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, 16<<20); err != nil {
			t.Fatal(err)
		}
		if err := run(ctx, dir, "mkfs.ext4", "-F", "-q", "-d", root, img); err != nil {
			t.Fatal(err)
		}
		return img
	}
	files := map[string]string{"data/f1": "one", "data/f2": strings.Repeat("two", 5000)}
	m := sampleguest.Manifest{Seq: 42}
	for _, p := range []string{"data/f1", "data/f2"} {
		m.Files = append(m.Files, sampleguest.ManifestFile{Path: p, Sum: sha256.Sum256([]byte(files[p]))})
	}
	n, seq, err := Verify(ctx, mkimg(t, files, string(m.Format())))
	if err != nil || n != 2 || seq != 42 {
		t.Fatalf("Verify good image: %d files, seq %d, %v", n, seq, err)
	}

	bad := m
	bad.Files = append([]sampleguest.ManifestFile(nil), m.Files...)
	bad.Files[1].Sum[0] ^= 1
	if _, _, err := Verify(ctx, mkimg(t, files, string(bad.Format()))); err == nil || !strings.Contains(err.Error(), "data/f2 has SHA-256") {
		t.Errorf("wrong checksum: %v", err)
	}
	missing := m
	missing.Files = append(append([]sampleguest.ManifestFile(nil), m.Files...), sampleguest.ManifestFile{Path: "data/f9"})
	if _, _, err := Verify(ctx, mkimg(t, files, string(missing.Format()))); err == nil || !strings.Contains(err.Error(), "data/f9") {
		t.Errorf("missing file: %v", err)
	}
	if _, _, err := Verify(ctx, mkimg(t, files, "")); err == nil || !strings.Contains(err.Error(), "/manifest") {
		t.Errorf("no manifest: %v", err)
	}
	garbage := filepath.Join(t.TempDir(), "zero.raw")
	os.WriteFile(garbage, make([]byte, 1<<20), 0o644)
	if _, _, err := Verify(ctx, garbage); err == nil {
		t.Error("image without a file system: no error")
	}
}
