package control

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// TestAuditActor: an audit event names the token by ID, its role and the
// client's address, as fields and in the message.
func TestAuditActor(t *testing.T) {
	ts := startServer(t, serverOpts{})
	var tr api.TokenResponse
	ts.mustAPI("POST", "/api/v1/tokens", ts.admin, api.TokenRequest{Role: api.RoleOperator, Name: "ops"}, http.StatusCreated, &tr)
	ts.mustAPI("POST", "/api/v1/policies", tr.Token, api.Policy{Name: "p1"}, http.StatusCreated, nil)
	var toks []TokenInfo
	ts.mustAPI("GET", "/api/v1/tokens", ts.admin, nil, http.StatusOK, &toks)
	adminID := ""
	for _, tk := range toks {
		if tk.Name == "admin" {
			adminID = tk.ID
		}
	}
	audits := ts.events(api.EventAudit)
	if len(audits) != 2 {
		t.Fatalf("audit events: %+v", audits)
	}
	for i, want := range []struct{ id, name, role string }{{adminID, "admin", api.RoleAdmin}, {tr.ID, "ops", api.RoleOperator}} {
		a := audits[i].Actor
		if a == nil || a.TokenID != want.id || a.TokenName != want.name || a.Role != want.role ||
			!strings.HasPrefix(a.Address, "127.0.0.1:") || a.CertSerial != "" {
			t.Fatalf("audit event %d's actor: %+v, want token %s", i, a, want.id)
		}
		if !strings.Contains(audits[i].Message, fmt.Sprintf("token %s [id %s] (%s) from %s: ", want.name, want.id, want.role, a.Address)) {
			t.Fatalf("audit message: %s", audits[i].Message)
		}
	}
}
