package main

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// parseLines parses every line of out as one JSON object and checks the
// shape: progress objects first, each with a phase, then one result.
func parseLines(t *testing.T, out string) (progress []map[string]any, result map[string]any) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	for i, line := range lines {
		var obj map[string]any
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Fatalf("line %d is not one JSON object: %v\n%s", i+1, err, line)
		}
		if _, ok := obj["result"]; ok {
			if i != len(lines)-1 {
				t.Fatalf("result on line %d of %d", i+1, len(lines))
			}
			return progress, obj
		}
		if _, ok := obj["phase"].(string); !ok {
			t.Fatalf("line %d has no phase: %s", i+1, line)
		}
		progress = append(progress, obj)
	}
	t.Fatalf("no result line in:\n%s", out)
	return nil, nil
}

func TestJSONLinesWriter(t *testing.T) {
	var out bytes.Buffer
	jl := newJSONLines(&out, demoPhase)
	for _, s := range []string{"== Sample disk: /tmp/d.img\n   wro", "te 3 MiB\n\n== Test failover: skipped\n"} {
		if _, err := jl.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	_ = jl.Progress("replicate", 1, 4, map[string]any{"point": "ab"})
	_, _ = jl.Write([]byte("unterminated"))
	_ = jl.Result("ok", map[string]any{"seconds": 1.5})
	progress, result := parseLines(t, out.String())
	want := []string{"sample Sample disk: /tmp/d.img", "sample wrote 3 MiB", "test-failover Test failover: skipped", "replicate ", "test-failover unterminated"}
	if len(progress) != len(want) {
		t.Fatalf("%d progress lines, want %d:\n%s", len(progress), len(want), out.String())
	}
	for i, w := range want {
		msg, _ := progress[i]["msg"].(string)
		if got := progress[i]["phase"].(string) + " " + msg; got != w {
			t.Errorf("line %d: %q, want %q", i+1, got, w)
		}
	}
	if progress[3]["done"] != 1.0 || progress[3]["total"] != 4.0 || result["result"] != "ok" {
		t.Errorf("progress %v, result %v", progress[3], result)
	}
}

// recover boot --json: the job's steps, then its result, each line one
// JSON object; also when the job fails (no point in the vault) or cannot
// start.
func TestRecoverBootJSON(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"LIFEBOAT_PASSPHRASE": "correct horse battery staple"}
	v := filepath.Join(dir, "vault")
	if _, stderr, code := runCLI(t, env, "vault", "init", v); code != 0 {
		t.Fatalf("vault init: exit %d: %s", code, stderr)
	}
	out, _, code := runCLI(t, env, "recover", "boot", "web01", "--vault", v, "--site-dir", filepath.Join(dir, "site"), "--json")
	if code != exitError {
		t.Errorf("exit %d", code)
	}
	progress, result := parseLines(t, out)
	if len(progress) == 0 || progress[0]["phase"] != "choose point" || progress[0]["total"] == nil || result["result"] != "failed" ||
		!strings.Contains(result["error"].(string), "no latest point") || result["job"] == nil {
		t.Errorf("progress %v\nresult %v", progress, result)
	}
	out, _, code = runCLI(t, env, "recover", "boot", "web01", "--vault", v, "--site-dir", filepath.Join(dir, "site"), "--provider", "nonesuch", "--json")
	if code == exitOK {
		t.Error("a bad provider succeeded")
	}
	if _, result := parseLines(t, out); result["result"] != "failed" || result["error"] == nil {
		t.Errorf("result %v", result)
	}
}

// demo --json: every line of the whole demo, run as the binary (its test
// failover starts `lifeboat points serve` processes of itself), is one
// JSON object, the points are counted, the last line is the result.
func TestDemoJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole demo")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("the demo needs e2fsprogs")
	}
	bin := filepath.Join(t.TempDir(), "lifeboat")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(t.Context(), bin, "demo", "--json", "--cycles", "2", "--size", "64", "--data", "4", "--dir", t.TempDir())
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v\n%s\n%s", err, out.String(), errb.String())
	}
	progress, result := parseLines(t, out.String())
	phases, points := map[string]bool{}, 0
	for _, p := range progress {
		phases[p["phase"].(string)] = true
		if p["phase"] == "replicate" {
			points++
			if p["total"] != 2.0 {
				t.Errorf("replicate: %v", p)
			}
		}
	}
	for _, ph := range []string{"sample", "server", "restore", "check"} {
		if !phases[ph] {
			t.Errorf("no phase %s in %v", ph, phases)
		}
	}
	if points != 2 || result["result"] != "ok" {
		t.Errorf("%d points, result %v", points, result)
	}
}
