package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
)

// Lock timing for the tests of paused writers: a lock is refreshed every
// 500 ms, trusted for 2 s after its last refresh and stale after 6 s.
const (
	lockTimingEnv = "LIFEBOAT_TEST_VAULT_LOCK_TIMING"
	lockTiming    = "refresh=500ms,stale=6s"
)

// pruneReport is the part of `vault prune --json` these tests read.
type pruneReport struct {
	Marked      int    `json:"packs_marked"`
	Deleted     int    `json:"packs_deleted"`
	Resurrected int    `json:"packs_resurrected"`
	Pending     int    `json:"marks_pending"`
	Reason      string `json:"pending_reason"`
	StaleLocks  int    `json:"stale_locks_removed"`
}

// pruneUntilDeleted runs `vault prune --gc-margin 0s` until a run deletes
// packs: the first runs mark the paused writer's packs and wait for its
// lock, a run after the stale age deletes them. It returns the reports.
func pruneUntilDeleted(t *testing.T, e *env, within time.Duration) []pruneReport {
	t.Helper()
	var reps []pruneReport
	deadline := time.Now().Add(within)
	for {
		var rep pruneReport
		out := e.mustRun("vault", "prune", "--gc-margin", "0s", "--json")
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("prune --json: %v\n%s", err, out)
		}
		reps = append(reps, rep)
		if rep.Deleted > 0 {
			return reps
		}
		if time.Now().After(deadline) {
			t.Fatalf("no prune deleted packs within %s of pausing the writer: %+v", within, reps)
		}
		time.Sleep(250 * time.Millisecond) // poll pause under the deadline above
	}
}

// countFiles counts the regular files under dir (not temporary uploads).
func countFiles(dir string) int {
	n := 0
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && !strings.HasPrefix(fi.Name(), ".tmp-") {
			n++
		}
		return nil
	})
	return n
}

// waitCond polls cond every 20 ms until it holds; it fails the test after d.
func waitCond(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond) // poll pause under a deadline
	}
}

func grepFile(path string, s ...string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		ok := true
		for _, w := range s {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			return true
		}
	}
	return false
}

// checkRestores runs `vault check` and restores every point of the vault,
// which must equal want.
func checkRestores(t *testing.T, e *env, disk, want string) int {
	t.Helper()
	if r := e.run("vault", "check", "--read-data"); r.code != 0 {
		t.Fatalf("vault check after the pause: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	pts := e.points()
	for _, p := range pts {
		if got := e.restoreSHA(p.ID, disk); got != want {
			t.Fatalf("point %s restores to %s, want %s", p.ID[:8], got[:12], want[:12])
		}
	}
	return len(pts)
}

// TestPausedReplicateLosesItsLock stops `lifeboat replicate` with SIGSTOP
// in the middle of its first cycle, once its lock exists and it has
// stored packs, and runs `vault prune --gc-margin 0s` until the writer's
// lock is stale and the prune deletes the packs the paused cycle stored.
// After SIGCONT the writer must notice that it lost its lock, publish
// nothing from that cycle, and publish a good point in its next cycle:
// the vault checks clean and every point restores byte for byte.
func TestPausedReplicateLosesItsLock(t *testing.T) {
	t.Setenv(lockTimingEnv, lockTiming) // every lifeboat process of the test
	e := newEnv(t)
	disk := filepath.Join(e.dir, "disk.img")
	makeDisk(t, disk, 160<<20, 128<<20, 21)
	want := fileSHA(t, disk)
	e.mustRun("vault", "init", e.vault, "--pack-size", fmt.Sprint(1<<20))

	logPath := filepath.Join(e.dir, "replicate.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := e.cmd("replicate", "--interval", "1s", "--workers", "1", "--machine", "m", "--disk", "root="+disk, "--log-level", "info")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("replicate log:\n%s", b)
		}
	}()

	// Mid-cycle: the lock is there and packs are stored, no point yet.
	waitCond(t, "replicate to hold its lock and store packs", 2*time.Minute, func() bool {
		return countFiles(filepath.Join(e.vault, "locks")) > 0 && countFiles(filepath.Join(e.vault, "data")) >= 3
	})
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	pausedAt := time.Now()
	if n := countFiles(filepath.Join(e.vault, "points")); n != 0 {
		t.Fatalf("the first cycle published %d points before it was stopped: make the disk bigger", n)
	}
	packs := countFiles(filepath.Join(e.vault, "data"))

	reps := pruneUntilDeleted(t, e, time.Minute)
	last := reps[len(reps)-1]
	t.Logf("writer stopped with %d packs stored; %d prunes; the one after %s deleted %d packs (resurrected %d, stale locks removed %d)",
		packs, len(reps), time.Since(pausedAt).Round(time.Millisecond), last.Deleted, last.Resurrected, last.StaleLocks)
	if reps[0].Deleted != 0 || reps[0].Pending == 0 {
		t.Fatalf("the first prune, right after the pause, did not wait for the writer's lock: %+v", reps[0])
	}
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}

	waitCond(t, "the writer to log that it lost its lock", time.Minute, func() bool {
		return grepFile(logPath, "ERROR", "lost the vault write lock", "stale after 6s")
	})
	waitCond(t, "the next cycle to publish a point", 3*time.Minute, func() bool {
		return countFiles(filepath.Join(e.vault, "points")) > 0
	})
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("replicate did not stop after SIGTERM")
	}
	n := checkRestores(t, e, "root", want)
	if !grepFile(logPath, "cycle failed", "vault lock lost") {
		t.Fatal("the replicate log does not say that the interrupted cycle failed for its lost lock")
	}
	t.Logf("%d points, all restore", n)
}

