package control

import (
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/psload"
)

// reportLoad sends a process heartbeat with load figures.
func reportLoad(t *testing.T, p *agent, hb api.ProcessHeartbeat) {
	t.Helper()
	hb.URL = "https://127.0.0.1:7000"
	if r := do(t, p.client, "POST", p.ts.url("/api/v1/process/heartbeat"), "", hb); r.status != http.StatusOK {
		t.Fatalf("process heartbeat of %s: %d %s", p.name, r.status, r.body)
	}
}

// processOf is the process server the server assigned machine to.
func (ts *testServer) processOf(machine string) string {
	ts.t.Helper()
	var m api.Machine
	ts.mustAPI("GET", "/api/v1/machines/"+machine, ts.admin, nil, http.StatusOK, &m)
	return m.Process
}

func (ts *testServer) machinesPer() map[string]int {
	ts.t.Helper()
	var ms []api.Machine
	ts.mustAPI("GET", "/api/v1/machines", ts.admin, nil, http.StatusOK, &ms)
	n := map[string]int{}
	for _, m := range ms {
		n[m.Process]++
	}
	return n
}

// busyLoad is a process server at full load on every term (factor 4).
func busyLoad() api.ProcessHeartbeat {
	return api.ProcessHeartbeat{CPU: 1, CacheUsed: 100, CacheLimit: 100, Throttled: true, IngestRate: 2 * psload.DefaultRate}
}

// TestProcessChoiceByLoad: of three process servers reporting different
// loads, new machines go to the one with the lowest score, (machines +
// 1) × (1 + cpu + backlog + traffic), not merely the one with fewest
// machines; the API shows each online one's score.
func TestProcessChoiceByLoad(t *testing.T) {
	ts := startServer(t, serverOpts{})
	ps := map[string]*agent{}
	for _, n := range []string{"ps1", "ps2", "ps3"} {
		ps[n] = ts.enrollAs(api.RoleProcess, n)
	}
	reportLoad(t, ps["ps1"], api.ProcessHeartbeat{})                                                                // factor 1
	reportLoad(t, ps["ps2"], api.ProcessHeartbeat{CPU: 0.9, CacheUsed: 90, CacheLimit: 100, IngestRate: 75e6})      // 1 + 0.9 + 0.9 + 0.6 = 3.4
	reportLoad(t, ps["ps3"], api.ProcessHeartbeat{CPU: 0.3, CacheLimit: 100, IngestRate: 0.2 * psload.DefaultRate}) // 1.5
	// Scores before each enrollment (ps1, ps2, ps3) and where it goes:
	// 1 3.4 1.5 → ps1; 2 3.4 1.5 → ps3; 2 3.4 3 → ps1; 3 3.4 3 → ps1
	// (a tie goes to the first); 4 3.4 3 → ps3; 4 3.4 4.5 → ps2;
	// 4 6.8 4.5 → ps1; 5 6.8 4.5 → ps3.
	want := []string{"ps1", "ps3", "ps1", "ps1", "ps3", "ps2", "ps1", "ps3"}
	for i, w := range want {
		name := fmt.Sprintf("m%d", i+1)
		ts.enroll(name)
		if got := ts.processOf(name); got != w {
			t.Fatalf("%s went to %q, want %s (so far %v)", name, got, w, ts.machinesPer())
		}
	}
	// Fewest machines alone would have given 3, 3 and 2.
	if n := ts.machinesPer(); n["ps1"] != 4 || n["ps2"] != 1 || n["ps3"] != 3 {
		t.Fatalf("machines per process server: %v", n)
	}
	var list []api.ProcessServer
	ts.mustAPI("GET", "/api/v1/process-servers", ts.admin, nil, http.StatusOK, &list)
	if len(list) != 3 || list[1].Load == nil || list[1].CPU != 0.9 || math.Abs(list[1].Load.Factor-3.4) > 1e-9 ||
		math.Abs(list[1].Load.Score-6.8) > 1e-9 || list[1].Load.Backlog != 0.9 || math.Abs(list[1].Load.Traffic-0.6) > 1e-9 {
		t.Fatalf("process servers: %+v", list)
	}
	var st api.Status
	ts.mustAPI("GET", "/api/v1/status", ts.admin, nil, http.StatusOK, &st)
	if len(st.Processes) != 3 || st.Processes[0].Load == nil || st.Processes[0].Load.Score != 5 {
		t.Fatalf("status process servers: %+v", st.Processes)
	}
	// An offline process server shows no score.
	ts.clock.Advance(DefaultProcessOfflineAfter + time.Second)
	reportLoad(t, ps["ps1"], api.ProcessHeartbeat{})
	list = nil
	ts.mustAPI("GET", "/api/v1/process-servers", ts.admin, nil, http.StatusOK, &list)
	if list[0].Load == nil || list[1].State != api.ProcessOffline || list[1].Load != nil {
		t.Fatalf("process servers with ps2 and ps3 offline: %+v", list)
	}
}

