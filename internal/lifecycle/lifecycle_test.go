package lifecycle

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// codes are the matrix's abbreviations of the refusals' API codes.
var codes = map[string]string{
	"ok":  "",
	"na":  api.CodeActionNotAllowed,
	"cf":  api.CodeConflict,
	"fo":  api.CodeFailedOver,
	"nfo": api.CodeNotFailedOver,
	"nd":  api.CodeNoDrill,
	"dr":  api.CodeDrillRunning,
	"jr":  api.CodeJobRunning,
	"ao":  api.CodeAgentOffline,
}

// quiet: no drill, no job, the agent online.
var quiet = Facts{AgentOnline: true}

// TestMatrix: every state × action, with quiet facts: allowed ("ok"),
// accepted as a no-op but not listed ("nop": pause of a paused machine),
// or refused with the code.
func TestMatrix(t *testing.T) {
	// Columns: the order of Actions().
	//                 prot unpr paus resu rsyn test clea fail plan chpt comm canc repr fbck cmfb cafb reen
	matrix := map[State]string{
		Unprotected:  "ok   nop  cf   na   cf   ok   nd   ok   cf   nfo  nfo  nfo  na   na   na   na   na",
		Initial:      "ok   ok   ok   nop   ok   ok   nd   ok   ok   nfo  nfo  nfo  na   na   na   na   na",
		Protected:    "ok   ok   ok   nop   ok   ok   nd   ok   ok   nfo  nfo  nfo  na   na   na   na   na",
		Resyncing:    "ok   ok   ok   nop   na   ok   nd   ok   ok   nfo  nfo  nfo  na   na   na   na   na",
		Paused:       "ok   ok   nop   ok   ok   ok   nd   ok   cf   nfo  nfo  nfo  na   na   na   na   na",
		Error:        "ok   ok   ok   nop   ok   ok   nd   ok   ok   nfo  nfo  nfo  na   na   na   na   na",
		FailedOver:   "na   na   na   na   na   ok   nd   fo   fo   ok   ok   ok   na   na   na   na   na",
		Committed:    "na   na   na   na   na   na   nd   fo   fo   nfo  nfo  nfo  ok   na   na   na   na",
		Reprotecting: "na   na   na   na   na   na   nd   fo   fo   nfo  nfo  nfo  na   na   na   na   na",
		Reprotected:  "na   na   na   na   na   na   nd   fo   fo   nfo  nfo  nfo  na   ok   na   na   na",
		FailingBack:  "na   na   na   na   na   na   nd   fo   fo   nfo  nfo  nfo  na   na   ok   ok   na",
		FailedBack:   "na   na   na   na   na   na   nd   fo   fo   nfo  nfo  nfo  na   na   na   na   ok",
	}
	if len(matrix) != len(States()) {
		t.Fatalf("the matrix has %d states, the model %d", len(matrix), len(States()))
	}
	for _, s := range States() {
		check(t, s, quiet, strings.Fields(matrix[s]))
	}
}

// TestFacts: what the facts change, each against the quiet matrix.
func TestFacts(t *testing.T) {
	for _, c := range []struct {
		name  string
		state State
		facts Facts
		want  map[Action]string // the cells that differ from quiet facts
	}{
		{"a drill runs", Protected, Facts{AgentOnline: true, Drill: true}, map[Action]string{TestFailover: "dr", Cleanup: "ok"}},
		{"a drill runs after the commit", Committed, Facts{AgentOnline: true, Drill: true}, map[Action]string{TestFailover: "dr", Cleanup: "ok"}},
		{"a drill job runs", Protected, Facts{AgentOnline: true, DrillJob: true}, map[Action]string{TestFailover: "dr", Cleanup: "jr"}},
		{"a drill and its cleanup job", FailedOver, Facts{AgentOnline: true, Drill: true, DrillJob: true}, map[Action]string{TestFailover: "dr", Cleanup: "jr"}},
		{"the agent is offline", Protected, Facts{}, map[Action]string{PlannedFailover: "ao"}},
		{"the agent of a paused machine is offline", Paused, Facts{}, nil},
		{"a failover job runs", Protected, Facts{AgentOnline: true, FailoverJob: true}, map[Action]string{
			Protect: "jr", Unprotect: "jr", Pause: "jr", Resync: "jr", Failover: "jr", PlannedFailover: "jr", ChangePoint: "jr", Commit: "jr", CancelFailover: "jr"}},
		{"a failover job runs on a failed-over machine", FailedOver, Facts{AgentOnline: true, FailoverJob: true}, map[Action]string{
			ChangePoint: "jr", Commit: "jr", CancelFailover: "jr"}},
		{"a job runs on a committed machine", Committed, Facts{AgentOnline: true, FailoverJob: true}, map[Action]string{
			Reprotect: "jr", ChangePoint: "jr", Commit: "jr", CancelFailover: "jr"}},
		{"a job runs on a reprotected machine", Reprotected, Facts{AgentOnline: true, FailoverJob: true}, map[Action]string{
			Failback: "jr", ChangePoint: "jr", Commit: "jr", CancelFailover: "jr"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var row []string
			for _, a := range Actions() {
				code := "ok"
				if holds(c.state, a) && !c.facts.FailoverJob {
					code = "nop"
				} else if r := refuse(c.state, a, quiet); r != nil {
					code = abbrev(r.code)
				}
				if w, ok := c.want[a]; ok {
					code = w
				}
				row = append(row, code)
			}
			check(t, c.state, c.facts, row)
		})
	}
}

