package control

import (
	"slices"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/lifecycle"
)

// TestMachineStatesThroughAPI: the machines the API shows carry the
// actions the state model allows, and an action the state does not
// allow answers 409 naming the state and the actions allowed now.
func TestMachineStatesThroughAPI(t *testing.T) {
	s := startSite(t)
	s.machine("web", 2)
	op, viewer := s.token(api.RoleOperator, 0), s.token(api.RoleViewer, 0)
	allowed := func(state lifecycle.State) []string {
		return lifecycle.Strings(lifecycle.Allowed(state, lifecycle.Facts{AgentOnline: true}))
	}
	// shows checks the machine's state and allowed actions in GET
	// machines/{name}, machines and status.
	shows := func(state lifecycle.State, want []string) {
		t.Helper()
		var m api.Machine
		var ms []api.Machine
		var st api.Status
		s.mustAPI("GET", "/api/v1/machines/web", viewer, nil, 200, &m)
		s.mustAPI("GET", "/api/v1/machines", viewer, nil, 200, &ms)
		s.mustAPI("GET", "/api/v1/status", viewer, nil, 200, &st)
		for what, got := range map[string][]api.Machine{"machine": {m}, "machines": ms, "status": st.Machines} {
			if len(got) != 1 || got[0].State != string(state) || !slices.Equal(got[0].AllowedActions, want) {
				t.Fatalf("%s: %+v, want state %s allowing %v", what, got, state, want)
			}
		}
	}
	// refusedWith checks a refusal's code and that its message names
	// the action, the state and the actions allowed now.
	refusedWith := func(path string, body any, code, action string, state lifecycle.State) {
		t.Helper()
		r := s.api("POST", "/api/v1/machines/web/"+path, op, body)
		s.refused(r, 409, code, path)
		want := `cannot ` + action + ` web: it is "` + string(state) + `"`
		now := "allowed now: " + strings.Join(allowed(state), ", ")
		if msg := r.err().Message; !strings.HasPrefix(msg, want) || !strings.Contains(msg, now) {
			t.Fatalf("%s: %q, want %q ... %q", path, msg, want, now)
		}
	}

	want := []string{"protect", "unprotect", "pause", "resync", "test-failover", "failover", "planned-failover"}
	if got := allowed(lifecycle.Protected); !slices.Equal(got, want) {
		t.Fatalf("the model allows %v on a protected machine, the test expects %v", got, want)
	}
	shows(lifecycle.Protected, want)
	refusedWith("failover/commit", nil, api.CodeNotFailedOver, "commit", lifecycle.Protected)
	refusedWith("test-failover/cleanup", nil, api.CodeNoDrill, "cleanup", lifecycle.Protected)
	// Asked twice is done already: resume of a replicating machine is a
	// no-op that answers 200, so scripts may repeat it.
	var m api.Machine
	s.mustAPI("POST", "/api/v1/machines/web/resume", op, nil, 200, &m)
	if m.State != string(lifecycle.Protected) || m.Paused {
		t.Fatalf("resume of a protected machine changed it: %+v", m)
	}

	if j := s.waitJob(s.submit(op, "web", "failover", nil).ID); j.State != "succeeded" {
		t.Fatalf("failover: %s %s", j.State, j.Error)
	}
	shows(lifecycle.FailedOver, []string{"test-failover", "change-point", "commit", "cancel-failover"})
	refusedWith("pause", nil, api.CodeActionNotAllowed, "pause", lifecycle.FailedOver)
	refusedWith("protect", api.ProtectRequest{Policy: "p"}, api.CodeActionNotAllowed, "protect", lifecycle.FailedOver)

	if j := s.waitJob(s.submit(op, "web", "failover/commit", nil).ID); j.State != "succeeded" {
		t.Fatalf("commit: %s %s", j.State, j.Error)
	}
	shows(lifecycle.Committed, []string{"reprotect"})
	refusedWith("failover", nil, api.CodeFailedOver, "failover", lifecycle.Committed)
	refusedWith("test-failover", nil, api.CodeActionNotAllowed, "test-failover", lifecycle.Committed)
	refusedWith("failover/cancel", nil, api.CodeNotFailedOver, "cancel-failover", lifecycle.Committed)
}
