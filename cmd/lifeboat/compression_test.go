package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVaultInitCompression: `vault init --compression s2` makes a vault
// whose blocks are stored with s2; a replicate and a restore go through
// it; an unknown name is refused, naming it.
func TestVaultInitCompression(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"LIFEBOAT_PASSPHRASE": "correct horse battery staple"}
	v, disk, out := filepath.Join(dir, "vault"), filepath.Join(dir, "root.img"), filepath.Join(dir, "restored.img")
	img := bytes.Repeat([]byte("lifeboat s2 "), 1<<16)
	if err := os.WriteFile(disk, img, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := runCLI(t, env, "vault", "init", "--compression", "lz4", filepath.Join(dir, "bad")); code == exitOK ||
		!strings.Contains(stderr, `compression "lz4"`) || !strings.Contains(stderr, "s2") {
		t.Fatalf("init with lz4: exit %d: %s", code, stderr)
	}
	stdout, stderr, code := runCLI(t, env, "vault", "init", "--compression", "s2", v)
	if code != exitOK || !strings.Contains(stdout, ", s2)") {
		t.Fatalf("vault init: exit %d: %s%s", code, stdout, stderr)
	}
	if _, stderr, code := runCLI(t, env, "replicate", "--vault", v, "--machine", "m", "--disk", "root="+disk,
		"--state-dir", filepath.Join(dir, "state"), "--once"); code != exitOK {
		t.Fatalf("replicate: exit %d: %s", code, stderr)
	}
	if _, stderr, code := runCLI(t, env, "restore", "latest", "--vault", v, "--disk", "root", "--to", out); code != exitOK {
		t.Fatalf("restore: exit %d: %s", code, stderr)
	}
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, img) {
		t.Fatalf("restored image differs: %v", err)
	}
	if stdout, stderr, code := runCLI(t, env, "vault", "check", "--read-data", "--vault", v); code != exitOK {
		t.Fatalf("check: exit %d: %s%s", code, stdout, stderr)
	}
}
