package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
)

// Defaults for a spec that leaves them out.
const (
	defaultMemoryMiB = 512
	defaultMachine   = "q35"
)

// machineType returns the -machine type for the spec: its own when this
// QEMU knows it, else the same family's newest (a point from a newer
// QEMU names a version this one lacks), else an error.
func machineType(ctx context.Context, qemuBin, want string) (string, error) {
	if want == "" {
		return defaultMachine, nil
	}
	out, err := exec.CommandContext(ctx, qemuBin, "-machine", "help").Output()
	if err != nil {
		return "", fmt.Errorf("%s -machine help: %w", qemuBin, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == want {
			return want, nil
		}
	}
	switch {
	case strings.Contains(want, "q35"):
		return "q35", nil
	case strings.Contains(want, "i440fx") || want == "pc" || strings.HasPrefix(want, "pc-"):
		return "pc", nil
	}
	return "", fmt.Errorf("machine type %q is unknown to %s (see `%s -machine help`)", want, qemuBin, qemuBin)
}

// optValue escapes a value inside a QEMU option list ("a=b,c=d"): a
// comma is written twice.
func optValue(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// nicModel maps a spec's NIC model to a QEMU device.
func nicModel(m string) (string, error) {
	switch m {
	case "", "virtio", "virtio-net", "virtio-net-pci":
		return "virtio-net-pci", nil
	case "e1000", "e1000e", "rtl8139", "vmxnet3":
		return m, nil
	}
	return "", fmt.Errorf("NIC model %q: want virtio, e1000, e1000e, rtl8139 or vmxnet3", m)
}

// args is QEMU's command line for a VM. QEMU daemonizes (so it outlives
// the caller and its session), writes its PID to qemu.pid, serves QMP on
// qmp.sock and appends the serial console to console.log; the firmware
// writes there too (graphics=off makes SeaBIOS use the serial port).
// Every VM has a virtio-serial controller whose port
// org.qemu.guest_agent.0 is served on qga.sock, for a guest agent.
func (p *Provider) args(st *state, dir, machine string) ([]string, error) {
	s := st.Spec
	cpu := "max"
	if st.Accel == hostvm.AccelKVM {
		cpu = "host"
	}
	vcpus := max(s.VM.VCPUs, 1)
	mem := s.VM.MemoryMiB
	if mem <= 0 {
		mem = defaultMemoryMiB
	}
	a := []string{
		"-name", "guest=" + s.Name + ",debug-threads=on",
		"-machine", machine + ",graphics=off",
		"-accel", st.Accel, "-cpu", cpu,
		"-smp", strconv.Itoa(vcpus), "-m", strconv.FormatInt(mem, 10),
		"-nodefaults", "-no-user-config", "-display", "none",
		"-daemonize", "-pidfile", filepath.Join(dir, pidFile),
		"-qmp", "unix:" + optValue(filepath.Join(dir, qmpSocket)) + ",server=on,wait=off",
		"-chardev", "file,id=console0,path=" + optValue(filepath.Join(dir, consoleFile)) + ",append=on",
		"-serial", "chardev:console0",
		"-monitor", "none",
		"-chardev", "socket,id=qga0,path=" + optValue(filepath.Join(dir, qgaSocket)) + ",server=on,wait=off",
		"-device", "virtio-serial-pci,id=vser0",
		"-device", "virtserialport,bus=vser0.0,chardev=qga0,name=" + agentPort,
	}
	switch s.VM.Firmware {
	case "", "bios":
	case "uefi":
		if _, err := os.Stat(p.o.OVMF); err != nil {
			return nil, fmt.Errorf("the VM boots with UEFI but the OVMF firmware %s is missing: install it with `apt-get install ovmf` or set the provider's OVMF path", p.o.OVMF)
		}
		a = append(a, "-bios", p.o.OVMF)
	default:
		return nil, fmt.Errorf("firmware %q: want bios or uefi", s.VM.Firmware)
	}
	if p.o.TLSDir != "" {
		a = append(a, "-object", "tls-creds-x509,id="+hostvm.TLSCredsID+",dir="+optValue(p.o.TLSDir)+",endpoint=client")
	}
	disks, err := diskArgs(st, dir)
	if err != nil {
		return nil, err
	}
	a = append(a, disks...)
	nics, err := nicArgs(st)
	if err != nil {
		return nil, err
	}
	return append(a, nics...), nil
}

// diskArgs gives each overlay a qcow2 node (its backing, while it has
// one, comes from the image's header: the NBD export with
// reconnect-delay) and a device in boot order, then the seed read-only.
func diskArgs(st *state, dir string) ([]string, error) {
	var a []string
	scsi := false
	for i, d := range st.Spec.Disks {
		node, _ := json.Marshal(map[string]any{
			"driver":    "qcow2",
			"node-name": nodeName(i),
			"file":      map[string]any{"driver": "file", "filename": filepath.Join(dir, overlayFile(i))},
		})
		a = append(a, "-blockdev", string(node))
		dev := fmt.Sprintf("drive=%s,id=%s-dev,bootindex=%d", nodeName(i), nodeName(i), i)
		switch d.Bus {
		case "", "virtio":
			a = append(a, "-device", "virtio-blk-pci,"+dev)
		case "scsi":
			if !scsi {
				a = append(a, "-device", "virtio-scsi-pci,id=scsi0")
				scsi = true
			}
			a = append(a, "-device", "scsi-hd,bus=scsi0.0,"+dev)
		case "sata", "ide":
			a = append(a, "-device", "ide-hd,"+dev)
		default:
			return nil, fmt.Errorf("disk %s: bus %q: want virtio, scsi, sata or ide", d.Name, d.Bus)
		}
	}
	if st.Seed {
		node, _ := json.Marshal(map[string]any{
			"driver": "raw", "node-name": "seed", "read-only": true,
			"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, seedFile), "read-only": true},
		})
		a = append(a, "-blockdev", string(node), "-device", "virtio-blk-pci,drive=seed,id=seed-dev")
	}
	return a, nil
}

// nicArgs: a bridge NIC gets its tap device (made by Start, named by
// hostvm.TapName); a user NIC QEMU's user networking, restricted (no
// route out) when the network is isolated, the first one with the
// VM's forwards (restrict=on still lets them in); a NIC on no network
// is a device without a backend (no link).
func nicArgs(st *state) ([]string, error) {
	var a []string
	fwd := userNIC(st.Spec)
	for i, n := range st.Spec.NICs {
		model, err := nicModel(n.Model)
		if err != nil {
			return nil, err
		}
		dev := fmt.Sprintf("%s,mac=%s,id=nic%d", model, n.MAC, i)
		netdev := fmt.Sprintf("net%d", i)
		switch n.Network.Kind {
		case compute.NetBridge:
			a = append(a, "-netdev", fmt.Sprintf("tap,id=%s,ifname=%s,script=no,downscript=no", netdev, hostvm.TapName(st.Spec.Name, i)))
			dev += ",netdev=" + netdev
		case compute.NetUser:
			nd := "user,id=" + netdev
			if n.Network.Isolated {
				nd += ",restrict=on"
			}
			if i == fwd {
				nd += hostfwds(st.Forwards)
			}
			a = append(a, "-netdev", nd)
			dev += ",netdev=" + netdev
		case compute.NetNone:
		case compute.NetLibvirt:
			return nil, fmt.Errorf("NIC %d: network kind libvirt (%q) needs the libvirt provider; the qemu provider plugs NICs into bridges, user networking or nothing", i, n.Network.Name)
		default:
			return nil, fmt.Errorf("NIC %d: network kind %q: want bridge, user or none", i, n.Network.Kind)
		}
		a = append(a, "-device", dev)
	}
	return a, nil
}
