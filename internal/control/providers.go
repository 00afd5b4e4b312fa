package control

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	execprov "github.com/lifeboat-dr/lifeboat/internal/compute/exec"
	"github.com/lifeboat-dr/lifeboat/internal/compute/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
)

// buildProvider makes the compute provider the site configuration names.
// It checks the configuration, not the host: a missing QEMU is an error
// of the job that starts a VM (and leaves nothing behind).
func buildProvider(site orchestrate.Site, log *slog.Logger) (compute.Provider, error) {
	switch site.Provider {
	case "qemu":
		return qemu.New(qemu.Options{Accel: site.Accel, Logger: log})
	case "exec":
		return execprov.New(execprov.Options{Script: site.Exec, Logger: log})
	case "libvirt":
		return nil, fmt.Errorf("the libvirt compute provider is not part of this build of lifeboat yet: use \"provider\": \"qemu\" or \"exec\"")
	}
	return nil, fmt.Errorf("unknown compute provider %q: use qemu, libvirt or exec", site.Provider)
}

// unavailableProvider stands in for a provider that cannot be built: it
// starts nothing, and has nothing to inspect, stop or remove.
type unavailableProvider struct {
	kind string
	err  error
}

func (p unavailableProvider) Name() string { return p.kind }

func (p unavailableProvider) Start(context.Context, compute.Spec) (compute.Instance, error) {
	return compute.Instance{}, p.err
}

func (p unavailableProvider) Inspect(_ context.Context, name, _ string) (compute.Instance, error) {
	return compute.Instance{Name: name, State: compute.StateAbsent}, nil
}

func (p unavailableProvider) Stop(context.Context, string, string, bool) error { return nil }

func (p unavailableProvider) Remove(context.Context, string, string) error { return nil }

func (p unavailableProvider) Hydrate(context.Context, string, string, func(compute.Progress)) error {
	return p.err
}
