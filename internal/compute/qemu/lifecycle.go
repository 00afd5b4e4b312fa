package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// Stop powers the VM off: ACPI power button (system_powerdown), then
// waiting for QEMU to exit until ctx's deadline (or StopTimeout when ctx
// has none); with force, or after that, QMP quit and, if QEMU still
// runs, SIGKILL. A stopped VM is left as it is; an absent one is
// compute.ErrNotFound.
func (p *Provider) Stop(ctx context.Context, name, dir string, force bool) error {
	unlock, err := hostvm.LockDir(ctx, dir, lockFile)
	if err != nil {
		return fmt.Errorf("stop VM %s: %w", name, err)
	}
	defer unlock()
	inst, _, err := p.inspect(ctx, name, dir)
	if err != nil {
		return fmt.Errorf("stop VM %s: %w", name, err)
	}
	switch inst.State {
	case compute.StateAbsent:
		os.Remove(filepath.Join(dir, lockFile)) // made by this call's lock
		return fmt.Errorf("stop VM %s: %w", name, compute.ErrNotFound)
	case compute.StateStopped:
		return nil
	}
	if !force {
		if err := p.powerdown(ctx, inst); err == nil {
			p.log.Info("VM shut down", "vm", name)
			return cleanStopped(dir)
		} else {
			p.log.Warn("VM did not shut down; killing it", "vm", name, "err", err)
		}
	}
	if err := kill(inst); err != nil {
		return fmt.Errorf("stop VM %s: %w", name, err)
	}
	p.log.Info("VM killed", "vm", name, "pid", inst.PID)
	return cleanStopped(dir)
}

// powerdown presses the ACPI power button and waits for QEMU to exit.
func (p *Provider) powerdown(ctx context.Context, inst compute.Instance) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.o.StopTimeout)
		defer cancel()
	}
	if err := qmpDo(ctx, inst.QMP, func(c *qmp.Conn) error {
		return c.Execute(ctx, "system_powerdown", nil, nil)
	}); err != nil {
		return err
	}
	return hostvm.WaitGone(ctx, inst.PID)
}

// kill ends QEMU: QMP quit (QEMU flushes its images), and SIGKILL if it
// has not exited within 10 s or QMP does not answer.
func kill(inst compute.Instance) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := qmpDo(ctx, inst.QMP, func(c *qmp.Conn) error {
		return c.Execute(ctx, "quit", nil, nil)
	})
	if err == nil || errors.Is(err, qmp.ErrClosed) {
		if hostvm.WaitGone(ctx, inst.PID) == nil {
			return nil
		}
	}
	return hostvm.Kill(inst.PID)
}

// cleanStopped removes the pidfile and sockets a QEMU that did not
// exit cleanly leaves behind.
func cleanStopped(dir string) error {
	for _, f := range []string{pidFile, qmpSocket, qgaSocket} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// qmpDo runs fn on a new QMP connection, closed afterwards. QEMU serves
// one QMP client at a time, so no call keeps a connection open.
func qmpDo(ctx context.Context, sock string, fn func(*qmp.Conn) error) error {
	c, err := qmp.Dial(ctx, sock)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

// Remove kills the VM if it runs and deletes its overlays, seed, console
// log, sockets, state and tap devices. A VM that does not exist (or a
// directory that does not) is not an error.
func (p *Provider) Remove(ctx context.Context, name, dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		// The directory is gone (deleted by hand): a QEMU started from
		// it may still run.
		if err := killOrphans(name, dir); err != nil {
			return fmt.Errorf("remove VM %s: %w", name, err)
		}
		return removeTaps(ctx, name, nil)
	}
	unlock, err := hostvm.LockDir(ctx, dir, lockFile)
	if err != nil {
		return fmt.Errorf("remove VM %s: %w", name, err)
	}
	defer unlock()
	st, err := readState(dir)
	if err != nil {
		p.log.Warn("removing a VM whose state file is damaged", "vm", name, "err", err)
		st = nil
	}
	if st != nil && st.Spec.Name != name {
		return fmt.Errorf("remove VM %s: directory %s holds VM %q", name, dir, st.Spec.Name)
	}
	if pid := readPID(dir); ours(pid, name) {
		if err := kill(compute.Instance{PID: pid, QMP: filepath.Join(dir, qmpSocket)}); err != nil {
			return fmt.Errorf("remove VM %s: %w", name, err)
		}
	}
	if err := killOrphans(name, dir); err != nil { // its pidfile was lost
		return fmt.Errorf("remove VM %s: %w", name, err)
	}
	var taps []string
	disks := 0
	if st != nil {
		taps, disks = st.Taps, len(st.Spec.Disks)
	}
	if err := removeTaps(ctx, name, taps); err != nil {
		return fmt.Errorf("remove VM %s: tap devices: %w", name, err)
	}
	if err := removeFiles(dir, disks); err != nil {
		return fmt.Errorf("remove VM %s: %w", name, err)
	}
	if err := os.Remove(filepath.Join(dir, lockFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove VM %s: %w", name, err)
	}
	p.log.Info("VM removed", "vm", name)
	return nil
}

// killOrphans kills every QEMU of the VM started in dir that its pidfile
// does not name (a pidfile or directory deleted by hand): processes whose
// command line has -name guest=NAME,... and -pidfile DIR/qemu.pid.
func killOrphans(name, dir string) error {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	pidPath := filepath.Join(dir, pidFile)
	var errs []error
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !ours(pid, name) || !slices.Contains(hostvm.Cmdline(pid), pidPath) {
			continue
		}
		errs = append(errs, hostvm.Kill(pid))
	}
	return errors.Join(errs...)
}
