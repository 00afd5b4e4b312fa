package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
)

// TestDrillThroughAPI: a test failover boots the chosen point with the
// machine's overrides on the isolated test network, replication goes
// on, a second drill is refused, and cleanup removes everything and
// keeps the notes in the drill history.
func TestDrillThroughAPI(t *testing.T) {
	s := startSite(t)
	a, pts := s.machine("web", 3)
	viewer, operator := s.token(api.RoleViewer, 0), s.token(api.RoleOperator, 0)
	s.mustAPI("PUT", "/api/v1/machines/web/recovery", operator, api.RecoveryOverrides{VCPUs: 3, MemoryMiB: 768, Address: "10.0.0.5/24"}, 200, nil)

	s.refused(s.api("POST", "/api/v1/machines/web/test-failover", viewer, api.TestFailoverRequest{}), 403, api.CodeForbidden, "viewer drill")
	j := s.submit(operator, "web", "test-failover", api.TestFailoverRequest{Point: "latest-app"})
	if j.Kind != orchestrate.KindTestFailover || j.Target != "web" || !strings.Contains(j.Actor, "operator") {
		t.Fatalf("submitted job: %+v", j)
	}
	j = s.waitJob(j.ID)
	if j.State != "succeeded" || j.Point != pts[2] || len(j.VMs) != 1 {
		t.Fatalf("drill: %s %q point %s VMs %+v", j.State, j.Error, j.Point, j.VMs)
	}
	vm := j.VMs[0]
	if vm.Provider != "fake" || vm.Point != pts[2] || vm.Console == "" || len(vm.Disks) != 1 || vm.Disks[0].Overlay == "" {
		t.Fatalf("recovered VM: %+v", vm)
	}
	spec := s.prov.spec(vm.Name)
	if spec.VM.VCPUs != 3 || spec.VM.MemoryMiB != 768 || len(spec.NICs) != 1 || !spec.NICs[0].Network.Isolated ||
		spec.Guest == nil || spec.Guest.Address != "10.0.0.5/24" {
		t.Fatalf("drill spec: %+v", spec)
	}
	m := s.machineRec("web")
	if m.Recovery == nil || m.Recovery.Drill == nil || m.Recovery.Drill.Name != vm.Name || m.State != api.StateProtected {
		t.Fatalf("machine during the drill: %s %+v", m.State, m.Recovery)
	}
	if cfg := a.heartbeat(api.AgentHeartbeat{}); !cfg.Protected || cfg.Paused {
		t.Fatalf("a drill disturbed replication: %+v", cfg)
	}
	s.refused(s.api("POST", "/api/v1/machines/web/test-failover", operator, nil), 409, api.CodeDrillRunning, "second drill")

	c := s.waitJob(s.submit(operator, "web", "test-failover/cleanup", api.CleanupRequest{Notes: "app answered; RTO 4 min"}).ID)
	if c.State != "succeeded" {
		t.Fatalf("cleanup: %s %s", c.State, c.Error)
	}
	if _, err := os.Stat(vm.Dir); !errors.Is(err, os.ErrNotExist) || len(s.prov.running()) != 0 || s.exp.count() != 0 {
		t.Fatalf("cleanup left: dir %v, VMs %v, point servers %d", err, s.prov.running(), s.exp.count())
	}
	var drill api.Job
	s.mustAPI("GET", "/api/v1/jobs/"+j.ID, viewer, nil, 200, &drill)
	if drill.Cleanup == nil || drill.Cleanup.Notes != "app answered; RTO 4 min" || drill.Cleanup.Job != c.ID {
		t.Fatalf("drill history: %+v", drill.Cleanup)
	}
	if m := s.machineRec("web"); m.Recovery != nil {
		t.Fatalf("machine after cleanup: %+v", m.Recovery)
	}
	if len(s.events("drill_cleaned_up")) != 1 || len(s.events("test_failover_started")) != 1 {
		t.Fatal("no drill events")
	}
	s.refused(s.api("POST", "/api/v1/machines/web/test-failover/cleanup", operator, nil), 409, api.CodeNoDrill, "cleanup without drill")
	audits := 0
	for _, e := range s.events(api.EventAudit) {
		if e.Machine == "web" && e.Actor != nil && e.Actor.Role == api.RoleOperator && strings.Contains(e.Message, "test failover") {
			audits++
		}
	}
	if audits != 2 {
		t.Fatalf("%d audited drill actions, want 2", audits)
	}
	var list []api.Job
	s.mustAPI("GET", "/api/v1/jobs?machine=web&kind=test-failover", viewer, nil, 200, &list)
	if len(list) != 1 || list[0].ID != j.ID {
		t.Fatalf("jobs list: %+v", list)
	}
}

