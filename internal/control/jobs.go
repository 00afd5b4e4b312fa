package control

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
)

// Jobs: the kinds the server runs, what it does when one ends (the drill
// history, orphaned VMs), and the jobs API: list, show with a long poll,
// cancel, resume.

// jobKinds are the orchestrator's kinds, with the server's own step after
// a cleanup: the notes go into the drill's job (the drill history).
func (s *Server) jobKinds(o *orchestrate.Orchestrator) []jobs.Kind {
	kinds := o.Kinds()
	for i, k := range kinds {
		if k.Name != orchestrate.KindCleanup {
			continue
		}
		inner := k.Steps
		kinds[i].Steps = func(j *jobs.Job) ([]jobs.StepDef, error) {
			defs, err := inner(j)
			return append(defs, jobs.StepDef{Name: "record drill notes", Run: s.recordDrillNotes}), err
		}
	}
	kinds = append(append(kinds, s.reprotectKind()), s.wayBackKinds()...)
	return append(kinds, o.PlanKindDefs()...)
}

// recordDrillNotes keeps a cleanup's notes in the test failover's job.
func (s *Server) recordDrillNotes(ctx context.Context, sc *jobs.StepContext) error {
	var p orchestrate.Params
	if err := sc.Params(&p); err != nil {
		return err
	}
	if p.VM == nil || p.VM.Job == "" {
		return nil
	}
	j := sc.Job()
	entry, err := json.Marshal(api.DrillCleanup{Job: j.ID, Notes: p.Notes, Time: sc.Now().UTC(), Actor: j.Actor})
	if err != nil {
		return err
	}
	_, err = s.store.UpdateJob(ctx, p.VM.Job, func(d *jobs.Job) error {
		if d.Data == nil {
			d.Data = map[string]json.RawMessage{}
		}
		if _, ok := d.Data["cleanup"]; !ok {
			d.Data["cleanup"] = entry
		}
		return nil
	})
	if errors.Is(err, jobs.ErrNotFound) {
		sc.Log(ctx, "the drill's job %s is gone: notes kept in this job only", p.VM.Job)
		return nil
	}
	if err != nil {
		return err
	}
	sc.Log(ctx, "notes recorded with drill job %s", p.VM.Job)
	return nil
}

// jobChanged wakes long polls of the job; when a failover job ends in
// failure or cancelled, VMs nobody refers to any more are removed.
func (s *Server) jobChanged(j jobs.Job) {
	if s.rec == nil {
		return
	}
	s.rec.jobWake.notify(j.ID)
	s.jobEvent(j)
	if !jobs.Terminal(j.State) || j.State == jobs.StateSucceeded {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.endedBadly(ctx, j); err != nil {
			s.log.Warn("after a failed job", "job", j.ID, "err", err)
		}
	}()
}

// endedBadly handles a job that failed or was cancelled: a planned
// failover that did not fail over lets the source replicate again, and
// VMs it left behind are cleaned up.
func (s *Server) endedBadly(ctx context.Context, j jobs.Job) error {
	var p orchestrate.Params
	_ = json.Unmarshal(j.Params, &p)
	if j.Kind == orchestrate.KindFailover && p.Planned {
		m, err := s.store.GetMachine(ctx, j.Target)
		if err == nil && m.Recovery != nil && m.Recovery.Failover == nil && m.Recovery.Shutdown != nil {
			if err := s.withdrawShutdown(ctx, j.Target, j); err != nil {
				return err
			}
		}
	}
	return s.reapOrphans(ctx)
}

