package e2e

import (
	"bufio"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/qsd"
)

// logLines returns the lines of the daemon's log that contain every one
// of s, and for each the number of the daemon's start it belongs to.
func (d *daemon) logLines(s ...string) (lines []string, starts []int) {
	f, err := os.Open(d.log)
	if err != nil {
		return nil, nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	start := 0
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "==== start ") {
			start++
			continue
		}
		ok := true
		for _, w := range s {
			ok = ok && strings.Contains(l, w)
		}
		if ok {
			lines = append(lines, l)
			starts = append(starts, start)
		}
	}
	return lines, starts
}

// crashed reports whether the Go runtime ended the daemon: a panic nobody
// recovered or a fatal error prints a line that starts so.
func (d *daemon) crashed() bool {
	lines, _ := d.logLines("")
	for _, l := range lines {
		if strings.HasPrefix(l, "panic: ") || strings.HasPrefix(l, "fatal error: ") {
			return true
		}
	}
	return false
}

func (d *daemon) countLines(s ...string) int {
	l, _ := d.logLines(s...)
	return len(l)
}

var readRe = regexp.MustCompile(` read=(\d+)`)

// firstCycleSince returns the first "cycle begins" and "changes read"
// lines of VM vm logged after line index from.
func firstCycleSince(d *daemon, vm string, from int) (begins, read string) {
	lines, _ := d.logLines("vm="+vm, "msg=")
	for _, l := range lines[min(from, len(lines)):] {
		if begins == "" && strings.Contains(l, `msg="cycle begins"`) {
			begins = l
		}
		if begins != "" && read == "" && strings.Contains(l, `msg="changes read"`) {
			read = l
		}
	}
	return begins, read
}

