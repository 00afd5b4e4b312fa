package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/sampleguest"
)

// demoGuest says whether the demo's sample disk can be a machine that
// boots by itself (and then boots in a VM at the end of the demo), and
// with what: a kernel found without the network, its initramfs.
type demoGuest struct {
	kernel sampleguest.Kernel
	initrd string             // built into the work directory
	lacks  []sampleguest.Lack // programs, files, root
	// noKernel says why there is no usable kernel ("" when there is).
	noKernel string
}

func (g *demoGuest) ok() bool { return len(g.lacks) == 0 && g.noKernel == "" }

// demoFindGuest checks what a bootable sample machine needs: QEMU, the
// bootloader's tools and files, root (extlinux installs through a loop
// device), a static busybox and a kernel: the guest kernel cache's or
// the host's, never downloaded unless fetch (--fetch-kernel) asks for it.
// When all is there it builds the initramfs into dir.
func (a *app) demoFindGuest(ctx context.Context, dir string, fetch bool) (demoGuest, error) {
	var g demoGuest
	g.lacks = append(sampleguest.CheckQEMU(), sampleguest.CheckDisk(sampleguest.FirmwareBIOS)...)
	cache := sampleguest.CacheDir()
	var err error
	if fetch {
		a.say("== Fetching the guest kernel into %s (apt-get download of Debian's linux-image-amd64; once)", cache)
		if g.kernel, err = sampleguest.FetchKernel(ctx, cache); err != nil {
			return g, fmt.Errorf("--fetch-kernel: %w", err)
		}
	} else if g.kernel, err = sampleguest.FindKernel(cache); err != nil {
		g.noKernel = strings.TrimPrefix(err.Error(), sampleguest.ErrNoKernel.Error()+": ")
		return g, nil
	}
	g.lacks = append(g.lacks, sampleguest.CheckInitrd(g.kernel.ModulesDir)...)
	if !g.ok() {
		return g, nil
	}
	g.initrd = filepath.Join(dir, "initrd.img")
	err = sampleguest.BuildInitrd(ctx, g.initrd, g.kernel.ModulesDir, sampleguest.InitOptions{Boot: true, Idle: true})
	if err != nil {
		// A host kernel may lack a module the guest loads: no kernel then.
		g.noKernel = fmt.Sprintf("the kernel %s (%s) cannot make the sample machine's initramfs: %v", g.kernel.Version, g.kernel.Vmlinuz, err)
	}
	return g, nil
}

// why lists what is missing, for a sentence.
func (g *demoGuest) why() string {
	var s []string
	for _, l := range g.lacks {
		s = append(s, l.What)
	}
	if g.noKernel != "" {
		s = append(s, "a guest kernel ("+g.noKernel+")")
	}
	return strings.Join(s, ", ")
}

// command is the one shell command that gets what is missing and runs
// the demo again with it: apt-get install the packages, then the demo
// with --fetch-kernel when there is no kernel, as root when needed.
func (g *demoGuest) command() string {
	sudo := ""
	if os.Geteuid() != 0 {
		sudo = "sudo "
	}
	var parts []string
	if c := sampleguest.InstallCommand(g.lacks); c != "" {
		parts = append(parts, sudo+c)
	}
	demo := sudo + demoSelf() + " demo"
	if g.noKernel != "" {
		demo += " --fetch-kernel"
	}
	return strings.Join(append(parts, demo), " && ")
}

// demoSelf is how the user ran this program: `go run ./cmd/lifeboat`
// runs a binary from Go's build cache.
func demoSelf() string {
	exe, _ := os.Executable()
	if strings.Contains(exe, "/go-build") {
		return "go run ./cmd/lifeboat"
	}
	if strings.Contains(os.Args[0], "/") {
		return os.Args[0]
	}
	return "lifeboat"
}

// demoBootDisk makes img a disk of size bytes that boots by itself and
// holds the files of tree: /manifest names them all with their SHA-256
// (what the guest's init checks at boot), partition 1 is the ext4 file
// system, extlinux, the kernel and the initramfs make it boot. It
// returns the number of files the manifest names.
func demoBootDisk(ctx context.Context, g demoGuest, tree, img string, size int64) (int, error) {
	m, err := sampleguest.TreeManifest(tree, 1)
	if err != nil {
		return 0, err
	}
	if err := os.WriteFile(filepath.Join(tree, "manifest"), m.Format(), 0o644); err != nil {
		return 0, fmt.Errorf("write the sample's manifest: %w", err)
	}
	err = sampleguest.BuildDisk(ctx, img, sampleguest.DiskOptions{Firmware: sampleguest.FirmwareBIOS, Size: size,
		Tree: tree, Kernel: g.kernel.Vmlinuz, Initrd: g.initrd})
	if err != nil {
		return 0, fmt.Errorf("make the sample disk bootable: %w", err)
	}
	return len(m.Files), nil
}

// demoFS is what e2fsprogs open for the file system of a demo disk:
// partition 1 of a bootable disk (e2fsprogs' ?offset= option), else the
// whole image.
func demoFS(img string, bootable bool) string {
	if bootable {
		return fmt.Sprintf("%s?offset=%d", img, sampleguest.RootOffset)
	}
	return img
}
