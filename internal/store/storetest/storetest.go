// Package storetest is the conformance suite every store.Store
// implementation passes. Run it from the implementation's tests:
//
//	func TestStore(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store { ... fresh, empty store, closed by t.Cleanup ... })
//	}
//
// It also carries PostgresDSN, which hands tests a fresh PostgreSQL
// database (see PostgresEnv).
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/jobs/jobstest"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// T0 is the suite's base time: UTC and microsecond-precise, so stored
// values compare equal after the round trip.
var T0 = time.Date(2025, 3, 14, 15, 9, 26, 535897000, time.UTC)

// Run runs the suite. open must return a fresh, empty store each call
// and close it in t.Cleanup.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Tokens", testTokens},
		{"TokenRace", testTokenRace},
		{"TokenSubjects", testTokenSubjects},
		{"Rotations", testRotations},
		{"Certs", testCerts},
		{"Machines", testMachines},
		{"UpdateMachineConcurrent", testUpdateMachineConcurrent},
		{"Processes", testProcesses},
		{"Policies", testPolicies},
		{"Cuts", testCuts},
		{"Points", testPoints},
		{"PointFigures", testPointFigures},
		{"PointsByPrefix", testPointsByPrefix},
		{"Events", testEvents},
		{"EventActor", testEventActor},
		{"PruneEvents", testPruneEvents},
		{"Settings", testSettings},
		{"Times", testTimes},
		{"Hostile", testHostile},
		{"Canceled", testCanceled},
		{"MachineRecovery", testMachineRecovery},
		{"Plans", testPlans},
		{"PlanConcurrent", testPlanConcurrent},
		{"PlanHostile", testPlanHostile},
		{"Lead", testLead},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, open(t))
		})
	}
	t.Run("Jobs", func(t *testing.T) {
		jobstest.Run(t, func(t *testing.T) jobs.Store { return open(t) })
	})
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// must fails the test on err.
func must(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// wantErr fails the test unless errors.Is(err, target).
func wantErr(t *testing.T, err, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want %v", what, err, target)
	}
}

// sameJSON compares two values by their JSON encoding, which is how the
// API shows them.
func sameJSON(t *testing.T, got, want any, what string) {
	t.Helper()
	g, err := json.Marshal(got)
	must(t, err, "marshal got")
	w, err := json.Marshal(want)
	must(t, err, "marshal want")
	if !bytes.Equal(g, w) {
		t.Fatalf("%s:\n got %s\nwant %s", what, cut(string(g)), cut(string(w)))
	}
}

func cut(s string) string {
	if len(s) > 2000 {
		return s[:2000] + "..."
	}
	return s
}

