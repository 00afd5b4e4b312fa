// Package libvirtd gives tests a running libvirt daemon.
package libvirtd

import (
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

// Socket is the libvirt daemon's socket.
const Socket = "/var/run/libvirt/libvirt-sock"

// InstallHint is the command that installs what libvirt tests need.
const InstallHint = "apt-get install -y --no-install-recommends libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils qemu-block-extra libnbd-bin"

// Ensure makes sure libvirtd answers on Socket. When it does not, it
// starts virtlogd and libvirtd as daemons (the test machines have no
// systemd) and leaves them running for later tests: it never stops a
// daemon, whether it started it or not. Missing tools (beyond those
// always needed, tools) or a caller that is not root skip the test, and
// fail it in CI.
func Ensure(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range append([]string{"libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFail(t, tool+" not found: "+InstallHint)
		}
	}
	if os.Geteuid() != 0 {
		skipOrFail(t, "libvirt tests run as root (libvirtd runs QEMU as libvirt-qemu; tests give it their directories)")
	}
	if up(Socket) {
		return
	}
	if !up("/var/run/libvirt/virtlogd-sock") {
		if out, err := exec.Command("virtlogd", "-d").CombinedOutput(); err != nil {
			t.Logf("virtlogd -d: %v: %s", err, out)
		}
	}
	if out, err := exec.Command("libvirtd", "-d").CombinedOutput(); err != nil {
		t.Logf("libvirtd -d: %v: %s", err, out) // another test binary may have started it
	}
	deadline := time.Now().Add(20 * time.Second)
	for !up(Socket) {
		if time.Now().After(deadline) {
			t.Fatalf("libvirtd did not come up on %s within 20 s (started with `virtlogd -d; libvirtd -d`)", Socket)
		}
		time.Sleep(100 * time.Millisecond) // poll pause under a deadline
	}
	t.Log("started virtlogd and libvirtd (left running)")
}

func skipOrFail(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (CI)")
	}
	t.Skip(msg)
}

func up(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
