package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/buildinfo"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// version is set at build time with -ldflags "-X main.version=..."; when
// it is not, the version comes from the build info (buildinfo.Read).
var version = buildinfo.Dev

// build is what this binary was built from; daemons report build().String()
// to the server.
func build() buildinfo.Info { return buildinfo.Read(version) }

// versionInfo is `lifeboat version --json`.
type versionInfo struct {
	buildinfo.Info
	VaultFormat int `json:"vault_format"`
}

// versionText is what `lifeboat version` and `lifeboat --version` print.
// The first line, "lifeboat VERSION (vault format N)", is kept as it was
// for scripts.
func versionText(i buildinfo.Info) string {
	var b strings.Builder
	fmt.Fprintf(&b, "lifeboat %s (vault format %d)\n", i.Version, vault.FormatVersion)
	if i.Revision != "" {
		rev := i.Revision
		if i.Modified {
			rev += " (modified)"
		}
		fmt.Fprintf(&b, "revision: %s\n", rev)
	}
	if !i.Time.IsZero() {
		fmt.Fprintf(&b, "commit time: %s\n", i.Time.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(&b, "go: %s\n", i.Go)
	return b.String()
}

func (a *app) versionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version [--json]",
		Short: "Print the version, VCS revision, Go version and vault format",
		Example: `  lifeboat version
  lifeboat version --json`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			i := build()
			if asJSON {
				return a.printJSON(versionInfo{Info: i, VaultFormat: vault.FormatVersion})
			}
			fmt.Fprint(a.stdout, versionText(i))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

// versionFlag gives root a --version flag that prints what `lifeboat
// version` prints.
func (a *app) versionFlag(root *cobra.Command) {
	i := build()
	root.Version = i.Version
	// The template is the text itself: escape what text/template would
	// read as an action.
	root.SetVersionTemplate(strings.NewReplacer("{{", `{{"{{"}}`).Replace(versionText(i)))
	root.SetOut(a.stdout)
}
