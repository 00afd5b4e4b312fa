package exec

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/computetest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
)

type tlog struct{ t testing.TB }

func (w tlog) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func newProvider(t testing.TB, o Options) compute.Provider {
	t.Helper()
	o.Logger = slog.New(slog.NewTextHandler(tlog{t}, nil))
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func hookPath(t testing.TB) string {
	p, err := filepath.Abs("testdata/qemu-hook.sh")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestContract runs the contract suite through testdata/qemu-hook.sh, a
// hook that really starts qemu-system-x86_64: the guest boots, hydrates
// and is checked exactly as with the other providers.
func TestContract(t *testing.T) {
	for _, tool := range []string{"jq", "socat"} {
		if _, err := exec.LookPath(tool); err != nil {
			msg := "the exec provider's test hook needs " + tool + ": apt-get install -y jq socat"
			if os.Getenv("CI") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the exec provider's contract test runs as root in CI (loop devices, tmpfs)")
		}
		t.Skip("the exec provider's contract test runs as root (loop devices, tmpfs)")
	}
	guest.NeedBoot(t, guest.FirmwareBIOS)
	hook := hookPath(t)
	computetest.Run(t, computetest.Config{
		New:           func(t testing.TB) compute.Provider { return newProvider(t, Options{Script: hook}) },
		MissingBinary: func(t testing.TB) compute.Provider { return newProvider(t, Options{Script: "/nonexistent/hook.sh"}) },
		NICs:          []compute.NIC{{Network: compute.Network{Kind: compute.NetUser, Isolated: true}}},
	})
}

// script writes a hook script into a temporary directory.
func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hook.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestProtocol checks the request, the replies and the errors with small
// scripts, no VM.
func TestProtocol(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	spec := compute.Spec{Name: "vm1", Dir: dir, Disks: []compute.Disk{{Name: "vda", Size: 1, Backing: "nbd+unix:///vda?socket=/s"}}}

	// The request on stdin and in the environment; progress and instance lines.
	record := filepath.Join(dir, "request.json")
	p := newProvider(t, Options{Script: script(t, `cat > `+record+`
[ "$LIFEBOAT_ACTION" = start ] && [ "$LIFEBOAT_VM_NAME" = vm1 ] && [ "$LIFEBOAT_VM_DIR" = `+dir+` ] || exit 9
echo 'not json' >&2
echo '{"progress":{"done":1,"total":2}}'
echo '{"instance":{"name":"vm1","state":"running","pid":42}}'
`)})
	inst, err := p.Start(ctx, spec)
	if err != nil || inst.PID != 42 || inst.State != compute.StateRunning {
		t.Fatalf("Start: %+v, %v", inst, err)
	}
	req, _ := os.ReadFile(record)
	for _, want := range []string{`"action":"start"`, `"name":"vm1"`, `"dir":"` + dir + `"`, `"backing":"nbd+unix:///vda?socket=/s"`} {
		if !strings.Contains(string(req), want) {
			t.Errorf("request lacks %s: %s", want, req)
		}
	}
	var got []compute.Progress
	if err := p.Hydrate(ctx, "vm1", dir, func(pr compute.Progress) { got = append(got, pr) }); err == nil {
		t.Error("Hydrate through a script that exits 9: no error")
	}

	p = newProvider(t, Options{Script: script(t, `echo '{"progress":{"done":1,"total":2}}'; echo '{"progress":{"done":2,"total":2}}'`)})
	if err := p.Hydrate(ctx, "vm1", dir, func(pr compute.Progress) { got = append(got, pr) }); err != nil || len(got) != 2 || got[1].Done != 2 {
		t.Errorf("Hydrate: %v, progress %+v", err, got)
	}

	// Exit 3: no such VM. Other failures carry stderr.
	p = newProvider(t, Options{Script: script(t, `echo "no VM here" >&2; exit 3`)})
	if err := p.Stop(ctx, "vm1", dir, false); !errors.Is(err, compute.ErrNotFound) || !strings.Contains(err.Error(), "no VM here") {
		t.Errorf("Stop of nothing: %v", err)
	}
	p = newProvider(t, Options{Script: script(t, `echo "the cloud is down" >&2; exit 1`)})
	if _, err := p.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "the cloud is down") || !strings.Contains(err.Error(), "exit status 1") {
		t.Errorf("failing Start: %v", err)
	}
	if _, err := p.Inspect(ctx, "vm1", dir); err == nil {
		t.Error("Inspect through a failing script: no error")
	}

	// A start that answers no running instance is an error.
	p = newProvider(t, Options{Script: script(t, `echo '{"instance":{"name":"vm1","state":"stopped"}}'`)})
	if _, err := p.Start(ctx, spec); err == nil {
		t.Error("Start answered stopped: no error")
	}

	// Timeout: the script's process group is killed.
	p = newProvider(t, Options{Script: script(t, `sleep 30 & sleep 30`), Timeout: 300 * time.Millisecond})
	start := time.Now()
	if _, err := p.Inspect(ctx, "vm1", dir); err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("slow script: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("slow script took %v to end", d)
	}
	if _, err := New(Options{}); err == nil {
		t.Error("no script: no error")
	}
	if files := computetest.Files(t, dir); len(files) != 1 || files[0] != "request.json" {
		t.Errorf("dir holds %q", files)
	}
}