// TestFailoverCommitCancel: a failover pauses the source's replication,
// change-point replaces the VM, cancel resumes replication, and commit
// stops it for good.
func TestFailoverCommitCancel(t *testing.T) {
	s := startSite(t)
	a, pts := s.machine("db", 2)
	op := s.token(api.RoleOperator, 0)
	j := s.waitJob(s.submit(op, "db", "failover", api.FailoverRequest{Point: pts[0][:8]}).ID)
	if j.State != "succeeded" || j.Point != pts[0] || len(j.VMs) != 1 || !j.VMs[0].Hydrated {
		t.Fatalf("failover: %s %s %+v", j.State, j.Error, j.VMs)
	}
	first := j.VMs[0]
	if spec := s.prov.spec(first.Name); spec.NICs[0].Network.Name != "br-prod" {
		t.Fatalf("failover network: %+v", spec.NICs)
	}
	if m := s.machineRec("db"); m.State != api.StateFailedOver || m.Recovery.Failover.Name != first.Name {
		t.Fatalf("after failover: %s %+v", m.State, m.Recovery)
	}
	if cfg := a.heartbeat(api.AgentHeartbeat{}); !cfg.Protected || !cfg.Paused {
		t.Fatalf("replication not paused during the failover: %+v", cfg)
	}
	s.refused(s.api("POST", "/api/v1/machines/db/failover", op, nil), 409, api.CodeFailedOver, "second failover")

	cp := s.waitJob(s.submit(op, "db", "failover/change-point", api.ChangePointRequest{Point: "latest-processed"}).ID)
	if cp.State != "succeeded" || cp.Point != pts[1] || s.prov.creates != 2 || slices.Contains(s.prov.running(), first.Name) {
		t.Fatalf("change point: %s %s point %s, creates %d, running %v", cp.State, cp.Error, cp.Point, s.prov.creates, s.prov.running())
	}
	if m := s.machineRec("db"); m.Recovery.Failover.Point != pts[1] {
		t.Fatalf("failover record after change-point: %+v", m.Recovery.Failover)
	}

	cancel := s.waitJob(s.submit(op, "db", "failover/cancel", nil).ID)
	if cancel.State != "succeeded" || len(s.prov.running()) != 0 {
		t.Fatalf("cancel: %s %s, running %v", cancel.State, cancel.Error, s.prov.running())
	}
	if m := s.machineRec("db"); m.State != api.StateProtected || m.Recovery != nil {
		t.Fatalf("after cancel: %s %+v", m.State, m.Recovery)
	}
	if cfg := a.heartbeat(api.AgentHeartbeat{}); !cfg.Protected || cfg.Paused {
		t.Fatalf("replication did not resume: %+v", cfg)
	}
	s.refused(s.api("POST", "/api/v1/machines/db/failover/commit", op, nil), 409, api.CodeNotFailedOver, "commit without failover")

	j = s.waitJob(s.submit(op, "db", "failover", nil).ID)
	c := s.waitJob(s.submit(op, "db", "failover/commit", nil).ID)
	if j.State != "succeeded" || c.State != "succeeded" {
		t.Fatalf("failover and commit: %s %s / %s %s", j.State, j.Error, c.State, c.Error)
	}
	m := s.machineRec("db")
	if m.State != api.StateCommitted || !m.Recovery.Committed || m.Policy != "p" {
		t.Fatalf("after commit: %s %+v policy %q", m.State, m.Recovery, m.Policy)
	}
	if cfg := a.heartbeat(api.AgentHeartbeat{}); cfg.Protected {
		t.Fatalf("replication of the old source goes on after commit: %+v", cfg)
	}
	s.refused(s.api("POST", "/api/v1/machines/db/failover/cancel", op, nil), 409, api.CodeNotFailedOver, "cancel after commit")
	s.refused(s.api("POST", "/api/v1/machines/db/failover", op, nil), 409, api.CodeFailedOver, "failover after commit")
	if len(s.events("failover_committed")) != 1 || len(s.events("failover_cancelled")) != 1 {
		t.Fatal("missing commit or cancel events")
	}
}

