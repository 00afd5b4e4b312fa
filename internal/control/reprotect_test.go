package control

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store/sqlstore"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// TestReprotectRefusalsAndTargetReport: reprotect is refused before a
// commit and for VMs reverse replication cannot read; a target writer's
// reports are checked field by field (hostile ones change nothing); its
// first applied reverse point makes the machine reprotected, with
// failback allowed.
func TestReprotectRefusalsAndTargetReport(t *testing.T) {
	s := startSite(t)
	_, pts := s.machine("db", 2)
	op, viewer := s.token(api.RoleOperator, 0), s.token(api.RoleViewer, 0)
	report := func(tok string, body any) response {
		return s.api("POST", "/api/v1/machines/db/reverse/target", tok, body)
	}
	good := api.TargetReport{Name: "primary1", Disks: []api.TargetDisk{{Name: "vda", Path: "/var/lib/images/db.img", Size: 1 << 20}}}

	s.refused(s.api("POST", "/api/v1/machines/db/reprotect", op, nil), 409, api.CodeActionNotAllowed, "reprotect of a protected machine")
	for _, path := range []string{"failback", "failback/commit", "failback/cancel", "re-enable"} {
		s.refused(s.api("POST", "/api/v1/machines/db/"+path, op, nil), 409, api.CodeActionNotAllowed, path+" of a machine never failed over")
		s.refused(s.api("POST", "/api/v1/machines/db/"+path, viewer, nil), 403, api.CodeForbidden, "viewer "+path)
	}
	s.waitJob(s.submit(op, "db", "failover", api.FailoverRequest{Point: pts[0][:8]}).ID)
	s.refused(s.api("POST", "/api/v1/machines/db/reprotect", op, nil), 409, api.CodeActionNotAllowed, "reprotect before commit")
	s.refused(report(op, good), 409, api.CodeActionNotAllowed, "target report without reverse replication")
	s.waitJob(s.submit(op, "db", "failover/commit", nil).ID)
	r := s.api("POST", "/api/v1/machines/db/reprotect", op, nil)
	s.refused(r, 409, api.CodeActionNotAllowed, "reprotect of a VM of the fake provider")
	if !strings.Contains(r.err().Message, "qemu or libvirt provider") {
		t.Fatalf("refusal does not say why: %s", r.body)
	}
	s.refused(s.api("POST", "/api/v1/machines/db/reprotect", viewer, nil), 403, api.CodeForbidden, "viewer reprotect")

	// Reverse replication as startReverse records it, and one reverse
	// point in the vault.
	vmName := s.machineRec("db").Recovery.Failover.Name
	rev := s.reversePoint("db", pts[0], vmName)
	stale := s.reversePoint("db", pts[0], "lb-earlier-vm")
	s.setReverse("db", &api.Reverse{Job: "j1", Started: s.clock.Now(), Policy: "p", Interval: api.Duration(time.Minute),
		Point: &api.ReversePoint{ID: rev, Time: s.clock.Now()}})
	if m := s.machineRec("db"); m.State != api.StateReprotecting {
		t.Fatalf("state with reverse replication: %s", m.State)
	}
	// The reverse loop tries the fake provider's VM, cannot read it, and
	// says so once; the RPO is the reverse point's.
	testutil.Eventually(t, 20*time.Second, func() bool {
		s.clock.Advance(maxReverseWait) // the loop's longest sleep
		return len(s.events("reverse_failing")) == 1
	}, "no reverse_failing event")
	s.clock.Advance(10 * time.Minute)
	var mv api.Machine
	s.mustAPI("GET", "/api/v1/machines/db", viewer, nil, 200, &mv)
	if mv.RPO.Std() < 10*time.Minute || mv.Recovery.Reverse.LastError == "" {
		t.Fatalf("reprotecting machine: RPO %s, last error %q; want the reverse point's age and the loop's error", mv.RPO.Std(), mv.Recovery.Reverse.LastError)
	}
	bad := func(mod func(*api.TargetReport)) api.TargetReport {
		r := good
		r.Disks = slices.Clone(good.Disks)
		mod(&r)
		return r
	}
	for what, body := range map[string]any{
		"no name":           bad(func(r *api.TargetReport) { r.Name = "" }),
		"name with a slash": bad(func(r *api.TargetReport) { r.Name = "../x" }),
		"empty path":        bad(func(r *api.TargetReport) { r.Disks[0].Path = "" }),
		"bad disk name":     bad(func(r *api.TargetReport) { r.Disks[0].Name = "a/b" }),
		"negative size":     bad(func(r *api.TargetReport) { r.Disks[0].Written = -1 }),
		"progress > total":  bad(func(r *api.TargetReport) { r.Progress = &api.TargetProgress{Done: 2, Total: 1} }),
		"bad point ID":      bad(func(r *api.TargetReport) { r.Applied = "zz" }),
		"too many disks":    bad(func(r *api.TargetReport) { r.Disks = make([]api.TargetDisk, maxTargetDisks+1) }),
		"unknown field":     `{"name":"primary1","disks":[],"extra":1}`,
		"forward point":     bad(func(r *api.TargetReport) { r.Applied = pts[1] }),
		"unknown point":     bad(func(r *api.TargetReport) { r.Applied = strings.Repeat("ab", vault.IDSize) }),
	} {
		r := report(op, body)
		if r.status != 400 {
			t.Errorf("%s: %d %s, want 400", what, r.status, r.body)
		}
	}
	s.refused(report(viewer, good), 403, api.CodeForbidden, "viewer target report")
	// A target token posts its own writer's reports, and nothing else.
	var tr api.TokenResponse
	s.mustAPI("POST", "/api/v1/tokens", s.admin, api.TokenRequest{Role: api.RoleTarget, Name: "primary1"}, 201, &tr)
	tgt := tr.Token
	other := good
	other.Name = "primary2"
	s.refused(report(tgt, other), 403, api.CodeForbidden, "a target token reporting as another writer")
	for _, r := range []struct{ method, path string }{{"GET", "/api/v1/machines"}, {"GET", "/api/v1/machines/db"},
		{"POST", "/api/v1/machines/db/failback"}, {"POST", "/api/v1/machines/db/reprotect"}, {"GET", "/api/v1/points"}} {
		s.refused(s.api(r.method, r.path, tgt, nil), 403, api.CodeForbidden, "target token on "+r.method+" "+r.path)
	}
	s.refused(s.api("POST", "/api/v1/tokens", s.admin, api.TokenRequest{Role: api.RoleTarget}), 400, api.CodeBadRequest, "target token without a name")
	if m := s.machineRec("db"); m.Recovery.Reverse.Target != nil {
		t.Fatalf("refused reports changed the machine: %+v", m.Recovery.Reverse.Target)
	}

	// Progress, then the applied point.
	var got api.Reverse
	prog := good
	prog.Applying, prog.Progress = rev, &api.TargetProgress{Disk: "vda", Done: 1, Total: 2}
	s.mustAPI("POST", "/api/v1/machines/db/reverse/target", tgt, prog, 200, &got)
	if got.Point == nil || got.Point.ID != rev {
		t.Fatalf("answer to a target report: %+v, want point %s", got, rev)
	}
	if m := s.machineRec("db"); m.State != api.StateReprotecting {
		t.Fatalf("state while the target applies: %s", m.State)
	}
	// A point an earlier way back applied (another VM's) is not this
	// VM's data: still reprotecting.
	old := good
	old.Applied, old.AppliedAt = stale, s.clock.Now()
	s.mustAPI("POST", "/api/v1/machines/db/reverse/target", op, old, 200, &got)
	if m := s.machineRec("db"); m.State != api.StateReprotecting {
		t.Fatalf("state after a target reported an earlier VM's point: %s", m.State)
	}
	done := good
	done.Applied, done.AppliedAt = rev, s.clock.Now()
	s.mustAPI("POST", "/api/v1/machines/db/reverse/target", op, done, 200, &got)
	var m api.Machine
	s.mustAPI("GET", "/api/v1/machines/db", viewer, nil, 200, &m)
	if m.State != api.StateReprotected || !slices.Contains(m.AllowedActions, "failback") || slices.Contains(m.AllowedActions, "reprotect") {
		t.Fatalf("after the target applied: %s, allowed %v", m.State, m.AllowedActions)
	}
	s.mustAPI("POST", "/api/v1/machines/db/reverse/target", op, done, 200, &got)
	for _, path := range []string{"reprotect", "failback/commit", "failback/cancel", "re-enable"} {
		s.refused(s.api("POST", "/api/v1/machines/db/"+path, op, nil), 409, api.CodeActionNotAllowed, path+" of a reprotected machine")
	}
	if n := len(s.events("reprotected")); n != 1 {
		t.Fatalf("%d reprotected events, want 1", n)
	}
}

