package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
)

// reprotect takes a machine whose failover is committed (vm runs at the
// recovery site and keeps writing manifests; its source was powered off
// with manifest seq last) back toward the primary site:
//
//   - the recovered guest writes a newer manifest, then reprotect starts;
//     the server is killed (-9) once reverse replication started, and the
//     job finishes after the restart;
//   - a target writer (`lifeboat target run`, a real process) applies the
//     reverse point onto the source's original disk image, writing only
//     blocks that differ;
//   - the first reverse point is incremental and holds far less than the
//     disk (the recovered guest's writes only), and the original image
//     then holds the recovered guest's newer manifest (checked offline);
//   - reverse replication goes on: a second reverse point arrives.
func reprotect(t *testing.T, cl *cluster, vm api.RecoveredVM, ps *primarySite, last int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The recovered guest writes at the recovery site.
	newer := waitConsoleManifest(ctx, t, vm, last+2)
	out := cl.mustRun("reprotect", "web", "--json")
	var rj api.Job
	if err := json.Unmarshal([]byte(out), &rj); err != nil {
		t.Fatalf("reprotect --json: %v\n%s", err, out)
	}
	if r := cl.run("reprotect", "web"); r.code == 0 {
		t.Fatal("a second reprotect while one runs was accepted")
	}
	cl.waitFor("reverse replication started", time.Minute, func() bool {
		j := cl.jobOf(rj.ID)
		s := j.Step("start reverse replication")
		return s != nil && s.State == "done"
	})
	if m, _ := cl.machine("web"); m.State != api.StateReprotecting {
		t.Fatalf("state after reprotect: %s, want %s", m.State, api.StateReprotecting)
	}
	cl.mu.Lock()
	server := cl.procs["server"]
	cl.mu.Unlock()
	server.kill9()
	server.start()
	cl.waitFor("the server to answer again", 30*time.Second, func() bool { return cl.run("status").code == 0 })

	// The target writer at the "primary site": the source's own image.
	disk := vm.Disks[0].Name
	cl.mu.Lock()
	tw, running := cl.procs["target"]
	cl.mu.Unlock()
	if !running {
		startTargetWriter(cl, ps, disk)
	} else {
		// The target writer dies (-9) while the reprotect runs and comes
		// back with its state directory: the job still finishes.
		tw.kill9()
		tw.start()
	}
	if r := cl.run("jobs", "watch", rj.ID); r.code != 0 {
		t.Fatalf("reprotect: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	rj = cl.jobOf(rj.ID)
	rp, tg := rj.ReversePoint, rj.TargetWriter
	if rp == nil || tg == nil || len(tg.Disks) != 1 {
		t.Fatalf("reprotect job without its reverse point or target report: %+v %+v", rp, tg)
	}
	size := rp.Disks[0].Size
	fmt.Fprintf(os.Stderr, "%s: reprotect: reverse point %s incremental=%v changed %d sent %d of a %d-byte disk; target compared %d wrote %d\n",
		t.Name(), rp.ID[:12], rp.Incremental, rp.ChangedBytes, rp.SentBytes, size, tg.Disks[0].Compared, tg.Disks[0].Written)
	if !rp.Incremental || rp.ChangedBytes > size/4 || rp.SentBytes > size/4 {
		t.Fatalf("the first reverse point read or sent too much for a guest's few writes: %+v (disk %d bytes)", rp, size)
	}
	switch {
	case ps.alternate && (tg.Disks[0].Compared != 0 || tg.Disks[0].Written == 0):
		t.Fatalf("the target writer compared %d and wrote %d bytes onto an alternate location: want a new image, written without comparing", tg.Disks[0].Compared, tg.Disks[0].Written)
	case !ps.alternate && (tg.Disks[0].Written > size/4 || tg.Disks[0].Written == 0):
		t.Fatalf("the target writer wrote %d bytes of a %d-byte disk: want the recovered guest's writes only", tg.Disks[0].Written, size)
	}
	m, _ := cl.machine("web")
	if m.State != api.StateReprotected || !slices.Contains(m.AllowedActions, "failback") {
		t.Fatalf("after reprotect: state %s, allowed %v", m.State, m.AllowedActions)
	}
	raw := filepath.Join(cl.dir, "original.raw")
	if err := ps.img.RawCopy(ctx, raw); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(raw)
	_, seq, err := guest.Verify(ctx, raw)
	if err != nil {
		t.Fatalf("the original disk after reprotect: %v", err)
	}
	if seq < newer {
		t.Fatalf("the original disk holds manifest seq %d, the recovered guest had written %d before reprotect", seq, newer)
	}
	cl.waitFor("a second reverse point", 2*time.Minute, func() bool {
		m, err := cl.machine("web")
		return err == nil && m.Recovery.Reverse.Cycles >= 2
	})
	t.Logf("reprotect: original disk verified at manifest seq %d (recovery site wrote %d, source had %d)", seq, newer, last)
}

// startTargetWriter starts `lifeboat target run` at the primary site.
func startTargetWriter(cl *cluster, ps *primarySite, disk string) {
	tok := cl.token("target", "primary1") // may only post primary1's reports
	cl.spawn("target", "target", "run", "--name", "primary1", "--disk", "web/"+disk+"="+ps.img.Disk,
		"--state-dir", filepath.Join(cl.dir, "target-state"), "--every", "1s",
		"--start-command", ps.startScript, "--stop-command", ps.stopScript,
		"--agent-state", filepath.Join(cl.dir, "agent-kvm1"),
		"--server", "https://"+cl.apiAddr, "--token", tok)
}

// waitConsoleManifest waits until a recovered VM's console shows a
// manifest of at least seq and returns the newest.
func waitConsoleManifest(ctx context.Context, t *testing.T, vm api.RecoveredVM, seq int64) int64 {
	t.Helper()
	for {
		b, _ := os.ReadFile(vm.Console)
		if got := guest.LastManifest(string(b)); got >= seq {
			return got
		}
		select {
		case <-ctx.Done():
			t.Fatalf("recovered VM %s: no manifest seq %d on its console", vm.Name, seq)
		case <-time.After(200 * time.Millisecond): // poll pause under ctx's deadline
		}
	}
}