// TestPausedProcessServerLosesItsLock stops a process server with SIGSTOP
// while an agent's session is open (a bandwidth limit keeps it open; a
// small cache makes the session checkpoint packs into the vault), runs
// `vault prune --gc-margin 0s` until the server's lock is stale and the
// packs it stored are deleted, then resumes it. The process server must
// refuse the session's next batch, abort it, say so in its log and in a
// lock_lost event, and the agent's next cycle must publish a point: the
// vault checks clean and every point restores byte for byte.
func TestPausedProcessServerLosesItsLock(t *testing.T) {
	t.Setenv(lockTimingEnv, lockTiming) // server, process server, agent, CLI
	cl := newCluster(t)
	disk := filepath.Join(cl.dir, "disk.img")
	makeDisk(t, disk, 48<<20, 40<<20, 22)
	want := fileSHA(t, disk)

	// A 4 MiB cache: the session checkpoints its blocks into the vault
	// every few MiB, so packs it stored are there to be collected.
	ps := cl.addProcess("ps1", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "")
	ps.stop()
	setCacheLimit(t, filepath.Join(cl.dir, "ps-ps1", "process.json"), 4<<20)
	ps.start()
	defer ps.signal(syscall.SIGCONT) // before the cluster's cleanup stops it
	ag := cl.addAgent("r1", "", map[string]string{"d0": disk})
	cl.waitFor("the process server to report", time.Minute, func() bool {
		return cl.run("agent", "move", "r1", "--process", "ps1").code == 0
	})
	cl.mustRun("agent", "bandwidth", "r1", "--limit", "2000000")
	cl.mustRun("policy", "create", "fast", "--crash-interval", "2s", "--app-interval", "0")
	cl.mustRun("protect", "r1", "--policy", "fast")

	cl.waitFor("a session that has checkpointed packs", 2*time.Minute, func() bool {
		return ps.grepLog("ingest session opened") && countFiles(filepath.Join(cl.vault, "data")) >= 2
	})
	ps.signal(syscall.SIGSTOP)
	pausedAt := time.Now()
	if n := countFiles(filepath.Join(cl.vault, "points")); n != 0 {
		t.Fatalf("%d points published before the process server was stopped: slow the agent down more", n)
	}
	reps := pruneUntilDeleted(t, cl.env, time.Minute)
	last := reps[len(reps)-1]
	t.Logf("%d prunes; the one after %s deleted %d packs (resurrected %d, stale locks removed %d)",
		len(reps), time.Since(pausedAt).Round(time.Millisecond), last.Deleted, last.Resurrected, last.StaleLocks)
	if reps[0].Deleted != 0 {
		t.Fatalf("the first prune, right after the pause, deleted packs: %+v", reps[0])
	}
	ps.signal(syscall.SIGCONT)
	resumed := time.Now()
	cl.mustRun("agent", "bandwidth", "r1", "--limit", "0")
	cl.waitFor("a point after the pause", 3*time.Minute, func() bool {
		return countFiles(filepath.Join(cl.vault, "points")) > 0
	})
	t.Logf("first point %s after the process server resumed", time.Since(resumed).Round(time.Millisecond))
	ag.stop() // nothing writes while the vault is checked
	n := checkRestores(t, cl.env, "d0", want)

	cl.waitFor("the process server to log that it lost its lock", time.Minute, func() bool {
		return ps.grepLog("ERROR", "lost the vault write lock", "stale after 6s") &&
			ps.grepLog("ERROR", "process server ps1 lost its vault write lock during the ingest session")
	})
	cl.waitFor("the lock_lost event", time.Minute, func() bool {
		var evs []api.Event
		if cl.get(client.Path("events")+"?limit=1000", &evs) != nil {
			return false
		}
		for _, ev := range evs {
			if ev.Kind == "lock_lost" && ev.Severity == api.SeverityError && ev.Machine == "r1" && strings.Contains(ev.Message, "ps1") {
				return true
			}
		}
		return false
	})
	t.Logf("%d points, all restore", n)
}

// setCacheLimit rewrites a process server's cache_limit.
func setCacheLimit(t *testing.T, path string, limit int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg := map[string]any{}
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["cache_limit"] = limit
	if b, err = json.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// signal sends sig to the daemon's process.
func (d *daemon) signal(sig syscall.Signal) {
	d.mu.Lock()
	cmd := d.cmd
	d.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Signal(sig)
	}
}
