package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestPruneWhileReplicating runs prune over and over (margin 0, some runs
// killed) while `replicate --interval` writes new points of a disk whose
// content is swapped, atomically, between known versions. Every point that
// survives must restore to one of those versions: GC never deletes data a
// live writer is about to reference.
func TestPruneWhileReplicating(t *testing.T) {
	e := newEnv(t)
	disk := filepath.Join(e.dir, "disk.img")
	makeDisk(t, disk, 16<<20, 12<<20, 9)
	e.mustRun("vault", "init", e.vault, "--pack-size", fmt.Sprint(1<<20))
	r := rand.New(rand.NewPCG(5, 5))

	versions := map[string]bool{fileSHA(t, disk): true}
	next := filepath.Join(e.dir, "next.img")
	newVersion := func() {
		b, err := os.ReadFile(disk)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(next, b, 0o644); err != nil {
			t.Fatal(err)
		}
		churn(t, next, 20+r.IntN(60), r)
		versions[fileSHA(t, next)] = true
		if err := os.Rename(next, disk); err != nil { // a cycle reads one version or the other
			t.Fatal(err)
		}
	}

	rep := e.cmd("replicate", "--interval", "150ms", "--machine", "m", "--disk", "root="+disk)
	rep.Stdout, rep.Stderr = io.Discard, io.Discard
	if err := rep.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = rep.Process.Signal(syscall.SIGTERM)
			_ = rep.Wait()
		}
	}
	defer stop()

	prune := []string{"vault", "prune", "--retention", "1s:all,1h:2s", "--gc-margin", "0s", "--repack-threshold", "0.2"}
	deadline := time.Now().Add(40 * time.Second)
	runs, kills, deleted, resurrected, pending := 0, 0, 0, 0, 0
	for i := 0; time.Now().Before(deadline) && i < 40; i++ {
		newVersion()
		time.Sleep(time.Duration(100+r.IntN(300)) * time.Millisecond) // deliberate: random pacing of the concurrent load
		if i%4 == 3 {
			if e.killAfter(time.Duration(r.IntN(200))*time.Millisecond, prune...) {
				kills++
			}
		} else {
			var pr struct {
				Deleted     int `json:"packs_deleted"`
				Resurrected int `json:"packs_resurrected"`
				Pending     int `json:"marks_pending"`
			}
			if err := json.Unmarshal([]byte(e.mustRun(append(prune, "--json")...)), &pr); err != nil {
				t.Fatal(err)
			}
			deleted += pr.Deleted
			resurrected += pr.Resurrected
			pending += pr.Pending
		}
		runs++
	}
	stop()
	e.mustRun(prune...)
	e.mustRun(prune...)
	if r := e.run("vault", "check", "--read-data"); r.code != 0 {
		t.Fatalf("check after concurrent prune: %s%s", r.stdout, r.stderr)
	}
	pts := e.points()
	for _, p := range pts {
		if got := e.restoreSHA(p.ID, "root"); !versions[got] {
			t.Fatalf("point %s restores to content that was never on the disk", p.ID[:8])
		}
	}
	t.Logf("%d prunes (%d killed) next to live replication; %d versions; %d points kept, all restore; packs deleted %d, resurrected %d, sweeps deferred for a running writer %d",
		runs, kills, len(versions), len(pts), deleted, resurrected, pending)
	if len(pts) < 2 || runs < 10 || deleted == 0 {
		t.Fatalf("too little happened: %d points, %d prunes", len(pts), runs)
	}
}