func hash(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// ---- tokens ----

func testTokens(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	tok := store.Token{ID: "tok1", Hash: hash("secret1"), Role: api.RoleAgent, Name: "m1", OneTime: true,
		Created: T0, Expires: T0.Add(time.Hour)}
	must(t, s.CreateToken(ctx, tok), "create token")

	got, err := s.TokenByHash(ctx, hash("secret1"))
	must(t, err, "token by hash")
	if !reflect.DeepEqual(got, tok) {
		t.Fatalf("token round trip:\n got %+v\nwant %+v", got, tok)
	}
	_, err = s.TokenByHash(ctx, hash("nope"))
	wantErr(t, err, store.ErrNotFound, "unknown hash")

	dupID := tok
	dupID.Hash = hash("other")
	wantErr(t, s.CreateToken(ctx, dupID), store.ErrConflict, "duplicate token id")
	dupHash := tok
	dupHash.ID = "tok-other"
	wantErr(t, s.CreateToken(ctx, dupHash), store.ErrConflict, "duplicate token hash")

	api1 := store.Token{ID: "tok2", Hash: hash("secret2"), Role: api.RoleAdmin, Name: "alice", Created: T0.Add(time.Second)}
	must(t, s.CreateToken(ctx, api1), "create api token")

	// One-time: the first use wins, the second is refused.
	must(t, s.UseToken(ctx, "tok1", T0.Add(time.Minute)), "first use")
	wantErr(t, s.UseToken(ctx, "tok1", T0.Add(2*time.Minute)), store.ErrTokenUsed, "second use")
	got, err = s.TokenByHash(ctx, hash("secret1"))
	must(t, err, "token by hash after use")
	if !got.Used.Equal(T0.Add(time.Minute)) {
		t.Fatalf("used = %v, want %v", got.Used, T0.Add(time.Minute))
	}
	wantErr(t, s.UseToken(ctx, "unknown", T0), store.ErrNotFound, "use unknown token")

	// A reusable token may be used any number of times.
	must(t, s.UseToken(ctx, "tok2", T0), "use api token")
	must(t, s.UseToken(ctx, "tok2", T0.Add(time.Second)), "use api token again")

	list, err := s.ListTokens(ctx)
	must(t, err, "list tokens")
	if len(list) != 2 || list[0].ID != "tok1" || list[1].ID != "tok2" {
		t.Fatalf("list tokens: %+v", list)
	}

	// Revocation; a revoked one-time token can no longer be used.
	tok3 := store.Token{ID: "tok3", Hash: hash("secret3"), Role: api.RoleProcess, OneTime: true, Created: T0.Add(2 * time.Second)}
	must(t, s.CreateToken(ctx, tok3), "create tok3")
	must(t, s.RevokeToken(ctx, "tok3"), "revoke tok3")
	must(t, s.RevokeToken(ctx, "tok3"), "revoke tok3 again")
	wantErr(t, s.RevokeToken(ctx, "unknown"), store.ErrNotFound, "revoke unknown token")
	got, err = s.TokenByHash(ctx, hash("secret3"))
	must(t, err, "tok3 by hash")
	if !got.Revoked {
		t.Fatal("tok3 not revoked")
	}
	wantErr(t, s.UseToken(ctx, "tok3", T0), store.ErrTokenUsed, "use revoked one-time token")
	got, err = s.TokenByHash(ctx, hash("secret3"))
	must(t, err, "tok3 by hash")
	if !got.Used.IsZero() {
		t.Fatalf("refused use still recorded: %v", got.Used)
	}
}

func testTokenRace(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	for round := 0; round < 3; round++ {
		id := fmt.Sprintf("race%d", round)
		must(t, s.CreateToken(ctx, store.Token{ID: id, Hash: hash(id), Role: api.RoleAgent, OneTime: true, Created: T0}), "create token")
		const n = 8
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[i] = s.UseToken(ctx, id, T0.Add(time.Duration(i)*time.Second))
			}()
		}
		close(start)
		wg.Wait()
		wins := 0
		for i, err := range errs {
			switch {
			case err == nil:
				wins++
			case errors.Is(err, store.ErrTokenUsed):
			default:
				t.Fatalf("round %d goroutine %d: unexpected error %v", round, i, err)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d goroutines redeemed the one-time token, want exactly 1", round, wins)
		}
	}
}

// ---- certificates ----

