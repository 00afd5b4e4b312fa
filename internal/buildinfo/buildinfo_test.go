package buildinfo

import (
	"runtime/debug"
	"testing"
	"time"
)

func TestFrom(t *testing.T) {
	vcs := []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "6bcebbf1234567890abcdef"},
		{Key: "vcs.time", Value: "2026-12-07T13:00:00Z"}, {Key: "vcs.modified", Value: "true"}}
	for _, tc := range []struct {
		name    string
		bi      *debug.BuildInfo
		ldflags string
		want    Info
		str     string
	}{
		{"no build info", nil, "dev", Info{Version: "dev"}, "dev"},
		{"no build info, no ldflags", nil, "", Info{Version: "dev"}, "dev"},
		{"devel with vcs", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}, Settings: vcs}, "dev",
			Info{Version: "dev", Revision: "6bcebbf1234567890abcdef", Time: time.Date(2026, 12, 7, 13, 0, 0, 0, time.UTC), Modified: true, Go: "go1.26.0"},
			"dev (6bcebbf12345, modified)"},
		{"module version", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v1.2.3"}}, "dev",
			Info{Version: "v1.2.3", Go: "go1.26.0"}, "v1.2.3"},
		{"pseudo-version naming the revision", &debug.BuildInfo{GoVersion: "go1.26.0",
			Main: debug.Module{Version: "v0.0.0-20261207130000-6bcebbf12345+dirty"}, Settings: vcs}, "",
			Info{Version: "v0.0.0-20261207130000-6bcebbf12345+dirty", Revision: "6bcebbf1234567890abcdef",
				Time: time.Date(2026, 12, 7, 13, 0, 0, 0, time.UTC), Modified: true, Go: "go1.26.0"},
			"v0.0.0-20261207130000-6bcebbf12345+dirty"},
		{"ldflags win", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v1.2.3"}}, "1.3.0-rc1",
			Info{Version: "1.3.0-rc1", Go: "go1.26.0"}, "1.3.0-rc1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := From(tc.bi, tc.ldflags)
			if tc.bi == nil {
				tc.want.Go = got.Go // runtime.Version()
			}
			if got != tc.want {
				t.Fatalf("From = %+v, want %+v", got, tc.want)
			}
			if s := got.String(); s != tc.str {
				t.Fatalf("String = %q, want %q", s, tc.str)
			}
		})
	}
}

func TestRead(t *testing.T) {
	i := Read(Dev)
	if i.Version == "" || i.Go == "" {
		t.Fatalf("Read = %+v: want a version and a Go version", i)
	}
}
