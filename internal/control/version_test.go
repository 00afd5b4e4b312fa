package control

import (
	"net/http"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// TestVersionsRecorded: the server records the build each agent and each
// process server reports and shows it in the machine, process server and
// status views; components too old to report one are still accepted.
func TestVersionsRecorded(t *testing.T) {
	ts := startServer(t, serverOpts{ingest: true})
	p := ts.enrollAs(api.RoleProcess, "ps1")
	hb := func(v string) response {
		return do(t, p.client, "POST", ts.url("/api/v1/process/heartbeat"), "", api.ProcessHeartbeat{URL: "https://127.0.0.1:7000", Version: v})
	}
	process := func(name string) api.ProcessServer {
		var st api.Status
		ts.mustAPI("GET", "/api/v1/status", ts.admin, nil, http.StatusOK, &st)
		for _, ps := range st.Processes {
			if ps.Name == name {
				return ps
			}
		}
		t.Fatalf("status shows no process server %s: %+v", name, st.Processes)
		return api.ProcessServer{}
	}
	if r := hb("v1.2.3 (6bcebbf12345)"); r.status != http.StatusOK {
		t.Fatalf("process heartbeat: %d %s", r.status, r.body)
	}
	var ps []api.ProcessServer
	ts.mustAPI("GET", "/api/v1/process-servers", ts.admin, nil, http.StatusOK, &ps)
	for _, x := range ps {
		if x.Name == "ps1" && x.Version != "v1.2.3 (6bcebbf12345)" {
			t.Fatalf("process server ps1: version %q", x.Version)
		}
	}
	// An old process server sends no version: accepted, and the stale
	// one is not kept.
	if r := do(t, p.client, "POST", ts.url("/api/v1/process/heartbeat"), "", `{"url":"https://127.0.0.1:7000"}`); r.status != http.StatusOK {
		t.Fatalf("heartbeat without a version: %d %s", r.status, r.body)
	}
	if v := process("ps1").Version; v != "" {
		t.Fatalf("after a heartbeat without a version: %q", v)
	}
	if r := hb("v1\x00"); r.status != http.StatusBadRequest {
		t.Fatalf("version with a control character: %d %s", r.status, r.body)
	}
	// The embedded process server is the server's own build.
	eventually(t, "the embedded process server's version", func() bool { return process(EmbeddedName).Version == "dev" })

	a := ts.enroll("m1")
	inv := api.Inventory{Hostname: "m1", OS: "linux", Arch: "amd64", Agent: "v1.2.3",
		Disks: []api.DiskInfo{{Name: "vda", Path: "/dev/vda", Size: 1 << 30, Kind: "block"}}}
	a.heartbeat(api.AgentHeartbeat{Inventory: inv})
	var m api.Machine
	ts.mustAPI("GET", "/api/v1/machines/m1", ts.admin, nil, http.StatusOK, &m)
	if m.Inventory.Agent != "v1.2.3" {
		t.Fatalf("machine m1: agent version %q", m.Inventory.Agent)
	}
	inv.Agent = "" // an agent too old to report one
	a.heartbeat(api.AgentHeartbeat{Inventory: inv})
	ts.mustAPI("GET", "/api/v1/machines/m1", ts.admin, nil, http.StatusOK, &m)
	if m.Inventory.Agent != "" {
		t.Fatalf("machine m1 after an agent without a version: %q", m.Inventory.Agent)
	}
}