func testCerts(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	certs := []store.Cert{
		{Serial: "0a01", Role: api.RoleAgent, Name: "m1", NotAfter: T0.Add(24 * time.Hour), Issued: T0},
		{Serial: "0a02", Role: api.RoleAgent, Name: "m1", NotAfter: T0.Add(48 * time.Hour), Issued: T0.Add(time.Hour)},
		{Serial: "0a03", Role: api.RoleAgent, Name: "m2", NotAfter: T0.Add(24 * time.Hour), Issued: T0},
		{Serial: "0a04", Role: api.RoleProcess, Name: "m1", NotAfter: T0.Add(24 * time.Hour), Issued: T0},
	}
	for _, c := range certs {
		must(t, s.AddCert(ctx, c), "add cert "+c.Serial)
	}
	wantErr(t, s.AddCert(ctx, certs[0]), store.ErrConflict, "duplicate serial")
	got, err := s.GetCert(ctx, "0a02")
	must(t, err, "get cert")
	if !reflect.DeepEqual(got, certs[1]) {
		t.Fatalf("cert round trip:\n got %+v\nwant %+v", got, certs[1])
	}
	_, err = s.GetCert(ctx, "ffff")
	wantErr(t, err, store.ErrNotFound, "unknown serial")

	rev, err := s.RevokedSerials(ctx)
	must(t, err, "revoked serials")
	if len(rev) != 0 {
		t.Fatalf("revoked before any revocation: %v", rev)
	}

	now := T0.Add(2 * time.Hour)
	serials, err := s.RevokeCerts(ctx, api.RoleAgent, "m1", now)
	must(t, err, "revoke agent m1")
	if !reflect.DeepEqual(serials, []string{"0a01", "0a02"}) {
		t.Fatalf("revoked serials = %v, want [0a01 0a02]", serials)
	}
	serials, err = s.RevokeCerts(ctx, api.RoleAgent, "m1", now.Add(time.Hour))
	must(t, err, "revoke agent m1 again")
	if len(serials) != 0 {
		t.Fatalf("second revocation returned %v, want none", serials)
	}
	serials, err = s.RevokeCerts(ctx, api.RoleAgent, "nobody", now)
	must(t, err, "revoke unknown name")
	if len(serials) != 0 {
		t.Fatalf("revoking an unknown name returned %v", serials)
	}
	got, err = s.GetCert(ctx, "0a01")
	must(t, err, "get revoked cert")
	if !got.Revoked.Equal(now) {
		t.Fatalf("revoked = %v, want %v (the first revocation time)", got.Revoked, now)
	}
	for _, serial := range []string{"0a03", "0a04"} {
		got, err = s.GetCert(ctx, serial)
		must(t, err, "get cert "+serial)
		if !got.Revoked.IsZero() {
			t.Fatalf("cert %s (other role or name) was revoked", serial)
		}
	}
	rev, err = s.RevokedSerials(ctx)
	must(t, err, "revoked serials")
	if !reflect.DeepEqual(rev, []string{"0a01", "0a02"}) {
		t.Fatalf("revoked serials = %v", rev)
	}
	serials, err = s.RevokeCerts(ctx, api.RoleProcess, "m1", now)
	must(t, err, "revoke process m1")
	if !reflect.DeepEqual(serials, []string{"0a04"}) {
		t.Fatalf("revoked = %v, want [0a04]", serials)
	}
}

// ---- machines ----

func machine(name string) api.Machine {
	return api.Machine{
		Name:  name,
		Agent: "ab" + name,
		Inventory: api.Inventory{Hostname: name + ".example", OS: "linux", Arch: "amd64", Agent: "0.1",
			Disks:  []api.DiskInfo{{Name: "sda", Path: "/dev/sda", Size: 1 << 30, Kind: "block"}},
			VMSpec: json.RawMessage(`{"cpus":2,"memory_mb":4096}`)},
		Policy:    "gold",
		Group:     "web",
		Disks:     []string{"sda"},
		Process:   "ps1",
		State:     api.StateProtected,
		Progress:  &api.Progress{Phase: "incremental", Done: 10, Total: 100, Percent: 10, ETA: api.Duration(time.Minute), Started: T0},
		LastPoint: &api.CycleResult{Point: "p1", Kind: "crash", Time: T0.Add(-time.Minute), Duration: api.Duration(3 * time.Second), ChangedBytes: 5},
		LastSeen:  T0.Add(time.Second),
		RPO:       api.Duration(time.Minute),
		Created:   T0.Add(-time.Hour),
	}
}

