package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestTargetApplyCommand: `target apply --json` brings a changed copy of
// a replicated disk back to the point in JSON lines, and a target inside
// the vault is refused with exit 2.
func TestTargetApplyCommand(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"LIFEBOAT_PASSPHRASE": "correct horse battery staple"}
	v, disk := filepath.Join(dir, "vault"), filepath.Join(dir, "root.img")
	img := bytes.Repeat([]byte("lifeboat"), 1<<17)
	if err := os.WriteFile(disk, img, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := runCLI(t, env, "vault", "init", v); code != 0 {
		t.Fatalf("vault init: exit %d: %s", code, stderr)
	}
	if _, stderr, code := runCLI(t, env, "replicate", "--vault", v, "--machine", "m", "--disk", "root="+disk, "--once",
		"--state-dir", filepath.Join(dir, "state")); code != 0 {
		t.Fatalf("replicate: exit %d: %s", code, stderr)
	}
	target := filepath.Join(dir, "orig.img")
	old := append([]byte(nil), img[:len(img)/2]...)
	copy(old[1000:], "changed since")
	if err := os.WriteFile(target, old, 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := runCLI(t, env, "target", "apply", "--vault", v, "--machine", "m", "--disk", "root", "--to", target, "--json")
	if code != 0 {
		t.Fatalf("target apply: exit %d: %s", code, stderr)
	}
	progress, result := parseLines(t, stdout)
	res, _ := result["apply"].(map[string]any)
	if result["result"] != "applied" || len(progress) == 0 || res == nil || res["written_bytes"].(float64) <= 0 {
		t.Fatalf("output:\n%s", stdout)
	}
	got, err := os.ReadFile(target)
	if err != nil || !bytes.Equal(got, img) {
		t.Fatalf("target is not the point's disk (%v)", err)
	}
	if _, err := os.Stat(res["baseline"].(string)); err != nil {
		t.Fatalf("baseline: %v", err)
	}

	_, stderr, code = runCLI(t, env, "target", "apply", "--vault", v, "--machine", "m", "--to", filepath.Join(v, "x.img"))
	if code != exitUsage {
		t.Fatalf("a target inside the vault: exit %d, want %d: %s", code, exitUsage, stderr)
	}
}
