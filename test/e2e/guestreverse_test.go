package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// TestFailbackByGuestAgent: the way back of a machine whose agent runs
// inside it, recovered on a platform whose disks the server cannot read
// (the exec provider; its stand-in hypervisor testdata/agentvm runs the
// "VM" as an agent process on copies of the point's disks and of the
// agent's state, as the machine's disk carries them, with an instance ID
// of its own). Real processes throughout: server, agents, target writer.
//
//   - failover and commit; the copy of the agent in the recovered VM is
//     told not to replicate forward;
//   - the "guest" writes at the recovery site; reprotect: the copy
//     replicates the VM back (reverse points), a target writer applies
//     them onto the original disk image;
//   - failback, cancelled: the copy is asked to shut down, cuts a final
//     point and powers off; the target writer applies it and starts the
//     original; the cancel stops the original, boots the VM again, and
//     reverse replication resumes;
//   - more writes, failback and commit: the original image equals the
//     recovered disk byte for byte (no lost write); re-enable: the
//     source's agent replicates forward again.
func TestFailbackByGuestAgent(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		skipOrFail(t, "qemu-img not found: apt-get install qemu-utils")
	}
	bin := lifeboat(t)
	hook := filepath.Join(t.TempDir(), "agentvm")
	if out, err := exec.Command("go", "build", "-o", hook, "./testdata/agentvm").CombinedOutput(); err != nil {
		t.Fatalf("build the agentvm hook: %v\n%s", err, out)
	}
	srcState := filepath.Join(t.TempDir(), "agent-db")
	t.Setenv("LIFEBOAT_TEST_BIN", bin)
	t.Setenv("LIFEBOAT_TEST_AGENT_STATE", srcState)
	cl := newCluster(t, func(cfg map[string]any) {
		cfg["heartbeat_every"] = "1s"
		cfg["recovery"] = map[string]any{"provider": "exec", "exec": hook, "pending_wait": "30s", "shutdown_timeout": "60s",
			"networks": map[string]any{"prod": map[string]any{"kind": "bridge", "name": "br-prod"},
				"lab": map[string]any{"kind": "bridge", "name": "br-lab"}},
			"network_map": map[string]any{"*": "prod"}}
	})
	site := filepath.Join(cl.data, "recovery")
	t.Cleanup(func() { stopAgentVMs(site) })
	orig := filepath.Join(cl.dir, "db.img")
	makeDisk(t, orig, 16<<20, 8<<20, 21)
	cl.mustRun("agent", "enroll", "--server", "https://"+cl.apiAddr, "--token", cl.token("agent", "db"), "--name", "db",
		"--state-dir", srcState, "--disk", "vda="+orig)
	poweroff := filepath.Join(srcState, "hooks", "shutdown.d")
	os.MkdirAll(poweroff, 0o755)
	// The machine's "power off": end the agent that runs the hook.
	if err := os.WriteFile(filepath.Join(poweroff, "50-poweroff"), []byte("#!/bin/sh\nkill -TERM $PPID\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	src := cl.spawn("agent-db", "agent", "run", "--state-dir", srcState, "--instance-id", "uuid-src", "--log-level", "info")
	cl.mustRun("policy", "create", "fast", "--crash-interval", "2s", "--app-interval", "0", "--retention", "1h:all")
	cl.mustRun("protect", "db", "--policy", "fast")
	cl.waitFor("2 points of db", 2*time.Minute, func() bool { return len(cl.vaultPoints()) >= 2 })

	src.kill9() // the primary site is lost
	fo := cl.runJob("failover", "db")
	cl.runJob("failover", "commit", "db")
	m, _ := cl.machine("db")
	vm := *m.Recovery.Failover
	copyDisk := filepath.Join(vm.Dir, "vda.img")
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(vm.Dir, "agent.log"))
			t.Logf("---- the recovered VM's agent log:\n%s", tailOf(string(b)))
		}
	})
	cl.waitFor("the recovered VM's agent to report", time.Minute, func() bool {
		m, err := cl.machine("db")
		return err == nil && m.Recovery != nil && m.Recovery.Failover != nil && m.Recovery.Failover.AgentInstance == "copy-"+vm.Name
	})
	if m, _ := cl.machine("db"); m.LastPoint == nil || m.Instance != "uuid-src" {
		t.Fatalf("after failover: instance %q, last point %+v", m.Instance, m.LastPoint)
	}
	known := map[string]bool{}
	for _, p := range cl.vaultPoints() {
		known[p.ID] = true
	}
	churn(t, copyDisk, 20, newRand(5)) // the guest writes at the recovery site

	ps := guestPrimary(t, cl)
	ps.run(cl, orig)
	cl.mustRun("reprotect", "db")
	cl.waitFor("reprotected", 3*time.Minute, func() bool {
		m, err := cl.machine("db")
		if err != nil || m.State == api.StateReprotected {
			return err == nil
		}
		return false
	})
	m, _ = cl.machine("db")
	rv := m.Recovery.Reverse
	if rv.Agent != "copy-"+vm.Name || rv.Point == nil || rv.Target == nil || rv.Target.Applied == "" {
		t.Fatalf("after reprotect: %+v", rv)
	}
	for _, p := range cl.vaultPoints() { // since the failover: the copy's, all reverse
		if !known[p.ID] && p.Labels["direction"] != "reverse" {
			t.Fatalf("the recovered VM's agent published a forward point %s: %+v", p.ID[:12], p.Labels)
		}
	}
	fmt.Fprintf(os.Stderr, "TestFailbackByGuestAgent: failover to %s on %s; reprotect by the VM's agent: reverse point %s changed %d sent %d; target wrote %d of %d compared\n",
		vm.Name, short(fo.Point), short(rv.Point.ID), rv.Point.ChangedBytes, rv.Point.SentBytes, rv.Target.Disks[0].Written, rv.Target.Disks[0].Compared)

	// A failback, cancelled.
	fb := cl.runJob("failback", "db")
	if !ps.started() || agentVMRuns(vm.Dir) {
		t.Fatalf("after failback %s: original started %v, recovery VM's agent runs %v", fb.ID, ps.started(), agentVMRuns(vm.Dir))
	}
	if fileSHA(t, orig) != fileSHA(t, copyDisk) {
		t.Fatal("after the failback the original differs from the recovered disk")
	}
	cl.runJob("failback", "cancel", "db")
	if ps.started() || !agentVMRuns(vm.Dir) {
		t.Fatalf("after cancel: original started %v, recovery VM's agent runs %v", ps.started(), agentVMRuns(vm.Dir))
	}
	churn(t, copyDisk, 10, newRand(6))
	want := fileSHA(t, copyDisk)
	cl.waitFor("reverse replication to resume", time.Minute, func() bool {
		m, err := cl.machine("db")
		return err == nil && m.Recovery != nil && m.Recovery.Reverse != nil && m.Recovery.Reverse.Failback == nil &&
			m.Recovery.Reverse.Target != nil && m.Recovery.Reverse.Target.Applied == m.Recovery.Reverse.Point.ID &&
			m.Recovery.Reverse.Point.Time.After(time.Now().Add(-5*time.Second))
	})

	// Failback for good.
	start := time.Now()
	fb = cl.runJob("failback", "db")
	if got := fileSHA(t, orig); got != want || fileSHA(t, copyDisk) != want {
		t.Fatalf("failback lost writes: original %s, recovered disk %s, want %s", got[:12], fileSHA(t, copyDisk)[:12], want[:12])
	}
	fmt.Fprintf(os.Stderr, "TestFailbackByGuestAgent: failback: final point cut by the VM's agent and applied, original started %s after the request\n", time.Since(start).Round(100*time.Millisecond))
	cl.runJob("failback", "commit", "db")
	if _, err := os.Stat(copyDisk); !os.IsNotExist(err) || agentVMRuns(vm.Dir) {
		t.Fatalf("after commit the recovery VM is left: %v", err)
	}
	src.start() // the original machine runs again, with its agent
	re := cl.runJob("re-enable", "db")
	m, _ = cl.machine("db")
	if m.State != api.StateProtected || m.LastPoint == nil || !m.LastPoint.Time.After(start) {
		t.Fatalf("after re-enable (job %s): %s, last point %+v", re.ID, m.State, m.LastPoint)
	}
	fmt.Fprintf(os.Stderr, "TestFailbackByGuestAgent: re-enable: forward point %s read %d sent %d bytes\n", short(m.LastPoint.Point), m.LastPoint.ReadBytes, m.LastPoint.SentBytes)
}

