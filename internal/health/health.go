// Package health judges a machine: healthy, warning or critical, with
// every reason in words and what to do about it. It is a pure function of
// what the server knows (the machine's record and RPO, its agent, its
// process server, its policy's threshold, its last drill), so the API,
// the CLI, the metrics and alert rules all say the same thing.
package health

import (
	"fmt"
	"slices"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Facts are what a judgement needs beside the machine.
type Facts struct {
	RPOThreshold time.Duration // the policy's; 0: none
	AgentOnline  bool
	// Process is the machine's process server (nil: none assigned or
	// not known).
	Process *api.ProcessServer
	// LastDrillFailed: the machine's newest finished drill failed, with
	// DrillError and DrillJob.
	LastDrillFailed bool
	DrillJob        string
	DrillError      string
	// VaultProblem is why the vault did not answer the server's last
	// check ("": it did).
	VaultProblem string
	// CertLevel and CertMessage judge the agent's certificate (""
	// until its agent has reported since the server started).
	CertLevel, CertMessage string
	// DiskErrors are the disks of which a read of a served point failed
	// lately (a damaged block in the vault): disk -> what failed.
	DiskErrors map[string]string
}

// replicating are the states in which a machine is meant to be
// replicated (forward, or back from the recovery site).
var replicating = []string{api.StateInitial, api.StateProtected, api.StateResyncing, api.StatePaused, api.StateError,
	api.StateReprotecting, api.StateReprotected}

// Of judges m (whose RPO is already computed).
func Of(m api.Machine, f Facts) api.Health {
	var rs []api.HealthReason
	add := func(level, reason, remedy string) {
		rs = append(rs, api.HealthReason{Level: level, Reason: reason, Remedy: remedy})
	}
	if !slices.Contains(replicating, m.State) {
		return recoveryHealth(m, f)
	}
	replication(m, f, add)
	if m.State != api.StateReprotecting && m.State != api.StateReprotected {
		agentAndProcess(m, f, add)
		cert(f, add)
	}
	vaultReason(f, add)
	rpo(m, f, add)
	shared := rs // what stops every disk's points
	disks := diskHealth(m, f, shared)
	for _, d := range disks {
		for _, r := range d.Reasons[:len(d.Reasons)-len(shared)] {
			add(r.Level, "disk "+d.Disk+": "+r.Reason, r.Remedy)
		}
	}
	drill(f, add)
	h := judged(rs)
	h.Disks = disks
	return h
}

// diskHealth judges each protected disk: its own reasons first, then
// the machine's that stop its points (shared).
func diskHealth(m api.Machine, f Facts, shared []api.HealthReason) []api.DiskHealth {
	names := m.Disks
	inInventory := map[string]bool{}
	for _, d := range m.Inventory.Disks {
		inInventory[d.Name] = true
		if len(m.Disks) == 0 {
			names = append(names, d.Name)
		}
	}
	out := make([]api.DiskHealth, 0, len(names))
	for _, n := range names {
		var own []api.HealthReason
		if !inInventory[n] && len(m.Inventory.Disks) > 0 {
			own = append(own, api.HealthReason{Level: api.HealthCritical, Reason: "gone from the machine's inventory: it has no new points",
				Remedy: "if it was removed on purpose, protect the machine again without it (`lifeboat protect " + m.Name + " --disks ...`)"})
		}
		if e, ok := f.DiskErrors[n]; ok {
			own = append(own, api.HealthReason{Level: api.HealthCritical, Reason: "a read of its recovery point failed (a damaged block in the vault): " + e,
				Remedy: "`lifeboat vault check --read-data`; a resync (`lifeboat resync " + m.Name + "`) stores the disk's blocks again"})
		}
		j := judged(append(own, shared...))
		out = append(out, api.DiskHealth{Disk: n, Level: j.Level, Reasons: j.Reasons})
	}
	return out
}

func cert(f Facts, add func(level, reason, remedy string)) {
	if f.CertLevel != "" && f.CertLevel != api.HealthHealthy {
		add(f.CertLevel, "the agent's certificate "+f.CertMessage, "the agent renews it at two thirds of its life: see its log (cert_renew_failed); enroll it again if it cannot")
	}
}

func vaultReason(f Facts, add func(level, reason, remedy string)) {
	if f.VaultProblem != "" {
		add(api.HealthCritical, f.VaultProblem+": no point can be stored or read", "check the storage from the server and the process servers (`lifeboat check-config`)")
	}
}

func replication(m api.Machine, f Facts, add func(level, reason, remedy string)) {
	switch m.State {
	case api.StateError:
		add(api.HealthCritical, "replication fails: "+m.Reason, "see `lifeboat machines show "+m.Name+"` and the agent's log; a resync (`lifeboat resync`) starts over if its tracking was lost")
	case api.StatePaused:
		add(api.HealthWarning, "replication is paused: no new recovery points", "`lifeboat resume "+m.Name+"`")
	case api.StateInitial:
		add(api.HealthWarning, "initial replication"+progress(m.Progress)+": no recovery point yet", "wait for the first point; `lifeboat machines show "+m.Name+"` shows its progress")
	case api.StateResyncing:
		add(api.HealthWarning, "resynchronising"+progress(m.Progress)+": the disks are compared with the vault", "wait: points resume when it ends")
	}
	if m.ResyncWanted && m.State != api.StateResyncing {
		add(api.HealthWarning, "a resync is required", "it starts at the agent's next cycle; check that the agent runs")
	}
}

func agentAndProcess(m api.Machine, f Facts, add func(level, reason, remedy string)) {
	if !f.AgentOnline && m.State != api.StatePaused {
		since := ""
		if !m.LastSeen.IsZero() {
			since = " since " + m.LastSeen.UTC().Format(time.RFC3339)
		}
		add(api.HealthCritical, "the agent is offline"+since, "check the host of "+m.Name+" and `systemctl status lifeboat-agent` there")
	}
	p := f.Process
	switch {
	case p == nil:
	case p.State != "" && p.State != api.ProcessOnline:
		add(api.HealthCritical, fmt.Sprintf("its process server %s is %s", p.Name, p.State), "check `systemctl status lifeboat-process` on "+p.Name+"; its machines move to another process server after process_move_after")
	case p.Throttled:
		add(api.HealthWarning, fmt.Sprintf("its process server %s has a full cache (%d of %d MiB): agents are slowed down", p.Name, p.CacheUsed>>20, p.CacheLimit>>20),
			"check the vault's reachability and bandwidth from "+p.Name+", or give it a larger cache")
	}
}

func rpo(m api.Machine, f Facts, add func(level, reason, remedy string)) {
	if f.RPOThreshold <= 0 || m.RPO.Std() <= f.RPOThreshold {
		return
	}
	level := api.HealthWarning
	if m.RPO.Std() > 2*f.RPOThreshold {
		level = api.HealthCritical
	}
	add(level, fmt.Sprintf("RPO %s is over the policy's threshold %s", m.RPO.Std().Round(time.Second), f.RPOThreshold),
		"look for why points stop: the agent, its process server, bandwidth (`lifeboat machines show "+m.Name+"`)")
}

func drill(f Facts, add func(level, reason, remedy string)) {
	if f.LastDrillFailed {
		add(api.HealthWarning, "the last drill ("+f.DrillJob+") failed: "+f.DrillError, "fix what it reports and run `lifeboat test-failover` again")
	}
}

// recoveryHealth judges a machine that is not replicated now: one whose
// failover awaits a decision is a warning.
func recoveryHealth(m api.Machine, f Facts) api.Health {
	var rs []api.HealthReason
	switch m.State {
	case api.StateFailedOver:
		rs = append(rs, api.HealthReason{Level: api.HealthWarning, Reason: "failed over, not committed: the machine runs at the recovery site and is not protected",
			Remedy: "`lifeboat failover commit " + m.Name + "` (then reprotect) or `lifeboat failover cancel " + m.Name + "`"})
	case api.StateCommitted:
		rs = append(rs, api.HealthReason{Level: api.HealthWarning, Reason: "failover committed: nothing protects the machine now",
			Remedy: "`lifeboat reprotect " + m.Name + "`"})
	case api.StateFailingBack:
		rs = append(rs, api.HealthReason{Level: api.HealthWarning, Reason: "failed back, not committed",
			Remedy: "`lifeboat failback commit " + m.Name + "` or `lifeboat failback cancel " + m.Name + "`"})
	case api.StateFailedBack:
		rs = append(rs, api.HealthReason{Level: api.HealthWarning, Reason: "failed back: forward protection is off",
			Remedy: "`lifeboat re-enable " + m.Name + "`"})
	}
	if f.LastDrillFailed {
		drill(f, func(level, reason, remedy string) {
			rs = append(rs, api.HealthReason{Level: level, Reason: reason, Remedy: remedy})
		})
	}
	return judged(rs)
}

// judged is the worst level among the reasons (healthy without any).
func judged(rs []api.HealthReason) api.Health {
	h := api.Health{Level: api.HealthHealthy, Reasons: rs}
	for _, r := range rs {
		if r.Level == api.HealthCritical || h.Level == api.HealthHealthy {
			h.Level = r.Level
		}
	}
	if h.Reasons == nil {
		h.Reasons = []api.HealthReason{}
	}
	return h
}

func progress(p *api.Progress) string {
	if p == nil || p.Total <= 0 {
		return ""
	}
	s := fmt.Sprintf(" %.0f%%", p.Percent)
	if p.ETA > 0 {
		s += ", about " + p.ETA.Std().Round(time.Second).String() + " left"
	}
	return s
}

// Value is a level as a number for metrics: 0 healthy, 1 warning, 2
// critical.
func Value(level string) float64 {
	switch level {
	case api.HealthWarning:
		return 1
	case api.HealthCritical:
		return 2
	}
	return 0
}
