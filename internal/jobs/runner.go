package jobs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime/debug"
	"slices"
	"sync"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

// StepFunc runs one step. It must be idempotent (see the package doc).
type StepFunc func(ctx context.Context, sc *StepContext) error

// StepDef is a named step of a kind of job.
type StepDef struct {
	Name string
	Run  StepFunc
	// Always: the step runs even after an earlier step failed or the job
	// was cancelled (a drill's cleanup and report). The job then ends
	// failed (or cancelled) with the first error once its Always steps
	// have run; the steps between are skipped.
	Always bool
}

// Kind defines a kind of job: its steps, built from the job (its
// parameters), the same way every time it is built.
type Kind struct {
	Name  string
	Steps func(j *Job) ([]StepDef, error)
}

// Options configure a Runner.
type Options struct {
	Store  Store
	Kinds  []Kind
	Clock  clock.Clock
	Logger *slog.Logger
	// OnChange, if set, is called after every change of a job (for long
	// polls and events); it must not block.
	OnChange func(Job)
	// Fence, if set, is called before a step starts and before its end
	// is recorded: it returns once this process may act (a leader whose
	// lease is confirmed), or an error when it never may again (ctx
	// ended: the lead was lost); the step is then left to the next run.
	Fence func(ctx context.Context) error
}

// Runner runs jobs: one goroutine per active job.
type Runner struct {
	o     Options
	log   *slog.Logger
	kinds map[string]Kind

	mu      sync.Mutex
	ctx     context.Context
	running map[string]context.CancelFunc // job ID → cancel of its running step (nil between steps)
	again   map[string]bool               // launched while running: run again when it returns
	change  chan struct{}                 // closed and replaced at every change (Await)
	wg      sync.WaitGroup
}

