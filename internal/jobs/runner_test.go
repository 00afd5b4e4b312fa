package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/jobs/jobstest"
)

func TestMemStore(t *testing.T) {
	jobstest.Run(t, func(*testing.T) jobs.Store { return jobs.NewMemStore() })
}

// counting is a kind of job whose steps count their runs; step "slow"
// blocks until released (or its context ends).
type counting struct {
	mu      sync.Mutex
	runs    map[string]int
	release chan struct{}
	started chan string
	fail    string // a step that fails
	panics  string // a step that panics
	wait    string // a step that waits for an operator
}

func newCounting() *counting {
	return &counting{runs: map[string]int{}, release: make(chan struct{}), started: make(chan string, 16)}
}

func (c *counting) count(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runs[name]
}

func (c *counting) kind() jobs.Kind {
	step := func(name string) jobs.StepDef {
		return jobs.StepDef{Name: name, Run: func(ctx context.Context, sc *jobs.StepContext) error {
			c.mu.Lock()
			c.runs[name]++
			c.mu.Unlock()
			c.started <- name
			switch name {
			case c.fail:
				return errors.New("it broke")
			case c.panics:
				panic("oops")
			case c.wait:
				return sc.Wait(ctx, "check the database, then run `lifeboat jobs resume "+sc.ID()+" --ack`")
			case "decide":
				var v string
				if ok, _ := sc.Get("choice", &v); !ok {
					return sc.Set(ctx, "choice", fmt.Sprintf("decided at run %d", c.count("decide")))
				}
			case "slow":
				select {
				case <-c.release:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		}}
	}
	return jobs.Kind{Name: "count", Steps: func(*jobs.Job) ([]jobs.StepDef, error) {
		return []jobs.StepDef{step("decide"), step("slow"), step("wait"), step("last")}, nil
	}}
}

func waitJob(t *testing.T, s jobs.Store, id string, cond func(jobs.Job) bool) jobs.Job {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		j, err := s.GetJob(context.Background(), id)
		if err == nil && cond(j) {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: condition not met in time: %+v (%v)", id, j, err)
		}
		time.Sleep(5 * time.Millisecond) // poll pause under a deadline
	}
}

func start(t *testing.T, s jobs.Store, k jobs.Kind) (*jobs.Runner, context.CancelFunc) {
	t.Helper()
	r := jobs.NewRunner(jobs.Options{Store: s, Kinds: []jobs.Kind{k}})
	ctx, cancel := context.WithCancel(context.Background())
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); r.Wait() })
	return r, func() { cancel(); r.Wait() }
}

// TestResumeAfterCrash: the runner is stopped (as by kill -9) during a
// step; a new runner on the same store runs that step again, never the
// steps already done, and keeps the data they recorded.
func TestResumeAfterCrash(t *testing.T) {
	s := jobs.NewMemStore()
	c := newCounting()
	r, stop := start(t, s, c.kind())
	j, err := r.Submit(context.Background(), "count", "web", map[string]string{"point": "latest"}, "tester")
	if err != nil {
		t.Fatal(err)
	}
	for n := <-c.started; n != "slow"; n = <-c.started {
	}
	stop() // the process dies in the middle of "slow"
	got, _ := s.GetJob(context.Background(), j.ID)
	if got.State != jobs.StateRunning || got.Step("decide").State != jobs.StepDone || got.Step("slow").State != jobs.StepRunning {
		t.Fatalf("after the crash: %+v", got)
	}
	close(c.release)
	start(t, s, c.kind())
	got = waitJob(t, s, j.ID, func(j jobs.Job) bool { return j.State == jobs.StateSucceeded })
	var choice string
	got.Get("choice", &choice)
	if c.count("decide") != 1 || c.count("slow") != 2 || c.count("last") != 1 || choice != "decided at run 1" {
		t.Fatalf("runs %v, choice %q: want decide once, slow twice, last once", c.runs, choice)
	}
	if got.Step("slow").Attempts != 2 {
		t.Fatalf("attempts of slow: %d", got.Step("slow").Attempts)
	}
}

// TestWaitAckAbort: a step waiting for an operator parks the job, also
// across a restart; ack goes on, abort fails the job.
func TestWaitAckAbort(t *testing.T) {
	for _, ack := range []bool{true, false} {
		s := jobs.NewMemStore()
		c := newCounting()
		c.wait = "wait"
		close(c.release)
		r, stop := start(t, s, c.kind())
		j, _ := r.Submit(context.Background(), "count", "web", nil, "")
		got := waitJob(t, s, j.ID, func(j jobs.Job) bool { return j.State == jobs.StateWaiting })
		if m := got.Step("wait").Message; m == "" {
			t.Fatal("the waiting step shows no instruction")
		}
		stop()
		r, _ = start(t, s, c.kind()) // a restart keeps it parked
		if _, err := r.Resume(context.Background(), j.ID, ack); err != nil {
			t.Fatal(err)
		}
		want := jobs.StateSucceeded
		if !ack {
			want = jobs.StateFailed
		}
		got = waitJob(t, s, j.ID, func(j jobs.Job) bool { return jobs.Terminal(j.State) })
		if got.State != want || c.count("wait") != 1 {
			t.Fatalf("ack %v: state %s (%s), wait ran %d times", ack, got.State, got.Error, c.count("wait"))
		}
		if ack && c.count("last") != 1 || !ack && c.count("last") != 0 {
			t.Fatalf("ack %v: last ran %d times", ack, c.count("last"))
		}
		if _, err := r.Resume(context.Background(), j.ID, true); err == nil {
			t.Fatal("a finished job was resumed")
		}
	}
}

