package main

import (
	"regexp"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// TestMachineNextActions: machines show and status print the actions the
// server allows now, --json carries allowed_actions, and a refusal
// reaches the user with the server's message.
func TestMachineNextActions(t *testing.T) {
	f := newFakeAPI(t)
	web := api.Machine{Name: "web", State: api.StateFailedOver, Policy: "p",
		AllowedActions: []string{"test-failover", "change-point", "commit", "cancel-failover"},
		Health:         &api.Health{Level: api.HealthWarning, Reasons: []api.HealthReason{{Level: api.HealthWarning, Reason: "failed over, not committed", Remedy: "`lifeboat failover commit web`"}}}}
	db := api.Machine{Name: "db", State: api.StateCommitted, AllowedActions: []string{"reprotect"}}
	f.reply("GET /api/v1/machines/web", 200, web)
	f.reply("GET /api/v1/status", 200, api.Status{Server: "s", Version: "dev", Vault: "/v", Machines: []api.Machine{web, db}})
	msg := `cannot pause web: it is "failed-over" (pause acts on forward replication, and the machine is failed over: its way back is reprotect and failback); allowed now: test-failover, change-point, commit, cancel-failover`
	f.reply("POST /api/v1/machines/web/pause", 409, api.ErrorBody{Error: api.Error{Code: api.CodeActionNotAllowed, Message: msg}})

	out, stderr, code := f.lifeboat("machines", "show", "web")
	if code != 0 || !regexp.MustCompile(`allowed next actions\s+test-failover, change-point, commit, cancel-failover\n`).MatchString(out) ||
		!strings.Contains(out, "failed over (not committed)") || !regexp.MustCompile(`health\s+warning\n\s+warning\s+failed over, not committed: do .lifeboat failover commit web.`).MatchString(out) {
		t.Fatalf("machines show: %d %s %s", code, out, stderr)
	}
	out, _, _ = f.lifeboat("machines", "show", "web", "--json")
	if !strings.Contains(out, `"allowed_actions": [`) || !strings.Contains(out, `"cancel-failover"`) {
		t.Fatalf("machines show --json: %s", out)
	}
	out, stderr, code = f.lifeboat("status")
	if code != 0 || !regexp.MustCompile(`(?m)^MACHINE\s+ALLOWED NEXT ACTIONS\ndb\s+reprotect\nweb\s+test-failover, change-point`).MatchString(out) {
		t.Fatalf("status: %d %s %s", code, out, stderr)
	}
	_, stderr, code = f.lifeboat("pause", "web")
	if code == 0 || !strings.Contains(stderr, msg) || !strings.Contains(stderr, api.CodeActionNotAllowed) {
		t.Fatalf("a refused pause: %d %s", code, stderr)
	}
}