// NewRunner returns a runner; Start resumes the jobs left active.
func NewRunner(o Options) *Runner {
	if o.Clock == nil {
		o.Clock = clock.System{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Runner{o: o, log: o.Logger, kinds: map[string]Kind{}, running: map[string]context.CancelFunc{}, again: map[string]bool{}, change: make(chan struct{})}
	for _, k := range o.Kinds {
		r.kinds[k.Name] = k
	}
	return r
}

// Start runs, until ctx ends, every job that is queued or running (it was
// interrupted) and keeps waiting jobs parked. New jobs run as they are
// submitted.
func (r *Runner) Start(ctx context.Context) error {
	r.mu.Lock()
	r.ctx = ctx
	r.mu.Unlock()
	active, err := r.o.Store.ListJobs(ctx, ListOptions{Active: true, Limit: 100000})
	if err != nil {
		return fmt.Errorf("jobs: list the jobs to resume: %w", err)
	}
	for _, j := range active {
		if j.State == StateWaiting && j.Ack == "" && !j.CancelRequested {
			continue
		}
		r.log.Info("resuming job", "job", j.ID, "kind", j.Kind, "target", j.Target, "state", j.State)
		r.launch(j.ID)
	}
	return nil
}

// Kinds are the kinds of job the runner runs, sorted.
func (r *Runner) Kinds() []string {
	return slices.Sorted(maps.Keys(r.kinds))
}

// Wait waits until every job goroutine has returned (after ctx ended).
func (r *Runner) Wait() { r.wg.Wait() }

// Submit records a new job and starts it.
func (r *Runner) Submit(ctx context.Context, kind, target string, params any, actor string) (Job, error) {
	return r.SubmitAs(ctx, NewID(), kind, target, params, actor)
}

// SubmitAs records a new job under id and starts it; if a job of that ID
// exists it is returned as it is. A step that starts other jobs records
// their IDs (NewID) before it submits them, so a rerun of the step finds
// them instead of starting second copies.
func (r *Runner) SubmitAs(ctx context.Context, id, kind, target string, params any, actor string) (Job, error) {
	if j, err := r.o.Store.GetJob(ctx, id); err == nil {
		if j.Kind != kind || j.Target != target {
			return j, fmt.Errorf("jobs: job %s is a %s of %s, not a %s of %s", id, j.Kind, j.Target, kind, target)
		}
		if !Terminal(j.State) && (j.State != StateWaiting || j.Ack != "") {
			r.launch(id)
		}
		return j, nil
	} else if !errors.Is(err, ErrNotFound) {
		return Job{}, fmt.Errorf("jobs: look for job %s: %w", id, err)
	}
	k, ok := r.kinds[kind]
	if !ok {
		return Job{}, fmt.Errorf("jobs: unknown kind of job %q", kind)
	}
	p, err := json.Marshal(params)
	if err != nil {
		return Job{}, err
	}
	j := Job{ID: id, Kind: kind, Target: target, State: StateQueued, Params: p, Actor: actor, Created: r.o.Clock.Now().UTC()}
	defs, err := k.Steps(&j)
	if err != nil {
		return Job{}, err
	}
	for _, d := range defs {
		j.Steps = append(j.Steps, Step{Name: d.Name, State: StepPending})
	}
	if err := r.o.Store.CreateJob(ctx, j); err != nil {
		return Job{}, fmt.Errorf("jobs: record job: %w", err)
	}
	r.changed(j)
	r.launch(j.ID)
	return j, nil
}

// Cancel asks a job to stop: its running step's context is cancelled and
// the job ends cancelled (after its Always steps).
func (r *Runner) Cancel(ctx context.Context, id string) (Job, error) {
	j, err := r.o.Store.UpdateJob(ctx, id, func(j *Job) error {
		if Terminal(j.State) {
			return fmt.Errorf("job %s has already ended (%s)", j.ID, j.State)
		}
		j.CancelRequested = true
		return nil
	})
	if err != nil {
		return j, err
	}
	r.changed(j)
	r.mu.Lock()
	cancel, running := r.running[id]
	r.mu.Unlock()
	switch {
	case cancel != nil:
		cancel()
	case !running:
		r.launch(id) // a parked (waiting) job: end it
	}
	return j, nil
}

// Resume answers a waiting job: ack goes on, abort fails it.
func (r *Runner) Resume(ctx context.Context, id string, ack bool) (Job, error) {
	j, err := r.o.Store.UpdateJob(ctx, id, func(j *Job) error {
		if j.State != StateWaiting {
			return fmt.Errorf("job %s is %s, not waiting for an operator", j.ID, j.State)
		}
		j.Ack = "abort"
		if ack {
			j.Ack = "ack"
		}
		return nil
	})
	if err != nil {
		return j, err
	}
	r.changed(j)
	r.launch(id)
	return j, nil
}

// launch runs a job in its own goroutine unless it already runs.
func (r *Runner) launch(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctx == nil || r.ctx.Err() != nil {
		return // not started, or stopping: Start picks it up
	}
	if _, ok := r.running[id]; ok {
		// It may be on its way out (it just parked, waiting for the
		// answer that calls this): run it again once it is out.
		r.again[id] = true
		return
	}
	r.running[id] = nil
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.run(r.ctx, id)
		r.mu.Lock()
		delete(r.running, id)
		again := r.again[id]
		delete(r.again, id)
		r.mu.Unlock()
		if again {
			if j, err := r.o.Store.GetJob(context.WithoutCancel(r.ctx), id); err == nil && !Terminal(j.State) && (j.State != StateWaiting || j.Ack != "") {
				r.launch(id)
			}
		}
	}()
}

// stepContext is the context of one step of job id: Cancel cancels it.
func (r *Runner) stepContext(ctx context.Context, id string) (context.Context, func()) {
	sctx, cancel := context.WithCancel(ctx)
	r.mu.Lock()
	r.running[id] = cancel
	r.mu.Unlock()
	return sctx, func() {
		r.mu.Lock()
		r.running[id] = nil
		r.mu.Unlock()
		cancel()
	}
}

func (r *Runner) changed(j Job) {
	r.mu.Lock()
	close(r.change)
	r.change = make(chan struct{})
	r.mu.Unlock()
	if r.o.OnChange != nil {
		r.o.OnChange(j)
	}
}

// Await returns the job once it has ended (or ctx ends). It sees the
// changes this runner makes.
func (r *Runner) Await(ctx context.Context, id string) (Job, error) {
	for {
		r.mu.Lock()
		ch := r.change
		r.mu.Unlock()
		j, err := r.o.Store.GetJob(ctx, id)
		if err != nil || Terminal(j.State) {
			return j, err
		}
		select {
		case <-ctx.Done():
			return j, ctx.Err()
		case <-ch:
		}
	}
}

// NewID returns a new job ID.
func NewID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// run runs a job's remaining steps in order. ctx ends when the runner
// stops: the job then stays as it is, to be resumed.
func (r *Runner) run(ctx context.Context, id string) {
	j, defs, err := r.prepare(ctx, id)
	if err != nil {
		return
	}
	for i, d := range defs {
		if j.Steps[i].Name != d.Name {
			r.finish(ctx, id, StateFailed, fmt.Errorf("step %d of job %s is %q but its kind now names it %q", i, id, j.Steps[i].Name, d.Name))
			return
		}
		if s := j.Steps[i].State; s == StepDone || s == StepSkipped {
			continue
		}
		if j.CancelRequested && j.Failing == "" {
			if j, err = r.fail(ctx, j, defs[i:], errors.New("cancelled")); err != nil {
				return
			}
		}
		if j.Failing != "" && !d.Always {
			if j, err = r.skip(ctx, id, i); err != nil {
				return
			}
			continue
		}
		var failed error
		j, failed, err = r.runStep(ctx, j, i, d)
		if err != nil {
			return // waiting, or the runner stops
		}
		if failed != nil {
			if j, err = r.fail(ctx, j, defs[i+1:], fmt.Errorf("step %s: %w", d.Name, failed)); err != nil {
				return
			}
		}
	}
	switch {
	case j.Failing != "" && j.CancelRequested:
		r.finish(ctx, id, StateCancelled, errors.New(j.Failing))
	case j.Failing != "":
		r.finish(ctx, id, StateFailed, errors.New(j.Failing))
	default:
		r.finish(ctx, id, StateSucceeded, nil)
	}
}

// prepare loads a job to run, checks its kind and marks it running.
func (r *Runner) prepare(ctx context.Context, id string) (Job, []StepDef, error) {
	j, err := r.o.Store.GetJob(ctx, id)
	if err != nil {
		r.log.Error("job vanished", "job", id, "err", err)
		return j, nil, err
	}
	k, ok := r.kinds[j.Kind]
	if !ok {
		err = fmt.Errorf("this server does not know jobs of kind %q", j.Kind)
	} else {
		var defs []StepDef
		if defs, err = k.Steps(&j); err == nil && len(defs) != len(j.Steps) {
			err = fmt.Errorf("job %s has %d steps but its kind now has %d: it cannot be resumed", id, len(j.Steps), len(defs))
		}
		if err == nil && j.State != StateRunning {
			j, err = r.update(ctx, id, func(j *Job) error {
				if j.Started.IsZero() {
					j.Started = r.o.Clock.Now().UTC()
				}
				j.State = StateRunning
				return nil
			})
			if err != nil {
				return j, nil, err
			}
		}
		if err == nil {
			return j, defs, nil
		}
	}
	r.finish(ctx, id, StateFailed, err)
	return j, nil, err
}

// fail records why the job will fail. Without Always steps in rest it
// ends now (and fail returns an error); otherwise they run first.
func (r *Runner) fail(ctx context.Context, j Job, rest []StepDef, cause error) (Job, error) {
	state := StateFailed
	if j.CancelRequested {
		state = StateCancelled
	}
	if !slices.ContainsFunc(rest, func(d StepDef) bool { return d.Always }) {
		r.finish(ctx, j.ID, state, cause)
		return j, cause
	}
	r.log.Warn("job fails; its final steps run first", "job", j.ID, "err", cause)
	return r.update(ctx, j.ID, func(j *Job) error {
		if j.Failing == "" {
			j.Failing = cause.Error()
		}
		return nil
	})
}

func (r *Runner) skip(ctx context.Context, id string, i int) (Job, error) {
	return r.update(ctx, id, func(j *Job) error {
		j.Steps[i].State = StepSkipped
		return nil
	})
}

// runStep runs step i. failed is the step's own failure (the job goes to
// its Always steps); err means the job must not go on here (it waits for
// an operator, or the runner stops).
func (r *Runner) runStep(ctx context.Context, j Job, i int, d StepDef) (_ Job, failed, err error) {
	if j.Steps[i].State == StepWaiting {
		switch j.Ack {
		case "ack":
			j, err := r.update(ctx, j.ID, func(j *Job) error {
				j.Ack = ""
				s := &j.Steps[i]
				s.State, s.Ended, s.Message = StepDone, r.o.Clock.Now().UTC(), s.Message+" (acknowledged)"
				return nil
			})
			return j, nil, err
		case "abort":
			j, err := r.update(ctx, j.ID, func(j *Job) error {
				j.Ack = ""
				s := &j.Steps[i]
				s.State, s.Ended, s.Error = StepFailed, r.o.Clock.Now().UTC(), ErrAborted.Error()
				return nil
			})
			return j, ErrAborted, err
		}
	}
	if err := r.fence(ctx); err != nil {
		return j, nil, err // the runner stops: the step runs at the next start
	}
	j, err = r.update(ctx, j.ID, func(j *Job) error {
		s := &j.Steps[i]
		s.State, s.Error = StepRunning, ""
		s.Attempts++
		if s.Started.IsZero() {
			s.Started = r.o.Clock.Now().UTC()
		}
		return nil
	})
	if err != nil {
		return j, nil, err
	}
	sctx, done := r.stepContext(ctx, j.ID)
	err = r.call(sctx, d, &StepContext{r: r, id: j.ID, step: i, job: j})
	done()
	if ferr := r.fence(ctx); ferr != nil {
		return j, nil, ferr // not recorded: the step runs again at the next start
	}
	switch {
	case errors.Is(err, ErrWaiting):
		j, uerr := r.update(ctx, j.ID, func(j *Job) error {
			j.State, j.Steps[i].State = StateWaiting, StepWaiting
			return nil
		})
		if uerr == nil {
			r.log.Info("job waits for an operator", "job", j.ID, "step", d.Name, "instruction", j.Steps[i].Message)
		}
		return j, nil, ErrWaiting
	case err != nil && ctx.Err() != nil:
		return j, nil, err // the runner stops: the step runs again at the next start
	case err != nil:
		j, _ = r.failStep(ctx, j.ID, i, err)
		return j, err, nil
	}
	j, err = r.update(ctx, j.ID, func(j *Job) error {
		s := &j.Steps[i]
		s.State, s.Ended = StepDone, r.o.Clock.Now().UTC()
		return nil
	})
	return j, nil, err
}

func (r *Runner) fence(ctx context.Context) error {
	if r.o.Fence == nil {
		return nil
	}
	return r.o.Fence(ctx)
}

// call runs a step, turning a panic into its error.
func (r *Runner) call(ctx context.Context, d StepDef, sc *StepContext) (err error) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("job step panicked", "job", sc.id, "step", d.Name, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			err = fmt.Errorf("internal error (panic: %v)", p)
		}
	}()
	return d.Run(ctx, sc)
}

