package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/compute/computetest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
)

// primarySite is where the original machine runs: its image, and the
// target writer's start and stop commands, real scripts that boot it in
// QEMU (daemonized, its QMP socket linked into the host agent's
// directory so the agent finds it again) and stop it.
type primarySite struct {
	img *guest.BootImage
	// alternate: the image does not exist yet: the target writer makes
	// it (an alternate location), writing every block of the first point.
	alternate               bool
	serial, qmp, pid        string
	startScript, stopScript string
}

func newPrimarySite(t *testing.T, img *guest.BootImage, qmpDir string) *primarySite {
	t.Helper()
	dir, err := os.MkdirTemp("", "lbps")
	if err != nil {
		t.Fatal(err)
	}
	_, err = os.Stat(img.Disk)
	ps := &primarySite{img: img, alternate: os.IsNotExist(err), serial: filepath.Join(dir, "console.log"), qmp: filepath.Join(dir, "qmp.sock"), pid: filepath.Join(dir, "qemu.pid"),
		startScript: filepath.Join(dir, "start.sh"), stopScript: filepath.Join(dir, "stop.sh")}
	t.Cleanup(func() { ps.kill(); os.RemoveAll(dir) })
	var q []string
	for _, a := range img.Command(ps.serial, ps.qmp, ps.pid) {
		q = append(q, "'"+strings.ReplaceAll(a, "'", `'\''`)+"'")
	}
	link := filepath.Join(qmpDir, "web.qmp")
	start := "#!/bin/sh\nset -e\nrm -f " + ps.serial + " " + link + "\n" + strings.Join(q, " ") + "\nln -s " + ps.qmp + " " + link + "\n"
	stop := "#!/bin/sh\npid=$(cat " + ps.pid + ")\nkill $pid\nfor i in $(seq 300); do kill -0 $pid 2>/dev/null || exit 0; sleep 0.1; done\nkill -9 $pid\n"
	for f, body := range map[string]string{ps.startScript: start, ps.stopScript: stop} {
		if err := os.WriteFile(f, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return ps
}

// running returns the original machine's QEMU PID, 0 if none runs.
func (ps *primarySite) running() int {
	b, err := os.ReadFile(ps.pid)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

// lastManifest is the newest manifest the original machine's console
// shows.
func (ps *primarySite) lastManifest() int64 {
	b, _ := os.ReadFile(ps.serial)
	return guest.LastManifest(string(b))
}

func (ps *primarySite) kill() {
	if pid := ps.running(); pid > 0 {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// bootedManifest waits for the original machine's console to show its
// manifest check at boot and returns the sequence number it verified.
func (ps *primarySite) bootedManifest(t *testing.T) int64 {
	t.Helper()
	return consoleFrom(t, ps.serial, 0)
}

// consoleFrom waits until a console log, from byte offset on (a VM's
// later boot, when the log is appended to), shows the guest's manifest
// check and ReadyMarker, and returns the sequence number it verified.
func consoleFrom(t *testing.T, path string, offset int64) int64 {
	t.Helper()
	re := regexp.MustCompile(guest.ManifestPassMarker + ` seq ([0-9]+)`)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		b, _ := os.ReadFile(path)
		if int64(len(b)) > offset {
			log := string(b[offset:])
			if m := re.FindStringSubmatch(log); m != nil && strings.Contains(log, guest.ReadyMarker) {
				seq, _ := strconv.ParseInt(m[1], 10, 64)
				return seq
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("console %s: no manifest check and %s after byte %d:\n%s", path, guest.ReadyMarker, offset, tailOf(string(b)))
		}
		time.Sleep(200 * time.Millisecond) // poll pause under the deadline above
	}
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// failback takes the reprotected machine home: with cancel, the first
// failback is cancelled (the original stops, the recovery VM runs again
// with its data, reverse replication resumes) and a second one is
// committed; then forward protection is re-enabled and a forward point
// arrives, having sent little.
func failback(t *testing.T, cl *cluster, vm api.RecoveredVM, ps *primarySite, cancelFirst bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	b, _ := os.ReadFile(vm.Console)
	waitConsoleManifest(ctx, t, vm, guest.LastManifest(string(b))+1)

	if cancelFirst {
		failbackCancel(ctx, t, cl, vm, ps)
	}
	failbackOnce(t, cl, vm, ps)
	cl.runJob("failback", "commit", "web")
	gone(t, vm)
	if m, _ := cl.machine("web"); m.State != api.StateFailedBack || ps.running() == 0 {
		t.Fatalf("after commit-failback: state %s, original running %v", m.State, ps.running() != 0)
	}
	reEnable(t, cl, ps)
}

// failbackCancel fails back and cancels it.
func failbackCancel(ctx context.Context, t *testing.T, cl *cluster, vm api.RecoveredVM, ps *primarySite) {
	t.Helper()
	fb := failbackOnce(t, cl, vm, ps)
	cycles := func() int64 { m, _ := cl.machine("web"); return m.Recovery.Reverse.Cycles }
	before := cycles()
	offset := fileSize(vm.Console)
	cl.runJob("failback", "cancel", "web")
	if pid := ps.running(); pid != 0 {
		t.Fatalf("after cancel-failback the original still runs (pid %d)", pid)
	}
	if m, _ := cl.machine("web"); m.State != api.StateReprotected {
		t.Fatalf("state after cancel-failback: %s", m.State)
	}
	if got := consoleFrom(t, vm.Console, offset); got < fb {
		t.Fatalf("the recovery VM restarted after cancel with manifest seq %d, it had written %d", got, fb)
	}
	cl.waitFor("reverse replication resumed after cancel", 2*time.Minute, func() bool { return cycles() > before })
	waitConsoleManifest(ctx, t, vm, fb+1) // the recovery VM writes again
}

// reEnable protects the failed-back machine again and checks the first
// forward point sent little: the vault holds its blocks. It read little
// too, unless the original is a raw image: QEMU keeps no dirty bitmap of
// one across its restart, so the agent reads it whole once.
func reEnable(t *testing.T, cl *cluster, ps *primarySite) {
	t.Helper()
	re := cl.runJob("re-enable", "web")
	var fp api.CycleResult
	if raw, ok := re.Data["forward_point"]; !ok || json.Unmarshal(raw, &fp) != nil {
		t.Fatalf("re-enable job without its forward point: %s", re.Data)
	}
	m, _ := cl.machine("web")
	fmt.Fprintf(os.Stderr, "%s: re-enable: forward point %s read %d changed %d sent %d bytes\n", t.Name(), fp.Point[:12], fp.ReadBytes, fp.ChangedBytes, fp.SentBytes)
	if m.State != api.StateProtected && m.State != api.StateInitial {
		t.Fatalf("state after re-enable: %s", m.State)
	}
	raw := ps.img.Format == "" || ps.img.Format == "raw"
	if size := int64(128 << 20); fp.SentBytes > size/4 || fp.ReadBytes > size/4 && !raw {
		t.Fatalf("re-enable read %d and sent %d bytes of a %d-byte disk: want only what the original wrote since the failback (its tracking was handed over)", fp.ReadBytes, fp.SentBytes, size)
	}
}

// failbackOnce fails back and checks the original machine boots with
// every manifest the recovery VM wrote before it shut down; it returns
// that manifest's sequence number.
func failbackOnce(t *testing.T, cl *cluster, vm api.RecoveredVM, ps *primarySite) int64 {
	t.Helper()
	start := time.Now()
	j := cl.runJob("failback", "web")
	b, _ := os.ReadFile(vm.Console)
	last := guest.LastManifest(string(b))
	if len(computetest.Processes(vm.Name)) != 0 {
		t.Fatalf("the recovery VM %s still runs after failback", vm.Name)
	}
	if j.ReversePoint == nil || j.FailedBack == nil || j.TargetWriter == nil || j.FailedBack.Point != j.ReversePoint.ID {
		t.Fatalf("failback job: %+v %+v %+v", j.ReversePoint, j.FailedBack, j.TargetWriter)
	}
	if m, _ := cl.machine("web"); m.State != api.StateFailingBack {
		t.Fatalf("state after failback: %s", m.State)
	}
	got := ps.bootedManifest(t)
	fmt.Fprintf(os.Stderr, "%s: failback: final point %s changed %d sent %d; target wrote %d; original booted with manifest seq %d (recovery VM wrote %d) %s after the request\n",
		t.Name(), j.ReversePoint.ID[:12], j.ReversePoint.ChangedBytes, j.ReversePoint.SentBytes, j.TargetWriter.Disks[0].Written, got, last, time.Since(start).Round(time.Second))
	if got < last {
		t.Fatalf("failback lost data: the recovery VM wrote manifest seq %d, the original booted with %d", last, got)
	}
	return last
}

// failbackByPlan fails the machine back through a recovery plan in the
// failback direction: the group's before and after actions run around
// the machine's failback (and see LIFEBOAT_DIRECTION=failback), then the
// plan's failback is committed and protection re-enabled by the plan.
func failbackByPlan(t *testing.T, cl *cluster, vm api.RecoveredVM, ps *primarySite) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b, _ := os.ReadFile(vm.Console)
	last := waitConsoleManifest(ctx, t, vm, guest.LastManifest(string(b))+1)
	marks := filepath.Join(cl.dir, "failback-actions")
	script := filepath.Join(cl.dir, "failback-action.sh")
	os.WriteFile(script, []byte("#!/bin/sh\necho \"$LIFEBOAT_DIRECTION $LIFEBOAT_WHEN $LIFEBOAT_GROUP\" >> "+marks+"\n"), 0o755)
	yamlPath := filepath.Join(cl.dir, "webplan.yaml")
	os.WriteFile(yamlPath, []byte("name: webplan\ngroups:\n  - name: front\n    machines:\n      - machine: web\n"+
		"    before:\n      - name: drain\n        script: "+script+"\n    after:\n      - name: announce\n        script: "+script+"\n"), 0o600)
	cl.mustRun("plan", "apply", "-f", yamlPath)
	if r := cl.run("failback", "--plan", "webplan", "--wait"); r.code != 0 {
		t.Fatalf("failback --plan: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if got, _ := os.ReadFile(marks); string(got) != "failback before front\nfailback after front\n" {
		t.Fatalf("the plan's actions around the failback wrote %q", got)
	}
	if got := ps.bootedManifest(t); got < last {
		t.Fatalf("failback by plan lost data: the recovery VM wrote manifest seq %d, the original booted with %d", last, got)
	}
	if r := cl.run("plan", "failback-commit", "webplan", "--wait"); r.code != 0 {
		t.Fatalf("plan failback-commit: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	gone(t, vm)
	if r := cl.run("plan", "re-enable", "webplan", "--wait"); r.code != 0 {
		t.Fatalf("plan re-enable: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if m, _ := cl.machine("web"); m.State != api.StateProtected && m.State != api.StateInitial {
		t.Fatalf("state after the plan's re-enable: %s", m.State)
	}
}