// withdrawShutdown withdraws the shutdown request of a planned failover
// that did not fail over: the agent replicates again.
func (s *Server) withdrawShutdown(ctx context.Context, machine string, j jobs.Job) error {
	_, err := s.store.UpdateMachine(ctx, machine, func(m *api.Machine) error {
		if r := m.Recovery; r != nil && r.Failover == nil {
			r.Shutdown, r.ShutdownAck = nil, nil
			if r.Empty() {
				m.Recovery = nil
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("withdraw the shutdown request of %s: %w", machine, err)
	}
	s.notify.notify(machine)
	s.event(ctx, api.Event{Kind: "failover_failed", Severity: api.SeverityWarning, Machine: machine,
		Message: fmt.Sprintf("planned failover of %s %s (job %s): %s; the shutdown request is withdrawn and replication resumes once the source runs", machine, j.State, j.ID, j.Error)})
	return nil
}

// reapOrphans removes VMs of the site directory that no machine and no
// active job refers to (a job cancelled between starting a VM and
// recording it): a cleanup job per VM.
func (s *Server) reapOrphans(ctx context.Context) error {
	s.rec.submitMu.Lock()
	defer s.rec.submitMu.Unlock()
	recs, err := orchestrate.ReadRecords(s.rec.site.Dir)
	if err != nil || len(recs) == 0 {
		return err
	}
	ms, err := s.store.ListMachines(ctx)
	if err != nil {
		return err
	}
	used := map[string]bool{}
	for _, m := range ms {
		if r := m.Recovery; r != nil {
			for _, vm := range []*api.RecoveredVM{r.Drill, r.Failover} {
				if vm != nil {
					used[vm.Name] = true
				}
			}
		}
	}
	active, err := s.store.ListJobs(ctx, jobs.ListOptions{Active: true, Limit: 10000})
	if err != nil {
		return err
	}
	for _, j := range active {
		var vm orchestrate.VMRecord
		if ok, _ := j.Get("vm", &vm); ok {
			used[vm.Name] = true
		}
		var p orchestrate.Params
		if json.Unmarshal(j.Params, &p) == nil && p.VM != nil {
			used[p.VM.Name] = true
		}
	}
	for _, vm := range recs {
		if used[vm.Name] {
			continue
		}
		if j, err := s.store.GetJob(ctx, vm.Job); err == nil && !jobs.Terminal(j.State) {
			continue
		}
		s.log.Warn("removing a recovery VM no machine or job refers to", "vm", vm.Name, "machine", vm.Machine, "job", vm.Job)
		v := vm
		if _, err := s.rec.runner.Submit(ctx, orchestrate.KindCleanup, vm.Machine,
			orchestrate.Params{Machine: vm.Machine, VM: &v, Notes: "removed by the server: its job " + vm.Job + " ended without it"}, "server"); err != nil {
			return err
		}
	}
	return nil
}

// ---- the job as the API shows it ----

func jobVersion(j jobs.Job) int64 {
	b, _ := json.Marshal(j)
	sum := sha256.Sum256(b)
	return int64(binary.BigEndian.Uint64(sum[:8]) >> 2)
}

// jobView is a job with what it recovered.
func (s *Server) jobView(j jobs.Job) api.Job {
	v := api.Job{Job: j, Version: jobVersion(j)}
	_, _ = j.Get("point", &v.Point)
	var vm orchestrate.VMRecord
	if ok, _ := j.Get("vm", &vm); ok {
		v.VMs = append(v.VMs, *toRecoveredVM(vm))
	}
	var p orchestrate.Params
	if json.Unmarshal(j.Params, &p) == nil && p.VM != nil && (len(v.VMs) == 0 || v.VMs[0].Name != p.VM.Name) {
		v.VMs = append(v.VMs, *toRecoveredVM(*p.VM))
	}
	var c api.DrillCleanup
	if ok, _ := j.Get("cleanup", &c); ok {
		v.Cleanup = &c
	}
	var rp api.ReversePoint
	if ok, _ := j.Get("reverse_point", &rp); ok {
		v.ReversePoint = &rp
	}
	var fb api.FailedBack
	if ok, _ := j.Get("failed_back", &fb); ok {
		v.FailedBack = &fb
	}
	var t api.TargetReport
	if ok, _ := j.Get("target", &t); ok {
		v.TargetWriter = &t
	}
	return v
}

// ---- the jobs API ----

var jobIDPattern = regexp.MustCompile(`^[0-9a-f]{4,64}$`)

func (s *Server) jobOf(r *http.Request) (jobs.Job, error) {
	id := r.PathValue("id")
	if !jobIDPattern.MatchString(id) {
		return jobs.Job{}, notFound("no job %q: job IDs are hex (lifeboat jobs list)", id)
	}
	j, err := s.store.GetJob(r.Context(), id)
	if errors.Is(err, jobs.ErrNotFound) {
		return j, notFound("no job %s (lifeboat jobs list)", id)
	}
	return j, err
}

func (s *Server) listJobs(w http.ResponseWriter, r *http.Request, _ *caller) error {
	machine, err := queryName(r, "machine", "machine")
	if err != nil {
		return err
	}
	kind := r.URL.Query().Get("kind")
	if kind != "" && !slices.ContainsFunc(s.jobKinds(s.rec.orch), func(k jobs.Kind) bool { return k.Name == kind }) {
		return badRequest("kind %q: want test-failover, failover, change-point, commit, cancel or cleanup", kind)
	}
	active := false
	if a := r.URL.Query().Get("active"); a != "" {
		if active, err = strconv.ParseBool(a); err != nil {
			return badRequest("active=%q: want true or false", a)
		}
	}
	limit, err := queryInt(r, "limit", 100, 1, 10000)
	if err != nil {
		return err
	}
	js, err := s.store.ListJobs(r.Context(), jobs.ListOptions{Target: machine, Kind: kind, Active: active, Limit: int(limit)})
	if err != nil {
		return err
	}
	out := make([]api.Job, 0, len(js))
	for _, j := range js {
		out = append(out, s.jobView(j))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// getJob answers a job; with ?wait=DURATION it holds the answer until the
// job's version differs from ?version= (or the job ends), as the agent
// heartbeat's long poll does.
func (s *Server) getJob(w http.ResponseWriter, r *http.Request, _ *caller) error {
	var wait time.Duration
	if q := r.URL.Query().Get("wait"); q != "" {
		d, err := time.ParseDuration(q)
		if err != nil || d < 0 || d > maxLongPoll {
			return badRequest("wait=%q: want a duration from 0s to %s", q, maxLongPoll)
		}
		wait = d
	}
	known, err := queryInt(r, "version", 0, 0, 1<<62)
	if err != nil {
		return err
	}
	j, err := s.jobOf(r)
	if err != nil {
		return err
	}
	if wait > 0 && jobVersion(j) == known && !jobs.Terminal(j.State) {
		timer := time.NewTimer(wait) // wallclock: the client asked to be answered within wait of real time (its HTTP timeout)
		defer timer.Stop()
		for jobVersion(j) == known && !jobs.Terminal(j.State) {
			ch := s.rec.jobWake.wait(j.ID)
			if j, err = s.store.GetJob(r.Context(), j.ID); err != nil {
				return err
			}
			if jobVersion(j) != known {
				break
			}
			select {
			case <-ch:
			case <-timer.C:
				writeJSON(w, http.StatusOK, s.jobView(j))
				return nil
			case <-r.Context().Done():
				return r.Context().Err()
			}
		}
	}
	writeJSON(w, http.StatusOK, s.jobView(j))
	return nil
}

func (s *Server) cancelJob(w http.ResponseWriter, r *http.Request, c *caller) error {
	if err := decode(r, &struct{}{}, true); err != nil {
		return err
	}
	j, err := s.jobOf(r)
	if err != nil {
		return err
	}
	if jobs.Terminal(j.State) {
		return conflict("job %s has already ended (%s)", j.ID, j.State)
	}
	if j, err = s.rec.runner.Cancel(r.Context(), j.ID); err != nil {
		return conflict("%v", err)
	}
	s.audit(r, c, j.Target, fmt.Sprintf("cancelled job %s (%s of %s)", j.ID, j.Kind, j.Target))
	writeJSON(w, http.StatusOK, s.jobView(j))
	return nil
}

func (s *Server) resumeJob(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req api.ResumeRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if req.Action != "ack" && req.Action != "abort" {
		return badRequest("action %q: want ack or abort", req.Action)
	}
	j, err := s.jobOf(r)
	if err != nil {
		return err
	}
	if j.State != jobs.StateWaiting {
		return conflict("job %s is %s, not waiting for an operator", j.ID, j.State)
	}
	if j, err = s.rec.runner.Resume(r.Context(), j.ID, req.Action == "ack"); err != nil {
		return conflict("%v", err)
	}
	s.audit(r, c, j.Target, fmt.Sprintf("answered job %s (%s of %s): %s", j.ID, j.Kind, j.Target, req.Action))
	writeJSON(w, http.StatusOK, s.jobView(j))
	return nil
}