func (r *Runner) failStep(ctx context.Context, id string, i int, err error) (Job, error) {
	return r.update(context.WithoutCancel(ctx), id, func(j *Job) error {
		s := &j.Steps[i]
		s.State, s.Ended, s.Error = StepFailed, r.o.Clock.Now().UTC(), err.Error()
		return nil
	})
}

func (r *Runner) finish(ctx context.Context, id, state string, err error) {
	j, uerr := r.update(context.WithoutCancel(ctx), id, func(j *Job) error {
		j.State, j.Ended = state, r.o.Clock.Now().UTC()
		if err != nil {
			j.Error = err.Error()
		}
		return nil
	})
	if uerr != nil {
		return
	}
	if state == StateSucceeded {
		r.log.Info("job succeeded", "job", id, "kind", j.Kind, "target", j.Target)
	} else {
		r.log.Warn("job ended", "job", id, "kind", j.Kind, "target", j.Target, "state", state, "err", err)
	}
}

func (r *Runner) update(ctx context.Context, id string, fn func(*Job) error) (Job, error) {
	j, err := r.o.Store.UpdateJob(ctx, id, fn)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Error("cannot record the job's progress", "job", id, "err", err)
		}
		return j, err
	}
	r.changed(j)
	return j, nil
}

// Get returns the job of that ID from the runner's store.
func (r *Runner) Get(ctx context.Context, id string) (Job, error) { return r.o.Store.GetJob(ctx, id) }
