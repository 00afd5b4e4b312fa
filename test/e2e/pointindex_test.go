package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// pointIDs lists the vault's point IDs with `points list` (the point index)
// or, with fromRecords, from every point record.
func (e *env) pointIDs(fromRecords bool) []string {
	e.t.Helper()
	args := []string{"points", "list", "--json"}
	if fromRecords {
		args = append(args, "--from-records")
	}
	var pts []point
	if err := json.Unmarshal([]byte(e.mustRun(args...)), &pts); err != nil {
		e.t.Fatal(err)
	}
	ids := make([]string, len(pts))
	for i, p := range pts {
		ids[i] = p.ID
	}
	slices.Sort(ids)
	return ids
}

// TestKillPointIndexWritersAndPrune runs three writers (`replicate`, one
// machine each) at the same time as `vault prune`, killing each with
// SIGKILL at a random moment, round after round. After every round the
// vault checks clean (check compares the point index with the records)
// and the listing holds only points whose records exist; after a
// complete prune the listing is exactly the records, and every point
// restores.
func TestKillPointIndexWritersAndPrune(t *testing.T) {
	e := newEnv(t)
	e.mustRun("vault", "init", e.vault, "--pack-size", fmt.Sprint(1<<20))
	r := rand.New(rand.NewPCG(15, 4))
	const machines, rounds = 3, 8
	disks := make([]string, machines)
	for m := range disks {
		disks[m] = filepath.Join(e.dir, fmt.Sprintf("disk%d.img", m))
		makeDisk(t, disks[m], 8<<20, 6<<20, uint64(m+1))
	}
	want := map[string]string{}
	prune := []string{"vault", "prune", "--retention", "5s:all,1h:2s", "--gc-margin", "0s"}
	// How long one writer takes here: the kills fall inside it (a fixed
	// window missed most writers on a fast machine).
	calib := *e
	calib.state = filepath.Join(e.dir, "state0")
	churn(t, disks[0], 20, r)
	want["calib"] = fileSHA(t, disks[0])
	began := time.Now()
	calib.mustRun("replicate", "--once", "--machine", "m0", "--disk", "root="+disks[0], "--label", "run=calib")
	took := max(time.Since(began), 100*time.Millisecond)
	kills := 0
	for round := range rounds {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for m := range machines {
			churn(t, disks[m], 20, r)
			run := fmt.Sprintf("m%d-%d", m, round)
			want[run] = fileSHA(t, disks[m])
			w := *e // a state directory per writer, as on separate hosts
			w.state = filepath.Join(e.dir, fmt.Sprintf("state%d", m))
			d := took/2 + time.Duration(r.Int64N(int64(3*took))) // some killed, some done
			wg.Add(1)
			go func() {
				defer wg.Done()
				if w.killAfter(d, "replicate", "--once", "--machine", fmt.Sprint("m", m), "--disk", "root="+disks[m], "--label", "run="+run) {
					mu.Lock()
					kills++
					mu.Unlock()
				}
			}()
		}
		if e.killAfter(time.Duration(r.IntN(500))*time.Millisecond, prune...) {
			mu.Lock() // the writers' goroutines count too
			kills++
			mu.Unlock()
		}
		wg.Wait()
		if res := e.run("vault", "check"); res.code != 0 {
			t.Fatalf("round %d: vault check: exit %d\n%s%s", round, res.code, res.stdout, res.stderr)
		}
		listed, records := e.pointIDs(false), e.pointIDs(true)
		for _, id := range listed {
			if _, ok := slices.BinarySearch(records, id); !ok {
				t.Fatalf("round %d: point %s listed without a record", round, id[:8])
			}
		}
	}
	e.mustRun(prune...)
	listed, records := e.pointIDs(false), e.pointIDs(true)
	if !slices.Equal(listed, records) {
		t.Fatalf("after a complete prune the index lists %d points, the records %d", len(listed), len(records))
	}
	n := verifyAll(t, e, want, false)
	t.Logf("%d of %d processes killed (a writer took %s); %d points left", kills, rounds*(machines+1), took.Round(time.Millisecond), n)
	if kills < 4 || n < 4 {
		t.Fatalf("%d processes killed mid-way and %d points left: want at least 4 of each", kills, n)
	}
}
