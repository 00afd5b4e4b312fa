package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// A planned failover asks the agent (AgentConfig.Shutdown) to shut its
// machine down, cut one final point after the shutdown, and stop, so
// that nothing written before the shutdown is lost:
//
//   - A VM of a host agent is powered off through its hypervisor (QMP:
//     `set-action shutdown=pause`, `system_powerdown`, wait until
//     query-status says shutdown; libvirt: shut the domain down, then
//     start it paused), its disks are read in one last cycle, and the VM
//     is ended (`quit`, or the domain destroyed).
//   - An agent in the guest runs HOOKS/pre-shutdown.d (stop the
//     applications), syncs, cuts the point, makes sure the server has its
//     acknowledgement, then runs HOOKS/shutdown.d, whose last hook powers
//     the machine off (`systemctl poweroff`).
//
// The agent reports its progress (stopping, stopped, done with the
// point, or failed) in every heartbeat while the request stands; state.json
// keeps it, so a request is carried out once even across restarts.
// While the request stands the agent cycles no more.

// Hook directories of a planned failover, inside the hooks directory.
const (
	PreShutdownDir = "pre-shutdown.d"
	ShutdownDir    = "shutdown.d"
)

// ackDeliveryWait bounds how long an agent in the guest waits for the
// server to receive its final point before it powers the machine off.
const ackDeliveryWait = 2 * time.Minute

// shutdownRequested carries out the server's shutdown request, once; it
// reports whether one stands (the agent must not cycle).
func (a *Agent) shutdownRequested(ctx context.Context, cfg api.AgentConfig) bool {
	req := cfg.Shutdown
	a.mu.Lock()
	ack := a.st.Shutdown
	if req == nil && ack != nil {
		a.st.Shutdown = nil // withdrawn (failover cancelled): replicate again
		a.saveStateLocked()
	}
	a.mu.Unlock()
	if req == nil {
		return false
	}
	if ack != nil && ack.ID == req.ID && (ack.State == api.ShutdownDone || ack.State == api.ShutdownFailed) {
		return true
	}
	a.closeOpenCut("planned failover: shutting down")
	point, err := a.shutdown(ctx, cfg, req)
	if ctx.Err() != nil {
		return true // stopping: carried on at the next start
	}
	if err != nil {
		a.setShutdown(req.ID, api.ShutdownFailed, "", err.Error())
		a.event(api.SeverityError, "shutdown_failed", fmt.Sprintf("planned failover: %v", err))
		return true
	}
	a.log.Info("planned failover: final point published after the shutdown", "point", point)
	return true
}

// setShutdown records and reports the state of the shutdown.
func (a *Agent) setShutdown(id, state, point, errText string) {
	a.mu.Lock()
	a.st.Shutdown = &api.ShutdownAck{ID: id, State: state, Point: point, Error: errText, Time: a.clk.Now().UTC()}
	a.saveStateLocked()
	a.mu.Unlock()
	wake(a.kick)
}

// shutdown stops the machine, cuts the final point and returns its ID.
func (a *Agent) shutdown(ctx context.Context, cfg api.AgentConfig, req *api.ShutdownRequest) (string, error) {
	timeout := req.Timeout.Std()
	if timeout <= 0 {
		timeout = hookTimeout(cfg)
	}
	a.mu.Lock()
	prev := a.st.Shutdown
	a.mu.Unlock()
	resumed := prev != nil && prev.ID == req.ID && prev.State == api.ShutdownStopped
	if !resumed {
		a.setShutdown(req.ID, api.ShutdownStopping, "", "")
	}
	if vm := a.cfg.vm; vm != nil {
		return a.shutdownVM(ctx, cfg, req, vm, timeout)
	}
	return a.shutdownGuest(ctx, cfg, req, timeout, resumed)
}

// finalCycle cuts the point of the stopped machine.
func (a *Agent) finalCycle(ctx context.Context, cfg api.AgentConfig, req *api.ShutdownRequest) (string, error) {
	a.mu.Lock()
	resync := a.st.resyncWanted(cfg)
	a.mu.Unlock()
	res, err := a.runCycle(ctx, cfg, cycleSpec{kind: KindCrash, resync: resync, labels: map[string]string{"final": req.ID}})
	if err != nil {
		return "", fmt.Errorf("final point: %w", err)
	}
	return res.Point, nil
}

