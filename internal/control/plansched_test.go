package control

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
)

// everyMinute is a plan drilled every minute whose first group waits for
// an operator, so a drill can be kept running.
const everyMinute = `name: shop
schedule: "* * * * *"
groups:
  - name: database
    machines:
      - machine: db
    after:
      - name: look at the database
        manual: Check the database.
  - name: web
    machines:
      - machine: web
`

// TestPlanDrillSchedule: on a fake clock, a scheduled drill starts at
// the schedule's time by itself (actor "schedule"); while it runs, the
// next time is skipped (an event says so) and the plan cannot be
// deleted; once it ended, the next time starts the next drill.
func TestPlanDrillSchedule(t *testing.T) {
	s := startSite(t)
	s.machine("db", 1)
	s.machine("web", 1)
	op, viewer := s.token(api.RoleOperator, 0), s.token(api.RoleViewer, 0)
	applied := s.applyPlan(op, everyMinute)
	first := applied.Created.Truncate(time.Minute).Add(time.Minute)
	if !applied.NextDrill.Equal(first) {
		t.Fatalf("next drill %s, want %s", applied.NextDrill, first)
	}
	runs := func() []api.DrillSummary {
		var ds []api.DrillSummary
		s.mustAPI("GET", "/api/v1/drills?plan=shop", viewer, nil, 200, &ds)
		return ds
	}
	waitingRun := func(n int) api.DrillSummary {
		t.Helper()
		var ds []api.DrillSummary
		eventually(t, "scheduled drill number "+string(rune('0'+n))+" waiting at the manual step", func() bool {
			ds = runs()
			return len(ds) == n && ds[0].State == "waiting"
		})
		d := ds[0]
		if d.Kind != orchestrate.KindPlanDrill || !d.Scheduled || d.Actor != scheduleActor || d.Version != 1 {
			t.Fatalf("scheduled drill: %+v", d)
		}
		return d
	}

	if len(runs()) != 0 {
		t.Fatal("a drill ran before its time")
	}
	s.clock.Set(first)
	d1 := waitingRun(1)
	if !s.jobCreated(d1.Job).Equal(first) {
		t.Fatalf("the first drill was created at %s, want %s", s.jobCreated(d1.Job), first)
	}

	// Busy: the next minute is skipped, never a second drill of the plan.
	s.clock.Set(first.Add(time.Minute))
	eventually(t, "the skipped drill's event", func() bool { return len(s.events("drill_skipped")) == 1 })
	if ds := runs(); len(ds) != 1 {
		t.Fatalf("a second drill started while the first ran: %+v", ds)
	}
	if e := s.events("drill_skipped")[0]; !strings.Contains(e.Message, "plan shop") || !strings.Contains(e.Message, d1.Job) {
		t.Fatalf("skip event: %+v", e)
	}
	s.refused(s.api("DELETE", "/api/v1/plans/shop", op, nil), 409, api.CodePlanBusy, "delete while a drill runs")

	s.mustAPI("POST", "/api/v1/jobs/"+d1.Job+"/resume", op, api.ResumeRequest{Action: "ack"}, http.StatusOK, nil)
	if j := s.waitJob(d1.Job); j.State != "succeeded" || len(s.prov.running()) != 0 {
		t.Fatalf("first drill: %s %s, VMs %v", j.State, j.Error, s.prov.running())
	}
	var p api.PlanDetail
	s.mustAPI("GET", "/api/v1/plans/shop", viewer, nil, 200, &p)
	if want := first.Add(2 * time.Minute); !p.NextDrill.Equal(want) {
		t.Fatalf("next drill after a skipped time: %s, want %s", p.NextDrill, want)
	}

	// The next time runs the next drill.
	s.clock.Set(first.Add(2 * time.Minute))
	d2 := waitingRun(2)
	if d2.Job == d1.Job {
		t.Fatal("no second drill")
	}
	s.mustAPI("POST", "/api/v1/jobs/"+d2.Job+"/resume", op, api.ResumeRequest{Action: "ack"}, http.StatusOK, nil)
	if j := s.waitJob(d2.Job); j.State != "succeeded" {
		t.Fatalf("second drill: %s %s", j.State, j.Error)
	}
	if ds := runs(); len(ds) != 2 || !ds[0].Passed || !ds[1].Passed {
		t.Fatalf("drill history: %+v", ds)
	}
}

// jobCreated is when a job was created.
func (s *site) jobCreated(id string) time.Time {
	s.t.Helper()
	var j api.Job
	s.mustAPI("GET", "/api/v1/jobs/"+id, s.admin, nil, 200, &j)
	return j.Created
}
