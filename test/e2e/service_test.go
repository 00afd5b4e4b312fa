package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
)

const (
	pauseHook = `#!/bin/sh
# pre-freeze: ask the test's writer to pause and wait until it has.
touch "$PAUSE_DIR/pause-$LIFEBOAT_MACHINE"
i=0
while [ $i -lt 200 ]; do
	[ -e "$PAUSE_DIR/paused-$LIFEBOAT_MACHINE" ] && exit 0
	sleep 0.05
	i=$((i+1))
done
echo "writer did not pause" >&2
exit 1
`
	resumeHook = `#!/bin/sh
rm -f "$PAUSE_DIR/pause-$LIFEBOAT_MACHINE" "$PAUSE_DIR/paused-$LIFEBOAT_MACHINE"
`
)

func writeHooks(t *testing.T, dir, pauseDir string) {
	t.Helper()
	for sub, body := range map[string]string{"pre-freeze.d": pauseHook, "post-thaw.d": resumeHook} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
		body = strings.Replace(body, "#!/bin/sh\n", "#!/bin/sh\nPAUSE_DIR="+pauseDir+"\n", 1)
		if err := os.WriteFile(filepath.Join(dir, sub, "10-writer"), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// TestServiceEndToEnd runs one server (with its embedded process server),
// two stand-alone process servers and three agents as real processes on
// loopback. Three machines' file disks change all the time. m1 replicates
// alone through a proxy that the test cuts; m2 and m3 form a replication
// group with crash- and app-consistent group cuts. The test kills -9 an
// agent, a process server and the server at random moments, cuts the
// network, and at the end restores every recovery point in the vault and
// checks it byte for byte against the writers' logs.
func TestServiceEndToEnd(t *testing.T) {
	// Retention and GC run every 5 s with a 3 s margin, next to the
	// process servers' writes; m1's policy thins its points as they age.
	cl := newCluster(t, func(cfg map[string]any) { cfg["retention_every"], cfg["gc_margin"] = "5s", "3s" })
	mnt := mountXFS(t, "1G")
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 1))

	// Process servers: ps1 is reached through a proxy the test can cut.
	ps1Listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	px := newProxy(t, ps1Listen)
	cl.addProcess("ps1", ps1Listen, "https://"+px.addr())
	ps2 := cl.addProcess("ps2", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "")

	cl.mustRun("policy", "create", "solo", "--crash-interval", "3s", "--app-interval", "0", "--rpo-threshold", "8s", "--retention", "20s:all,1h:10s", "--keep-app", "1h")
	cl.mustRun("policy", "create", "grp", "--crash-interval", "4s", "--app-interval", "9s", "--rpo-threshold", "30s", "--retention", "1h:all", "--keep-app", "1h", "--hook-timeout", "10s")

	// Disks and their writers.
	pauseDir := filepath.Join(cl.dir, "pause")
	if err := os.Mkdir(pauseDir, 0o755); err != nil {
		t.Fatal(err)
	}
	mk := func(id uint32, name string, size int64) *seqDisk {
		return newSeqDisk(t, id, filepath.Join(mnt, name), size, seed+uint64(id))
	}
	disks := map[string]map[string]*seqDisk{
		"m1": {"d0": mk(1, "m1-d0", 48<<20)},
		"m2": {"d0": mk(2, "m2-d0", 48<<20), "d1": mk(3, "m2-d1", 16<<20)},
		"m3": {"d0": mk(4, "m3-d0", 32<<20)},
	}
	agents := map[string]*daemon{}
	for _, m := range []string{"m1", "m2", "m3"} {
		paths := map[string]string{}
		for dn, d := range disks[m] {
			paths[dn] = d.path
		}
		hooks := ""
		if m != "m1" {
			hooks = filepath.Join(cl.dir, "hooks-"+m)
			writeHooks(t, hooks, pauseDir)
		}
		agents[m] = cl.addAgent(m, hooks, paths)
	}
	cl.waitFor("three agents to report", 30*time.Second, func() bool {
		var ms []api.Machine
		return cl.get(client.Path("machines"), &ms) == nil && len(ms) == 3
	})
	cl.waitFor("both process servers to report", 30*time.Second, func() bool {
		var ps []api.ProcessServer
		return cl.get(client.Path("process-servers"), &ps) == nil && len(ps) >= 3
	})
	cl.mustRun("agent", "move", "m1", "--process", "ps1")
	cl.mustRun("agent", "move", "m2", "--process", "ps2")
	cl.mustRun("agent", "move", "m3", "--process", "embedded")
	cl.mustRun("protect", "m1", "--policy", "solo")
	cl.mustRun("protect", "m2", "--policy", "grp", "--group", "g1")
	cl.mustRun("protect", "m3", "--policy", "grp", "--group", "g1")

	w1 := newSeqWriter(t, "", 40*time.Millisecond, disks["m1"]["d0"])
	wg := newSeqWriter(t, pauseDir, 30*time.Millisecond, disks["m2"]["d0"], disks["m2"]["d1"], disks["m3"]["d0"])
	writerOf := map[string]*seqWriter{"m1": w1, "m2": wg, "m3": wg}
	diskList := func(m string) []*seqDisk {
		var ds []*seqDisk
		for _, d := range disks[m] {
			ds = append(ds, d)
		}
		return ds
	}
	w1.start(seed + 100)
	wg.start(seed + 200)
	defer w1.halt()
	defer wg.halt()

	pointsOf := func(m string) int {
		var ps []api.Point
		if cl.get(client.Path("points")+"?machine="+m+"&limit=1000", &ps) != nil {
			return 0
		}
		return len(ps)
	}
	cl.waitFor("every machine's first points", 120*time.Second, func() bool {
		return pointsOf("m1") >= 2 && pointsOf("m2") >= 2 && pointsOf("m3") >= 2
	})
	if out := cl.mustRun("status"); !strings.Contains(out, "m1") || !strings.Contains(out, "protected") {
		t.Errorf("status does not show protected machines:\n%s", out)
	} else {
		t.Logf("status:\n%s", out)
	}

	// lastPoint returns the time of m's newest point.
	lastPoint := func(m string) time.Time {
		mm, err := cl.machine(m)
		if err != nil || mm.LastPoint == nil {
			t.Fatalf("machine %s has no point: %v", m, err)
		}
		return mm.LastPoint.Time
	}
	// nextPoint waits for m's next point after the given time.
	nextPoint := func(m string, after time.Time) api.CycleResult {
		var res api.CycleResult
		cl.waitFor("a new point of "+m, 90*time.Second, func() bool {
			mm, err := cl.machine(m)
			// Wait for the agent's figures too: the process server may
			// report the point first, without them.
			if err != nil || mm.LastPoint == nil || !mm.LastPoint.Time.After(after) || mm.LastPoint.Point == "" || mm.LastPoint.Error != "" ||
				mm.LastPoint.FiguresPending {
				return false
			}
			res = *mm.LastPoint
			return true
		})
		return res
	}
	// proportional checks that m's first point after a restart shipped no
	// more than what changed since its previous point: no full resync.
	proportional := func(what, m string, prev time.Time, res api.CycleResult) {
		churn := writerOf[m].churn(prev.Add(-2*time.Second), res.Time.Add(time.Second), diskList(m)...)
		t.Logf("  %s: %s's first point after it sent %d bytes; %d bytes of blocks changed meanwhile", what, m, res.SentBytes, churn)
		if res.SentBytes > churn {
			t.Errorf("%s: %s sent %d bytes but only %d bytes changed since its last point: not proportional to the churn", what, m, res.SentBytes, churn)
		}
	}

	// Points of the group members listed before each kill must all be in
	// the vault at the end (their policy keeps every point for an hour).
	listed := map[string]bool{}
	remember := func() {
		for _, m := range []string{"m2", "m3"} {
			var ps []api.Point
			if err := cl.get(client.Path("points")+"?machine="+m+"&limit=1000", &ps); err != nil {
				t.Fatal(err)
			}
			for _, p := range ps {
				listed[p.ID] = true
			}
		}
	}

	// Kill -9 each kind of process at random moments, several times.
	for round := range 2 {
		remember()
		m := []string{"m1", "m2", "m3"}[r.IntN(3)]
		time.Sleep(time.Duration(r.IntN(3000)) * time.Millisecond) // deliberate: random chaos timing (this and the sleeps below)
		t.Logf("round %d: kill -9 agent %s", round, m)
		agents[m].kill9()
		prev := lastPoint(m)
		time.Sleep(time.Duration(500+r.IntN(1500)) * time.Millisecond)
		agents[m].start()
		proportional("agent killed", m, prev, nextPoint(m, time.Now()))

		time.Sleep(time.Duration(r.IntN(3000)) * time.Millisecond)
		t.Logf("round %d: kill -9 process server ps2", round)
		ps2.kill9()
		prev = lastPoint("m2")
		time.Sleep(time.Duration(500+r.IntN(1500)) * time.Millisecond)
		ps2.start()
		proportional("process server killed", "m2", prev, nextPoint("m2", time.Now()))

		time.Sleep(time.Duration(r.IntN(3000)) * time.Millisecond)
		t.Logf("round %d: kill -9 server", round)
		prevs := map[string]time.Time{"m1": lastPoint("m1"), "m3": lastPoint("m3")}
		remember()
		cl.procs["server"].kill9()
		time.Sleep(time.Duration(500+r.IntN(1500)) * time.Millisecond)
		restarted := time.Now()
		cl.procs["server"].start()
		cl.waitFor("the server after restart", 30*time.Second, func() bool { _, err := cl.machine("m1"); return err == nil })
		for _, m := range []string{"m1", "m3"} {
			prev := prevs[m]
			res := nextPoint(m, restarted)
			proportional("server killed", m, prev, res)
		}
	}

	// Network cut between m1 and its process server.
	var evBefore []api.Event
	_ = cl.get(client.Path("events")+"?machine=m1&limit=1000", &evBefore)
	lastID := int64(0)
	for _, e := range evBefore {
		lastID = max(lastID, e.ID)
	}
	t.Log("cutting the network between m1 and ps1 for 14 s")
	px.setCut(true)
	cutAt := time.Now()
	hasEvent := func(kind string) bool {
		var es []api.Event
		if cl.get(client.Path("events")+fmt.Sprintf("?machine=m1&since=%d&limit=1000", lastID), &es) != nil {
			return false
		}
		for _, e := range es {
			if e.Kind == kind {
				return true
			}
		}
		return false
	}
	cl.waitFor("an rpo_exceeded event for m1", 40*time.Second, func() bool { return hasEvent("rpo_exceeded") })
	mm, _ := cl.machine("m1")
	t.Logf("  m1 RPO during the cut: %s (%s)", mm.RPO.Std(), mm.State)
	if mm.RPO.Std() < 8*time.Second {
		t.Errorf("m1's RPO during a 14 s cut is %s", mm.RPO.Std())
	}
	// The fault under test is a 14 s network cut (its length is what the
	// RPO above is checked against), not a wait for something to happen.
	time.Sleep(time.Until(cutAt.Add(14 * time.Second))) // deliberate: the length of the fault
	px.setCut(false)
	healed := time.Now()
	res := nextPoint("m1", healed)
	t.Logf("  m1 caught up %s after the network came back (sent %d bytes)", time.Since(healed).Round(time.Millisecond), res.SentBytes)
	cl.waitFor("an rpo_recovered event for m1", 40*time.Second, func() bool { return hasEvent("rpo_recovered") })

	// A resync by hand reads every block but ships only what changed.
	before := lastPoint("m1")
	cl.mustRun("resync", "m1")
	cl.waitFor("m1's resync", 60*time.Second, func() bool {
		mm, err := cl.machine("m1")
		return err == nil && !mm.ResyncWanted && mm.LastPoint != nil && mm.LastPoint.Time.After(before) && mm.LastPoint.Resync
	})
	mm, _ = cl.machine("m1")
	t.Logf("  resync of m1: read %d bytes (%d of data), sent %d", mm.LastPoint.ReadBytes, mm.LastPoint.ChangedBytes, mm.LastPoint.SentBytes)
	if mm.LastPoint.ReadBytes < mm.LastPoint.ChangedBytes {
		t.Errorf("the resync of m1 read %d bytes but reported %d bytes of data", mm.LastPoint.ReadBytes, mm.LastPoint.ChangedBytes)
	}
	proportional("resync", "m1", before, *mm.LastPoint)

	// A bandwidth limit set on the server slows the agent down.
	var mm3 api.CycleResult
	if out := cl.mustRun("agent", "bandwidth", "m3", "--limit", "1000000"); out != "m3: bandwidth limited to 976.6 KiB/s (1000000 bytes/s)\n" {
		t.Errorf("agent bandwidth printed %q", out)
	}
	limited := time.Now()
	cl.waitFor("a point of m3 under the limit", 90*time.Second, func() bool {
		mm, err := cl.machine("m3")
		if err != nil || mm.LastPoint == nil || !mm.LastPoint.Time.After(limited.Add(2*time.Second)) || mm.LastPoint.SentBytes < 2<<20 {
			return false
		}
		mm3 = *mm.LastPoint
		return true
	})
	if floor := time.Duration(float64(mm3.SentBytes) / 1e6 * 0.7 * float64(time.Second)); mm3.Duration.Std() < floor {
		t.Errorf("m3 shipped %d bytes in %s under a 1 MB/s limit", mm3.SentBytes, mm3.Duration.Std())
	}
	t.Logf("  m3 under 1 MB/s: %d bytes in %s", mm3.SentBytes, mm3.Duration.Std())
	// The point's record on the server carries the agent's figures.
	var shown api.Point
	if err := json.Unmarshal([]byte(cl.mustRun("points", "show", mm3.Point[:12], "--server", "https://"+cl.apiAddr, "--json")), &shown); err != nil {
		t.Errorf("points show --json: %v", err)
	} else if shown.ID != mm3.Point || shown.CycleFigures == nil || shown.SentBytes != mm3.SentBytes || shown.ReadBytes < shown.ChangedBytes ||
		shown.ChangedBytes == 0 || shown.Duration != mm3.Duration {
		t.Errorf("points show --json of a point that carried %d bytes: %+v %+v", mm3.SentBytes, shown, shown.CycleFigures)
	}
	if out := cl.mustRun("agent", "bandwidth", "m3", "--limit", "0"); out != "m3: bandwidth unlimited\n" {
		t.Errorf("agent bandwidth printed %q", out)
	}
	if out := cl.mustRun("process", "bandwidth", "ps2", "--limit", "0"); out != "ps2: bandwidth unlimited\n" {
		t.Errorf("process bandwidth printed %q", out)
	}

	// Let a few more group cuts happen (two more points of both members
	// of g1), then stop writing and verify.
	for range 2 {
		at := lastPoint("m2")
		nextPoint("m2", at)
		nextPoint("m3", at)
	}
	w1.halt()
	wg.halt()
	end := time.Now()
	for _, m := range []string{"m1", "m2", "m3"} {
		nextPoint(m, end)
	}
	for _, d := range cl.procs {
		if d.exited() {
			t.Errorf("%s exited on its own:\n%s", d.name, d.tail(20))
		}
	}
	var rets []api.Event
	if err := cl.get(client.Path("events")+"?limit=10000", &rets); err != nil {
		t.Errorf("events: %v", err)
	}
	// Stop everything (retention would go on deleting m1's old points),
	// then check the vault alone.
	cl.stopAll()
	verifyClusterPoints(t, cl, disks)
	inVault := map[string]bool{}
	for _, p := range cl.vaultPoints() {
		inVault[p.ID] = true
	}
	lost := 0
	for id := range listed {
		if !inVault[id] {
			lost++
			t.Errorf("point %s was listed before a kill and is gone from the vault", id[:12])
		}
	}
	t.Logf("%d points of m2 and m3 listed before the kills are all in the vault (%d missing)", len(listed), lost)
	n, deleted := 0, 0
	for _, e := range rets {
		if e.Kind == "retention" {
			n++
			if !strings.Contains(e.Message, "deleted 0 packs") {
				deleted++
			}
		}
	}
	t.Logf("%d retention runs next to the writers, %d of them deleted packs", n, deleted)
	if n == 0 {
		t.Error("no retention run was recorded while the service ran")
	}
}