// TestCancelFailPanic: cancel ends a running job cancelled; a failing or
// panicking step fails the job with the step named; later steps never run.
func TestCancelFailPanic(t *testing.T) {
	s := jobs.NewMemStore()
	c := newCounting()
	r, _ := start(t, s, c.kind())
	j, _ := r.Submit(context.Background(), "count", "web", nil, "")
	for n := <-c.started; n != "slow"; n = <-c.started {
	}
	if _, err := r.Cancel(context.Background(), j.ID); err != nil {
		t.Fatal(err)
	}
	got := waitJob(t, s, j.ID, func(j jobs.Job) bool { return jobs.Terminal(j.State) })
	if got.State != jobs.StateCancelled || c.count("last") != 0 {
		t.Fatalf("cancelled job: %+v", got)
	}
	for _, mode := range []string{"fail", "panic"} {
		c := newCounting()
		close(c.release)
		if mode == "fail" {
			c.fail = "slow"
		} else {
			c.panics = "slow"
		}
		s := jobs.NewMemStore()
		r, _ := start(t, s, c.kind())
		j, _ := r.Submit(context.Background(), "count", "web", nil, "")
		got := waitJob(t, s, j.ID, func(j jobs.Job) bool { return jobs.Terminal(j.State) })
		if got.State != jobs.StateFailed || got.Step("slow").State != jobs.StepFailed || c.count("wait") != 0 || got.Error == "" {
			t.Fatalf("%s: %+v", mode, got)
		}
	}
	if _, err := r.Submit(context.Background(), "nope", "web", nil, ""); err == nil {
		t.Fatal("a job of an unknown kind was accepted")
	}
}

// TestManyJobs: jobs run concurrently and each once.
func TestManyJobs(t *testing.T) {
	s := jobs.NewMemStore()
	var n atomic.Int64
	k := jobs.Kind{Name: "one", Steps: func(*jobs.Job) ([]jobs.StepDef, error) {
		return []jobs.StepDef{{Name: "only", Run: func(context.Context, *jobs.StepContext) error { n.Add(1); return nil }}}, nil
	}}
	r, _ := start(t, s, k)
	var ids []string
	for i := range 20 {
		j, err := r.Submit(context.Background(), "one", fmt.Sprint(i), nil, "")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.ID)
	}
	for _, id := range ids {
		waitJob(t, s, id, func(j jobs.Job) bool { return j.State == jobs.StateSucceeded })
	}
	if n.Load() != 20 {
		t.Fatalf("%d runs for 20 jobs", n.Load())
	}
}

// TestFenceHoldsSteps: a runner whose fence holds (a leader whose lease
// expired: it was frozen) neither starts a step nor records the end of
// the one that ran meanwhile; once the fence gives up (the lead was lost)
// the job is left as it was for the next leader, which runs that step
// again.
func TestFenceHoldsSteps(t *testing.T) {
	s := jobs.NewMemStore()
	c := newCounting()
	var closed atomic.Bool
	gate := make(chan struct{})
	fence := func(ctx context.Context) error {
		if !closed.Load() {
			return nil
		}
		select {
		case <-gate: // the lead was lost
			return errors.New("lost the lead")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r := jobs.NewRunner(jobs.Options{Store: s, Kinds: []jobs.Kind{c.kind()}, Fence: fence})
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); r.Wait() }()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	j, err := r.Submit(ctx, "count", "web", nil, "tester")
	if err != nil {
		t.Fatal(err)
	}
	for n := <-c.started; n != "slow"; n = <-c.started {
	}
	closed.Store(true) // frozen in the middle of "slow"
	close(c.release)   // "slow" ends while the lease is expired
	close(gate)        // then the lead turns out lost
	r.Wait()
	got, _ := s.GetJob(context.Background(), j.ID)
	if got.State != jobs.StateRunning || got.Step("slow").State != jobs.StepRunning || c.count("wait") != 0 {
		t.Fatalf("a fenced runner recorded or started steps: %+v, runs %v", got, c.runs)
	}
	// The next leader runs "slow" again and goes on.
	c.wait = ""
	start(t, s, c.kind())
	got = waitJob(t, s, j.ID, func(j jobs.Job) bool { return j.State == jobs.StateSucceeded })
	if c.count("slow") != 2 || c.count("decide") != 1 {
		t.Fatalf("runs after the fence: %v", c.runs)
	}
}
