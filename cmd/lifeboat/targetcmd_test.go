package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
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

// TestTargetRunFlags: --state-dir is required, every --disk must be
// MACHINE/DISK=PATH with valid names, once each, and --every positive;
// each mistake is a usage error that names the form, before the server
// is asked anything.
func TestTargetRunFlags(t *testing.T) {
	f := newFakeAPI(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--disk", "m/d=/x"}, "give --state-dir DIR"},
		{[]string{"--state-dir", "s"}, "give --disk MACHINE/DISK=PATH"},
		{[]string{"--state-dir", "s", "--disk", "m=/x"}, `--disk "m=/x": use MACHINE/DISK=PATH`},
		{[]string{"--state-dir", "s", "--disk", "m/d"}, `--disk "m/d": use MACHINE/DISK=PATH`},
		{[]string{"--state-dir", "s", "--disk", "/d=/x"}, `--disk "/d=/x": use MACHINE/DISK=PATH`},
		{[]string{"--state-dir", "s", "--disk", "m/=/x"}, `--disk "m/=/x": use MACHINE/DISK=PATH`},
		{[]string{"--state-dir", "s", "--disk", "m/d="}, `--disk "m/d=": use MACHINE/DISK=PATH`},
		{[]string{"--state-dir", "s", "--disk", "m/a/b=/x"}, `--disk "m/a/b=/x" (MACHINE/DISK=PATH): invalid disk name "a/b"`},
		{[]string{"--state-dir", "s", "--disk", "m/d=/x", "--disk", "m/d=/y"}, "disk m/d is given twice"},
		{[]string{"--state-dir", "s", "--disk", "m/d=/x", "--every", "0s"}, "--every 0s: give a positive interval"},
		{[]string{"--state-dir", "s", "--disk", "m/d=/x", "--every", "often"}, `invalid argument "often" for "--every"`},
	} {
		_, stderr, code := f.lifeboat(append([]string{"target", "run"}, c.args...)...)
		if code != exitUsage || !strings.Contains(stderr, c.want) {
			t.Errorf("target run %v: exit %d, %q; want exit %d saying %q", c.args, code, stderr, exitUsage, c.want)
		}
	}
	if n := f.count(); n != 0 {
		t.Fatalf("%d requests reached the server", n)
	}
}

// TestTargetRunCommand: `target run` reports the machine's disk to
// POST /api/v1/machines/{name}/reverse/target, applies the point the
// server answers with onto the original disk, reports it applied with
// what it wrote, and exits 0 when stopped.
func TestTargetRunCommand(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"LIFEBOAT_PASSPHRASE": "correct horse battery staple"}
	v, disk := filepath.Join(dir, "vault"), filepath.Join(dir, "root.img")
	img := bytes.Repeat([]byte("lifeboat"), 1<<17)
	writeTestFile(t, disk, img)
	if _, stderr, code := runCLI(t, env, "vault", "init", v); code != 0 {
		t.Fatalf("vault init: exit %d: %s", code, stderr)
	}
	stdout, stderr, code := runCLI(t, env, "replicate", "--vault", v, "--machine", "web@1", "--disk", "root="+disk, "--once", "--json",
		"--state-dir", filepath.Join(dir, "state"))
	var cycle struct{ Point string }
	if code != 0 || json.Unmarshal([]byte(stdout), &cycle) != nil || cycle.Point == "" {
		t.Fatalf("replicate: exit %d: %s%s", code, stdout, stderr)
	}
	orig := filepath.Join(dir, "orig.img")
	old := append([]byte(nil), img...)
	copy(old[5000:], "changed at the primary site")
	writeTestFile(t, orig, old)

	f := newFakeAPI(t)
	var mu sync.Mutex
	var reports []api.TargetReport
	f.on("POST /api/v1/machines/web@1/reverse/target", func(w http.ResponseWriter, r *http.Request) {
		var rep api.TargetReport
		if err := json.NewDecoder(r.Body).Decode(&rep); err != nil {
			answer(w, 400, api.ErrorBody{Error: api.Error{Code: api.CodeBadRequest, Message: err.Error()}})
			return
		}
		mu.Lock()
		reports = append(reports, rep)
		mu.Unlock()
		answer(w, 200, api.Reverse{Job: "j1", Point: &api.ReversePoint{ID: cycle.Point}})
	})
	last := func() (api.TargetReport, int) {
		mu.Lock()
		defer mu.Unlock()
		if len(reports) == 0 {
			return api.TargetReport{}, 0
		}
		return reports[len(reports)-1], len(reports)
	}

	errb := &syncBuffer{}
	a := testApp(&syncBuffer{}, errb, env)
	root := a.root()
	root.SetArgs([]string{"target", "run", "--config", f.config, "--vault", v, "--name", "primary", "--every", "1h",
		"--disk", "web@1/root=" + orig, "--state-dir", filepath.Join(dir, "target")})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() { done <- a.exitCode(root.ExecuteContext(ctx)) }()
	code = -1
	reported := testutil.Within(30*time.Second, func() bool {
		select {
		case code = <-done:
			return true // ended by itself: failed below
		default:
		}
		r, _ := last()
		return r.Applied != "" || r.Error != ""
	})
	cancel()
	if !reported {
		t.Fatalf("after 30s, no report of the point applied; the command logged:\n%s", errb.String())
	}
	if code == -1 {
		code = <-done
	}
	if code != 0 {
		t.Fatalf("target run stopped with exit %d:\n%s", code, errb.String())
	}
	r, n := last()
	if r.Applied != cycle.Point || r.Name != "primary" || len(r.Disks) != 1 || r.Disks[0].Name != "root" || r.Disks[0].Path != orig ||
		r.Disks[0].Written == 0 || r.Disks[0].Compared != int64(len(img)) || n < 3 {
		t.Fatalf("%d reports, the last %+v; want point %s applied onto %s", n, r, cycle.Point, orig)
	}
	got, err := os.ReadFile(orig)
	if err != nil || !bytes.Equal(got, img) {
		t.Fatalf("the original disk is not the point's (%v)", err)
	}
	if !strings.Contains(errb.String(), "applied point") {
		t.Fatalf("the command did not log the apply:\n%s", errb.String())
	}
}

func writeTestFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
