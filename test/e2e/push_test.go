package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/sshd"
)

// TestAgentPush installs an agent on a "remote" host through a real
// OpenSSH server on 127.0.0.1: `lifeboat agent push` copies the binary,
// writes the unit, enrolls the agent with a fresh token and starts it;
// the machine then replicates like any other.
func TestAgentPush(t *testing.T) {
	cl := newCluster(t)
	srv := sshd.Start(t)
	remote := filepath.Join(cl.dir, "remote")
	disk := filepath.Join(cl.dir, "pushed-disk.img")
	makeDisk(t, disk, 8<<20, 4<<20, 42)

	out := cl.mustRun("agent", "push", "--host", srv.Host(), "--port", strconv.Itoa(srv.Port),
		"--identity", srv.Identity, "--known-hosts", srv.KnownHosts, "--name", "pushed",
		"--remote-bin", filepath.Join(remote, "bin", "lifeboat"), "--remote-state-dir", filepath.Join(remote, "state"),
		"--unit-path", filepath.Join(remote, "lifeboat-agent.service"), "--start", "nohup",
		"--disk", "d0="+disk)
	m := regexp.MustCompile(`pid (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("push printed no pid:\n%s", out)
	}
	pid, _ := strconv.Atoi(m[1])
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(50 * time.Millisecond) // poll pause, at most 100 times
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	})
	t.Logf("push: %s", out)
	for _, f := range []string{"bin/lifeboat", "lifeboat-agent.service", "state/agent.json"} {
		if _, err := os.Stat(filepath.Join(remote, f)); err != nil {
			t.Errorf("push did not install %s: %v", f, err)
		}
	}
	cl.waitFor("the pushed agent to report", 30*time.Second, func() bool {
		mm, err := cl.machine("pushed")
		return err == nil && len(mm.Inventory.Disks) == 1
	})
	cl.mustRun("policy", "create", "quick", "--crash-interval", "2s", "--app-interval", "0")
	cl.mustRun("protect", "pushed", "--policy", "quick")
	cl.waitFor("a point from the pushed agent", 60*time.Second, func() bool {
		mm, err := cl.machine("pushed")
		return err == nil && mm.LastPoint != nil && mm.LastPoint.Point != "" && mm.State == api.StateProtected
	})
	pts := cl.vaultPoints()
	if len(pts) == 0 {
		t.Fatal("no point in the vault")
	}
	if got, want := cl.restoreSHA(pts[len(pts)-1].ID, "d0"), fileSHA(t, disk); got != want {
		t.Errorf("pushed machine's point restores to %s, disk is %s", got, want)
	}
}
