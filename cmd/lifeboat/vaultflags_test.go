package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// opensVault reports whether the command at path opens a vault.
func opensVault(path string) bool {
	for _, p := range []string{"lifeboat vault", "lifeboat points", "lifeboat recover", "lifeboat replicate",
		"lifeboat restore", "lifeboat server init", "lifeboat target apply", "lifeboat target run"} {
		if path == p || strings.HasPrefix(path, p+" ") {
			return true
		}
	}
	return false
}

// TestVaultFlagsOnlyWhereAVaultOpens: the vault flags are in the help of
// the commands that open a vault, and in no other's (client commands of
// the server in particular); every command still accepts them, before
// or after its name, as when they were global.
func TestVaultFlagsOnlyWhereAVaultOpens(t *testing.T) {
	a := &app{getenv: func(string) string { return "" }}
	root := a.root()
	clients := 0
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, s := range c.Commands() {
			walk(s)
		}
		if !c.Runnable() || c.Name() == "help" {
			return
		}
		var help bytes.Buffer
		c.SetOut(&help)
		if err := c.Help(); err != nil {
			t.Fatal(err)
		}
		path := c.CommandPath()
		if c.Flag("token") != nil && !opensVault(path) {
			clients++
		}
		for _, name := range vaultFlagNames() {
			// A flag's line in the help (prose may name another
			// command's flag: "lifeboat recover --vault").
			shown := regexp.MustCompile(`(?m)^\s+(-\w, )?--` + name + ` `).MatchString(help.String())
			if opensVault(path) != shown {
				t.Errorf("%s: help shows --%s: %v, want %v", path, name, shown, opensVault(path))
			}
			if c.Flag(name) == nil {
				t.Errorf("%s does not accept --%s", path, name)
			}
		}
	}
	walk(root)
	if clients < 30 {
		t.Errorf("only %d client commands seen", clients)
	}
	for _, args := range [][]string{
		{"restore", "latest", "--vault", "/srv/vault", "--passphrase-file", "/p", "--s3-endpoint", "http://s3", "--disk", "d", "--to", "/t"},
		{"--vault", "/srv/vault", "--passphrase-file", "/p", "points", "list"},
		{"vault", "check", "--vault", "s3://b/p", "--s3-endpoint", "http://127.0.0.1:7070"},
		{"recover", "boot", "web01", "--vault", "/srv/vault", "--passphrase-file", "/p"},
		{"server", "init", "--data", "/d", "--vault", "/srv/vault", "--passphrase-file", "/p"},
		{"replicate", "--vault", "/srv/vault", "--disk", "root=/x.img", "--once"},
		{"status", "--vault", "/srv/vault"},
		{"--vault", "/srv/vault", "machines", "list"},
	} {
		root := (&app{getenv: func(string) string { return "" }}).root()
		c, rest, err := root.Find(args)
		if err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		c.SetErr(&bytes.Buffer{})
		if err := c.ParseFlags(rest); err != nil {
			t.Errorf("%q: %v", args, err)
		}
	}
}
