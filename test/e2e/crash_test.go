package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// verifyAll checks the vault and that every listed point restores to the
// content recorded for its run label.
func verifyAll(t *testing.T, e *env, want map[string]string, readData bool) int {
	t.Helper()
	args := []string{"vault", "check"}
	if readData {
		args = append(args, "--read-data")
	}
	if r := e.run(args...); r.code != 0 {
		t.Fatalf("vault check: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	pts := e.points()
	for _, p := range pts {
		run := p.Labels["run"]
		sha, ok := want[run]
		if !ok {
			t.Fatalf("point %s has unknown run label %q", p.ID[:8], run)
		}
		if got := e.restoreSHA(p.ID, "root"); got != sha {
			t.Fatalf("point %s (run %s) restores to %s, want %s", p.ID[:8], run, got[:12], sha[:12])
		}
	}
	return len(pts)
}

// cycleOut is the --json line of `replicate`.
type cycleOut struct {
	Point  string `json:"point"`
	Stored struct {
		NewBytes int64 `json:"new_bytes"`
	} `json:"stored"`
}

func (e *env) replicateJSON(args ...string) cycleOut {
	e.t.Helper()
	var c cycleOut
	out := e.mustRun(append([]string{"replicate", "--once", "--json"}, args...)...)
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &c); err != nil {
		e.t.Fatalf("replicate output %q: %v", out, err)
	}
	return c
}

func hasRun(pts []point, run string) bool {
	for _, p := range pts {
		if p.Labels["run"] == run {
			return true
		}
	}
	return false
}

// TestKillReplicateAtRandomMoments kills `lifeboat replicate` with SIGKILL
// at random moments, first while it seeds the disk, then during
// incremental cycles. After each kill the vault checks clean and every
// listed point restores to the disk as it was; the vault never holds a
// block twice, and the cycle after a kill sends only what no earlier run
// stored.
func TestKillReplicateAtRandomMoments(t *testing.T) {
	e := newEnv(t)
	disk := filepath.Join(e.dir, "disk.img")
	const size, data, pack = 160 << 20, 96 << 20, 2 << 20
	makeDisk(t, disk, size, data, 1)
	e.mustRun("vault", "init", e.vault, "--pack-size", fmt.Sprint(pack))
	r := rand.New(rand.NewPCG(42, 42))
	want := map[string]string{}
	args := func(run string) []string {
		return []string{"--machine", "m1", "--disk", "root=" + disk, "--label", "run=" + run}
	}

	// Seed, killed three times part-way.
	want["seed"] = fileSHA(t, disk)
	for i := range 3 {
		before := dirBytes(t, filepath.Join(e.vault, "data"))
		target := before + int64(8+r.IntN(16))<<20
		if !e.killWhen(func() bool { return dirBytes(t, filepath.Join(e.vault, "data")) >= target },
			append([]string{"replicate", "--once"}, args("seed")...)...) {
			t.Fatalf("seed run %d finished before it was killed", i)
		}
		verifyAll(t, e, want, false)
		t.Logf("seed run %d killed: vault data %d -> %d MiB", i, before>>20, dirBytes(t, filepath.Join(e.vault, "data"))>>20)
	}
	held := dirBytes(t, filepath.Join(e.vault, "data"))
	c := e.replicateJSON(args("seed")...)
	t.Logf("seed completed: sent %d MiB of %d MiB", c.Stored.NewBytes>>20, data>>20)
	if held < 8<<20 || c.Stored.NewBytes > data-held+3*pack {
		t.Fatalf("the killed runs stored %d bytes, yet the completing run sent %d of %d: work was redone", held, c.Stored.NewBytes, data)
	}

	// Incremental cycles, killed at random moments.
	unique := int64(data)
	pending := int64(0) // bytes churned since the last published point
	kills := 0
	for i := range 10 {
		churn(t, disk, 40, r)
		unique += 40 << 16
		pending += 40 << 16
		run := fmt.Sprint(i)
		want[run] = fileSHA(t, disk)
		if e.killAfter(time.Duration(r.IntN(350))*time.Millisecond, append([]string{"replicate", "--once"}, args(run)...)...) {
			kills++
		}
		pts := e.points()
		if hasRun(pts, run) {
			pending = 0
		}
		verifyAll(t, e, want, false)
	}
	want["final"] = fileSHA(t, disk)
	c = e.replicateJSON(args("final")...)
	n := verifyAll(t, e, want, true)
	stored := dirBytes(t, filepath.Join(e.vault, "data"))
	t.Logf("%d of 10 incremental runs killed; %d points; unique data %d MiB, vault data %d MiB; final cycle sent %d KiB for %d KiB churned since the last point",
		kills, n, unique>>20, stored>>20, c.Stored.NewBytes>>10, pending>>10)
	if kills < 3 {
		t.Fatalf("only %d incremental runs were killed mid-way", kills)
	}
	// Random data does not compress: each block once plus a little metadata.
	var rep struct {
		Duplicates     int   `json:"duplicate_blobs"`
		DuplicateBytes int64 `json:"duplicate_bytes"`
	}
	if err := json.Unmarshal([]byte(e.mustRun("vault", "check", "--json")), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Duplicates > 0 {
		t.Fatalf("%d blobs (%d bytes) were stored twice", rep.Duplicates, rep.DuplicateBytes)
	}
	// Random data does not compress: each block once plus a little metadata.
	if stored > unique*103/100+(2<<20) {
		t.Fatalf("vault holds %d bytes for %d unique", stored, unique)
	}
	if c.Stored.NewBytes > pending+3*pack {
		t.Fatalf("final cycle sent %d bytes, only %d were churned since the last point", c.Stored.NewBytes, pending)
	}
}

// TestKillPruneAtRandomMoments kills `lifeboat vault prune` with SIGKILL at
// random moments while new points keep arriving between runs; afterwards
// the vault checks clean and every remaining point restores.
func TestKillPruneAtRandomMoments(t *testing.T) {
	e := newEnv(t)
	disk := filepath.Join(e.dir, "disk.img")
	makeDisk(t, disk, 24<<20, 20<<20, 2)
	e.mustRun("vault", "init", e.vault, "--pack-size", fmt.Sprint(1<<20))
	r := rand.New(rand.NewPCG(7, 7))
	want := map[string]string{}
	replicate := func(run string) {
		want[run] = fileSHA(t, disk)
		e.mustRun("replicate", "--once", "--machine", "m1", "--disk", "root="+disk, "--label", "run="+run)
	}
	for i := range 6 {
		churn(t, disk, 80, r)
		replicate(fmt.Sprint("seed", i))
	}
	prune := []string{"vault", "prune", "--retention", "1s:all,1h:8s", "--gc-margin", "0s", "--repack-threshold", "0.2"}
	kills := 0
	for i := range 10 {
		if e.killAfter(time.Duration(r.IntN(300))*time.Millisecond, prune...) {
			kills++
		}
		verifyAll(t, e, want, false)
		churn(t, disk, 80, r)
		replicate(fmt.Sprint("k", i))
		time.Sleep(time.Duration(r.IntN(1500)) * time.Millisecond) // deliberate: a random moment for the kill
	}
	// Two full prunes (mark, then sweep) and a full read of what is left.
	first := e.mustRun(prune...)
	e.mustRun(prune...)
	n := verifyAll(t, e, want, true)
	t.Logf("%d prune kills; %d points left; a complete prune said: %s", kills, n, strings.TrimSpace(first))
	if kills < 3 {
		t.Fatalf("only %d prunes were killed mid-way", kills)
	}
}