func testMachines(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	_, err := s.GetMachine(ctx, "m1")
	wantErr(t, err, store.ErrNotFound, "get missing machine")
	list, err := s.ListMachines(ctx)
	must(t, err, "list empty")
	if len(list) != 0 {
		t.Fatalf("empty store lists %d machines", len(list))
	}

	m1, m2 := machine("m1"), machine("m2")
	m2.Group, m2.Progress, m2.LastPoint = "", nil, nil
	must(t, s.PutMachine(ctx, m2), "put m2")
	must(t, s.PutMachine(ctx, m1), "put m1")
	got, err := s.GetMachine(ctx, "m1")
	must(t, err, "get m1")
	sameJSON(t, got, m1, "machine round trip")
	if !got.LastSeen.Equal(m1.LastSeen) || !got.Progress.Started.Equal(T0) {
		t.Fatalf("machine times: %v %v", got.LastSeen, got.Progress.Started)
	}
	list, err = s.ListMachines(ctx)
	must(t, err, "list")
	sameJSON(t, list, []api.Machine{m1, m2}, "list machines by name")

	// Put replaces.
	m1.State, m1.Reason, m1.Group = api.StateError, "disk gone", "db"
	must(t, s.PutMachine(ctx, m1), "replace m1")
	got, err = s.GetMachine(ctx, "m1")
	must(t, err, "get m1")
	sameJSON(t, got, m1, "replaced machine")

	// UpdateMachine.
	_, err = s.UpdateMachine(ctx, "nope", func(m *api.Machine) error { return nil })
	wantErr(t, err, store.ErrNotFound, "update missing machine")
	upd, err := s.UpdateMachine(ctx, "m1", func(m *api.Machine) error {
		m.Paused = true
		m.Bandwidth = 1000
		return nil
	})
	must(t, err, "update m1")
	if !upd.Paused || upd.Bandwidth != 1000 {
		t.Fatalf("update result %+v", upd)
	}
	got, err = s.GetMachine(ctx, "m1")
	must(t, err, "get m1")
	sameJSON(t, got, upd, "updated machine")

	// An error from fn is returned as is and nothing is written.
	boom := errors.New("boom")
	_, err = s.UpdateMachine(ctx, "m1", func(m *api.Machine) error {
		m.Bandwidth = 1
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("fn error: got %v, want boom", err)
	}
	// Renaming inside fn is refused.
	_, err = s.UpdateMachine(ctx, "m1", func(m *api.Machine) error {
		m.Name = "m3"
		m.Bandwidth = 2
		return nil
	})
	if err == nil {
		t.Fatal("renaming a machine in UpdateMachine succeeded")
	}
	got, err = s.GetMachine(ctx, "m1")
	must(t, err, "get m1")
	sameJSON(t, got, upd, "machine after failed updates")
	if _, err := s.GetMachine(ctx, "m3"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("rename created m3: %v", err)
	}

	must(t, s.DeleteMachine(ctx, "m1"), "delete m1")
	wantErr(t, s.DeleteMachine(ctx, "m1"), store.ErrNotFound, "delete m1 again")
	_, err = s.GetMachine(ctx, "m1")
	wantErr(t, err, store.ErrNotFound, "get deleted")
	list, err = s.ListMachines(ctx)
	must(t, err, "list")
	if len(list) != 1 || list[0].Name != "m2" {
		t.Fatalf("after delete: %+v", list)
	}
}

func testUpdateMachineConcurrent(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	m := machine("busy")
	m.Bandwidth = 0
	m.Inventory.Disks = nil
	must(t, s.PutMachine(ctx, m), "put")
	const workers, each = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				_, err := s.UpdateMachine(ctx, "busy", func(m *api.Machine) error {
					m.Bandwidth++
					m.Inventory.Disks = append(m.Inventory.Disks, api.DiskInfo{Name: fmt.Sprintf("w%d-%d", w, i)})
					return nil
				})
				if err != nil {
					errs <- err
				}
				// Readers run alongside the writers.
				if _, err := s.GetMachine(ctx, "busy"); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent update: %v", err)
	}
	got, err := s.GetMachine(ctx, "busy")
	must(t, err, "get")
	if got.Bandwidth != workers*each || len(got.Inventory.Disks) != workers*each {
		t.Fatalf("lost updates: counter %d, disks %d, want %d", got.Bandwidth, len(got.Inventory.Disks), workers*each)
	}
	seen := map[string]bool{}
	for _, d := range got.Inventory.Disks {
		if seen[d.Name] {
			t.Fatalf("update %s applied twice", d.Name)
		}
		seen[d.Name] = true
	}
}

