package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

// acksOf lists the shutdown acknowledgements the control plane received,
// without repeats.
func (cp *controlPlane) acksOf() []api.ShutdownAck {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	var out []api.ShutdownAck
	for _, hb := range cp.hbs {
		if a := hb.Shutdown; a != nil && (len(out) == 0 || out[len(out)-1].State != a.State) {
			out = append(out, *a)
		}
	}
	return out
}

// TestShutdownInGuest: the agent runs its pre-shutdown hooks (the
// application's last writes land on the disk), syncs, cuts a final point
// labelled final that holds those writes, reports it, and only then runs
// its shutdown hooks; it cycles no more until the request is withdrawn.
func TestShutdownInGuest(t *testing.T) {
	h := newHarness(t, "app1", 256<<10)
	hooks := filepath.Join(h.stateDir, "hooks")
	marker := filepath.Join(t.TempDir(), "powered-off")
	for dir, script := range map[string]string{
		PreShutdownDir: fmt.Sprintf("#!/bin/sh\nprintf 'LAST WRITE BEFORE SHUTDOWN' | dd of=%s bs=1 seek=8192 conv=notrunc status=none\n", h.disks[0]),
		ShutdownDir:    fmt.Sprintf("#!/bin/sh\necho \"$LIFEBOAT_SHUTDOWN_ID\" > %s\n", marker),
	} {
		if err := os.MkdirAll(filepath.Join(hooks, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(hooks, dir, "10-hook"), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	h.cp.setConfig(func(c *api.AgentConfig) {
		c.Protected = true
		c.Policy = &api.Policy{Name: "p", CrashInterval: api.Duration(time.Hour)}
	})
	h.startAgent(t)
	waitFor(t, 30*time.Second, "a first point", func() bool { res, _, _, _ := h.cp.snapshot(); return len(res) > 0 })
	h.cp.setConfig(func(c *api.AgentConfig) {
		c.Shutdown = &api.ShutdownRequest{ID: "s1", Timeout: api.Duration(10 * time.Second)}
	})
	waitFor(t, 30*time.Second, "the shutdown hooks", func() bool { _, err := os.Stat(marker); return err == nil })
	acks := h.cp.acksOf()
	var states []string
	for _, a := range acks {
		states = append(states, a.State)
	}
	if strings.Join(states, ",") != "stopping,stopped,done" || acks[2].Point == "" || acks[2].ID != "s1" {
		t.Fatalf("acknowledgements %+v", acks)
	}
	if b, _ := os.ReadFile(marker); strings.TrimSpace(string(b)) != "s1" {
		t.Fatalf("shutdown hook environment: %q", b)
	}
	final := acks[2].Point
	img, err := os.ReadFile(h.disks[0])
	if err != nil {
		t.Fatal(err)
	}
	h.restoreAndCompare(t, final, map[string][]byte{"d0": img})
	if p := h.loadPoint(t, final); p.Labels["final"] != "s1" {
		t.Fatalf("final point labels: %v", p.Labels)
	}
	res, _, _, _ := h.cp.snapshot()
	h.waitHeartbeats(t, 3, "from an agent shut down", func(hb api.AgentHeartbeat) bool { return hb.State == "shut down" })
	if again, _, _, _ := h.cp.snapshot(); len(again) != len(res) {
		t.Fatalf("the agent cycled after the shutdown: %d results, then %d", len(res), len(again))
	}
	// Withdrawn (the failover was cancelled): replication resumes.
	h.cp.setConfig(func(c *api.AgentConfig) {
		c.Shutdown = nil
		c.Policy.CrashInterval = api.Duration(200 * time.Millisecond)
	})
	waitFor(t, 30*time.Second, "cycles again", func() bool { again, _, _, _ := h.cp.snapshot(); return len(again) > len(res) })
}

// TestShutdownHookFails: a failing pre-shutdown hook fails the request;
// the agent reports it and cuts no final point.
func TestShutdownHookFails(t *testing.T) {
	h := newHarness(t, "app2", 64<<10)
	dir := filepath.Join(h.stateDir, "hooks", PreShutdownDir)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "10-fail"), []byte("#!/bin/sh\necho database refuses to stop >&2\nexit 3\n"), 0o755)
	h.cp.setConfig(func(c *api.AgentConfig) {
		c.Protected = true
		c.Policy = &api.Policy{Name: "p", CrashInterval: api.Duration(time.Hour)}
		c.Shutdown = &api.ShutdownRequest{ID: "s2", Timeout: api.Duration(5 * time.Second)}
	})
	h.startAgent(t)
	waitFor(t, 30*time.Second, "a failed acknowledgement", func() bool {
		acks := h.cp.acksOf()
		return len(acks) > 0 && acks[len(acks)-1].State == api.ShutdownFailed
	})
	acks := h.cp.acksOf()
	if last := acks[len(acks)-1]; !strings.Contains(last.Error, "database refuses to stop") || last.Point != "" {
		t.Fatalf("failed ack: %+v", last)
	}
	if res, _, _, _ := h.cp.snapshot(); len(res) != 0 {
		t.Fatalf("points after a failed shutdown: %+v", res)
	}
}

func (h *harness) loadPoint(t *testing.T, id string) *vault.Point {
	t.Helper()
	ctx := context.Background()
	be, err := local.New(h.vaultDir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Open(ctx, be, []byte("pw"), vault.Options{KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := vault.ParseID(id)
	p, err := v.LoadPoint(ctx, pid)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeQMP is a QEMU monitor whose guest powers off powerOffAfter status
// queries after system_powerdown (never, when negative).
type fakeQMP struct {
	mu            sync.Mutex
	cmds          []string
	action        string
	status        string
	powerdown     int
	powerOffAfter int
}

func (f *fakeQMP) serve(t *testing.T) string {
	sock := filepath.Join(t.TempDir(), "vm.qmp")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.conn(c)
		}
	}()
	return sock
}

func (f *fakeQMP) conn(c net.Conn) {
	defer c.Close()
	fmt.Fprintln(c, `{"QMP":{"version":{"qemu":{"major":8,"minor":2,"micro":0},"package":""},"capabilities":[]}}`)
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		var req struct {
			Execute   string            `json:"execute"`
			Arguments map[string]string `json:"arguments"`
			ID        any               `json:"id"`
		}
		if json.Unmarshal(sc.Bytes(), &req) != nil {
			return
		}
		ret := f.handle(req.Execute, req.Arguments)
		b, _ := json.Marshal(map[string]any{"return": ret, "id": req.ID})
		c.Write(append(b, '\n'))
	}
}

func (f *fakeQMP) handle(cmd string, args map[string]string) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds = append(f.cmds, cmd)
	switch cmd {
	case "set-action":
		f.action = args["shutdown"]
	case "system_powerdown":
		f.powerdown = 1
	case "query-status":
		if f.powerdown > 0 && f.powerOffAfter >= 0 {
			if f.powerdown > f.powerOffAfter && f.action == "pause" {
				f.status = "shutdown"
			}
			f.powerdown++
		}
		return map[string]any{"running": f.status == "running", "status": f.status}
	}
	return map[string]any{}
}

func (f *fakeQMP) commands() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.cmds, " ")
}