func abbrev(code string) string {
	for k, v := range codes {
		if v == code {
			return k
		}
	}
	return code
}

// check compares one state's row: Check and Allowed agree with it, and
// every refusal names the machine, the state, the action and the
// actions allowed now.
func check(t *testing.T, s State, f Facts, row []string) {
	t.Helper()
	if len(row) != len(Actions()) {
		t.Fatalf("%s: %d cells for %d actions", s, len(row), len(Actions()))
	}
	allowed := Allowed(s, f)
	var want []Action
	for i, a := range Actions() {
		err := Check("web", s, a, f)
		if row[i] == "nop" { // accepted as a no-op, not listed as allowed
			if err != nil {
				t.Errorf("%s, %+v: %s (a no-op) refused: %v", s, f, a, err)
			}
			continue
		}
		code, ok := codes[row[i]]
		if !ok {
			t.Fatalf("%s %s: unknown cell %q", s, a, row[i])
		}
		if code == "" {
			want = append(want, a)
			if err != nil {
				t.Errorf("%s, %+v: %s refused: %v", s, f, a, err)
			}
			continue
		}
		var ne *NotAllowedError
		if !errors.As(err, &ne) {
			t.Errorf("%s, %+v: %s allowed, want %s", s, f, a, code)
			continue
		}
		if ne.Code != code {
			t.Errorf("%s, %+v: %s refused with %s, want %s (%v)", s, f, a, ne.Code, code, err)
		}
		msg := err.Error()
		for _, part := range []string{"cannot " + string(a) + " web", `"` + string(s) + `"`, "allowed now: "} {
			if !strings.Contains(msg, part) {
				t.Errorf("%s %s: the message lacks %q: %s", s, a, part, msg)
			}
		}
		if !slices.Equal(ne.Allowed, allowed) {
			t.Errorf("%s %s: the error allows %v, Allowed says %v", s, a, ne.Allowed, allowed)
		}
	}
	if !slices.Equal(allowed, want) {
		t.Errorf("%s, %+v: Allowed %v, want %v", s, f, allowed, want)
	}
}

// TestMessage: the refusal reads as the operator needs it.
func TestMessage(t *testing.T) {
	err := Check("web", Protected, Failback, quiet)
	want := `cannot failback web: it is "protected" (failback needs a committed failover that was reprotected); ` +
		`allowed now: protect, unprotect, pause, resync, test-failover, failover, planned-failover`
	if err == nil || err.Error() != want {
		t.Fatalf("got  %v\nwant %s", err, want)
	}
	err = Check("web", Reprotecting, Failback, quiet)
	if err == nil || !strings.HasSuffix(err.Error(), "allowed now: nothing until it ends") {
		t.Fatalf("a state that allows nothing: %v", err)
	}
}

// TestTransitions: every action of an edge is allowed in its state with
// quiet facts, every state is reached and left, and every action but
// the drill's has an edge.
func TestTransitions(t *testing.T) {
	in, out, acts := map[State]bool{}, map[State]bool{}, map[Action]bool{}
	for _, tr := range Transitions() {
		if !IsKnown(tr.From) || !IsKnown(tr.To) {
			t.Errorf("edge %+v: unknown state", tr)
		}
		out[tr.From], in[tr.To] = true, true
		if tr.Action == "" {
			continue
		}
		acts[tr.Action] = true
		if err := Check("web", tr.From, tr.Action, quiet); err != nil {
			t.Errorf("edge %s --%s--> %s: %v", tr.From, tr.Action, tr.To, err)
		}
	}
	for _, s := range States() {
		if !in[s] && s != Unprotected || !out[s] {
			t.Errorf("state %s: reached %v, left %v", s, in[s], out[s])
		}
	}
	for _, a := range Actions() {
		if !acts[a] && a != TestFailover && a != Cleanup {
			t.Errorf("action %s has no edge", a)
		}
	}
}

// TestStateOf: the record's state, failover first.
func TestStateOf(t *testing.T) {
	pt := &api.CycleResult{Point: "p"}
	vm := &api.RecoveredVM{Name: "vm"}
	for _, c := range []struct {
		m    api.Machine
		want State
	}{
		{api.Machine{}, Unprotected},
		{api.Machine{Policy: "p"}, Initial},
		{api.Machine{Policy: "p", LastPoint: pt}, Protected},
		{api.Machine{Policy: "p", LastPoint: pt, ResyncWanted: true}, Resyncing},
		{api.Machine{Policy: "p", LastPoint: pt, ResyncWanted: true, Paused: true}, Paused},
		{api.Machine{Policy: "p", LastPoint: pt, LastError: "e"}, Error},
		{api.Machine{Policy: "p", LastPoint: pt, Recovery: &api.Recovery{Drill: vm}}, Protected},
		{api.Machine{Policy: "p", Paused: true, Recovery: &api.Recovery{Failover: vm}}, FailedOver},
		{api.Machine{Policy: "p", Recovery: &api.Recovery{Failover: vm, Committed: true}}, Committed},
	} {
		if got := StateOf(&c.m); got != c.want {
			t.Errorf("%+v: %s, want %s", c.m, got, c.want)
		}
	}
}
