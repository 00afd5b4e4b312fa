package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// ---- hostile input ----

// hostileNames are stored and found verbatim.
var hostileNames = []string{
	`O'Brien "quoted"`,
	`'; DROP TABLE machines; --`,
	`Robert'); DELETE FROM tokens WHERE ('1'='1`,
	`" OR 1=1 --`,
	`a%`, `a_`, `\x00`, `\\`, `$1`, `?`, `:name`, `@p1`,
	"機械-🚀-ñ-Ω",
	"tab\tnew\nline\rcr",
	"\u202eRTL\u200b zero width",
	strings.Repeat("x", 1<<10),
}

func testHostile(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	big := strings.Repeat("ü🚀'\"; --", (1<<20)/14) // about 1 MiB

	// Machines with hostile names round-trip and are found exactly.
	for i, name := range hostileNames {
		m := machine(name)
		m.Reason = name
		must(t, s.PutMachine(ctx, m), fmt.Sprintf("put machine %d", i))
		got, err := s.GetMachine(ctx, name)
		must(t, err, fmt.Sprintf("get machine %q", name))
		sameJSON(t, got, m, "hostile machine")
	}
	for _, probe := range []string{"a", "ab", "a%b", "", "'", "%"} {
		if _, err := s.GetMachine(ctx, probe); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("GetMachine(%q) matched something: %v", probe, err)
		}
	}
	list, err := s.ListMachines(ctx)
	must(t, err, "list")
	if len(list) != len(hostileNames) {
		t.Fatalf("listed %d machines, want %d", len(list), len(hostileNames))
	}

	// A 1 MiB field, value and message.
	m := machine("big")
	m.Reason, m.LastError = big, big
	must(t, s.PutMachine(ctx, m), "put big machine")
	got, err := s.GetMachine(ctx, "big")
	must(t, err, "get big")
	if got.Reason != big || got.LastError != big {
		t.Fatal("1 MiB machine fields changed in the round trip")
	}
	must(t, s.PutSetting(ctx, "big", big), "put big setting")
	v, err := s.GetSetting(ctx, "big")
	must(t, err, "get big setting")
	if v != big {
		t.Fatal("1 MiB setting changed in the round trip")
	}
	id, err := s.AddEvent(ctx, api.Event{Time: T0, Severity: "error", Kind: big, Machine: hostileNames[1], Message: big})
	must(t, err, "big event")
	evs, err := s.ListEvents(ctx, store.EventQuery{SinceID: id - 1, Machine: hostileNames[1]})
	must(t, err, "list big event")
	if len(evs) != 1 || evs[0].Message != big || evs[0].Kind != big {
		t.Fatal("1 MiB event changed in the round trip")
	}

	// Hostile keys in every other table.
	for i, name := range hostileNames {
		must(t, s.CreateToken(ctx, store.Token{ID: name, Hash: hash(name), Role: name, Name: name, OneTime: true}), "token")
		tok, err := s.TokenByHash(ctx, hash(name))
		must(t, err, "token by hash")
		if tok.ID != name || tok.Role != name || tok.Name != name {
			t.Fatalf("token %q came back as %+v", name, tok)
		}
		must(t, s.AddCert(ctx, store.Cert{Serial: name, Role: "agent", Name: name, Issued: T0}), "cert")
		must(t, s.CreatePolicy(ctx, api.Policy{Name: name, Retention: name}), "policy")
		pol, err := s.GetPolicy(ctx, name)
		must(t, err, "policy")
		if pol.Retention != name {
			t.Fatalf("policy %q retention %q", name, pol.Retention)
		}
		must(t, s.PutProcess(ctx, api.ProcessServer{Name: name, URL: name}), "process")
		must(t, s.PutCut(ctx, api.Cut{ID: name, Group: name, Kind: "crash", Phase: api.PhaseFreeze, At: T0.Add(time.Duration(i) * time.Second)}), "cut")
		c, err := s.LastCut(ctx, name)
		must(t, err, "last cut")
		if c.ID != name {
			t.Fatalf("last cut of %q is %q", name, c.ID)
		}
		must(t, s.AddPoint(ctx, api.Point{ID: name, Machine: name, Group: name, Time: T0, Kind: "crash"}), "point")
		pts, err := s.ListPoints(ctx, name, name, 0)
		must(t, err, "points")
		if len(pts) != 1 || pts[0].ID != name {
			t.Fatalf("points of %q: %+v", name, pts)
		}
		if pts, err = s.PointsByPrefix(ctx, name, 0); err != nil || len(pts) != 1 || pts[0].ID != name {
			t.Fatalf("points with ID prefix %q: %+v %v", name, pts, err)
		}
		must(t, s.PutSetting(ctx, name, name), "setting")
		v, err := s.GetSetting(ctx, name)
		must(t, err, "setting")
		if v != name {
			t.Fatalf("setting %q = %q", name, v)
		}
	}
	serials, err := s.RevokeCerts(ctx, "agent", hostileNames[2], T0)
	must(t, err, "revoke hostile")
	if !reflect.DeepEqual(serials, []string{hostileNames[2]}) {
		t.Fatalf("revoked %q", serials)
	}
	toks, err := s.ListTokens(ctx)
	must(t, err, "tokens")
	if len(toks) != len(hostileNames) {
		t.Fatalf("%d tokens, want %d", len(toks), len(hostileNames))
	}
	must(t, s.UseToken(ctx, hostileNames[1], T0), "use hostile token")
	wantErr(t, s.UseToken(ctx, hostileNames[1], T0), store.ErrTokenUsed, "reuse hostile token")

	// Input no database can keep is refused and changes nothing.
	bad := []string{"nul\x00byte", "bad utf8 \xff\xfe"}
	for _, name := range bad {
		if err := s.PutMachine(ctx, api.Machine{Name: name, State: "x"}); err == nil {
			t.Fatalf("PutMachine(%q) succeeded", name)
		}
		if err := s.PutSetting(ctx, name, "v"); err == nil {
			t.Fatalf("PutSetting(%q) succeeded", name)
		}
		if err := s.PutSetting(ctx, "k", name); err == nil {
			t.Fatalf("PutSetting value %q succeeded", name)
		}
		if err := s.CreateToken(ctx, store.Token{ID: name, Hash: hash(name), Role: "agent"}); err == nil {
			t.Fatalf("CreateToken(%q) succeeded", name)
		}
		if err := s.AddPoint(ctx, api.Point{ID: name, Machine: "m", Time: T0}); err == nil {
			t.Fatalf("AddPoint(%q) succeeded", name)
		}
		if _, err := s.AddEvent(ctx, api.Event{Time: T0, Kind: "k", Message: name}); err == nil {
			t.Fatalf("AddEvent(%q) succeeded", name)
		}
	}
	if err := s.PutMachine(ctx, api.Machine{Name: "", State: "x"}); err == nil {
		t.Fatal("PutMachine with an empty name succeeded")
	}
	if err := s.PutMachine(ctx, api.Machine{Name: "badjson", Inventory: api.Inventory{VMSpec: json.RawMessage(`{not json`)}}); err == nil {
		t.Fatal("PutMachine with invalid vm_spec JSON succeeded")
	}
	list, err = s.ListMachines(ctx)
	must(t, err, "list")
	if len(list) != len(hostileNames)+1 {
		t.Fatalf("refused input changed the machines: %d, want %d", len(list), len(hostileNames)+1)
	}
	if _, err := s.GetSetting(ctx, "k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("refused setting was stored: %v", err)
	}
	evs, err = s.ListEvents(ctx, store.EventQuery{SinceID: id})
	must(t, err, "events")
	if len(evs) != 0 {
		t.Fatalf("refused events were stored: %d", len(evs))
	}
	pts, err := s.ListPoints(ctx, "m", "", 0)
	must(t, err, "points")
	if len(pts) != 0 {
		t.Fatalf("refused points were stored: %d", len(pts))
	}
}

// testCanceled: a canceled context fails calls promptly and changes nothing.
func testCanceled(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.PutSetting(ctx, "k", "v"); err == nil {
		t.Fatal("PutSetting with a canceled context succeeded")
	}
	if _, err := s.ListMachines(ctx); err == nil {
		t.Fatal("ListMachines with a canceled context succeeded")
	}
	if _, err := s.GetSetting(ctxT(t), "k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("canceled PutSetting stored the value: %v", err)
	}
}
