package guest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseManifest(t *testing.T) {
	sum := sha256.Sum256([]byte("x"))
	good := manifest{seq: 7, files: []manifestFile{{path: "data/f1", sum: sum}, {path: "data/f2", sum: sum}}}
	m, err := parseManifest(good.format())
	if err != nil {
		t.Fatal(err)
	}
	if m.seq != 7 || len(m.files) != 2 || m.files[1].path != "data/f2" || m.files[0].sum != sum {
		t.Errorf("parsed %+v", m)
	}
	line := strings.Repeat("ab", 32) + "  "
	for _, bad := range []string{
		"",
		"seq 1", // no newline: torn write
		"seq -1\n", "seq 01\n", "seq x\n",
		line + "data/f1\n", // no seq line
		line + "data/f1\nseq 1\nseq 2\n",
		line + "/etc/passwd\nseq 1\n",
		line + "../x\nseq 1\n",
		line + "a b\nseq 1\n",
		line + "data//f1\nseq 1\n",
		line + "data/f1\n" + line + "data/f1\nseq 1\n",
		strings.ToUpper(line) + "data/f1\nseq 1\n",
		"abcd  data/f1\nseq 1\n",
		"\nseq 1\n",
	} {
		if _, err := parseManifest([]byte(bad)); err == nil {
			t.Errorf("parseManifest(%q): no error", bad)
		}
	}
}

func FuzzParseManifest(f *testing.F) {
	sum := sha256.Sum256(nil)
	f.Add(manifest{seq: 3, files: []manifestFile{{path: "data/f1", sum: sum}}}.format())
	f.Add([]byte("seq 0\n"))
	f.Add([]byte("seq 1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseManifest(data)
		if err != nil {
			return
		}
		// Accepted input is canonical: it formats back to itself.
		if out := m.format(); !bytes.Equal(out, data) {
			t.Fatalf("round trip: %q -> %q", data, out)
		}
		for _, f := range m.files {
			if !validPath(f.path) || strings.ContainsAny(f.path, " \n\"") {
				t.Fatalf("accepted path %q", f.path)
			}
		}
	})
}

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
	m := manifest{seq: 42}
	for _, p := range []string{"data/f1", "data/f2"} {
		m.files = append(m.files, manifestFile{path: p, sum: sha256.Sum256([]byte(files[p]))})
	}
	n, seq, err := Verify(ctx, mkimg(t, files, string(m.format())))
	if err != nil || n != 2 || seq != 42 {
		t.Fatalf("Verify good image: %d files, seq %d, %v", n, seq, err)
	}

	bad := m
	bad.files = append([]manifestFile(nil), m.files...)
	bad.files[1].sum[0] ^= 1
	if _, _, err := Verify(ctx, mkimg(t, files, string(bad.format()))); err == nil || !strings.Contains(err.Error(), "data/f2 has SHA-256") {
		t.Errorf("wrong checksum: %v", err)
	}
	missing := m
	missing.files = append(append([]manifestFile(nil), m.files...), manifestFile{path: "data/f9"})
	if _, _, err := Verify(ctx, mkimg(t, files, string(missing.format()))); err == nil || !strings.Contains(err.Error(), "data/f9") {
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

// TestInitramfs lists the archive with cpio, when installed, to check the
// newc writer.
func TestInitramfs(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	r := newInitramfs()
	r.chardev("dev/console", 5, 1)
	r.file("bin/x", 0o755, []byte("hello"))
	r.symlink("bin/sh", "x")
	r.file("init", 0o755, initScript([]string{"/lib/modules/a.ko"}, initOptions{agent: true, boot: true}))
	var b bytes.Buffer
	if err := r.writeTo(&b); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-t", "-v", "--quiet")
	cmd.Stdin = &b
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v: %s", err, out)
	}
	for _, want := range []string{"crw-------", "dev/console", "-rwxr-xr-x", "bin/x", "bin/sh -> x", "drwxr-xr-x", " init"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("cpio listing lacks %q:\n%s", want, out)
		}
	}
}
