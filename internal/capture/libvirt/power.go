package libvirt

import (
	"context"
	"fmt"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
)

// A planned failover stops the domain before its last cycle: PowerOff
// asks the guest to shut down (ACPI) and waits until the domain is shut
// off, then starts it again paused so that its disks can be read by one
// more cycle with nothing writing to them; Destroy ends it afterwards.

// PowerOff shuts the guest down and starts the domain paused. A domain
// that is already paused after such a power-off is left as it is.
func (m *Machine) PowerOff(ctx context.Context, timeout time.Duration) error {
	dom, _, err := m.domain(ctx)
	if err != nil {
		return err
	}
	var persistent int32
	state, err := m.state(ctx, dom)
	if err == nil {
		err = m.c.Do(ctx, func(l *golibvirt.Libvirt) error {
			persistent, err = l.DomainIsPersistent(dom)
			return err
		})
	}
	if err != nil {
		return fmt.Errorf("libvirt: state of domain %s: %w", m.o.Domain, err)
	}
	if state == golibvirt.DomainPaused {
		return nil // started paused by an earlier attempt
	}
	if persistent == 0 {
		return fmt.Errorf("libvirt: domain %s is transient: it would be gone once shut down; define it (virsh define) for a planned failover", m.o.Domain)
	}
	if state != golibvirt.DomainShutoff {
		if err := m.c.Do(ctx, func(l *golibvirt.Libvirt) error { return l.DomainShutdown(dom) }); err != nil {
			return fmt.Errorf("libvirt: shut domain %s down: %w", m.o.Domain, err)
		}
		if err := m.waitState(ctx, dom, golibvirt.DomainShutoff, timeout); err != nil {
			return err
		}
	}
	err = m.c.Do(ctx, func(l *golibvirt.Libvirt) error {
		_, err := l.DomainCreateWithFlags(dom, uint32(golibvirt.DomainStartPaused))
		return err
	})
	if err != nil {
		return fmt.Errorf("libvirt: start domain %s paused to read its disks: %w", m.o.Domain, err)
	}
	return nil
}

// Destroy ends the (paused) domain; its definition stays.
func (m *Machine) Destroy(ctx context.Context) error {
	dom, _, err := m.domain(ctx)
	if err != nil {
		return err
	}
	state, err := m.state(ctx, dom)
	if err != nil || state == golibvirt.DomainShutoff {
		return err
	}
	if err := m.c.Do(ctx, func(l *golibvirt.Libvirt) error { return l.DomainDestroy(dom) }); err != nil {
		return fmt.Errorf("libvirt: destroy domain %s: %w", m.o.Domain, err)
	}
	return nil
}

func (m *Machine) state(ctx context.Context, dom golibvirt.Domain) (golibvirt.DomainState, error) {
	var st int32
	err := m.c.Do(ctx, func(l *golibvirt.Libvirt) error {
		var err error
		st, _, err = l.DomainGetState(dom, 0)
		return err
	})
	return golibvirt.DomainState(st), err
}

// waitState polls the domain's state until it is want, or timeout.
func (m *Machine) waitState(ctx context.Context, dom golibvirt.Domain, want golibvirt.DomainState, timeout time.Duration) error {
	deadline := time.NewTimer(timeout) // wallclock: a bound on libvirt and the guest, which work in real time
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond) // wallclock: how often libvirt is asked again
	defer tick.Stop()
	for {
		st, err := m.state(ctx, dom)
		if err != nil {
			return fmt.Errorf("libvirt: state of domain %s: %w", m.o.Domain, err)
		}
		if st == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("libvirt: the guest of domain %s did not power off within %s (state %d): does it handle the ACPI power button (acpid, systemd-logind)? it still runs", m.o.Domain, timeout, st)
		case <-tick.C:
		}
	}
}
