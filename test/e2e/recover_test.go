package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
)

// TestRecoverFromTheVaultAlone: a machine replicated with no server at
// all is booted from the vault by `lifeboat recover` — no state
// database, no configuration server: the point server runs as its own
// process, the VM boots from the point's disk by its own bootloader and
// its init checks every file of its manifest; list shows it, remove
// leaves no process, socket or directory.
func TestRecoverFromTheVaultAlone(t *testing.T) {
	img := guest.BuildBootable(t, guest.BootOptions{})
	e := newEnv(t)
	e.mustRun("vault", "init", e.vault)
	e.mustRun("replicate", "--once", "--machine", "web", "--disk", "vda="+img.Disk)
	os.Remove(img.Disk) // the source is gone: only the vault is left

	site := filepath.Join(e.dir, "site")
	t.Cleanup(func() { killSite(site) }) // a failure below must not leave the VM running
	out := e.mustRun("recover", "machines", "--site-dir", site)
	if !strings.Contains(out, "web") {
		t.Fatalf("recover machines:\n%s", out)
	}
	start := time.Now()
	out = e.mustRun("recover", "boot", "web", "--test", "--site-dir", site, "--json")
	took := time.Since(start)
	var job struct {
		State string                     `json:"state"`
		Data  map[string]json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(recoverJob(t, out), &job); err != nil || job.State != "succeeded" {
		t.Fatalf("recover boot: %v\n%s", err, out)
	}
	var vm orchestrate.VMRecord
	if err := json.Unmarshal(job.Data["vm"], &vm); err != nil || vm.Console == "" {
		t.Fatalf("recover boot recorded no VM: %s", job.Data["vm"])
	}
	t.Logf("recover boot returned in %s (VM %s)", took.Round(time.Millisecond), vm.Name)
	want := fmt.Sprintf("%s seq %d files %d", guest.ManifestPassMarker, guest.BootSeq, guest.BootFiles)
	waitConsole(t, vm.Console, want, 3*time.Minute)

	if out := e.mustRun("recover", "list", "--site-dir", site); !strings.Contains(out, vm.Name) || !strings.Contains(out, "running") {
		t.Fatalf("recover list:\n%s", out)
	}
	e.mustRun("recover", "remove", "web", "--site-dir", site)
	if _, err := os.Stat(vm.Dir); !os.IsNotExist(err) {
		t.Fatalf("the VM's directory is still there: %v", err)
	}
	// The VM's name is in its QEMU's command line and in its point
	// server's (the ready file and socket are in the VM's directory);
	// other point servers on the host are not this test's.
	if pids := processesWith(vm.Name); len(pids) != 0 {
		t.Fatalf("processes left behind: %v", pids)
	}
}

// waitConsole waits until the console log contains want.
func waitConsole(t *testing.T, path, want string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return
		}
		if strings.Contains(string(b), guest.ManifestFailMarker) || time.Now().After(deadline) {
			t.Fatalf("console %s has no %q:\n%s", path, want, b)
		}
		time.Sleep(200 * time.Millisecond) // poll pause under the deadline above
	}
}

// processesWith lists the PIDs whose command line contains any of s.
func processesWith(s ...string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		for _, w := range s {
			if strings.Contains(cmd, w) {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// recoverJob returns the job of `lifeboat recover boot|remove --json`:
// its output is JSON lines, progress first, then {"result":…,"job":…};
// every line must be a JSON object.
func recoverJob(t *testing.T, out string) []byte {
	t.Helper()
	var last struct {
		Result string          `json:"result"`
		Job    json.RawMessage `json:"job"`
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Fatalf("recover --json printed a line that is not JSON: %q\n%s", l, out)
		}
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last.Result == "" || last.Job == nil {
		t.Fatalf("recover --json: the last line is not a result with its job (%v):\n%s", err, out)
	}
	return last.Job
}