// verifyClusterPoints restores every point in the vault and checks each
// disk against its writer's log; group points must share their cut.
func verifyClusterPoints(t *testing.T, cl *cluster, disks map[string]map[string]*seqDisk) {
	t.Helper()
	pts := cl.vaultPoints()
	byMachine := map[string]int{}
	cuts := map[string][]vpoint{}
	out := filepath.Join(cl.dir, "restore.img")
	restored := map[string]map[string]uint64{} // point -> disk -> cut seq
	for _, p := range pts {
		byMachine[p.Machine]++
		restored[p.ID] = map[string]uint64{}
		for dn, d := range disks[p.Machine] {
			cl.mustRun("restore", p.ID, "--disk", dn, "--to", out, "--force")
			s := d.cutOf(t, out)
			if err := d.verify(out, s); err != nil {
				t.Errorf("point %s of %s (%s, %s): %v", p.ID[:12], p.Machine, p.Kind, p.Time.Format(time.TimeOnly+".000"), err)
			}
			restored[p.ID][dn] = s
		}
		if id := p.Labels["cut_id"]; id != "" {
			cuts[id] = append(cuts[id], p)
		}
	}
	t.Logf("verified %d points byte for byte: %v", len(pts), byMachine)
	for _, m := range []string{"m1", "m2", "m3"} {
		if byMachine[m] < 5 {
			t.Errorf("machine %s has %d points; the policy's cadence should have made more", m, byMachine[m])
		}
	}
	full, app := 0, 0
	ids := make([]string, 0, len(cuts))
	for id := range cuts {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		ps := cuts[id]
		if len(ps) != 2 {
			continue // a member's cycle failed (killed): the other member's point stands alone
		}
		full++
		if !ps[0].Time.Equal(ps[1].Time) || ps[0].Kind != ps[1].Kind || ps[0].Group != "g1" || ps[1].Group != "g1" {
			t.Errorf("group cut %s: points %s and %s differ in time, kind or group: %v %v", id, ps[0].ID[:12], ps[1].ID[:12], ps[0], ps[1])
		}
		if ps[0].Kind != "app" {
			continue
		}
		// An app-consistent group cut froze the writer across both
		// machines: all three disks must hold exactly the writes up to one
		// sequence number.
		app++
		var global uint64
		for _, p := range ps {
			for _, s := range restored[p.ID] {
				global = max(global, s)
			}
		}
		for _, p := range ps {
			for dn, d := range disks[p.Machine] {
				cl.mustRun("restore", p.ID, "--disk", dn, "--to", out, "--force")
				if err := d.verify(out, global); err != nil {
					t.Errorf("app-consistent group cut %s is not one consistent cut: %s/%s: %v", id, p.Machine, dn, err)
				}
			}
		}
	}
	t.Logf("group g1: %d complete cuts, %d of them app-consistent and checked as one cut", full, app)
	if full < 3 || app < 1 {
		t.Errorf("group g1 has %d complete cuts (%d app-consistent); want at least 3 and 1", full, app)
	}
}
