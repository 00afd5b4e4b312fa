// Package hostvm holds what the providers that run QEMU on this host
// (qemu, libvirt) share: choosing the accelerator, turning a point's NBD
// URI into QEMU block options, making qcow2 overlays backed by it,
// deterministic tap names and MACs, the per-VM directory lock, and
// errors that name the package to install or the space to free.
package hostvm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Accelerators.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// Probe says where to look; tests point it at fake files.
type Probe struct {
	KVMDevice string // default /dev/kvm
	CPUInfo   string // default /proc/cpuinfo
}

// KVMUsable reports whether KVM can run stock guests: /dev/kvm opens for
// reading and writing AND the CPU flags in /proc/cpuinfo have vmx or svm.
// A /dev/kvm without those flags is a paravirtual KVM (nested on a
// hypervisor that hides virtualisation extensions) that stock guest
// kernels crash on. The reason says which check decided.
func (p Probe) KVMUsable() (bool, string) {
	dev, info := p.KVMDevice, p.CPUInfo
	if dev == "" {
		dev = "/dev/kvm"
	}
	if info == "" {
		info = "/proc/cpuinfo"
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Sprintf("%s does not open (%v)", dev, err)
	}
	f.Close()
	c, err := os.Open(info)
	if err != nil {
		return false, fmt.Sprintf("%s opens but %s cannot be read (%v)", dev, info, err)
	}
	defer c.Close()
	if cpuHasVirt(c) {
		return true, fmt.Sprintf("%s opens and the CPU has vmx/svm", dev)
	}
	return false, fmt.Sprintf("%s opens but the CPU flags in %s have neither vmx nor svm (a paravirtual KVM that stock guests crash on)", dev, info)
}

// cpuHasVirt reports whether the first "flags" line of cpuinfo has vmx or svm.
func cpuHasVirt(r io.Reader) bool {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "flags" {
			continue
		}
		for _, f := range strings.Fields(v) {
			if f == "vmx" || f == "svm" {
				return true
			}
		}
		return false
	}
	return false
}

// ChooseAccel turns the configured mode (auto, kvm, tcg; "" is auto)
// into the accelerator to use and why. kvm is honoured when /dev/kvm
// opens, even without vmx/svm in cpuinfo (the operator knows better);
// auto takes kvm only when KVMUsable.
func (p Probe) ChooseAccel(mode string) (accel, reason string, err error) {
	ok, why := p.KVMUsable()
	switch mode {
	case "", AccelAuto:
		if ok {
			return AccelKVM, why, nil
		}
		return AccelTCG, why, nil
	case AccelTCG:
		return AccelTCG, "accel tcg configured", nil
	case AccelKVM:
		dev := p.KVMDevice
		if dev == "" {
			dev = "/dev/kvm"
		}
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return "", "", fmt.Errorf("accel kvm is configured but %s does not open: %w (use accel auto or tcg)", dev, err)
		}
		f.Close()
		return AccelKVM, "accel kvm configured (" + why + ")", nil
	}
	return "", "", fmt.Errorf("accel %q: want auto, kvm or tcg", mode)
}

// ErrNoSpace marks a failure because a directory is full.
var ErrNoSpace = errors.New("no space left in the VM directory")
