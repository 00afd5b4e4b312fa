package leftover

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// deadPID returns the ID of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

func TestRemove(t *testing.T) {
	dir := t.TempDir()
	dead, self := deadPID(t), os.Getpid()
	files := map[string]bool{ // name → should be removed
		fmt.Sprintf("x-%d-abc", dead): true,
		fmt.Sprintf("x-%d-abc", self): false,
		"x-notapid-abc":               false,
		fmt.Sprintf("y-%d-abc", dead): false, // other prefix
		"x-1-abc":                     false, // init runs
	}
	for n := range files {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	removed, err := Remove(dir, "x-", '-')
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || filepath.Base(removed[0]) != fmt.Sprintf("x-%d-abc", dead) {
		t.Fatalf("removed %v", removed)
	}
	for n, gone := range files {
		_, err := os.Stat(filepath.Join(dir, n))
		if gone != os.IsNotExist(err) {
			t.Errorf("%s: removed=%v, want %v", n, os.IsNotExist(err), gone)
		}
	}
	if r, err := Remove(filepath.Join(dir, "missing"), "x-", '-'); err != nil || r != nil {
		t.Fatalf("missing dir: %v %v", r, err)
	}
	if !ProcessRuns(self) || ProcessRuns(dead) {
		t.Fatal("ProcessRuns is wrong")
	}
}
