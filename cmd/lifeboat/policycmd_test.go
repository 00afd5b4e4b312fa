package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// TestPolicyFlags: policy durations take days and weeks as retention
// grids do; create sends its defaults, update only the flags given, and
// update's help shows no defaults it would not apply.
func TestPolicyFlags(t *testing.T) {
	f := newFakeAPI(t)
	f.on("POST /api/v1/policies", func(w http.ResponseWriter, r *http.Request) {
		var p api.Policy
		json.NewDecoder(r.Body).Decode(&p)
		answer(w, 201, p)
	})
	cur := api.Policy{Name: "fast", KeepApp: api.Duration(time.Hour), CrashInterval: api.Duration(time.Minute), Retention: "1h:all"}
	f.reply("GET /api/v1/policies/fast", 200, cur)
	f.on("PUT /api/v1/policies/fast", func(w http.ResponseWriter, r *http.Request) {
		var p api.Policy
		json.NewDecoder(r.Body).Decode(&p)
		answer(w, 200, p)
	})
	sent := func() api.Policy {
		var p api.Policy
		if err := json.Unmarshal(f.last().Body, &p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if _, stderr, code := f.lifeboat("policy", "create", "fast", "--keep-app", "15d", "--app-interval", "0"); code != 0 {
		t.Fatalf("create: exit %d: %s", code, stderr)
	}
	if p := sent(); p.KeepApp.Std() != 15*24*time.Hour || p.AppInterval != 0 || p.CrashInterval.Std() != 5*time.Minute || p.RPOThreshold.Std() != 15*time.Minute {
		t.Fatalf("create sent %+v", p)
	}
	if _, stderr, code := f.lifeboat("policy", "update", "fast", "--keep-app", "2w"); code != 0 {
		t.Fatalf("update: exit %d: %s", code, stderr)
	}
	if p := sent(); p.KeepApp.Std() != 14*24*time.Hour || p.CrashInterval != cur.CrashInterval || p.Retention != cur.Retention || p.RPOThreshold != 0 {
		t.Fatalf("update sent %+v, want only keep-app changed", p)
	}
	if _, stderr, code := f.lifeboat("policy", "create", "x", "--keep-app", "15 days"); code != exitUsage || !strings.Contains(stderr, "keep-app") {
		t.Fatalf("a bad duration: exit %d: %s", code, stderr)
	}
	help, _, _ := f.lifeboat("policy", "update", "--help")
	if strings.Contains(help, "(default 1") || strings.Contains(help, "(default 5m") {
		t.Fatalf("update --help shows defaults it does not apply:\n%s", help)
	}
}
