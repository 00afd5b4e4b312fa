package storetest

import (
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// testTokenSubjects: an enrollment token keeps the name it enrolls and
// whether it is a re-enroll token; API tokens have neither.
func testTokenSubjects(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	bound := store.Token{ID: "b1", Hash: hash("b1"), Role: api.RoleAgent, Name: "web01", OneTime: true,
		Created: T0, Expires: T0.Add(time.Hour), Subject: "web01"}
	re := store.Token{ID: "b2", Hash: hash("b2"), Role: api.RoleProcess, Name: "reenroll-ps2", OneTime: true,
		Created: T0.Add(time.Second), Expires: T0.Add(time.Hour), Subject: "ps2", Reenroll: true}
	apiTok := store.Token{ID: "b3", Hash: hash("b3"), Role: api.RoleViewer, Name: "alice", Created: T0.Add(2 * time.Second),
		Expires: T0.Add(90 * 24 * time.Hour)}
	for _, tok := range []store.Token{bound, re, apiTok} {
		must(t, s.CreateToken(ctx, tok), "create token "+tok.ID)
		got, err := s.TokenByHash(ctx, tok.Hash)
		must(t, err, "token by hash "+tok.ID)
		if !reflect.DeepEqual(got, tok) {
			t.Fatalf("token %s round trip:\n got %+v\nwant %+v", tok.ID, got, tok)
		}
	}
	list, err := s.ListTokens(ctx)
	must(t, err, "list tokens")
	if len(list) != 3 || list[0].Subject != "web01" || list[0].Reenroll || list[1].Subject != "ps2" || !list[1].Reenroll ||
		list[2].Subject != "" {
		t.Fatalf("listed tokens lost their subjects: %+v", list)
	}
	bad := bound
	bad.ID, bad.Hash, bad.Subject = "b4", hash("b4"), "nul\x00name"
	if err := s.CreateToken(ctx, bad); err == nil {
		t.Fatal("a subject with a NUL byte was stored")
	}
}

// testRotations: an approval is pending until one TakeRotation consumes
// it; approving again moves its time; identities are separate by role.
func testRotations(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	_, err := s.RotationApproved(ctx, api.RoleAgent, "web01")
	wantErr(t, err, store.ErrNotFound, "no rotation pending")
	wantErr(t, s.TakeRotation(ctx, api.RoleAgent, "web01"), store.ErrNotFound, "take a rotation never approved")

	must(t, s.ApproveRotation(ctx, api.RoleAgent, "web01", T0), "approve")
	must(t, s.ApproveRotation(ctx, api.RoleAgent, "web01", T0.Add(time.Minute)), "approve again")
	at, err := s.RotationApproved(ctx, api.RoleAgent, "web01")
	must(t, err, "rotation pending")
	if !at.Equal(T0.Add(time.Minute)) {
		t.Fatalf("approved at %v, want %v", at, T0.Add(time.Minute))
	}
	_, err = s.RotationApproved(ctx, api.RoleProcess, "web01")
	wantErr(t, err, store.ErrNotFound, "the same name in another role")

	must(t, s.TakeRotation(ctx, api.RoleAgent, "web01"), "take")
	wantErr(t, s.TakeRotation(ctx, api.RoleAgent, "web01"), store.ErrNotFound, "take twice")
	_, err = s.RotationApproved(ctx, api.RoleAgent, "web01")
	wantErr(t, err, store.ErrNotFound, "rotation after take")

	if err := s.ApproveRotation(ctx, api.RoleAgent, "", T0); err == nil {
		t.Fatal("a rotation for an empty name was approved")
	}
	if err := s.ApproveRotation(ctx, api.RoleAgent, "x", time.Time{}); err == nil {
		t.Fatal("a rotation with a zero time was approved")
	}

	// One approval, many renewals racing for it: exactly one wins.
	must(t, s.ApproveRotation(ctx, api.RoleProcess, "ps1", T0), "approve ps1")
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = s.TakeRotation(ctx, api.RoleProcess, "ps1") }()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case errors.Is(err, store.ErrNotFound):
		default:
			t.Fatalf("take rotation: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d of %d concurrent takes of one rotation succeeded, want 1", won, n)
	}
}
