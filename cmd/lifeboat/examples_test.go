package main

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestEveryCommandHasAnExample: every command a user runs shows at least
// one example in its help, and every example names a real command.
func TestEveryCommandHasAnExample(t *testing.T) {
	a := &app{getenv: func(string) string { return "" }}
	root := a.root()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Runnable() && !c.Hidden && c.Name() != "help" && c != root && !strings.HasPrefix(c.CommandPath(), "lifeboat completion") &&
			!strings.Contains(c.Example, "lifeboat ") {
			t.Errorf("%s has no example (add one to the command or to examples in examples.go)", c.CommandPath())
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	for path := range examples {
		if c, _, err := root.Find(strings.Fields(path)); err != nil || c.CommandPath() != "lifeboat "+path {
			t.Errorf("examples names %q, which is no command", path)
		}
	}
}