func short(id string) string { return id[:min(12, len(id))] }

// guestSite is the primary site of TestFailbackByGuestAgent: a target
// writer whose start and stop commands mark the original as running.
type guestSite struct{ marker, start, stop string }

func guestPrimary(t *testing.T, cl *cluster) *guestSite {
	dir := filepath.Join(cl.dir, "primary")
	os.MkdirAll(dir, 0o755)
	g := &guestSite{marker: filepath.Join(dir, "started"), start: filepath.Join(dir, "start.sh"), stop: filepath.Join(dir, "stop.sh")}
	os.WriteFile(g.start, []byte("#!/bin/sh\ntouch "+g.marker+"\n"), 0o755)
	os.WriteFile(g.stop, []byte("#!/bin/sh\nrm -f "+g.marker+"\n"), 0o755)
	return g
}

func (g *guestSite) run(cl *cluster, orig string) {
	tok := cl.token("target", "primary1")
	cl.spawn("target", "target", "run", "--name", "primary1", "--disk", "db/vda="+orig,
		"--state-dir", filepath.Join(cl.dir, "target-state"), "--every", "1s",
		"--start-command", g.start, "--stop-command", g.stop, "--server", "https://"+cl.apiAddr, "--token", tok)
}

func (g *guestSite) started() bool { _, err := os.Stat(g.marker); return err == nil }

// agentVMRuns reports whether the agent of an agentvm "VM" runs.
func agentVMRuns(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "agent.pid"))
	if err != nil {
		return false
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	// A zombie (ended, not reaped: its parent, the hook, is gone) has an
	// empty command line.
	cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.Contains(string(cmd), "agent")
}

// stopAgentVMs kills the agents of the agentvm "VMs" left in site.
func stopAgentVMs(site string) {
	ents, _ := os.ReadDir(site)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(site, e.Name(), "agent.pid"))
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	killSite(site)
}
