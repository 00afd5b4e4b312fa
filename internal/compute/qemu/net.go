package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
)

var ipTool = hostvm.Tool{Name: "ip", Package: "iproute2"}

// makeTaps creates, for every bridge NIC, its tap device attached to the
// bridge and up. A tap of that name left by a killed run is replaced.
// It returns the taps made, also when it fails part-way (the caller
// removes them).
func makeTaps(ctx context.Context, s compute.Spec) ([]string, error) {
	var made []string
	for i, n := range s.NICs {
		if n.Network.Kind != compute.NetBridge {
			continue
		}
		if n.Network.Name == "" {
			return made, fmt.Errorf("NIC %d: a bridge network needs the bridge's name", i)
		}
		if _, err := os.Stat(filepath.Join("/sys/class/net", n.Network.Name, "bridge")); err != nil {
			return made, fmt.Errorf("NIC %d: bridge %q does not exist (create it: `ip link add %s type bridge; ip link set %s up`)", i, n.Network.Name, n.Network.Name, n.Network.Name)
		}
		ip, err := ipTool.Look()
		if err != nil {
			return made, err
		}
		tap := hostvm.TapName(s.Name, i)
		if linkExists(tap) {
			if err := ipRun(ctx, ip, "link", "del", tap); err != nil {
				return made, err
			}
		}
		if err := ipRun(ctx, ip, "tuntap", "add", "dev", tap, "mode", "tap"); err != nil {
			return made, fmt.Errorf("NIC %d: create tap device %s (needs CAP_NET_ADMIN): %w", i, tap, err)
		}
		made = append(made, tap)
		if err := ipRun(ctx, ip, "link", "set", tap, "master", n.Network.Name, "up"); err != nil {
			return made, fmt.Errorf("NIC %d: attach %s to bridge %s: %w", i, tap, n.Network.Name, err)
		}
	}
	return made, nil
}

// removeTaps deletes the VM's tap devices: those recorded, and any
// device named with the VM's tap prefix (a state file lost before the
// taps were recorded).
func removeTaps(ctx context.Context, name string, recorded []string) error {
	prefix := strings.TrimSuffix(hostvm.TapName(name, 0), "0")
	taps := map[string]bool{}
	for _, t := range recorded {
		taps[t] = true
	}
	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			if strings.HasPrefix(i.Name, prefix) {
				taps[i.Name] = true
			}
		}
	}
	if len(taps) == 0 {
		return nil
	}
	ip, err := ipTool.Look()
	if err != nil {
		return err
	}
	var errs []error
	for t := range taps {
		if !linkExists(t) {
			continue
		}
		if err := ipRun(ctx, ip, "link", "del", t); err != nil && linkExists(t) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func linkExists(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name))
	return err == nil
}

func ipRun(ctx context.Context, ip string, args ...string) error {
	out, err := exec.CommandContext(ctx, ip, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