// TestProcessLoadHostile: load figures no process server measures are
// refused, saying which; a process server that claims to be idle while
// the others are fully busy gets more machines, but not all of them:
// the machine count bounds its gain to the factor of 4.
func TestProcessLoadHostile(t *testing.T) {
	ts := startServer(t, serverOpts{})
	liar := ts.enrollAs(api.RoleProcess, "liar")
	for _, c := range []struct{ body, want string }{
		{`{"cpu":-0.5}`, "cpu -0.5: want the share"},
		{`{"cpu":1.5}`, "cpu 1.5: want the share"},
		{`{"cpu":1e308}`, "from 0 to 1"},
		{`{"cpu":NaN}`, "invalid JSON body"},
		{`{"cpu":1e999}`, "invalid JSON body"},
		{`{"ingest_bytes_per_second":1e300}`, "more than a process server receives"},
		{`{"ingest_bytes_per_second":-1}`, "negative statistics"},
		{`{"cache_used":-1}`, "negative statistics"},
	} {
		r := do(t, liar.client, "POST", ts.url("/api/v1/process/heartbeat"), "", c.body)
		if r.status != http.StatusBadRequest || !strings.Contains(r.err().Message, c.want) {
			t.Errorf("heartbeat %s: %d %s, want 400 saying %q", c.body, r.status, r.body, c.want)
		}
	}
	var list []api.ProcessServer
	ts.mustAPI("GET", "/api/v1/process-servers", ts.admin, nil, http.StatusOK, &list)
	if len(list) != 1 || !list[0].LastSeen.IsZero() {
		t.Fatalf("a refused heartbeat was recorded: %+v", list)
	}

	honest := []*agent{ts.enrollAs(api.RoleProcess, "ps1"), ts.enrollAs(api.RoleProcess, "ps2")}
	reportLoad(t, liar, api.ProcessHeartbeat{})
	for _, p := range honest {
		reportLoad(t, p, busyLoad())
	}
	for i := range 24 {
		ts.enroll(fmt.Sprintf("m%d", i))
	}
	n := ts.machinesPer()
	for _, h := range []string{"ps1", "ps2"} {
		if n[h] == 0 || n["liar"] > 4*(n[h]+1) {
			t.Fatalf("machines per process server: %v", n)
		}
	}
	// The liar scores machines + 1, each busy one 4 × (machines + 1).
	if n["liar"] != 16 || n["ps1"] != 4 || n["ps2"] != 4 {
		t.Fatalf("machines per process server: %v, want 16 on the liar and 4 on each busy one", n)
	}
}

// TestDeadProcessMachinesSpread: the machines of a process server silent
// for process_move_after spread over the online ones by their scores,
// not all onto one.
func TestDeadProcessMachinesSpread(t *testing.T) {
	ts := startServer(t, serverOpts{config: func(c *Config) {
		c.ProcessOfflineAfter, c.ProcessMoveAfter = api.Duration(30*time.Second), api.Duration(time.Minute)
	}})
	dead := ts.enrollAs(api.RoleProcess, "ps0")
	processReport(t, dead)
	for i := range 7 {
		ts.enroll(fmt.Sprintf("m%d", i))
	}
	live := []*agent{ts.enrollAs(api.RoleProcess, "ps1"), ts.enrollAs(api.RoleProcess, "ps2"), ts.enrollAs(api.RoleProcess, "ps3")}
	report := func() {
		reportLoad(t, live[0], api.ProcessHeartbeat{})
		reportLoad(t, live[1], api.ProcessHeartbeat{})
		reportLoad(t, live[2], api.ProcessHeartbeat{CPU: 1, CacheLimit: 100}) // factor 2
	}
	// Steps shorter than process_offline_after keep the live ones online.
	for range 3 {
		report()
		ts.clock.Advance(25 * time.Second)
	}
	report()
	eventually(t, "ps0's machines to move", func() bool { return ts.machinesPer()["ps0"] == 0 })
	// ps1 and ps2 score machines+1, ps3 2 × (machines+1): 3, 3 and 1.
	if n := ts.machinesPer(); n["ps1"] != 3 || n["ps2"] != 3 || n["ps3"] != 1 {
		t.Fatalf("machines per process server after ps0 died: %v", n)
	}
	if evs := ts.events("machine_moved"); len(evs) != 7 {
		t.Fatalf("%d machine_moved events, want 7", len(evs))
	}
}

