package orchestrate

import (
	"fmt"
	"log/slog"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/exec"
	"github.com/lifeboat-dr/lifeboat/internal/compute/libvirt"
	"github.com/lifeboat-dr/lifeboat/internal/compute/qemu"
)

// NewProvider builds the compute provider the site names (default qemu).
// It checks the configuration, not the host: a missing QEMU is an error
// of the job that starts a VM (which then leaves nothing behind).
func NewProvider(site Site, log *slog.Logger) (compute.Provider, error) {
	switch site.Provider {
	case "", "qemu":
		return qemu.New(qemu.Options{Accel: site.Accel, Logger: log})
	case "libvirt":
		sock := site.Libvirt
		if sock == "default" {
			sock = ""
		}
		return libvirt.New(libvirt.Options{Socket: sock, Accel: site.Accel, Logger: log})
	case "exec":
		return exec.New(exec.Options{Script: site.Exec, Logger: log})
	}
	return nil, fmt.Errorf("unknown compute provider %q: use qemu, libvirt or exec", site.Provider)
}
