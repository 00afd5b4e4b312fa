package capture_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/capture/capturetest"
)

// failMachine fails every Begin.
type failMachine struct{ capture.Machine }

func (failMachine) Name() string { return "vm" }
func (failMachine) Begin(context.Context, map[string]string) (map[string]capture.Cycle, error) {
	return nil, errors.New("hypervisor says no")
}

func TestDriversAndJoin(t *testing.T) {
	ctx := t.Context()
	a := capturetest.NewMem(make([]byte, 4096), 512)
	b := capturetest.NewMem(make([]byte, 4096), 512)
	c := capturetest.NewMem(make([]byte, 4096), 512)
	m := capture.Join(
		capture.Part{Machine: capture.Drivers(capture.DiskDriver{Disk: "a", Driver: a}), Disks: []string{"a"}},
		capture.Part{Machine: capture.Drivers(capture.DiskDriver{Disk: "b", Driver: b}, capture.DiskDriver{Disk: "c", Driver: c}), Disks: []string{"b", "c"}},
	)
	if got := capture.DriverOf(m, "b"); got != "mem" {
		t.Fatalf("DriverOf(b) = %q", got)
	}
	cycles, err := m.Begin(ctx, map[string]string{"a": "", "c": ""})
	if err != nil {
		t.Fatal(err)
	}
	if len(cycles) != 2 || cycles["a"] == nil || cycles["c"] == nil {
		t.Fatalf("cycles %v", cycles)
	}
	if n, _, _ := b.Counts(); n != 0 {
		t.Fatal("a disk not asked for was begun")
	}
	for d, cy := range cycles {
		if err := cy.Changes(ctx, func(capture.Block) error { return nil }, nil); err != nil {
			t.Fatal(err)
		}
		if err := cy.Commit(ctx, "p1"); err != nil {
			t.Fatal(d, err)
		}
	}
	if bl, _ := m.Baseline(ctx, "a"); bl != "p1" {
		t.Fatalf("baseline of a = %q", bl)
	}
	if _, err := m.Baseline(ctx, "zz"); err == nil {
		t.Fatal("Baseline of an unknown disk succeeded")
	}
	if _, err := m.Begin(ctx, map[string]string{"zz": ""}); err == nil {
		t.Fatal("Begin of an unknown disk succeeded")
	}

	// A disk whose Begin fails: those begun before are aborted.
	if _, err := m.Begin(ctx, map[string]string{"a": "p1", "b": "nope"}); err == nil || !strings.HasPrefix(err.Error(), "disk b:") {
		t.Fatalf("Begin with a wrong base: %v", err)
	}
	if _, _, aborts := a.Counts(); aborts != 1 {
		t.Fatalf("a: %d aborts after the failed Begin, want 1", aborts)
	}

	// A failing machine part: its error names its driver; the scan part
	// begun before it is aborted.
	j := capture.Join(
		capture.Part{Machine: capture.Drivers(capture.DiskDriver{Disk: "a", Driver: a}), Disks: []string{"a"}},
		capture.Part{Machine: failMachine{}, Disks: []string{"vda"}},
	)
	if _, err := j.Begin(ctx, map[string]string{"a": "", "vda": ""}); err == nil || !strings.HasPrefix(err.Error(), "vm driver: ") {
		t.Fatalf("Begin with a failing part: %v", err)
	}
	if _, _, aborts := a.Counts(); aborts != 2 {
		t.Fatalf("a: %d aborts, want 2", aborts)
	}
	if got := capture.DriverOf(j, "vda"); got != "vm" {
		t.Fatalf("DriverOf(vda) = %q", got)
	}
}