// TestVMHandWrittenQEMU runs a VM started as an operator writes it by
// hand (-drive if=none + -device: QEMU names the nodes itself) next to a
// second VM on the same host whose cycles panic (test hook):
//   - the first copy, slowed down by a bandwidth limit to last many
//     discovery intervals, completes once, without a restart of the VM's
//     replication and without a failed cycle;
//   - the other VM's panics are recovered and reported; the host agent
//     lives on and the first VM keeps replicating;
//   - kill -9 of the host agent at random moments of cycles, several
//     rounds: no panic, and the first cycle after each restart reads
//     what changed, not the disk;
//   - QEMU restarts: the persistent bitmap is followed, no full read;
//   - points restore to a clean filesystem matching the guest's manifest.
func TestVMHandWrittenQEMU(t *testing.T) {
	guest.Need(t)
	qsd.Need(t)
	qmpDir, err := os.MkdirTemp("", "lbvf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(qmpDir) })
	const diskSize = 256 << 20
	img := guest.Build(t, guest.Options{DiskSize: diskSize, QMPSocket: filepath.Join(qmpDir, "web.qmp"), Drive: "drive"})
	vm := img.Start(t)
	dbImg := filepath.Join(t.TempDir(), "db.qcow2")
	qsd.CreateImage(t, dbImg, "qcow2", 16<<20)
	db := qsd.Start(t, qsd.Options{Images: []qsd.Image{{Path: dbImg, Format: "qcow2", Node: "vdb"}}})
	if err := os.Symlink(db.QMP, filepath.Join(qmpDir, "db.qmp")); err != nil {
		t.Fatal(err)
	}

	cl := newCluster(t)
	host := cl.addHostAgentEnv("kvm1", []string{"LIFEBOAT_TEST_PANIC_CYCLE=db"}, "--vm-qmp-dir", qmpDir, "--vm-discover-every", "1s")
	cl.waitFor("the host agent to report web and db", 60*time.Second, func() bool {
		w, err1 := cl.machine("web")
		d, err2 := cl.machine("db")
		return err1 == nil && err2 == nil && len(w.Inventory.Disks) == 1 && len(d.Inventory.Disks) == 1
	})
	if w, _ := cl.machine("web"); w.Inventory.Disks[0].Name != "vda" || w.Inventory.Disks[0].Format != "qcow2" {
		t.Fatalf("disk of web: %+v", w.Inventory.Disks[0])
	}

	// 1. A first copy that outlasts many discovery passes.
	cl.mustRun("policy", "create", "fast", "--crash-interval", "3s", "--rpo-threshold", "10m", "--retention", "1h:all")
	cl.mustRun("agent", "bandwidth", "web", "--limit", strconv.Itoa(128<<10)) // ~1.2 MB of data: about 10 s
	cl.mustRun("protect", "web", "--policy", "fast", "--driver", "qemu")
	cl.mustRun("protect", "db", "--policy", "fast", "--driver", "qemu")
	start := time.Now()
	cl.waitFor("the first point of web", 5*time.Minute, func() bool { return len(cl.vmPoints("web")) >= 1 })
	took := time.Since(start)
	full := host.countLines("vm=web", `msg="cycle begins"`, "incremental=false")
	runs := host.countLines(`msg="replicating VM"`, "vm=web")
	failed := host.countLines("machine=web", "cycle failed")
	t.Logf("first copy of web: %s; full cycles %d, VM runner starts %d, failed cycles %d", took.Round(time.Millisecond), full, runs, failed)
	if took < 5*time.Second {
		t.Fatalf("the first copy took %s: it must outlast several discovery intervals (1 s) for this test to mean anything", took)
	}
	if full != 1 || runs != 1 || failed != 0 {
		t.Fatalf("the first copy was disturbed: %d full cycles, %d starts of the VM's replication, %d failed cycles (want 1, 1, 0)\n%s", full, runs, failed, host.tail(40))
	}
	cl.mustRun("agent", "bandwidth", "web", "--limit", "0")

	// 2. The other VM's cycles panic: recovered, reported, contained.
	cl.waitFor("an agent_panic event of db", time.Minute, func() bool {
		var es []api.Event
		return cl.get(client.Path("events")+"?machine=db&limit=1000", &es) == nil && hasKind(es, "agent_panic")
	})
	if host.exited() || len(cl.vmPoints("db")) != 0 {
		t.Fatalf("after db's panics: host exited %v, db points %d", host.exited(), len(cl.vmPoints("db")))
	}
	n := len(cl.vmPoints("web"))
	cl.waitFor("two more points of web while db panics", 2*time.Minute, func() bool { return len(cl.vmPoints("web")) >= n+2 })

	// 3. kill -9 at random moments of cycles.
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 8))
	for round := range 4 {
		begun := host.countLines("vm=web", `msg="cycle begins"`)
		cl.waitFor("a cycle of web to begin", time.Minute, func() bool { return host.countLines("vm=web", `msg="cycle begins"`) > begun })
		time.Sleep(time.Duration(r.IntN(1200)) * time.Millisecond) // a random moment of the cycle
		host.kill9()
		pts := len(cl.vmPoints("web"))
		seen, _ := host.logLines("vm=web", "msg=")
		host.start()
		cl.waitFor("a point of web after the restart", 2*time.Minute, func() bool { return len(cl.vmPoints("web")) > pts })
		begins, read := firstCycleSince(host, "web", len(seen))
		checkIncremental(t, round, begins, read)
	}
	if host.crashed() {
		t.Fatalf("the host agent crashed:\n%s", host.tail(60))
	}

	// 4. QEMU restarts; the persistent bitmap is followed.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	if err := vm.Stop(ctx); err != nil {
		t.Fatalf("stop VM: %v", err)
	}
	cancel()
	seen, _ := host.logLines("vm=web", "msg=")
	vm = img.Start(t)
	pts := len(cl.vmPoints("web"))
	cl.waitFor("points of web after QEMU's restart", 2*time.Minute, func() bool { return len(cl.vmPoints("web")) >= pts+2 })
	begins, read := firstCycleSince(host, "web", len(seen))
	checkIncremental(t, -1, begins, read)

	// 5. Without the fault, db replicates too.
	host.stop()
	host.env = nil
	host.start()
	cl.waitFor("a point of db once its cycles no longer panic", 2*time.Minute, func() bool { return len(cl.vmPoints("db")) >= 1 })
	host.stop()
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	vm.Stop(ctx)
	cancel()
	all := cl.vmPoints("web")
	if got := cl.verifyGuestPoints("web", pickPoints(all, 5)); got == 0 {
		t.Fatal("no point checked")
	}
	t.Logf("%d points of web", len(all))
}

func hasKind(es []api.Event, kind string) bool {
	for _, e := range es {
		if e.Kind == kind {
			return true
		}
	}
	return false
}

// checkIncremental checks that a cycle's log lines say it read only what
// changed: incremental, and far less than the disk.
func checkIncremental(t *testing.T, round int, begins, read string) {
	t.Helper()
	if !strings.Contains(begins, "incremental=true") {
		t.Fatalf("round %d: the first cycle after the restart is not incremental:\n%s", round, begins)
	}
	m := readRe.FindStringSubmatch(read)
	if m == nil {
		t.Fatalf("round %d: no bytes-read figure in %q", round, read)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	if n > 32<<20 {
		t.Fatalf("round %d: the first cycle after the restart read %d bytes: it read the disk, not what changed", round, n)
	}
	t.Logf("round %d: first cycle after the restart is incremental and read %d bytes", round, n)
}
