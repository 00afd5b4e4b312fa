package agent

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

func TestConfigSaveLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	c := &Config{
		Server:       "https://dr.example:8443",
		Machine:      "web-1",
		Disks:        []DiskConfig{{Name: "vda", Path: "/var/lib/images/web.img"}, {Name: "vdb", Path: "/dev/sdb"}},
		FreezeMounts: []string{"/data"},
		Snapshot:     SnapshotNone,
		VMSpec:       "/etc/lifeboat/vm.json",
	}
	if err := SaveConfig(dir, c); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, ConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("agent.json mode %v, want 0600", fi.Mode().Perm())
	}
	got, err := LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Fatalf("loaded %+v, saved %+v", got, c)
	}
	if got.hooksDir() != filepath.Join(dir, "hooks") {
		t.Errorf("default hooks dir %q", got.hooksDir())
	}
	// The file is what people edit: check the field names.
	b, _ := os.ReadFile(filepath.Join(dir, ConfigFile))
	for _, k := range []string{`"server"`, `"machine"`, `"disks"`, `"freeze_mounts"`, `"snapshot"`, `"vm_spec"`, `"path"`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("agent.json lacks %s:\n%s", k, b)
		}
	}
}

func TestConfigHostile(t *testing.T) {
	cases := []struct {
		name, body, want string
	}{
		{"missing", "", "does not exist"},
		{"not json", "server = x", "not valid agent configuration JSON"},
		{"array", "[]", "not valid agent configuration JSON"},
		{"unknown field", `{"server":"https://a:1","machine":"m","disk":[]}`, "unknown field"},
		{"trailing", `{"server":"https://a:1","machine":"m"} {}`, "data after"},
		{"http", `{"server":"http://a:1","machine":"m"}`, "https://host:port"},
		{"no server", `{"machine":"m"}`, `"server" is empty`},
		{"server with user", `{"server":"https://u:p@a:1","machine":"m"}`, "https://host:port"},
		{"bad machine", `{"server":"https://a:1","machine":"../etc"}`, "machine"},
		{"empty machine", `{"server":"https://a:1","machine":""}`, "machine"},
		{"dup disk", `{"server":"https://a:1","machine":"m","disks":[{"name":"a","path":"/x"},{"name":"a","path":"/y"}]}`, "appears twice"},
		{"relative disk", `{"server":"https://a:1","machine":"m","disks":[{"name":"a","path":"x.img"}]}`, "absolute path"},
		{"disk name slash", `{"server":"https://a:1","machine":"m","disks":[{"name":"a/b","path":"/x"}]}`, "disk name"},
		{"snapshot", `{"server":"https://a:1","machine":"m","snapshot":"lvm"}`, `"snapshot" "lvm" is invalid`},
		{"freeze root", `{"server":"https://a:1","machine":"m","freeze_mounts":["/"]}`, "root filesystem"},
		{"freeze relative", `{"server":"https://a:1","machine":"m","freeze_mounts":["data"]}`, "absolute mount point"},
		{"hooks relative", `{"server":"https://a:1","machine":"m","hooks_dir":"hooks"}`, "hooks_dir"},
		{"wrong type", `{"server":"https://a:1","machine":5}`, "not valid agent configuration JSON"},
		{"huge", `{"server":"https://a:1","machine":"m","vm_spec":"/` + strings.Repeat("a", maxConfigSize) + `"}`, "larger than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.name != "missing" {
				if err := os.WriteFile(filepath.Join(dir, ConfigFile), []byte(tc.body), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := LoadConfig(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadConfig error %v, want it to mention %q", err, tc.want)
			}
		})
	}
	// SaveConfig refuses what Validate refuses and writes nothing.
	dir := t.TempDir()
	if err := SaveConfig(dir, &Config{Server: "https://a:1", Machine: "m", Snapshot: "zfs"}); err == nil {
		t.Fatal("SaveConfig accepted an invalid config")
	}
	if _, err := os.Stat(filepath.Join(dir, ConfigFile)); !os.IsNotExist(err) {
		t.Fatalf("invalid config was written: %v", err)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"server":"https://a:1","machine":"m","disks":[{"name":"vda","path":"/x"}]}`))
	f.Add([]byte(`{"server":"https://a:1","machine":"m","freeze_mounts":["/data"],"snapshot":"none"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseConfig(b)
		if err != nil {
			return
		}
		if c.Validate() != nil {
			return
		}
		// A valid config survives a save/load round trip unchanged.
		dir := t.TempDir()
		if err := SaveConfig(dir, c); err != nil {
			t.Fatalf("valid config not saved: %v", err)
		}
		got, err := LoadConfig(dir)
		if err != nil {
			t.Fatalf("saved config not loaded: %v", err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Fatalf("round trip changed the config: %+v != %+v", got, c)
		}
	})
}

func TestStateRoundTripAndHostile(t *testing.T) {
	dir := t.TempDir()
	s, err := loadState(dir)
	if err != nil || s.LastPoint != "" {
		t.Fatalf("fresh state: %+v, %v", s, err)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s.LastPoint, s.LastPointTime = "p1", now
	for i := range maxDoneCuts + 10 {
		s.markCut("cut-" + string(rune('a'+i%26)) + time.Duration(i).String())
	}
	s.markCut("last")
	s.addResult(api.CycleResult{Point: "p1", Kind: "crash", Time: now})
	if err := saveState(dir, s); err != nil {
		t.Fatal(err)
	}
	got, err := loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.LastPoint != "p1" || !got.LastPointTime.Equal(now) || len(got.DoneCuts) != maxDoneCuts || !got.cutDone("last") || len(got.Results) != 1 {
		t.Fatalf("state not kept: %+v", got)
	}
	for _, body := range []string{"garbage", `{"failures":"x"}`, `{} []`} {
		if err := os.WriteFile(filepath.Join(dir, StateFile), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadState(dir); err == nil || !strings.Contains(err.Error(), "move it away") {
			t.Fatalf("state %q: error %v", body, err)
		}
	}
}

func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"last_point":"x","done_cuts":["a"],"pending_results":[{"kind":"crash","time":"2026-01-01T00:00:00Z","duration":"1s"}]}`))
	f.Add([]byte(`{"failures":-5}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseState(b)
		if err != nil {
			return
		}
		if s.Failures < 0 || len(s.DoneCuts) > maxDoneCuts || len(s.Results) > maxPendingRes || len(s.Events) > maxPendingEvts {
			t.Fatalf("parsed state out of bounds: %+v", s)
		}
		// Scheduling on any parsed state must not panic.
		nextCycle(time.Now(), s, &api.Policy{CrashInterval: api.Duration(time.Minute)}, false)
	})
}
