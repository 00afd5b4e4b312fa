package health

import (
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// TestOf: each condition gives its level, its words and a remedy; the
// machine's level is the worst of its reasons.
func TestOf(t *testing.T) {
	online := &api.ProcessServer{Name: "ps1", State: api.ProcessOnline}
	protected := api.Machine{Name: "web", State: api.StateProtected, RPO: api.Duration(30 * time.Second)}
	with := func(m api.Machine, fn func(*api.Machine)) api.Machine { fn(&m); return m }
	for _, c := range []struct {
		name  string
		m     api.Machine
		f     Facts
		level string
		words []string
	}{
		{"healthy", protected, Facts{RPOThreshold: time.Minute, AgentOnline: true, Process: online}, api.HealthHealthy, nil},
		{"rpo over", with(protected, func(m *api.Machine) { m.RPO = api.Duration(90 * time.Second) }), Facts{RPOThreshold: time.Minute, AgentOnline: true},
			api.HealthWarning, []string{"RPO 1m30s is over the policy's threshold 1m0s"}},
		{"rpo twice over", with(protected, func(m *api.Machine) { m.RPO = api.Duration(3 * time.Minute) }), Facts{RPOThreshold: time.Minute, AgentOnline: true},
			api.HealthCritical, []string{"RPO 3m0s"}},
		{"agent offline", protected, Facts{AgentOnline: false}, api.HealthCritical, []string{"the agent is offline", "systemctl status lifeboat-agent"}},
		{"process offline", protected, Facts{AgentOnline: true, Process: &api.ProcessServer{Name: "ps2", State: api.ProcessOffline}},
			api.HealthCritical, []string{"process server ps2 is offline"}},
		{"cache full", protected, Facts{AgentOnline: true, Process: &api.ProcessServer{Name: "ps1", State: api.ProcessOnline, Throttled: true, CacheUsed: 1 << 30, CacheLimit: 1 << 30}},
			api.HealthWarning, []string{"full cache (1024 of 1024 MiB)"}},
		{"initial", with(protected, func(m *api.Machine) {
			m.State, m.Progress = api.StateInitial, &api.Progress{Total: 100, Done: 42, Percent: 42, ETA: api.Duration(time.Minute)}
		}), Facts{AgentOnline: true}, api.HealthWarning, []string{"initial replication 42%, about 1m0s left"}},
		{"paused, agent away", with(protected, func(m *api.Machine) { m.State = api.StatePaused }), Facts{}, api.HealthWarning, []string{"paused", "lifeboat resume web"}},
		{"error", with(protected, func(m *api.Machine) { m.State, m.Reason = api.StateError, "disk vanished" }), Facts{AgentOnline: true},
			api.HealthCritical, []string{"replication fails: disk vanished"}},
		{"drill failed", protected, Facts{AgentOnline: true, LastDrillFailed: true, DrillJob: "j1", DrillError: "no boot"},
			api.HealthWarning, []string{"the last drill (j1) failed: no boot"}},
		{"failed over", with(protected, func(m *api.Machine) { m.State = api.StateFailedOver }), Facts{}, api.HealthWarning, []string{"lifeboat failover commit web"}},
		{"unprotected", with(protected, func(m *api.Machine) { m.State = api.StateUnprotected }), Facts{}, api.HealthHealthy, nil},
		{"vault down", protected, Facts{AgentOnline: true, VaultProblem: "the vault s3:b/p does not answer: timeout"}, api.HealthCritical,
			[]string{"the vault s3:b/p does not answer: timeout: no point can be stored or read", "lifeboat check-config"}},
		{"cert expiring", protected, Facts{AgentOnline: true, CertLevel: api.HealthWarning, CertMessage: "expires in 20 days (2027-01-01) and has not been renewed"},
			api.HealthWarning, []string{"the agent's certificate expires in 20 days", "cert_renew_failed"}},
		{"cert fine", protected, Facts{AgentOnline: true, CertLevel: api.HealthHealthy, CertMessage: "valid until 2027-03-01"}, api.HealthHealthy, nil},
	} {
		h := Of(c.m, c.f)
		if h.Level != c.level {
			t.Errorf("%s: level %s, want %s (%+v)", c.name, h.Level, c.level, h.Reasons)
			continue
		}
		var all []string
		for _, r := range h.Reasons {
			if r.Remedy == "" || r.Reason == "" {
				t.Errorf("%s: a reason without words or remedy: %+v", c.name, r)
			}
			all = append(all, r.Reason+" | "+r.Remedy)
		}
		for _, w := range c.words {
			if !strings.Contains(strings.Join(all, "\n"), w) {
				t.Errorf("%s: reasons %q lack %q", c.name, all, w)
			}
		}
		if len(c.words) == 0 && len(h.Reasons) != 0 {
			t.Errorf("%s: reasons %+v, want none", c.name, h.Reasons)
		}
	}
}

// TestDisks: each protected disk is judged: its own reasons (gone from
// the inventory, a damaged block read) and the machine's that stop its
// points; a disk's own reason is the machine's too, named.
func TestDisks(t *testing.T) {
	m := api.Machine{Name: "db", State: api.StateProtected, Disks: []string{"vda", "vdb"},
		Inventory: api.Inventory{Disks: []api.DiskInfo{{Name: "vda"}, {Name: "vdc"}}}}
	h := Of(m, Facts{AgentOnline: true, DiskErrors: map[string]string{"vda": "2026-12-08T00:00:00Z reading disk vda failed"}})
	if h.Level != api.HealthCritical || len(h.Disks) != 2 {
		t.Fatalf("health %+v", h)
	}
	vda, vdb := h.Disks[0], h.Disks[1]
	if vda.Disk != "vda" || vda.Level != api.HealthCritical || len(vda.Reasons) != 1 || !strings.Contains(vda.Reasons[0].Reason, "damaged block") ||
		!strings.Contains(vda.Reasons[0].Remedy, "vault check --read-data") {
		t.Errorf("vda: %+v", vda)
	}
	if vdb.Disk != "vdb" || vdb.Level != api.HealthCritical || len(vdb.Reasons) != 1 || !strings.Contains(vdb.Reasons[0].Reason, "gone from the machine's inventory") {
		t.Errorf("vdb: %+v", vdb)
	}
	var words []string
	for _, r := range h.Reasons {
		words = append(words, r.Reason)
	}
	if len(h.Reasons) != 2 || !strings.HasPrefix(words[0], "disk vda: ") || !strings.HasPrefix(words[1], "disk vdb: ") {
		t.Errorf("machine reasons %q", words)
	}

	// All inventory disks when none are chosen; the agent offline stops
	// every disk's points.
	m.Disks = nil
	h = Of(m, Facts{})
	if len(h.Disks) != 2 || h.Disks[0].Disk != "vda" || h.Disks[1].Disk != "vdc" {
		t.Fatalf("disks %+v", h.Disks)
	}
	for _, d := range h.Disks {
		if d.Level != api.HealthCritical || len(d.Reasons) != 1 || !strings.Contains(d.Reasons[0].Reason, "the agent is offline") {
			t.Errorf("%s: %+v", d.Disk, d)
		}
	}
	if len(h.Reasons) != 1 {
		t.Errorf("the machine's reasons repeat the disks': %+v", h.Reasons)
	}
	// A healthy machine's disks are healthy, with no reasons.
	h = Of(m, Facts{AgentOnline: true})
	for _, d := range h.Disks {
		if d.Level != api.HealthHealthy || len(d.Reasons) != 0 {
			t.Errorf("%s: %+v", d.Disk, d)
		}
	}
}