// TestQMPPowerOff: the guest is asked through the ACPI button with QEMU
// set to pause on shutdown, so its disks stay readable; end quits QEMU. A
// guest that ignores the button is reported, and QEMU's shutdown action
// is set back.
func TestQMPPowerOff(t *testing.T) {
	ctx := context.Background()
	f := &fakeQMP{status: "running", powerOffAfter: 2}
	sock := f.serve(t)
	end, err := qmpPowerOff(ctx, clock.System{}, sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.commands(); !strings.Contains(got, "query-status set-action system_powerdown query-status") || strings.Contains(got, "quit") {
		t.Fatalf("QMP commands: %s", got)
	}
	if err := end(ctx); err != nil || !strings.HasSuffix(f.commands(), "quit") {
		t.Fatalf("end: %v, commands %s", err, f.commands())
	}
	// A second attempt finds the guest off already.
	f.cmds = nil
	if _, err := qmpPowerOff(ctx, clock.System{}, sock, time.Second); err != nil || strings.Contains(f.commands(), "system_powerdown") {
		t.Fatalf("again: %v, %s", err, f.commands())
	}

	stubborn := &fakeQMP{status: "running", powerOffAfter: -1}
	sock = stubborn.serve(t)
	_, err = qmpPowerOff(ctx, clock.System{}, sock, 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not power off") || stubborn.action != "poweroff" {
		t.Fatalf("a guest that ignores the button: %v, shutdown action %q", err, stubborn.action)
	}
}

// TestShutdownVM: a VM of a host agent is powered off through its
// hypervisor before the final cycle and ended after the point is
// reported.
func TestShutdownVM(t *testing.T) {
	h := newHarness(t, "vm1", 128<<10)
	var mu sync.Mutex
	var steps []string
	note := func(s string) {
		mu.Lock()
		steps = append(steps, s)
		mu.Unlock()
	}
	res0 := func() int { res, _, _, _ := h.cp.snapshot(); return len(res) }
	h.cp.setConfig(func(c *api.AgentConfig) {
		c.Protected = true
		c.Drivers = map[string]string{"": api.DriverScan}
		c.Policy = &api.Policy{Name: "p", CrashInterval: api.Duration(time.Hour)}
		c.Shutdown = &api.ShutdownRequest{ID: "s3", Timeout: api.Duration(7 * time.Second)}
	})
	h.startAgentWith(t, func(cfg *Config) {
		cfg.vm = &vmTarget{spec: api.VMSpec{Name: "vm1", Disks: []api.VMDisk{{Name: "d0", Image: h.disks[0]}}}, source: "qmp",
			powerOff: func(_ context.Context, timeout time.Duration) (func(context.Context) error, error) {
				note(fmt.Sprintf("power off %s, %d points", timeout, res0()))
				return func(context.Context) error { note("end"); return nil }, nil
			}}
	})
	// The VM ends before the agent reports the shutdown done (in its
	// next heartbeat): wait for both.
	waitFor(t, 30*time.Second, "the VM ended and the shutdown reported done", func() bool {
		mu.Lock()
		defer mu.Unlock()
		acks := h.cp.acksOf()
		return len(steps) == 2 && len(acks) > 0 && acks[len(acks)-1].State == api.ShutdownDone
	})
	acks := h.cp.acksOf()
	mu.Lock()
	defer mu.Unlock()
	if steps[0] != "power off 7s, 0 points" || !strings.HasPrefix(steps[1], "end") || acks[len(acks)-1].State != api.ShutdownDone ||
		acks[len(acks)-1].Point == "" {
		t.Fatalf("steps %q, acks %+v", steps, acks)
	}
}
