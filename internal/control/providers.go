package control

import (
	"context"
	"log/slog"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
)

// buildProvider makes the compute provider the site configuration names
// (orchestrate.NewProvider: qemu, libvirt or exec). It checks the
// configuration, not the host: a missing QEMU is an error of the job that
// starts a VM (and leaves nothing behind).
func buildProvider(site orchestrate.Site, log *slog.Logger) (compute.Provider, error) {
	return orchestrate.NewProvider(site, log)
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
