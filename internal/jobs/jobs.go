// Package jobs runs durable jobs: an operation (a test failover, a
// failover, a cleanup, a recovery plan) is a list of named steps whose
// state, progress and shared data live in a Store, so the process running
// them can be killed at any moment and the job goes on where it was when
// the process starts again.
//
// The rules that make that safe:
//
//   - A step is recorded running before it runs and done only after its
//     effect is durable and observable. A step found running at start was
//     interrupted: it runs again, so every step must be idempotent — it
//     looks at what exists (a VM by its name, a file, a process by its
//     pidfile) before it makes anything, as a Kubernetes controller does.
//   - What later steps need (the chosen point, the VM's name and
//     directory) is recorded in the job's Data by the step that decides
//     it, before it acts on it, so a rerun decides the same.
//   - Done steps never run again.
//   - A step may wait for a person (Wait): the job is "waiting" until
//     Resume acknowledges (or aborts) it; the wait survives restarts.
//   - Cancel cancels the running step's context; the job ends cancelled
//     after the step returns. What cancelling a kind of job must undo is
//     that kind's business (usually a cleanup job, or its Always steps).
//   - A step marked Always (a drill's cleanup, its report) runs even
//     after an earlier step failed or the job was cancelled: the failure
//     is recorded first (Job.Failing), the steps between are skipped, and
//     the job ends failed once its Always steps have run — also across a
//     restart.
//   - A step that starts other jobs records their IDs (NewID) before it
//     submits them with SubmitAs, which returns the existing job for an
//     ID it knows: a rerun of the step never starts second copies. Await
//     waits for a job to end.
package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Job states.
const (
	StateQueued    = "queued"
	StateRunning   = "running"
	StateWaiting   = "waiting"
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
	StateCancelled = "cancelled"
)

// Step states.
const (
	StepPending = "pending"
	StepRunning = "running"
	StepWaiting = "waiting"
	StepDone    = "done"
	StepFailed  = "failed"
	StepSkipped = "skipped"
)

// Job is one durable operation.
type Job struct {
	ID     string          `json:"id"`
	Kind   string          `json:"kind"`
	Target string          `json:"target"` // the machine or plan the job acts on
	State  string          `json:"state"`
	Params json.RawMessage `json:"params,omitempty"`
	// Data is what the steps record for each other and for the caller
	// (the chosen point, the VM, its console log); see StepContext.Set.
	Data  map[string]json.RawMessage `json:"data,omitempty"`
	Steps []Step                     `json:"steps"`
	Error string                     `json:"error,omitempty"`
	// Actor is who asked for the job (for the audit trail).
	Actor   string    `json:"actor,omitempty"`
	Created time.Time `json:"created"`
	Started time.Time `json:"started,omitempty"`
	Ended   time.Time `json:"ended,omitempty"`
	// CancelRequested is set by Cancel; the runner ends the job cancelled.
	CancelRequested bool `json:"cancel_requested,omitempty"`
	// Ack answers a waiting step: "ack" goes on, "abort" fails the job.
	Ack string `json:"ack,omitempty"`
	// Failing is the error the job will end with once its Always steps
	// have run (see StepDef.Always).
	Failing string `json:"failing,omitempty"`
}

// Step is one step of a job.
type Step struct {
	Name     string    `json:"name"`
	State    string    `json:"state"`
	Started  time.Time `json:"started,omitempty"`
	Ended    time.Time `json:"ended,omitempty"`
	Attempts int       `json:"attempts,omitempty"`
	// Message is the step's latest word: progress, or the instruction of
	// a step waiting for a person.
	Message  string    `json:"message,omitempty"`
	Progress *Progress `json:"progress,omitempty"`
	Error    string    `json:"error,omitempty"`
	// Log keeps the step's last lines.
	Log []string `json:"log,omitempty"`
}

// Progress of a long step (bytes copied, machines started).
type Progress struct {
	Done  int64 `json:"done"`
	Total int64 `json:"total"`
}

// Terminal reports whether a job state is final.
func Terminal(state string) bool {
	return state == StateSucceeded || state == StateFailed || state == StateCancelled
}

// Get decodes the job's data under key into v; it reports whether the
// key is there.
func (j *Job) Get(key string, v any) (bool, error) {
	b, ok := j.Data[key]
	if !ok {
		return false, nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return true, fmt.Errorf("job %s: data %q: %w", j.ID, key, err)
	}
	return true, nil
}

// Step returns the step of that name, or nil.
func (j *Job) Step(name string) *Step {
	for i := range j.Steps {
		if j.Steps[i].Name == name {
			return &j.Steps[i]
		}
	}
	return nil
}

// ListOptions filter ListJobs.
type ListOptions struct {
	Target string // "" any
	Kind   string // "" any
	Active bool   // only jobs that have not ended
	Limit  int    // 0: a default of 100
}

// Store keeps jobs durably. UpdateJob applies fn to the stored job and
// stores the result atomically (fn may be called again on a conflict).
type Store interface {
	CreateJob(ctx context.Context, j Job) error
	GetJob(ctx context.Context, id string) (Job, error)
	UpdateJob(ctx context.Context, id string, fn func(*Job) error) (Job, error)
	ListJobs(ctx context.Context, o ListOptions) ([]Job, error)
}

// ErrNotFound means no job has that ID.
var ErrNotFound = errors.New("no such job")

// ErrWaiting is returned by StepContext.Wait: the step waits for a
// person; the runner parks the job until Resume.
var ErrWaiting = errors.New("waiting for an operator")

// ErrAborted is the error of a job whose waiting step was aborted.
var ErrAborted = errors.New("aborted by an operator")

// maxLogLines bounds the log kept per step.
const maxLogLines = 50
