package libvirt

import (
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
)

// checkPowerOff runs at the end of TestMachineCycles, on its domain (a
// domain takes long to start here): a guest that ignores the ACPI button
// (this domain has no OS) is reported and keeps running; a domain whose
// guest powered off (destroyed here) is started paused, its disks hold the
// writes made before and one more cycle reads them; Destroy ends it.
func checkPowerOff(t *testing.T, h *harness) {
	td, m := h.td, h.m
	ctx := t.Context()
	state := func() golibvirt.DomainState {
		st, _, err := td.l.DomainGetState(td.dom, 0)
		if err != nil {
			t.Fatal(err)
		}
		return golibvirt.DomainState(st)
	}
	if err := m.PowerOff(ctx, time.Second); err == nil || !strings.Contains(err.Error(), "did not power off") {
		t.Fatalf("a guest without OS: %v", err)
	}
	if st := state(); st != golibvirt.DomainRunning {
		t.Fatalf("state after a refused power-off: %d", st)
	}
	h.write("vda", 0x5a, 2<<20, 128<<10) // the guest's last write before it powers off
	if err := td.l.DomainDestroy(td.dom); err != nil {
		t.Fatal(err)
	}
	if err := m.PowerOff(ctx, time.Second); err != nil {
		t.Fatalf("power off a shut-off domain: %v", err)
	}
	if err := m.PowerOff(ctx, time.Second); err != nil || state() != golibvirt.DomainPaused {
		t.Fatalf("again: %v, state %d, want paused", err, state())
	}
	c := h.begin(h.baselines())
	h.check(c, "vda", c.cycles["vda"].Incremental(), false)
	h.check(c, "vdb", c.cycles["vdb"].Incremental(), false)
	h.commit(c, "vda")
	h.commit(c, "vdb")
	if err := m.Destroy(ctx); err != nil || state() != golibvirt.DomainShutoff {
		t.Fatalf("destroy: %v, state %d", err, state())
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatalf("destroy twice: %v", err)
	}
}
