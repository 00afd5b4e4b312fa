package capture

import (
	"errors"
	"fmt"
	"sync"
)

// Errors a Lifecycle returns for calls out of order; drivers' errors wrap
// them (errors.Is).
var (
	// ErrChangesAgain: Changes was called a second time in one cycle.
	ErrChangesAgain = errors.New("Changes may be called only once per cycle, before Commit or Abort")
	// ErrFinished: Changes or Commit after the cycle was committed or aborted.
	ErrFinished = errors.New("the cycle was already committed or aborted")
	// ErrNotDone: Commit before Changes completed successfully; the point
	// cannot contain this cycle's changes, so the cycle must be aborted.
	ErrNotDone = errors.New("Changes has not completed successfully in this cycle: call Abort")
)

// Lifecycle keeps the order of one Cycle's calls, for drivers: Changes
// runs once; Commit only after a successful Changes, and only once; after
// Commit or Abort nothing runs, and Abort then does nothing. Driver is the
// prefix of its errors ("scan"). The zero value (with Driver set) is ready
// for use; it is safe for concurrent use. It must not be copied.
type Lifecycle struct {
	Driver string

	mu       sync.Mutex
	started  bool // Changes was called
	done     bool // Changes succeeded
	finished bool // committed or aborted
}

// Changes runs fn, the driver's Changes, unless Changes already ran or
// the cycle is finished. fn runs without the lock held, so Abort can end
// the cycle while it runs. fn's error is returned as is.
func (l *Lifecycle) Changes(fn func() error) error {
	l.mu.Lock()
	switch {
	case l.finished:
		l.mu.Unlock()
		return fmt.Errorf("%s: Changes: %w", l.Driver, ErrFinished)
	case l.started:
		l.mu.Unlock()
		return fmt.Errorf("%s: %w", l.Driver, ErrChangesAgain)
	}
	l.started = true
	l.mu.Unlock()
	if err := fn(); err != nil {
		return err
	}
	l.mu.Lock()
	l.done = true
	l.mu.Unlock()
	return nil
}

// Commit runs fn, the driver's commit, with the lock held, if Changes
// succeeded and the cycle is not finished. The cycle is finished when fn
// returns nil; after an error the caller may still Abort it.
func (l *Lifecycle) Commit(fn func() error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.finished:
		return fmt.Errorf("%s: Commit: %w", l.Driver, ErrFinished)
	case !l.done:
		return fmt.Errorf("%s: Commit: %w", l.Driver, ErrNotDone)
	}
	if err := fn(); err != nil {
		return err
	}
	l.finished = true
	return nil
}

// Abort finishes the cycle and runs fn, the driver's release, with the
// lock held; the cycle is finished even if fn fails (the driver cleans up
// in its next Begin). Aborting a finished cycle does nothing.
func (l *Lifecycle) Abort(fn func() error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.finished {
		return nil
	}
	l.finished = true
	return fn()
}
