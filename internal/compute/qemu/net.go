package qemu

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
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

// checkForward refuses guest ports out of range and duplicates.
func checkForward(ports []int) error {
	seen := map[int]bool{}
	for _, p := range ports {
		if p < 1 || p > 65535 {
			return fmt.Errorf("forward: guest TCP port %d is out of range (1-65535)", p)
		}
		if seen[p] {
			return fmt.Errorf("forward: guest TCP port %d is listed twice", p)
		}
		seen[p] = true
	}
	return nil
}

// userNIC is the index of the first NIC on QEMU user networking, which
// carries the forwards, or -1.
func userNIC(s compute.Spec) int {
	for i, n := range s.NICs {
		if n.Network.Kind == compute.NetUser {
			return i
		}
	}
	return -1
}

// pickForwards chooses a free loopback port of the host for each guest
// port the spec forwards (none without a user NIC). A port recorded in
// old is kept if it is still free (a stopped VM started again); else a
// new one is taken (the kernel's choice for 127.0.0.1:0). All are held
// open until every one is chosen, so no two are the same; QEMU binds
// them moments later.
func pickForwards(s compute.Spec, old map[int]int) (map[int]int, error) {
	if len(s.Forward) == 0 || userNIC(s) < 0 {
		return nil, nil
	}
	out := map[int]int{}
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for _, gp := range s.Forward {
		var l net.Listener
		var err error
		if hp, ok := old[gp]; ok {
			l, err = net.Listen("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(hp)))
		}
		if l == nil {
			l, err = net.Listen("tcp4", "127.0.0.1:0")
		}
		if err != nil {
			return nil, fmt.Errorf("forward guest TCP port %d: find a free port on 127.0.0.1: %w", gp, err)
		}
		held = append(held, l)
		out[gp] = l.Addr().(*net.TCPAddr).Port
	}
	return out, nil
}

// hostfwds is the netdev options that forward each host port (on
// 127.0.0.1 only) to its guest port, in guest port order.
func hostfwds(fwd map[int]int) string {
	var b strings.Builder
	for _, gp := range slices.Sorted(maps.Keys(fwd)) {
		fmt.Fprintf(&b, ",hostfwd=tcp:127.0.0.1:%d-:%d", fwd[gp], gp)
	}
	return b.String()
}

// forwardAddrs is Instance.Forwards of recorded forwards.
func forwardAddrs(fwd map[int]int) map[int]string {
	if len(fwd) == 0 {
		return nil
	}
	out := make(map[int]string, len(fwd))
	for gp, hp := range fwd {
		out[gp] = net.JoinHostPort("127.0.0.1", strconv.Itoa(hp))
	}
	return out
}
