package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFlippedByteThroughTheCLI flips one byte inside a stored pack: `vault
// check` passes (it reads headers only), `check --read-data` exits 3 and
// names the pack and the affected points, restoring an affected point
// fails and leaves no target, and unaffected points still restore.
func TestFlippedByteThroughTheCLI(t *testing.T) {
	e := newEnv(t)
	disk := filepath.Join(e.dir, "disk.img")
	makeDisk(t, disk, 8<<20, 6<<20, 11)
	e.mustRun("vault", "init", e.vault, "--pack-size", "1048576")
	want := map[string]string{"a": fileSHA(t, disk)}
	e.mustRun("replicate", "--once", "--machine", "m", "--disk", "root="+disk, "--label", "run=a")

	// The second point adds one pack of new blocks; damage that pack.
	before := map[string]bool{}
	_ = filepath.Walk(filepath.Join(e.vault, "data"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			before[p] = true
		}
		return nil
	})
	churn(t, disk, 3, newRand(12))
	want["b"] = fileSHA(t, disk)
	e.mustRun("replicate", "--once", "--machine", "m", "--disk", "root="+disk, "--label", "run=b")
	var pack string
	_ = filepath.Walk(filepath.Join(e.vault, "data"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && !before[p] && fi.Size() > 100<<10 {
			pack = p
		}
		return nil
	})
	if pack == "" {
		t.Fatal("no new pack found")
	}
	b, err := os.ReadFile(pack)
	if err != nil {
		t.Fatal(err)
	}
	b[100] ^= 0x01 // inside the first blob
	if err := os.WriteFile(pack, b, 0o600); err != nil {
		t.Fatal(err)
	}

	if r := e.run("vault", "check"); r.code != 0 {
		t.Fatalf("structure check should not read blob data: exit %d\n%s", r.code, r.stdout)
	}
	r := e.run("vault", "check", "--read-data", "--json")
	if r.code != 3 {
		t.Fatalf("check --read-data: exit %d, want 3\n%s%s", r.code, r.stdout, r.stderr)
	}
	var rep struct {
		Damage []struct {
			Object string   `json:"object"`
			Points []string `json:"points"`
		} `json:"damage"`
		Affected []string `json:"affected_points"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	rel, _ := filepath.Rel(e.vault, pack)
	named := false
	for _, d := range rep.Damage {
		named = named || d.Object == filepath.ToSlash(rel)
	}
	if !named || len(rep.Affected) != 1 {
		t.Fatalf("check report does not name %s with one affected point: %+v", rel, rep)
	}
	for _, p := range e.points() {
		target := filepath.Join(e.dir, "r-"+p.Labels["run"]+".img")
		res := e.run("restore", p.ID[:12], "--to", target)
		if p.ID == rep.Affected[0] {
			if res.code == 0 || !strings.Contains(res.stderr, "authentication failed") {
				t.Fatalf("restore of the damaged point: exit %d: %s", res.code, res.stderr)
			}
			if _, err := os.Stat(target); !os.IsNotExist(err) {
				t.Fatal("failed restore left its target behind")
			}
			continue
		}
		if res.code != 0 || fileSHA(t, target) != want[p.Labels["run"]] {
			t.Fatalf("unaffected point %s: exit %d %s", p.ID[:8], res.code, res.stderr)
		}
	}
}