// ---- process servers ----

func testProcesses(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	_, err := s.GetProcess(ctx, "ps1")
	wantErr(t, err, store.ErrNotFound, "get missing")
	p1 := api.ProcessServer{Name: "ps1", URL: "https://127.0.0.1:7443", Embedded: true, Bandwidth: 5, CacheUsed: 10,
		CacheLimit: 100, Sessions: 2, Throttled: true, IngestRate: 1.5, LastSeen: T0, Agents: 3}
	p0 := api.ProcessServer{Name: "ps0", URL: "https://127.0.0.1:7444"}
	must(t, s.PutProcess(ctx, p1), "put ps1")
	must(t, s.PutProcess(ctx, p0), "put ps0")
	got, err := s.GetProcess(ctx, "ps1")
	must(t, err, "get ps1")
	sameJSON(t, got, p1, "process round trip")
	if !got.LastSeen.Equal(T0) {
		t.Fatalf("last seen %v", got.LastSeen)
	}
	p1.Sessions, p1.LastSeen = 7, T0.Add(time.Minute)
	must(t, s.PutProcess(ctx, p1), "replace ps1")
	list, err := s.ListProcesses(ctx)
	must(t, err, "list")
	sameJSON(t, list, []api.ProcessServer{p0, p1}, "list processes")
	must(t, s.DeleteProcess(ctx, "ps0"), "delete ps0")
	wantErr(t, s.DeleteProcess(ctx, "ps0"), store.ErrNotFound, "delete ps0 again")
	list, err = s.ListProcesses(ctx)
	must(t, err, "list")
	sameJSON(t, list, []api.ProcessServer{p1}, "list after delete")
}

// ---- policies ----

func testPolicies(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	gold := api.Policy{Name: "gold", RPOThreshold: api.Duration(15 * time.Minute), Retention: "1h:all,24h:5m",
		KeepApp: api.Duration(72 * time.Hour), CrashInterval: api.Duration(5 * time.Minute), AppInterval: api.Duration(time.Hour),
		HookTimeout: api.Duration(30 * time.Second), Created: T0, Updated: T0}
	bronze := api.Policy{Name: "bronze", Retention: "24h:1h", CrashInterval: api.Duration(time.Hour), Created: T0}
	_, err := s.GetPolicy(ctx, "gold")
	wantErr(t, err, store.ErrNotFound, "get missing")
	must(t, s.CreatePolicy(ctx, gold), "create gold")
	must(t, s.CreatePolicy(ctx, bronze), "create bronze")
	wantErr(t, s.CreatePolicy(ctx, gold), store.ErrConflict, "create gold again")
	got, err := s.GetPolicy(ctx, "gold")
	must(t, err, "get gold")
	if !reflect.DeepEqual(got, gold) {
		t.Fatalf("policy round trip:\n got %+v\nwant %+v", got, gold)
	}
	list, err := s.ListPolicies(ctx)
	must(t, err, "list")
	sameJSON(t, list, []api.Policy{bronze, gold}, "list policies")

	gold.Retention, gold.Updated = "1h:all", T0.Add(time.Hour)
	must(t, s.UpdatePolicy(ctx, gold), "update gold")
	got, err = s.GetPolicy(ctx, "gold")
	must(t, err, "get gold")
	if !reflect.DeepEqual(got, gold) {
		t.Fatalf("updated policy:\n got %+v\nwant %+v", got, gold)
	}
	wantErr(t, s.UpdatePolicy(ctx, api.Policy{Name: "silver"}), store.ErrNotFound, "update missing")
	if _, err := s.GetPolicy(ctx, "silver"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("update of a missing policy created it: %v", err)
	}
	must(t, s.DeletePolicy(ctx, "bronze"), "delete bronze")
	wantErr(t, s.DeletePolicy(ctx, "bronze"), store.ErrNotFound, "delete bronze again")
	list, err = s.ListPolicies(ctx)
	must(t, err, "list")
	sameJSON(t, list, []api.Policy{gold}, "list after delete")
}

