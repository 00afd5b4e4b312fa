package libvirt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
)

// domain returns the named domain's live XML (nil when libvirt has no
// such domain) and whether it runs.
func (p *Provider) domain(ctx context.Context, name string) (*liveDomain, bool, error) {
	var desc string
	var active int32
	err := p.c.Do(ctx, func(l *golibvirt.Libvirt) error {
		dom, err := l.DomainLookupByName(name)
		if err != nil {
			return err
		}
		if active, err = l.DomainIsActive(dom); err != nil {
			return err
		}
		desc, err = l.DomainGetXMLDesc(dom, 0)
		return err
	})
	if noDomain(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("look up libvirt domain %s: %w", name, err)
	}
	var ld liveDomain
	if err := xml.Unmarshal([]byte(desc), &ld); err != nil {
		return nil, false, fmt.Errorf("libvirt domain %s: unreadable XML: %w", name, err)
	}
	return &ld, active == 1, nil
}

// pid returns the domain's QEMU PID from libvirt's pidfile, if it is a
// live QEMU of that VM.
func (p *Provider) pid(name string) int {
	b, err := os.ReadFile(filepath.Join(p.o.RunDir, name+".pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if !hostvm.Alive(pid) {
		return 0
	}
	args := hostvm.Cmdline(pid)
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-name" && strings.HasPrefix(args[i+1], "guest="+name+",") {
			return pid
		}
	}
	return 0
}

// Stop shuts the domain down with the ACPI power button and waits until
// ctx's deadline (StopTimeout without one); with force, or after that,
// it destroys the domain. A stopped VM is left as it is; an absent one
// is compute.ErrNotFound.
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
		hostvm.RemoveNames(dir, lockFile)
		return fmt.Errorf("stop VM %s: %w", name, compute.ErrNotFound)
	case compute.StateStopped:
		return nil
	}
	if !force {
		if err := p.shutdown(ctx, name); err == nil {
			p.log.Info("VM shut down", "vm", name)
			return nil
		} else {
			p.log.Warn("VM did not shut down; destroying it", "vm", name, "err", err)
		}
	}
	if err := p.destroy(name); err != nil {
		return fmt.Errorf("stop VM %s: %w", name, err)
	}
	p.log.Info("VM destroyed", "vm", name)
	return nil
}

// shutdown presses the power button and waits for the domain to go.
func (p *Provider) shutdown(ctx context.Context, name string) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.o.StopTimeout)
		defer cancel()
	}
	err := p.c.Do(ctx, func(l *golibvirt.Libvirt) error {
		dom, err := l.DomainLookupByName(name)
		if err != nil {
			return err
		}
		return l.DomainShutdownFlags(dom, golibvirt.DomainShutdownAcpiPowerBtn)
	})
	if err != nil {
		return err
	}
	for {
		_, active, err := p.domain(ctx, name)
		if err != nil {
			return err
		}
		if !active {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond): // wallclock: how often libvirt is asked again; the bound is ctx's
		}
	}
}

// destroy kills the domain's QEMU and undefines the name if someone
// defined it persistently. No such domain is not an error.
func (p *Provider) destroy(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := p.c.Do(ctx, func(l *golibvirt.Libvirt) error {
		dom, err := l.DomainLookupByName(name)
		if err != nil {
			return err
		}
		if active, _ := l.DomainIsActive(dom); active == 1 {
			if err := l.DomainDestroyFlags(dom, 0); err != nil {
				return err
			}
		}
		if persistent, _ := l.DomainIsPersistent(dom); persistent == 1 {
			return l.DomainUndefineFlags(dom, golibvirt.DomainUndefineManagedSave|golibvirt.DomainUndefineNvram)
		}
		return nil
	})
	if err != nil && !noDomain(err) {
		return fmt.Errorf("destroy libvirt domain %s: %w", name, err)
	}
	return nil
}

// Remove destroys the domain (undefining a persistent one) and deletes
// the overlays, seed, console log and state. Nothing to remove is not an
// error.
func (p *Provider) Remove(ctx context.Context, name, dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		// The directory is gone (deleted by hand): its domain may run.
		live, _, err := p.domain(ctx, name)
		if err == nil && live != nil && live.Metadata.VM.Dir == dir {
			err = p.destroy(name)
		}
		if err != nil {
			return fmt.Errorf("remove VM %s: %w", name, err)
		}
		return nil
	}
	unlock, err := hostvm.LockDir(ctx, dir, lockFile)
	if err != nil {
		return fmt.Errorf("remove VM %s: %w", name, err)
	}
	defer unlock()
	st, err := readState(dir)
	if err != nil {
		p.log.Warn("removing a VM whose state file is damaged", "vm", name, "err", err)
	}
	if st != nil && st.Spec.Name != name {
		return fmt.Errorf("remove VM %s: directory %s holds VM %q", name, dir, st.Spec.Name)
	}
	live, _, err := p.domain(ctx, name)
	if err != nil {
		return fmt.Errorf("remove VM %s: %w", name, err)
	}
	if live != nil {
		if live.Metadata.VM.Dir != dir {
			return fmt.Errorf("remove VM %s: libvirt domain %s belongs to directory %q, not %s: left alone", name, name, live.Metadata.VM.Dir, dir)
		}
		if err := p.destroy(name); err != nil {
			return fmt.Errorf("remove VM %s: %w", name, err)
		}
	}
	disks := 0
	if st != nil {
		disks = len(st.Spec.Disks)
	}
	if err := removeFiles(dir, disks); err != nil {
		return fmt.Errorf("remove VM %s: %w", name, err)
	}
	if err := hostvm.RemoveNames(dir, lockFile); err != nil {
		return fmt.Errorf("remove VM %s: %w", name, err)
	}
	p.log.Info("VM removed", "vm", name)
	return nil
}

// removeFiles deletes what the provider makes in dir.
func removeFiles(dir string, disks int) error {
	names := []string{stateFile, stateFile + ".tmp", consoleFile, seedFile, qgaSocket}
	for i := range max(disks, 1) {
		names = append(names, overlayFile(i))
	}
	if more, err := filepath.Glob(filepath.Join(dir, "disk[0-9]*.qcow2")); err == nil {
		for _, m := range more {
			names = append(names, filepath.Base(m))
		}
	}
	if more, err := filepath.Glob(filepath.Join(dir, ".seed-*")); err == nil {
		for _, m := range more {
			os.RemoveAll(m)
		}
	}
	names = append(names, filepath.Join(monitorDir, "qmp.sock"), monitorDir)
	return hostvm.RemoveNames(dir, names...)
}
