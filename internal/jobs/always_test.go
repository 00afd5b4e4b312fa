package jobs_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/jobs"
)

// alwaysKind: "work" fails, blocks or succeeds as told; "skipped" runs
// only when work succeeds; "cleanup" always runs.
type alwaysKind struct {
	mu      sync.Mutex
	runs    map[string]int
	workErr error
	block   chan struct{}
	started chan struct{}
}

func (a *alwaysKind) kind() jobs.Kind {
	run := func(name string) jobs.StepFunc {
		return func(ctx context.Context, sc *jobs.StepContext) error {
			a.mu.Lock()
			a.runs[name]++
			a.mu.Unlock()
			if name != "work" {
				return nil
			}
			if a.block != nil {
				close(a.started)
				select {
				case <-a.block:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return a.workErr
		}
	}
	return jobs.Kind{Name: "always", Steps: func(*jobs.Job) ([]jobs.StepDef, error) {
		return []jobs.StepDef{{Name: "work", Run: run("work")}, {Name: "skipped", Run: run("skipped")},
			{Name: "cleanup", Run: run("cleanup"), Always: true}}, nil
	}}
}

func (a *alwaysKind) count(name string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.runs[name]
}

// TestAlwaysSteps: after a failure, and after a cancel, the Always steps
// run, the others are skipped, and the job ends with the first error.
func TestAlwaysSteps(t *testing.T) {
	a := &alwaysKind{runs: map[string]int{}, workErr: errors.New("the check cannot pass")}
	s := jobs.NewMemStore()
	r, _ := start(t, s, a.kind())
	j, _ := r.Submit(context.Background(), "always", "plan", nil, "")
	got, err := r.Await(context.Background(), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != jobs.StateFailed || got.Error != "step work: the check cannot pass" || got.Step("skipped").State != jobs.StepSkipped ||
		got.Step("cleanup").State != jobs.StepDone || a.count("cleanup") != 1 || a.count("skipped") != 0 {
		t.Fatalf("failed job: %+v runs %v", got, a.runs)
	}

	c := &alwaysKind{runs: map[string]int{}, block: make(chan struct{}), started: make(chan struct{})}
	s = jobs.NewMemStore()
	r, _ = start(t, s, c.kind())
	j, _ = r.Submit(context.Background(), "always", "plan", nil, "")
	<-c.started
	if _, err := r.Cancel(context.Background(), j.ID); err != nil {
		t.Fatal(err)
	}
	got, _ = r.Await(context.Background(), j.ID)
	if got.State != jobs.StateCancelled || c.count("cleanup") != 1 || c.count("skipped") != 0 {
		t.Fatalf("cancelled job: %+v runs %v", got, c.runs)
	}
}

// TestAlwaysAfterCrash: a runner that stops after a failure was recorded
// but before the Always step ran runs it at the next start.
func TestAlwaysAfterCrash(t *testing.T) {
	s := jobs.NewMemStore()
	first := &alwaysKind{runs: map[string]int{}, workErr: errors.New("broke")}
	k := first.kind()
	block := make(chan struct{})
	entered := make(chan struct{}, 1)
	defs, _ := k.Steps(nil)
	inner := defs[2].Run
	defs[2].Run = func(ctx context.Context, sc *jobs.StepContext) error {
		entered <- struct{}{}
		select {
		case <-block:
			return inner(ctx, sc)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	k.Steps = func(*jobs.Job) ([]jobs.StepDef, error) { return defs, nil }
	r, stop := start(t, s, k)
	j, _ := r.Submit(context.Background(), "always", "plan", nil, "")
	<-entered
	stop()
	got, _ := s.GetJob(context.Background(), j.ID)
	if got.State != jobs.StateRunning || got.Failing == "" {
		t.Fatalf("after the crash: %+v", got)
	}
	close(block)
	r, _ = start(t, s, k)
	got = waitJob(t, s, j.ID, func(j jobs.Job) bool { return jobs.Terminal(j.State) })
	if got.State != jobs.StateFailed || first.count("work") != 1 || first.count("cleanup") != 1 {
		t.Fatalf("after the restart: %+v runs %v", got, first.runs)
	}
}

// TestSubmitAs: a second submission under the same ID returns the first
// job and starts nothing; another kind under that ID is refused.
func TestSubmitAs(t *testing.T) {
	a := &alwaysKind{runs: map[string]int{}}
	s := jobs.NewMemStore()
	r, _ := start(t, s, a.kind())
	id := jobs.NewID()
	j1, err := r.SubmitAs(context.Background(), id, "always", "web", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	j2, err := r.SubmitAs(context.Background(), id, "always", "web", nil, "")
	if err != nil || j2.ID != j1.ID {
		t.Fatalf("second submission: %+v %v", j2, err)
	}
	if _, err := r.Await(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if a.count("work") != 1 {
		t.Fatalf("work ran %d times", a.count("work"))
	}
	if _, err := r.SubmitAs(context.Background(), id, "always", "db", nil, ""); err == nil {
		t.Fatal("the same ID for another target was accepted")
	}
}
