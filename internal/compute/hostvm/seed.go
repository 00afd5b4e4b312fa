package hostvm

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
)

// Tools that build the seed disk.
var (
	MkfsVfat = Tool{"mkfs.vfat", "dosfstools"}
	Mcopy    = Tool{"mcopy", "mtools"}
)

// SeedLabel is the seed disk's volume label (cloud-init's NoCloud
// datasource looks for cidata or CIDATA).
const SeedLabel = "CIDATA"

// SeedFiles returns the NoCloud files for a VM: meta-data (instance-id,
// local-hostname), user-data (g.UserData or "#cloud-config") and, when
// g gives an address, a version 2 network-config that matches the first
// NIC by its MAC (a static address, default route and name servers);
// without an address the first NIC uses DHCP.
func SeedFiles(name string, g *compute.GuestConfig, firstMAC string) (map[string][]byte, error) {
	host := g.Hostname
	if host == "" {
		host = name
	}
	files := map[string][]byte{
		"meta-data": fmt.Appendf(nil, "instance-id: %s\nlocal-hostname: %s\n", name, host),
		"user-data": []byte("#cloud-config\n"),
	}
	if g.UserData != "" {
		files["user-data"] = []byte(g.UserData)
	}
	if firstMAC == "" {
		return files, nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "version: 2\nethernets:\n  nic0:\n    match:\n      macaddress: %q\n", strings.ToLower(firstMAC))
	if g.Address == "" {
		b.WriteString("    dhcp4: true\n")
		files["network-config"] = []byte(b.String())
		return files, nil
	}
	pfx, err := netip.ParsePrefix(g.Address)
	if err != nil || !pfx.Addr().Is4() {
		return nil, fmt.Errorf("guest address %q: want an IPv4 address with prefix length, like 10.0.0.5/24", g.Address)
	}
	fmt.Fprintf(&b, "    addresses:\n      - %s\n", pfx)
	if g.Gateway != "" {
		gw, err := netip.ParseAddr(g.Gateway)
		if err != nil {
			return nil, fmt.Errorf("guest gateway %q: %w", g.Gateway, err)
		}
		fmt.Fprintf(&b, "    routes:\n      - to: default\n        via: %s\n", gw)
	}
	if len(g.DNS) > 0 {
		var dns []string
		for _, d := range g.DNS {
			a, err := netip.ParseAddr(d)
			if err != nil {
				return nil, fmt.Errorf("guest DNS server %q: %w", d, err)
			}
			dns = append(dns, a.String())
		}
		fmt.Fprintf(&b, "    nameservers:\n      addresses: [%s]\n", strings.Join(dns, ", "))
	}
	files["network-config"] = []byte(b.String())
	return files, nil
}

// BuildSeed writes a 1 MiB vfat image labelled CIDATA holding files at
// path (mkfs.vfat -C, then mcopy: no mount, no root). A partial image is
// removed on failure.
func BuildSeed(ctx context.Context, path string, files map[string][]byte) (err error) {
	mkfs, err := MkfsVfat.Look()
	if err != nil {
		return fmt.Errorf("seed disk: %w", err)
	}
	mcopy, err := Mcopy.Look()
	if err != nil {
		return fmt.Errorf("seed disk: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".seed-")
	if err != nil {
		return fmt.Errorf("seed disk: %w", NoSpace(err))
	}
	defer os.RemoveAll(tmp)
	defer func() {
		if err != nil {
			os.Remove(path)
		}
	}()
	if out, err := exec.CommandContext(ctx, mkfs, "-C", "-n", SeedLabel, path, "1024").CombinedOutput(); err != nil {
		return wrapTool("seed disk: mkfs.vfat", err, out)
	}
	for name, data := range files {
		src := filepath.Join(tmp, name)
		if err := os.WriteFile(src, data, 0o644); err != nil {
			return fmt.Errorf("seed disk: %w", NoSpace(err))
		}
		cmd := exec.CommandContext(ctx, mcopy, "-o", "-i", path, src, "::"+name)
		cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			return wrapTool("seed disk: mcopy "+name, err, out)
		}
	}
	return nil
}