// ---- cuts ----

func testCuts(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	_, err := s.LastCut(ctx, "web")
	wantErr(t, err, store.ErrNotFound, "last cut of empty group")
	_, err = s.GetCut(ctx, "c1")
	wantErr(t, err, store.ErrNotFound, "get missing cut")
	cuts := []api.Cut{
		{ID: "c1", Group: "web", Kind: "crash", At: T0, Phase: api.PhaseDone, Members: []string{"a", "b"}, Expires: T0.Add(time.Minute)},
		{ID: "c2", Group: "web", Kind: "app", At: T0.Add(time.Hour), Phase: api.PhaseFreeze, Members: []string{"a", "b"}, Expires: T0.Add(time.Hour + time.Minute)},
		{ID: "c3", Group: "db", Kind: "crash", At: T0.Add(30 * time.Minute), Phase: api.PhaseSnapshot, Members: []string{"c"}, Expires: T0.Add(31 * time.Minute)},
		{ID: "c4", Group: "db", Kind: "app", At: T0.Add(10 * time.Minute), Phase: api.PhaseAbort, Members: []string{"c"}, Expires: T0.Add(11 * time.Minute)},
	}
	for _, c := range cuts {
		must(t, s.PutCut(ctx, c), "put cut "+c.ID)
	}
	got, err := s.GetCut(ctx, "c2")
	must(t, err, "get c2")
	if !reflect.DeepEqual(got, cuts[1]) {
		t.Fatalf("cut round trip:\n got %+v\nwant %+v", got, cuts[1])
	}
	open, err := s.OpenCuts(ctx)
	must(t, err, "open cuts")
	sameJSON(t, open, []api.Cut{cuts[2], cuts[1]}, "open cuts (oldest first, no done/abort)")

	last, err := s.LastCut(ctx, "web")
	must(t, err, "last web")
	sameJSON(t, last, cuts[1], "last web cut")
	last, err = s.LastCut(ctx, "db")
	must(t, err, "last db")
	sameJSON(t, last, cuts[2], "last db cut (by time, not insertion)")

	// Put replaces: c2 finishes and leaves the open list.
	cuts[1].Phase = api.PhaseSnapshot
	must(t, s.PutCut(ctx, cuts[1]), "c2 snapshot")
	cuts[1].Phase = api.PhaseDone
	must(t, s.PutCut(ctx, cuts[1]), "c2 done")
	open, err = s.OpenCuts(ctx)
	must(t, err, "open cuts")
	sameJSON(t, open, []api.Cut{cuts[2]}, "open cuts after c2 done")
	last, err = s.LastCut(ctx, "web")
	must(t, err, "last web")
	sameJSON(t, last, cuts[1], "last web cut is done c2")
}

// ---- settings ----

func testSettings(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	_, err := s.GetSetting(ctx, "server.id")
	wantErr(t, err, store.ErrNotFound, "get missing")
	must(t, s.PutSetting(ctx, "server.id", "abc"), "put")
	must(t, s.PutSetting(ctx, "other", ""), "put empty value")
	v, err := s.GetSetting(ctx, "server.id")
	must(t, err, "get")
	if v != "abc" {
		t.Fatalf("setting = %q", v)
	}
	must(t, s.PutSetting(ctx, "server.id", "def"), "overwrite")
	v, err = s.GetSetting(ctx, "server.id")
	must(t, err, "get")
	if v != "def" {
		t.Fatalf("setting = %q after overwrite", v)
	}
	v, err = s.GetSetting(ctx, "other")
	must(t, err, "get other")
	if v != "" {
		t.Fatalf("empty setting = %q", v)
	}
}

// ---- times ----

