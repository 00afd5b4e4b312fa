// Package buildinfo reports what a binary was built from: the module
// version, the VCS revision and the Go version, from the build info the Go
// toolchain embeds (runtime/debug.ReadBuildInfo). The lifeboat command
// shows it (lifeboat version) and its daemons report it to the server.
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
	"time"
)

// Info is what a binary was built from.
type Info struct {
	// Version is the module version: the one set with -ldflags
	// "-X main.version=..." if it is not "dev", else the main module's
	// version from the build info (a tag, or a pseudo-version when built
	// from a VCS checkout), else "dev".
	Version  string    `json:"version"`
	Revision string    `json:"revision,omitempty"` // vcs.revision
	Time     time.Time `json:"time,omitzero"`      // vcs.time: the revision's commit time
	Modified bool      `json:"modified,omitempty"` // vcs.modified: built with uncommitted changes
	Go       string    `json:"go_version"`
}

// Dev is the version of a binary built without a version.
const Dev = "dev"

// Read returns the running binary's Info; ldflagsVersion is the value set
// with -ldflags -X (Dev or "" when none was set).
func Read(ldflagsVersion string) Info {
	bi, _ := debug.ReadBuildInfo()
	return From(bi, ldflagsVersion)
}

// From returns the Info in bi (nil: no build info).
func From(bi *debug.BuildInfo, ldflagsVersion string) Info {
	i := Info{Version: ldflagsVersion, Go: runtime.Version()}
	if bi == nil {
		if i.Version == "" {
			i.Version = Dev
		}
		return i
	}
	if bi.GoVersion != "" {
		i.Go = bi.GoVersion
	}
	if v := bi.Main.Version; (i.Version == "" || i.Version == Dev) && v != "" && v != "(devel)" {
		i.Version = v
	}
	if i.Version == "" {
		i.Version = Dev
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			i.Revision = s.Value
		case "vcs.time":
			i.Time, _ = time.Parse(time.RFC3339, s.Value)
		case "vcs.modified":
			i.Modified = s.Value == "true"
		}
	}
	return i
}

// String is the one-line form daemons report to the server: the version,
// then the short revision unless the version already names it, and
// "modified" for a build with uncommitted changes, e.g.
// "dev (6bcebbf12345, modified)".
func (i Info) String() string {
	var extra []string
	if r := short(i.Revision); r != "" && !strings.Contains(i.Version, r) {
		extra = append(extra, r)
	}
	if i.Modified && !strings.HasSuffix(i.Version, "+dirty") {
		extra = append(extra, "modified")
	}
	if len(extra) == 0 {
		return i.Version
	}
	return i.Version + " (" + strings.Join(extra, ", ") + ")"
}

func short(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}
