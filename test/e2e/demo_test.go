package e2e

import (
	"strings"
	"testing"
)

// TestDemo keeps README's first command working: the demo runs a server and
// an agent, makes points at the policy's cadence and proves its restores.
func TestDemo(t *testing.T) {
	e := newEnv(t)
	out := e.mustRun("demo", "--size", "128", "--data", "24", "--cycles", "3")
	for _, want := range []string{"== Server:", "== Agent demo-vm enrolled", "lifeboat status", "protected", "filesystem clean", "no damage", "demo finished"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	// Every point is shown with its cycle's figures, which the demo waits for.
	if n := strings.Count(out, " read, "); n != 3 || strings.Contains(out, "figures pending") || strings.Contains(out, ": 0 B changed") {
		t.Errorf("demo shows the figures of %d of 3 points:\n%s", n, out)
	}
}