// testTimes stores times with nanoseconds in another zone: what comes
// back is Equal to the time truncated to the microsecond, in UTC.
func testTimes(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	zone := time.FixedZone("X", -7*3600-30*60)
	ns := time.Date(2024, 2, 29, 23, 59, 59, 123456789, zone)
	want := ns.Truncate(time.Microsecond)
	eq := func(what string, got time.Time) {
		t.Helper()
		if !got.Equal(want) {
			t.Fatalf("%s: got %v, want %v", what, got, want)
		}
		if got.Location() != time.UTC {
			t.Fatalf("%s: location %v, want UTC", what, got.Location())
		}
	}
	must(t, s.CreateToken(ctx, store.Token{ID: "t", Hash: hash("t"), Role: "agent", Created: ns, Expires: ns}), "token")
	tok, err := s.TokenByHash(ctx, hash("t"))
	must(t, err, "token")
	eq("token created", tok.Created)
	eq("token expires", tok.Expires)

	must(t, s.AddCert(ctx, store.Cert{Serial: "01", Role: "agent", Name: "m", Issued: ns, NotAfter: ns}), "cert")
	c, err := s.GetCert(ctx, "01")
	must(t, err, "cert")
	eq("cert issued", c.Issued)
	if !c.Revoked.IsZero() {
		t.Fatalf("zero revoked time came back as %v", c.Revoked)
	}

	m := api.Machine{Name: "m", State: api.StateProtected, LastSeen: ns, Created: ns,
		Progress: &api.Progress{Started: ns}, LastPoint: &api.CycleResult{Time: ns}}
	must(t, s.PutMachine(ctx, m), "machine")
	gm, err := s.GetMachine(ctx, "m")
	must(t, err, "machine")
	eq("machine last seen", gm.LastSeen)
	eq("machine created", gm.Created)
	eq("machine progress", gm.Progress.Started)
	eq("machine last point", gm.LastPoint.Time)
	if m.Progress.Started != ns || m.LastSeen != ns {
		t.Fatal("PutMachine changed the caller's value")
	}

	must(t, s.PutProcess(ctx, api.ProcessServer{Name: "p", URL: "https://x", LastSeen: ns}), "process")
	gp, err := s.GetProcess(ctx, "p")
	must(t, err, "process")
	eq("process last seen", gp.LastSeen)

	must(t, s.CreatePolicy(ctx, api.Policy{Name: "p", Created: ns, Updated: ns}), "policy")
	pol, err := s.GetPolicy(ctx, "p")
	must(t, err, "policy")
	eq("policy created", pol.Created)

	must(t, s.PutCut(ctx, api.Cut{ID: "c", Group: "g", Kind: "crash", Phase: api.PhaseFreeze, At: ns, Expires: ns}), "cut")
	gc, err := s.GetCut(ctx, "c")
	must(t, err, "cut")
	eq("cut at", gc.At)
	eq("cut expires", gc.Expires)

	must(t, s.AddPoint(ctx, api.Point{ID: "p", Machine: "m", Time: ns, Kind: "crash"}), "point")
	must(t, s.AddPoint(ctx, api.Point{ID: "zero", Machine: "z", Kind: "crash"}), "point with zero time")
	pts, err := s.ListPoints(ctx, "m", "", 0)
	must(t, err, "points")
	if len(pts) != 1 {
		t.Fatalf("points %v", pts)
	}
	eq("point time", pts[0].Time)
	pts, err = s.ListPoints(ctx, "z", "", 0)
	must(t, err, "points")
	if len(pts) != 1 || !pts[0].Time.IsZero() {
		t.Fatalf("zero-time point came back as %+v", pts)
	}

	_, err = s.AddEvent(ctx, api.Event{Time: ns, Severity: "info", Kind: "k", Message: "m"})
	must(t, err, "event")
	evs, err := s.ListEvents(ctx, store.EventQuery{})
	must(t, err, "events")
	eq("event time", evs[0].Time)

	must(t, s.UseToken(ctx, "t", ns), "use token")
	tok, err = s.TokenByHash(ctx, hash("t"))
	must(t, err, "token")
	eq("token used", tok.Used)
}