// TestProcessRebalance: with process_load.rebalance_ratio set, a process
// server that stays far busier than another for rebalance_after loses
// one machine per period, only one that is idle: not one in a cycle, nor
// one with an ingest session open.
func TestProcessRebalance(t *testing.T) {
	ts := startServer(t, serverOpts{config: func(c *Config) {
		c.ProcessOfflineAfter, c.HeartbeatEvery = api.Duration(time.Hour), api.Duration(time.Minute)
		c.ProcessLoad.RebalanceRatio, c.ProcessLoad.RebalanceAfter = 2, api.Duration(time.Minute)
	}})
	ps1 := ts.enrollAs(api.RoleProcess, "ps1")
	processReport(t, ps1)
	ts.mustAPI("POST", "/api/v1/policies", ts.admin, api.Policy{Name: "p"}, http.StatusCreated, nil)
	var ms []*agent
	for i := range 3 {
		a := ts.enroll(fmt.Sprintf("m%d", i))
		a.heartbeat(api.AgentHeartbeat{})
		ts.mustAPI("POST", "/api/v1/machines/"+a.name+"/protect", ts.admin, api.ProtectRequest{Policy: "p"}, http.StatusOK, nil)
		now := ts.clock.Now()
		a.heartbeat(api.AgentHeartbeat{Results: []api.CycleResult{{Point: ts.realPoint(a.name, now, "crash", "", ""), Kind: "crash", Time: now}}})
		ms = append(ms, a)
	}
	ps2 := ts.enrollAs(api.RoleProcess, "ps2")
	// m0 is in a cycle, m1 has a session open on ps1, m2 is idle. ps1
	// scores 4 × 4 = 16, ps2 1: over the ratio.
	cycling := &api.Progress{Phase: "incremental", Started: ts.clock.Now()}
	round := func(m0Busy bool) {
		hb := busyLoad()
		hb.Open = []api.OpenSession{{Machine: "m1", LastUsed: ts.clock.Now()}}
		reportLoad(t, ps1, hb)
		reportLoad(t, ps2, api.ProcessHeartbeat{})
		p := cycling
		if !m0Busy {
			p = nil
		}
		ms[0].heartbeat(api.AgentHeartbeat{Progress: p})
		ms[1].heartbeat(api.AgentHeartbeat{})
		ms[2].heartbeat(api.AgentHeartbeat{})
		ts.waitTicks(2)
	}
	round(true)
	ts.clock.Advance(30 * time.Second)
	round(true)
	if n := ts.machinesPer(); n["ps1"] != 3 {
		t.Fatalf("a machine moved before rebalance_after: %v", n)
	}
	ts.clock.Advance(31 * time.Second)
	round(true)
	eventually(t, "m2 to move to ps2", func() bool { return ts.processOf("m2") == "ps2" })
	if evs := ts.events("machine_moved"); len(evs) != 1 || evs[0].Severity != api.SeverityInfo ||
		!strings.Contains(evs[0].Message, "moved from process server ps1 to ps2 to balance their load") {
		t.Fatalf("machine_moved events: %+v", evs)
	}
	// ps1 (3 × 4 = 12) is still over 2 × ps2's 2, but its machines are
	// busy: nothing moves, however long.
	for range 3 {
		ts.clock.Advance(40 * time.Second)
		round(true)
	}
	if n := ts.machinesPer(); n["ps1"] != 2 || n["ps2"] != 1 {
		t.Fatalf("a busy machine moved: %v", n)
	}
	// m0's cycle ends: it moves at the next round.
	ts.clock.Advance(time.Second)
	round(false)
	eventually(t, "m0 to move to ps2", func() bool { return ts.processOf("m0") == "ps2" })
	if ts.processOf("m1") != "ps1" {
		t.Fatal("m1 moved with its session open")
	}
}

// TestProcessLoadConfig: server.json's process_load gets its defaults
// (rebalancing off) and is checked at load.
func TestProcessLoadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(pl string) (Config, error) {
		cfg := `{"vault": "/srv/vault"` + pl + `}`
		if err := os.WriteFile(filepath.Join(dir, ConfigFile), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return LoadConfig(dir)
	}
	cfg, err := write("")
	if err != nil {
		t.Fatal(err)
	}
	if pl := cfg.ProcessLoad; pl.Rate != psload.DefaultRate || pl.RebalanceRatio != 0 || pl.RebalanceAfter.Std() != DefaultRebalanceAfter {
		t.Fatalf("defaults: %+v", pl)
	}
	if cfg, err := write(`, "process_load": {"rebalance_ratio": 3, "rebalance_after": "15m", "rate": 1e9}`); err != nil ||
		cfg.ProcessLoad.RebalanceRatio != 3 || cfg.ProcessLoad.RebalanceAfter.Std() != 15*time.Minute || cfg.ProcessLoad.Rate != 1e9 {
		t.Fatalf("set: %+v %v", cfg.ProcessLoad, err)
	}
	for pl, want := range map[string]string{
		`, "process_load": {"rebalance_ratio": 1.2}`:       "want 0 (off) or from 1.5 to 1000",
		`, "process_load": {"rebalance_ratio": -2}`:        "want 0 (off)",
		`, "process_load": {"rebalance_ratio": 1e9}`:       "to 1000",
		`, "process_load": {"rate": -5}`:                   "process_load.rate -5",
		`, "process_load": {"rebalance_after": "10s"}`:     "at least 1m",
		`, "process_load": {"rebalance_ratio": 2, "x": 1}`: "unknown field",
	} {
		if _, err := write(pl); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", pl, err, want)
		}
	}
}