// shutdownVM powers a VM off through its hypervisor, cuts the point of
// its disks and ends it.
func (a *Agent) shutdownVM(ctx context.Context, cfg api.AgentConfig, req *api.ShutdownRequest, vm *vmTarget, timeout time.Duration) (string, error) {
	if vm.powerOff == nil {
		return "", fmt.Errorf("VM %s cannot be shut down through its hypervisor (%s)", a.cfg.Machine, vm.source)
	}
	a.log.Info("planned failover: powering the VM off", "timeout", timeout)
	end, err := vm.powerOff(ctx, timeout)
	if err != nil {
		return "", err
	}
	a.setShutdown(req.ID, api.ShutdownStopped, "", "")
	point, err := a.finalCycle(ctx, cfg, req)
	if err != nil {
		return "", err // the VM stays stopped (paused): a new request cuts the point again
	}
	a.setShutdown(req.ID, api.ShutdownDone, point, "")
	ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := end(ectx); err != nil {
		a.event(api.SeverityWarning, "shutdown_failed", fmt.Sprintf("planned failover: the final point %s is published, but the stopped VM could not be ended: %v", short(point), err))
	}
	return point, nil
}

// shutdownGuest stops the applications of the machine the agent runs
// in, cuts the final point, and powers the machine off with the
// shutdown hooks once the server has the point.
func (a *Agent) shutdownGuest(ctx context.Context, cfg api.AgentConfig, req *api.ShutdownRequest, timeout time.Duration, resumed bool) (string, error) {
	c := a.consistency(cfg, "")
	c.timeout = timeout
	c.env = append(c.env, "LIFEBOAT_SHUTDOWN_ID="+req.ID)
	if !resumed {
		if err := a.runHooks(ctx, c, PreShutdownDir, "pre-shutdown"); err != nil {
			return "", err
		}
		syscall.Sync()
		a.setShutdown(req.ID, api.ShutdownStopped, "", "")
	}
	point, err := a.finalCycle(ctx, cfg, req)
	if err != nil {
		return "", err
	}
	a.setShutdown(req.ID, api.ShutdownDone, point, "")
	if !a.waitDelivered(ctx, api.ShutdownDone, ackDeliveryWait) {
		a.event(api.SeverityWarning, "shutdown_failed", fmt.Sprintf("planned failover: the server did not confirm the final point %s within %s; powering off anyway", short(point), ackDeliveryWait))
	}
	hooks, err := listHooks(filepath.Join(a.cfg.hooksDir(), ShutdownDir))
	if err == nil && len(hooks) == 0 {
		a.event(api.SeverityWarning, "shutdown_failed", fmt.Sprintf("planned failover: no hook in %s powers the machine off: it stays up with its applications stopped", filepath.Join(a.cfg.hooksDir(), ShutdownDir)))
		return point, nil
	}
	if err := a.runHooks(ctx, c, ShutdownDir, "shutdown"); err != nil {
		a.event(api.SeverityWarning, "shutdown_failed", fmt.Sprintf("planned failover: the final point %s is published, but %v", short(point), err))
	}
	return point, nil
}

// runHooks runs the hooks of one directory in name order.
func (a *Agent) runHooks(ctx context.Context, c *consistency, dir, stage string) error {
	hooks, err := listHooks(filepath.Join(c.hooksDir, dir))
	if err != nil {
		return &HookError{Stage: stage, Hook: filepath.Join(c.hooksDir, dir), Err: err}
	}
	for _, h := range hooks {
		if err := c.runHook(ctx, h, stage); err != nil {
			return &HookError{Stage: stage, Hook: h, Err: err}
		}
	}
	return nil
}

// waitDelivered waits until the server received the acknowledgement in
// state (or d passes).
func (a *Agent) waitDelivered(ctx context.Context, state string, d time.Duration) bool {
	deadline := a.clk.Now().Add(d)
	for a.clk.Now().Before(deadline) {
		a.mu.Lock()
		sent := a.shutdownSent == state
		a.mu.Unlock()
		if sent {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond): // wallclock: how often to look again, not a bound
		}
	}
	return false
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// errNoPowerOff is returned for VMs whose guest ignores the power button.
var errNoPowerOff = errors.New("the guest did not power off")
