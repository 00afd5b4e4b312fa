package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"
)

// StepContext is a running step's view of its job. A step may use it
// from several goroutines (a plan starts a group's machines at once).
type StepContext struct {
	r    *Runner
	id   string
	step int
	mu   sync.Mutex // guards job; held across Set's update, so Sets apply in order
	job  Job        // as of the step's start, with Set's changes
}

// Job returns the job as the step sees it.
func (sc *StepContext) Job() Job {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.job
}

// ID is the job's ID.
func (sc *StepContext) ID() string { return sc.id }

// Now is the runner's clock.
func (sc *StepContext) Now() time.Time { return sc.r.o.Clock.Now() }

// Params decodes the job's parameters into v.
func (sc *StepContext) Params(v any) error {
	if err := json.Unmarshal(sc.job.Params, v); err != nil {
		return fmt.Errorf("job %s: parameters: %w", sc.id, err)
	}
	return nil
}

// Get decodes the job's data under key into v; it reports whether the key
// is there.
func (sc *StepContext) Get(key string, v any) (bool, error) {
	j := sc.Job()
	return j.Get(key, v)
}

// Set records v under key in the job's data, durably, before it returns.
func (sc *StepContext) Set(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	j, err := sc.r.update(ctx, sc.id, func(j *Job) error {
		if j.Data == nil {
			j.Data = map[string]json.RawMessage{}
		}
		j.Data[key] = b
		return nil
	})
	if err != nil {
		return fmt.Errorf("record %s of job %s: %w", key, sc.id, err)
	}
	sc.job = j
	return nil
}

// Progress records the step's progress (best effort).
func (sc *StepContext) Progress(ctx context.Context, done, total int64, msg string) {
	sc.r.update(context.WithoutCancel(ctx), sc.id, func(j *Job) error {
		s := &j.Steps[sc.step]
		s.Progress = &Progress{Done: done, Total: total}
		if msg != "" {
			s.Message = msg
		}
		return nil
	})
}

// Log appends a line to the step's log and makes it the step's message.
func (sc *StepContext) Log(ctx context.Context, format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	j := sc.Job()
	sc.r.log.Info(line, "job", sc.id, "step", j.Steps[sc.step].Name)
	sc.r.update(context.WithoutCancel(ctx), sc.id, func(j *Job) error {
		s := &j.Steps[sc.step]
		s.Message = line
		s.Log = append(s.Log, sc.r.o.Clock.Now().UTC().Format(time.TimeOnly)+" "+line)
		if len(s.Log) > maxLogLines {
			s.Log = s.Log[len(s.Log)-maxLogLines:]
		}
		return nil
	})
}

// Wait parks the job until an operator acknowledges (the step then
// counts as done) or aborts (the job fails). Return its error from the
// step.
func (sc *StepContext) Wait(ctx context.Context, instruction string) error {
	sc.r.update(context.WithoutCancel(ctx), sc.id, func(j *Job) error {
		j.Steps[sc.step].Message = instruction
		return nil
	})
	return ErrWaiting
}
