package agent

import (
	"context"
	"fmt"
	"time"

	lvdriver "github.com/lifeboat-dr/lifeboat/internal/capture/libvirt"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// Powering a VM off for a planned failover's final point, through its
// hypervisor (shutdown.go).

// qmpStatusPoll is how often query-status is asked while the guest powers off.
const qmpStatusPoll = 200 * time.Millisecond

// qmpPowerOff powers the guest of the QEMU process at sock off and leaves
// QEMU paused in its "shutdown" state, so that its disks can still be
// read: `set-action shutdown=pause`, then `system_powerdown` (the ACPI
// power button), then query-status until it says shutdown. The returned
// end quits QEMU. If the guest does not power off in time, the shutdown
// action is set back to poweroff and the VM keeps running.
func qmpPowerOff(ctx context.Context, clk clock.Clock, sock string, timeout time.Duration) (func(context.Context) error, error) {
	c, err := qmp.Dial(ctx, sock)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	end := func(ctx context.Context) error {
		c, err := qmp.Dial(ctx, sock)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Execute(ctx, "quit", nil, nil); err != nil {
			return fmt.Errorf("qmp quit: %w", err)
		}
		return nil
	}
	st, err := qmpStatus(ctx, c)
	if err != nil {
		return nil, err
	}
	if st == "shutdown" {
		return end, nil // powered off by an earlier attempt
	}
	if err := c.Execute(ctx, "set-action", map[string]string{"shutdown": "pause"}, nil); err != nil {
		return nil, fmt.Errorf("qmp set-action shutdown=pause (QEMU 6.0 or newer): %w", err)
	}
	if err := c.Execute(ctx, "system_powerdown", nil, nil); err != nil {
		return nil, fmt.Errorf("qmp system_powerdown: %w", err)
	}
	deadline := clk.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(qmpStatusPoll) // wallclock: how often QEMU is asked again, not a bound
	defer tick.Stop()
	for {
		if st, err = qmpStatus(ctx, c); err != nil {
			return nil, err
		}
		if st == "shutdown" {
			return end, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-deadline.C():
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			_ = c.Execute(rctx, "set-action", map[string]string{"shutdown": "poweroff"}, nil)
			cancel()
			return nil, fmt.Errorf("%w within %s after the ACPI power button (status %q): does it handle it (acpid, systemd-logind)? it still runs", errNoPowerOff, timeout, st)
		case <-tick.C:
		}
	}
}

func qmpStatus(ctx context.Context, c *qmp.Conn) (string, error) {
	var st struct {
		Running bool   `json:"running"`
		Status  string `json:"status"`
	}
	if err := c.Execute(ctx, "query-status", nil, &st); err != nil {
		return "", fmt.Errorf("qmp query-status: %w", err)
	}
	return st.Status, nil
}

// libvirtPowerOff shuts a libvirt domain down and starts it paused; end
// destroys it.
func libvirtPowerOff(ctx context.Context, o lvdriver.Options, timeout time.Duration) (func(context.Context) error, error) {
	m, err := lvdriver.Open(ctx, o)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	if err := m.PowerOff(ctx, timeout); err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		m, err := lvdriver.Open(ctx, o)
		if err != nil {
			return err
		}
		defer m.Close()
		return m.Destroy(ctx)
	}, nil
}
