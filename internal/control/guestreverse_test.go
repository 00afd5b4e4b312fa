package control

import (
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// inventoryOn is db's inventory as its agent reports it from instance
// inst (an SMBIOS UUID).
func inventoryOn(inst string) api.Inventory {
	return api.Inventory{Hostname: "db", OS: "linux", Arch: "amd64", Instance: inst,
		Disks: []api.DiskInfo{{Name: "vda", Path: "/dev/vda", Size: 1 << 30, Kind: "block"}}}
}

// TestReprotectByAgent: a machine with an agent inside, recovered on a
// provider whose disks the server cannot read (the fake one, as the exec
// provider). The copy of the agent in the recovered VM reports from
// another instance: it is told not to replicate forward; the source's
// agent keeps its own configuration. Reprotect is refused until that
// copy has reported, then the copy replicates back (its reverse points,
// labelled with the VM, become the machine's; one of another VM is
// ignored, and none moves the forward last point); at failback it is
// asked to shut down, its final point is applied and the original
// started; a cancel withdraws the request and reverse replication
// resumes.
func TestReprotectByAgent(t *testing.T) {
	s := startSite(t)
	src, pts := s.machine("db", 2)
	op := s.token(api.RoleOperator, 0)
	src.heartbeat(api.AgentHeartbeat{Inventory: inventoryOn("uuid-src")})
	if m := s.machineRec("db"); m.Instance != "uuid-src" {
		t.Fatalf("instance %q, want the source's", m.Instance)
	}
	s.waitJob(s.submit(op, "db", "failover", api.FailoverRequest{Point: pts[1][:8]}).ID)
	s.waitJob(s.submit(op, "db", "failover/commit", nil).ID)
	r := s.api("POST", "/api/v1/machines/db/reprotect", op, nil)
	s.refused(r, 409, api.CodeActionNotAllowed, "reprotect before the recovered VM's agent reported")
	if !strings.Contains(r.err().Message, "no Lifeboat agent inside the recovered VM has reported") {
		t.Fatalf("refusal: %s", r.body)
	}

	// The same certificate from the recovered VM (another instance).
	copyAgent := src
	cfg := copyAgent.heartbeat(api.AgentHeartbeat{Inventory: inventoryOn("uuid-copy")})
	if cfg.Protected || cfg.Shutdown != nil || cfg.Reverse != nil {
		t.Fatalf("the recovered VM's agent before reprotect: %+v", cfg)
	}
	m := s.machineRec("db")
	vm := m.Recovery.Failover
	if m.Instance != "uuid-src" || m.Inventory.Instance != "uuid-src" || vm.AgentInstance != "uuid-copy" {
		t.Fatalf("instances: machine %q (inventory %q), recovered VM's agent %q", m.Instance, m.Inventory.Instance, vm.AgentInstance)
	}
	rj := s.submit(op, "db", "reprotect", nil)
	var rc api.AgentConfig
	eventually(t, "the copy told to replicate back", func() bool {
		rc = copyAgent.heartbeat(api.AgentHeartbeat{Inventory: inventoryOn("uuid-copy")})
		return rc.Reverse != nil
	})
	if !rc.Protected || rc.Paused || rc.Reverse.ID != rj.ID || rc.Reverse.VM != vm.Name || rc.Reverse.Base != pts[1] || rc.Policy == nil ||
		rc.Policy.Driver != "" || rc.Shutdown != nil {
		t.Fatalf("the copy's configuration: %+v (policy %+v)", rc, rc.Policy)
	}
	if c := src.heartbeat(api.AgentHeartbeat{Inventory: inventoryOn("uuid-src")}); c.Protected || c.Reverse != nil {
		t.Fatalf("the source's configuration while the copy replicates back: %+v", c)
	}
	forward := s.machineRec("db").LastPoint
	rev := s.reversePoint("db", pts[1], vm.Name)
	other := s.reversePoint("db", pts[1], "lb-another-vm")
	at := s.clock.Now()
	copyAgent.heartbeat(api.AgentHeartbeat{Inventory: inventoryOn("uuid-copy"), Results: []api.CycleResult{
		{Point: other, Kind: vault.KindCrash, Time: at}, {Point: rev, Kind: vault.KindCrash, Time: at, ChangedBytes: 4096, SentBytes: 4096}}})
	m = s.machineRec("db")
	if rp := m.Recovery.Reverse.Point; rp == nil || rp.ID != rev || rp.SentBytes != 4096 || m.Recovery.Reverse.Agent != "uuid-copy" {
		t.Fatalf("reverse point %+v (agent %q), want %s", rp, m.Recovery.Reverse.Agent, short(rev))
	}
	if m.LastPoint == nil || m.LastPoint.Point != forward.Point {
		t.Fatalf("a reverse point moved the forward last point: %+v", m.LastPoint)
	}
	var tr api.TokenResponse
	s.mustAPI("POST", "/api/v1/tokens", s.admin, api.TokenRequest{Role: api.RoleTarget, Name: "primary1"}, 201, &tr)
	target := func(rep api.TargetReport) {
		rep.Name, rep.Disks = "primary1", []api.TargetDisk{{Name: "vda", Path: "/images/db.img", Size: 1 << 20}}
		s.mustAPI("POST", "/api/v1/machines/db/reverse/target", tr.Token, rep, 200, nil)
	}
	target(api.TargetReport{Applied: rev})
	if j := s.waitJob(rj.ID); j.State != "succeeded" {
		t.Fatalf("reprotect: %+v", j)
	}

	// Failback: the copy is asked to shut down, cuts its final point.
	fj := s.submit(op, "db", "failback", nil)
	eventually(t, "the copy asked to shut down", func() bool {
		rc = copyAgent.heartbeat(api.AgentHeartbeat{Inventory: inventoryOn("uuid-copy")})
		return rc.Shutdown != nil
	})
	if rc.Shutdown.ID != fj.ID || rc.Reverse == nil {
		t.Fatalf("the copy's failback request: %+v", rc)
	}
	if c := src.heartbeat(api.AgentHeartbeat{Inventory: inventoryOn("uuid-src")}); c.Shutdown != nil {
		t.Fatalf("the source was asked to shut down: %+v", c)
	}
	s.clock.Advance(time.Second)
	final := s.reversePoint("db", rev, vm.Name)
	copyAgent.heartbeat(api.AgentHeartbeat{Inventory: inventoryOn("uuid-copy"), Shutdown: &api.ShutdownAck{ID: fj.ID, State: api.ShutdownStopped}})
	// The final point's result first (as the process server's report
	// may come first): the failback waits for the agent to be done.
	copyAgent.heartbeat(api.AgentHeartbeat{Inventory: inventoryOn("uuid-copy"), Results: []api.CycleResult{{Point: final, Kind: vault.KindCrash, Time: s.clock.Now()}}})
	if fb := failbackOf(s.machineRec("db")); fb == nil || fb.Final != "" {
		t.Fatalf("the final point taken before the agent said it was done: %+v", fb)
	}
	copyAgent.heartbeat(api.AgentHeartbeat{Inventory: inventoryOn("uuid-copy"), Shutdown: &api.ShutdownAck{ID: fj.ID, State: api.ShutdownDone, Point: final}})
	eventually(t, "the final point recorded", func() bool {
		fb := failbackOf(s.machineRec("db"))
		return fb != nil && fb.Final == final && fb.Halted
	})
	// The job waits for the guest to power itself off (no stop cuts the
	// agent's shutdown short).
	s.clock.Advance(time.Second)
	if fb := failbackOf(s.machineRec("db")); fb.Start {
		t.Fatal("the original was started while the recovery VM still ran")
	}
	s.prov.powerOff(vm.Name)
	target(api.TargetReport{Applied: final})
	eventually(t, "the original asked to start", func() bool {
		s.clock.Advance(500 * time.Millisecond) // the job polls the provider on the clock
		fb := failbackOf(s.machineRec("db"))
		return fb != nil && fb.Start
	})
	target(api.TargetReport{Applied: final, Started: final})
	if j := s.waitJob(fj.ID); j.State != "succeeded" {
		t.Fatalf("failback: %+v", j)
	}

	// Cancel: the request is withdrawn, the copy replicates back again.
	cj := s.submit(op, "db", "failback/cancel", nil)
	eventually(t, "the original asked to stop", func() bool {
		fb := failbackOf(s.machineRec("db"))
		return fb != nil && fb.Stop
	})
	target(api.TargetReport{Applied: final})
	if j := s.waitJob(cj.ID); j.State != "succeeded" {
		t.Fatalf("cancel: %+v", j)
	}
	rc = copyAgent.heartbeat(api.AgentHeartbeat{Inventory: inventoryOn("uuid-copy")})
	if rc.Shutdown != nil || rc.Reverse == nil || !rc.Protected {
		t.Fatalf("the copy after the cancel: %+v", rc)
	}
}
