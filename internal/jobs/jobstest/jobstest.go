// Package jobstest is the conformance suite of jobs.Store: every store
// (the in-memory one, the SQL state store on SQLite and PostgreSQL)
// passes it.
package jobstest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/jobs"
)

// Run runs the suite against the store newStore returns (a fresh, empty
// one per call).
func Run(t *testing.T, newStore func(t *testing.T) jobs.Store) {
	t.Run("CreateGetUpdate", func(t *testing.T) { createGetUpdate(t, newStore(t)) })
	t.Run("List", func(t *testing.T) { list(t, newStore(t)) })
	t.Run("ConcurrentUpdates", func(t *testing.T) { concurrent(t, newStore(t)) })
}

var t0 = time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)

func job(id, target, state string, created time.Time) jobs.Job {
	return jobs.Job{ID: id, Kind: "test-failover", Target: target, State: state, Params: json.RawMessage(`{"point":"latest"}`),
		Steps: []jobs.Step{{Name: "a", State: jobs.StepPending}, {Name: "b", State: jobs.StepPending}}, Actor: "token 1a2b (admin)", Created: created}
}

func createGetUpdate(t *testing.T, s jobs.Store) {
	ctx := context.Background()
	j := job("j1", "web", jobs.StateQueued, t0)
	if err := s.CreateJob(ctx, j); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateJob(ctx, j); err == nil {
		t.Fatal("a second job with the same ID was created")
	}
	got, err := s.GetJob(ctx, "j1")
	if err != nil || got.Target != "web" || len(got.Steps) != 2 || string(got.Params) != `{"point":"latest"}` || !got.Created.Equal(t0) {
		t.Fatalf("get: %+v, %v", got, err)
	}
	if _, err := s.GetJob(ctx, "nope"); !errors.Is(err, jobs.ErrNotFound) {
		t.Fatalf("missing job: %v, want ErrNotFound", err)
	}
	up, err := s.UpdateJob(ctx, "j1", func(j *jobs.Job) error {
		j.State = jobs.StateRunning
		j.Steps[0].State = jobs.StepDone
		j.Steps[0].Progress = &jobs.Progress{Done: 5, Total: 10}
		j.Data = map[string]json.RawMessage{"point": json.RawMessage(`"abc"`)}
		return nil
	})
	if err != nil || up.State != jobs.StateRunning {
		t.Fatalf("update: %+v, %v", up, err)
	}
	got, _ = s.GetJob(ctx, "j1")
	var p string
	if ok, err := got.Get("point", &p); !ok || err != nil || p != "abc" || got.Steps[0].Progress.Done != 5 {
		t.Fatalf("after update: %+v", got)
	}
	boom := errors.New("boom")
	if _, err := s.UpdateJob(ctx, "j1", func(j *jobs.Job) error { j.State = jobs.StateFailed; return boom }); !errors.Is(err, boom) {
		t.Fatalf("update whose fn fails: %v", err)
	}
	if got, _ := s.GetJob(ctx, "j1"); got.State != jobs.StateRunning {
		t.Fatalf("a failed update changed the job: %s", got.State)
	}
	if _, err := s.UpdateJob(ctx, "nope", func(*jobs.Job) error { return nil }); !errors.Is(err, jobs.ErrNotFound) {
		t.Fatalf("update of a missing job: %v", err)
	}
}

func list(t *testing.T, s jobs.Store) {
	ctx := context.Background()
	for i, c := range []struct{ target, state string }{{"web", jobs.StateSucceeded}, {"web", jobs.StateRunning}, {"db", jobs.StateWaiting}, {"db", jobs.StateFailed}} {
		if err := s.CreateJob(ctx, job(fmt.Sprintf("j%d", i), c.target, c.state, t0.Add(time.Duration(i)*time.Minute))); err != nil {
			t.Fatal(err)
		}
	}
	all, err := s.ListJobs(ctx, jobs.ListOptions{})
	if err != nil || len(all) != 4 || all[0].ID != "j3" || all[3].ID != "j0" {
		t.Fatalf("list all (newest first): %v, %v", ids(all), err)
	}
	active, _ := s.ListJobs(ctx, jobs.ListOptions{Active: true})
	if len(active) != 2 || active[0].ID != "j2" || active[1].ID != "j1" {
		t.Fatalf("active: %v", ids(active))
	}
	web, _ := s.ListJobs(ctx, jobs.ListOptions{Target: "web", Limit: 1})
	if len(web) != 1 || web[0].ID != "j1" {
		t.Fatalf("web, limit 1: %v", ids(web))
	}
	none, _ := s.ListJobs(ctx, jobs.ListOptions{Kind: "failover"})
	if len(none) != 0 {
		t.Fatalf("kind filter: %v", ids(none))
	}
}

func concurrent(t *testing.T, s jobs.Store) {
	ctx := context.Background()
	if err := s.CreateJob(ctx, job("c", "web", jobs.StateRunning, t0)); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 10 {
				_, err := s.UpdateJob(ctx, "c", func(j *jobs.Job) error {
					j.Steps[0].Log = append(j.Steps[0].Log, fmt.Sprintf("%d-%d", i, k))
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if got, _ := s.GetJob(ctx, "c"); len(got.Steps[0].Log) != 80 {
		t.Fatalf("concurrent updates lost some: %d of 80", len(got.Steps[0].Log))
	}
}

func ids(js []jobs.Job) []string {
	var out []string
	for _, j := range js {
		out = append(out, j.ID)
	}
	return out
}