// reversePoint stores a reverse point of machine (label
// direction=reverse) with the disks of point parent.
func (s *site) reversePoint(machine, parent, vm string) string {
	s.t.Helper()
	ctx := context.Background()
	v := s.vault()
	id, err := vault.ParseID(parent)
	if err != nil {
		s.t.Fatal(err)
	}
	pp, err := v.LoadPoint(ctx, id)
	if err != nil {
		s.t.Fatal(err)
	}
	p := &vault.Point{Machine: machine, Time: s.clock.Now(), Kind: vault.KindCrash, Disks: pp.Disks,
		Labels: map[string]string{api.LabelDirection: api.DirectionReverse, "vm": vm}}
	if err := v.SavePoint(ctx, p); err != nil {
		s.t.Fatal(err)
	}
	return p.ID.String()
}

// setReverse records reverse replication in the machine's record, as the
// reprotect job's first step does.
func (s *site) setReverse(machine string, rv *api.Reverse) {
	s.t.Helper()
	ctx := context.Background()
	st, err := sqlstore.Open(ctx, filepath.Join(s.dir, DefaultDB))
	if err != nil {
		s.t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.UpdateMachine(ctx, machine, func(m *api.Machine) error {
		m.Recovery.Reverse = rv
		m.State = machineState(m)
		return nil
	}); err != nil {
		s.t.Fatal(err)
	}
}