// TestFailoverBadInput: each refusal is clear and leaves nothing behind.
func TestFailoverBadInput(t *testing.T) {
	s := startSite(t)
	s.machine("web", 1)
	_, other := s.machine("db", 1)
	s.enroll("empty").heartbeat(api.AgentHeartbeat{})
	op, viewer := s.token(api.RoleOperator, 0), s.token(api.RoleViewer, 0)
	for _, c := range []struct {
		path   string
		body   any
		status int
		code   string
	}{
		{"/api/v1/machines/nope/test-failover", nil, 404, api.CodeNotFound},
		{"/api/v1/machines/web/test-failover", api.TestFailoverRequest{Point: "zz"}, 400, api.CodeInvalidPoint},
		{"/api/v1/machines/web/failover", api.FailoverRequest{Point: "ffffffff"}, 400, api.CodeUnknownPoint},
		{"/api/v1/machines/web/failover", api.FailoverRequest{Point: other[0]}, 400, api.CodeUnknownPoint},
		{"/api/v1/machines/web/failover", api.FailoverRequest{Point: "latest", Planned: true}, 400, api.CodeInvalidPoint},
		{"/api/v1/machines/empty/failover", api.FailoverRequest{Planned: true}, 409, api.CodeConflict},
		{"/api/v1/machines/web/failover/commit", nil, 409, api.CodeNotFailedOver},
		{"/api/v1/machines/web/failover/change-point", nil, 409, api.CodeNotFailedOver},
		{"/api/v1/machines/web/test-failover/cleanup", nil, 409, api.CodeNoDrill},
		{"/api/v1/machines/web/test-failover", `{"hydrate":true,"extra":1}`, 400, api.CodeBadRequest},
	} {
		s.refused(s.api("POST", c.path, op, c.body), c.status, c.code, c.path)
	}
	for _, a := range failoverActions {
		s.refused(s.api("POST", "/api/v1/machines/web/"+a.path, viewer, nil), 403, api.CodeForbidden, "viewer "+a.path)
	}
	s.refused(s.api("PUT", "/api/v1/machines/web/recovery", viewer, api.RecoveryOverrides{}), 403, api.CodeForbidden, "viewer overrides")
	s.refused(s.api("PUT", "/api/v1/machines/web/recovery", op, api.RecoveryOverrides{Network: "nowhere"}), 400, api.CodeBadRequest, "unknown network")
	s.refused(s.api("GET", "/api/v1/jobs/zzz", viewer, nil), 404, api.CodeNotFound, "bad job ID")

	// A machine without points: the job fails with the reason.
	j := s.waitJob(s.submit(op, "empty", "test-failover", nil).ID)
	if j.State != "failed" || !strings.Contains(j.Error, "no latest point") {
		t.Fatalf("drill of a machine without points: %s %q", j.State, j.Error)
	}
	// A provider that cannot start (a missing binary, a full disk
	// directory): the job fails, and no VM, directory or point server is left.
	s.prov.failStart = errors.New("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
	j = s.waitJob(s.submit(op, "web", "failover", nil).ID)
	if j.State != "failed" || !strings.Contains(j.Error, "apt-get install") {
		t.Fatalf("provider failure: %s %q", j.State, j.Error)
	}
	recs, _ := orchestrate.ReadRecords(s.siteD)
	ents, _ := os.ReadDir(s.siteD)
	if len(recs) != 0 || len(ents) != 0 || s.exp.count() != 0 || len(s.prov.running()) != 0 {
		t.Fatalf("a failed start left %d records, %d directories, %d point servers", len(recs), len(ents), s.exp.count())
	}
	if m := s.machineRec("web"); m.State == api.StateFailedOver || m.Recovery != nil {
		t.Fatalf("machine after a failed failover: %s %+v", m.State, m.Recovery)
	}
}

// TestFailoverResumesAfterRestart: the server stops while the provider
// starts the VM, and again while it hydrates; each time the job
// completes after the restart with exactly one VM.
func TestFailoverResumesAfterRestart(t *testing.T) {
	s := startSite(t)
	_, pts := s.machine("web", 1)
	op := s.token(api.RoleOperator, 0)
	for _, during := range []string{"start", "hydrate"} {
		s.prov.mu.Lock()
		s.prov.vms, s.prov.creates, s.prov.entered = map[string]compute.Spec{}, 0, make(chan struct{})
		s.prov.gateStart, s.prov.gateHydrate = during == "start", during == "hydrate"
		s.prov.mu.Unlock()
		j := s.submit(op, "web", "failover", nil)
		select {
		case <-s.prov.entered:
		case <-time.After(20 * time.Second):
			t.Fatalf("the job never reached %s", during)
		}
		s.stop()
		s.start()
		j = s.waitJob(j.ID)
		recs, _ := orchestrate.ReadRecords(s.siteD)
		if j.State != "succeeded" || s.prov.creates != 1 || len(s.prov.running()) != 1 || len(recs) != 1 || j.Point != pts[0] {
			t.Fatalf("after a stop during %s: %s %q, VMs created %d, running %v, records %d", during, j.State, j.Error, s.prov.creates, s.prov.running(), len(recs))
		}
		if step := j.Step("start VM"); step == nil || (during == "start" && step.Attempts != 2) {
			t.Fatalf("start VM step: %+v", step)
		}
		if c := s.waitJob(s.submit(op, "web", "failover/cancel", nil).ID); c.State != "succeeded" {
			t.Fatalf("cancel: %s %s", c.State, c.Error)
		}
	}
}

// TestCancelledJobLeavesNoVM: a drill cancelled while its VM starts is
// cleaned up by the server.
func TestCancelledJobLeavesNoVM(t *testing.T) {
	s := startSite(t)
	s.machine("web", 1)
	op := s.token(api.RoleOperator, 0)
	s.prov.mu.Lock()
	s.prov.gateStart, s.prov.entered = true, make(chan struct{})
	s.prov.mu.Unlock()
	j := s.submit(op, "web", "test-failover", nil)
	<-s.prov.entered
	s.refused(s.api("POST", "/api/v1/jobs/"+j.ID+"/cancel", s.token(api.RoleViewer, 0), nil), 403, api.CodeForbidden, "viewer cancel")
	s.mustAPI("POST", "/api/v1/jobs/"+j.ID+"/cancel", op, nil, 200, nil)
	if j = s.waitJob(j.ID); j.State != "cancelled" {
		t.Fatalf("cancelled job: %s", j.State)
	}
	eventually(t, "the orphaned VM directory removed", func() bool {
		ents, _ := os.ReadDir(s.siteD)
		return len(ents) == 0 && s.exp.count() == 0
	})
	s.refused(s.api("POST", "/api/v1/jobs/"+j.ID+"/cancel", op, nil), 409, api.CodeConflict, "cancel an ended job")
}

// TestPlannedFailover: the agent is asked to shut down, acknowledges,
// reports a final point, and that point is booted.
func TestPlannedFailover(t *testing.T) {
	s := startSite(t)
	a, _ := s.machine("web", 2)
	a.heartbeat(api.AgentHeartbeat{Inventory: api.Inventory{Hostname: "web", OS: "linux", Arch: "amd64", Instance: "uuid-src"}})
	op := s.token(api.RoleOperator, 0)
	j := s.submit(op, "web", "failover", api.FailoverRequest{Planned: true})
	var req *api.ShutdownRequest
	eventually(t, "a shutdown request", func() bool {
		req = a.heartbeat(api.AgentHeartbeat{}).Shutdown
		return req != nil
	})
	if req.Timeout.Std() != 20*time.Second {
		t.Fatalf("shutdown request: %+v", req)
	}
	a.heartbeat(api.AgentHeartbeat{Shutdown: &api.ShutdownAck{ID: req.ID, State: api.ShutdownStopping}})
	a.heartbeat(api.AgentHeartbeat{Shutdown: &api.ShutdownAck{ID: req.ID, State: api.ShutdownStopped}})
	final := s.realPoint("web", s.clock.Now(), "crash", "", "")
	cfg := a.heartbeat(api.AgentHeartbeat{Shutdown: &api.ShutdownAck{ID: req.ID, State: api.ShutdownDone, Point: final}})
	if cfg.Shutdown == nil {
		t.Fatal("the request went away before the failover")
	}
	j = s.waitJob(j.ID)
	if j.State != "succeeded" || j.Point != final {
		t.Fatalf("planned failover: %s %q, point %s, want the final point %s", j.State, j.Error, j.Point, final)
	}
	if m := s.machineRec("web"); m.State != api.StateFailedOver || m.Recovery.ShutdownAck.State != api.ShutdownDone {
		t.Fatalf("after a planned failover: %s %+v", m.State, m.Recovery)
	}
	// The recovered VM's copy of the agent (same certificate, state from
	// the final point: the shutdown "stopped" under way) reports from
	// another instance: it is not handed the request (it would carry it
	// out again and power the recovered VM off), and its stale
	// acknowledgement changes nothing; the source still has it.
	on := func(inst string) api.AgentHeartbeat {
		return api.AgentHeartbeat{Inventory: api.Inventory{Hostname: "web", OS: "linux", Arch: "amd64", Instance: inst}}
	}
	stale := on("uuid-copy")
	stale.Shutdown = &api.ShutdownAck{ID: req.ID, State: api.ShutdownStopped}
	if c := a.heartbeat(stale); c.Shutdown != nil || c.Protected {
		t.Fatalf("the recovered VM's agent after a planned failover: %+v", c)
	}
	if m := s.machineRec("web"); m.Recovery.ShutdownAck.State != api.ShutdownDone || m.Recovery.Failover.AgentInstance != "uuid-copy" {
		t.Fatalf("the copy's stale acknowledgement: %+v", m.Recovery)
	}
	if c := a.heartbeat(on("uuid-src")); c.Shutdown == nil {
		t.Fatal("the source lost its request")
	}
	// Cancel: the request is withdrawn and replication resumes.
	if c := s.waitJob(s.submit(op, "web", "failover/cancel", nil).ID); c.State != "succeeded" {
		t.Fatalf("cancel: %s", c.Error)
	}
	if cfg := a.heartbeat(api.AgentHeartbeat{}); cfg.Shutdown != nil || cfg.Paused || !cfg.Protected {
		t.Fatalf("after cancel: %+v", cfg)
	}

	// An agent that fails to shut down fails the job; the source goes on.
	j = s.submit(op, "web", "failover", api.FailoverRequest{Planned: true})
	eventually(t, "a second request", func() bool {
		req = a.heartbeat(api.AgentHeartbeat{}).Shutdown
		return req != nil
	})
	a.heartbeat(api.AgentHeartbeat{Shutdown: &api.ShutdownAck{ID: req.ID, State: api.ShutdownFailed, Error: "the guest did not power off within 20s"}})
	if j = s.waitJob(j.ID); j.State != "failed" || !strings.Contains(j.Error, "did not power off") {
		t.Fatalf("failed shutdown: %s %q", j.State, j.Error)
	}
	eventually(t, "the request withdrawn", func() bool { return a.heartbeat(api.AgentHeartbeat{}).Shutdown == nil })
}

// TestLatestWaitsForOpenSessions: a failover to latest waits while a
// process server reports an open session of the machine.
func TestLatestWaitsForOpenSessions(t *testing.T) {
	s := startSite(t)
	s.machine("web", 1)
	ps := s.enrollAs(api.RoleProcess, "ps1")
	report := func(open ...api.OpenSession) {
		r := do(t, ps.client, "POST", s.url("/api/v1/process/heartbeat"), "", api.ProcessHeartbeat{URL: "https://127.0.0.1:1", Open: open})
		if r.status != http.StatusOK {
			t.Fatalf("process heartbeat: %d %s", r.status, r.body)
		}
	}
	report(api.OpenSession{Machine: "web", LastUsed: s.clock.Now()})
	j := s.submit(s.admin, "web", "test-failover", nil)
	eventually(t, "the job waiting", func() bool {
		var v api.Job
		s.mustAPI("GET", "/api/v1/jobs/"+j.ID, s.admin, nil, 200, &v)
		st := v.Step("choose point")
		return st != nil && strings.Contains(st.Message, "waiting for acknowledged blocks")
	})
	time.Sleep(300 * time.Millisecond) // negative check: the job still waits after a few rounds of its 100 ms poll, which leave no trace to wait for
	var v api.Job
	s.mustAPI("GET", "/api/v1/jobs/"+j.ID, s.admin, nil, 200, &v)
	if v.State != "running" || v.Point != "" {
		t.Fatalf("the job did not wait: %s %s", v.State, v.Point)
	}
	late := s.realPoint("web", s.clock.Now(), "crash", "", "")
	report() // the session committed
	if v = s.waitJob(j.ID); v.State != "succeeded" || v.Point != late {
		t.Fatalf("after the session ended: %s %q point %s, want %s", v.State, v.Error, v.Point, late)
	}
}

// TestRecoveryOverridesAndCatalog: overrides are validated, stored and
// written into the vault's catalog with the site.
func TestRecoveryOverridesAndCatalog(t *testing.T) {
	s := startSite(t)
	s.machine("web", 0)
	o := api.RecoveryOverrides{VCPUs: 2, MemoryMiB: 1024, Network: "lab", Address: "192.0.2.10/24", Gateway: "192.0.2.1", DNS: []string{"192.0.2.53"}}
	var got api.RecoveryOverrides
	s.mustAPI("PUT", "/api/v1/machines/web/recovery", s.admin, o, 200, &got)
	s.mustAPI("GET", "/api/v1/machines/web/recovery", s.token(api.RoleViewer, 0), nil, 200, &got)
	if got.Network != "lab" || got.DNS[0] != "192.0.2.53" {
		t.Fatalf("overrides: %+v", got)
	}
	for _, bad := range []api.RecoveryOverrides{{VCPUs: -1}, {Address: "10.0.0.5"}, {Gateway: "gw"}} {
		s.refused(s.api("PUT", "/api/v1/machines/web/recovery", s.admin, bad), 400, api.CodeBadRequest, "bad overrides")
	}
	var site orchestrate.Site
	var ms map[string]orchestrate.Overrides
	if ok, err := s.vault().GetCatalog(context.Background(), orchestrate.CatalogSite, &site); !ok || err != nil || site.Networks["lab"].Name != "br-lab" {
		t.Fatalf("catalog site: %v %v %+v", ok, err, site)
	}
	if ok, err := s.vault().GetCatalog(context.Background(), orchestrate.CatalogMachines, &ms); !ok || err != nil || ms["web"].Network != "lab" {
		t.Fatalf("catalog machines: %v %v %+v", ok, err, ms)
	}
}

// TestPointReadErrorEvents: a read of a served point that failed (its
// point server records it in the VM's directory) becomes an error event
// of the machine, each once; a line still being written waits.
func TestPointReadErrorEvents(t *testing.T) {
	s := startSite(t)
	s.machine("web", 1)
	operator := s.token(api.RoleOperator, 0)
	j := s.waitJob(s.submit(operator, "web", "test-failover", api.TestFailoverRequest{}).ID)
	if j.State != "succeeded" {
		t.Fatalf("drill: %s %s", j.State, j.Error)
	}
	vm := j.VMs[0]
	line := func(off int64) string {
		return fmt.Sprintf(`{"time":"2026-12-07T10:00:00Z","point":%q,"machine":"web","disk":"vda","offset":%d,"length":4096,"error":"data blob 1a2b in pack 3c4d: authentication failed"}`, vm.Point, off) + "\n"
	}
	path := filepath.Join(vm.Dir, orchestrate.ReadErrorsFile)
	if err := os.WriteFile(path, []byte(line(65536)+`{"time":"2026`), 0o600); err != nil {
		t.Fatal(err)
	}
	waitEvents := func(n int) []api.Event {
		deadline := time.Now().Add(10 * time.Second)
		for {
			es := s.events(EventPointReadError)
			if len(es) >= n || time.Now().After(deadline) {
				return es
			}
			time.Sleep(20 * time.Millisecond) // poll pause under a deadline
		}
	}
	es := waitEvents(1)
	if len(es) != 1 || es[0].Machine != "web" || es[0].Severity != api.SeverityError || !strings.Contains(es[0].Message, "offset 65536") ||
		!strings.Contains(es[0].Message, "never wrong data") {
		t.Fatalf("events after one failed read: %+v", es)
	}
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`-12-07T10:00:01Z","point":"x","machine":"web","disk":"vda","offset":131072,"length":512,"error":"e"}` + "\n")
	f.Close()
	if es = waitEvents(2); len(es) != 2 || !strings.Contains(es[0].Message+es[1].Message, "offset 131072") {
		t.Fatalf("events after the second line was completed: %+v", es)
	}
	s.waitTicks(3) // negative check: later rounds report nothing twice
	if es = s.events(EventPointReadError); len(es) != 2 {
		t.Fatalf("%d events for 2 failed reads", len(es))
	}
}
