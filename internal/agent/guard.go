package agent

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// A host agent runs the replication of many VMs in one process: a fault
// in one VM's cycle (a driver bug, a QEMU answer nobody expected) must not
// take the others down. Cycles and the agent's loops therefore turn a
// panic into an error and an event, and carry on.

// EventPanic is the kind of the event raised when a cycle or a loop of
// the agent panicked.
const EventPanic = "agent_panic"

// panicRestartDelay is how long a loop that panicked waits before it runs
// again.
const panicRestartDelay = 5 * time.Second

// Faults inject failures for tests of the agent's fault handling. The
// zero value injects none.
type Faults struct {
	// PanicCycle names a machine (a VM of a host agent, or the agent's
	// own) whose cycles panic right after they start.
	PanicCycle string
}

// recovered reports a recovered panic p as an event and returns it as an
// error.
func (a *Agent) recovered(where string, p any) error {
	err := fmt.Errorf("internal error in %s (panic: %v); the agent carries on", where, p)
	a.log.Error("recovered from a panic", "where", where, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	a.event(api.SeverityError, EventPanic, err.Error()+": please report it with the agent's log")
	return err
}

// guardedCycle runs one cycle, turning a panic into the cycle's error.
func (a *Agent) guardedCycle(ctx context.Context, cfg api.AgentConfig, spec *cycleSpec) (res api.CycleResult, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = a.recovered("a cycle of "+a.cfg.Machine, p)
		}
	}()
	if a.faults.PanicCycle != "" && a.faults.PanicCycle == a.cfg.Machine {
		panic("fault injected by the test (Faults.PanicCycle)")
	}
	return a.cycle(ctx, cfg, spec)
}

// guardLoop runs loop until ctx ends; a loop that panics is reported and
// started again after panicRestartDelay.
func (a *Agent) guardLoop(ctx context.Context, name string, loop func(context.Context)) {
	for ctx.Err() == nil {
		if !a.runLoop(ctx, name, loop) {
			return
		}
		a.sleep(ctx, panicRestartDelay)
	}
}

// runLoop runs loop once and reports whether it panicked.
func (a *Agent) runLoop(ctx context.Context, name string, loop func(context.Context)) (panicked bool) {
	defer func() {
		if p := recover(); p != nil {
			a.recovered("the "+name+" loop of "+a.cfg.Machine, p)
			panicked = true
		}
	}()
	loop(ctx)
	return false
}
