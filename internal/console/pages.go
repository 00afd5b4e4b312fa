package console

import (
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
	"github.com/lifeboat-dr/lifeboat/internal/units"
)

// funcs are the templates' helpers.
var funcs = template.FuncMap{
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04:05") + " UTC"
	},
	"dur": func(d api.Duration) string { return d.Std().Round(time.Second).String() },
	// pdur is a plan report's duration, as `lifeboat drills show` prints it.
	"pdur": func(d plan.Duration) string {
		if d <= 0 {
			return "-"
		}
		return d.Std().Round(10 * time.Millisecond).String()
	},
	// readyafter is when a machine of a report was ready ("-": not yet).
	"readyafter": func(m plan.MachineReport) string {
		if m.Ready.IsZero() {
			return "-"
		}
		return m.ReadyAfter.Std().Round(10 * time.Millisecond).String()
	},
	"short":     func(s string) string { return s[:min(len(s), 12)] },
	"planrun":   func(kind string) bool { return slices.Contains(planRunKinds, kind) },
	"ended":     func(state string) bool { return slices.Contains([]string{"succeeded", "failed", "cancelled"}, state) },
	"planlabel": func(op string) string { return planActions[op].label },
	"mib":       func(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) },
	"size":      units.Human,
	"int64":     func(f float64) int64 { return int64(f) },
	"percent":   func(f float64) string { return fmt.Sprintf("%.0f%%", 100*f) },
	"label":     actionLabel,
	"level": func(h *api.Health) string {
		if h == nil {
			return "unknown"
		}
		return h.Level
	},
}

// actions maps the state model's actions to API paths and bodies; the
// console offers only these, and only those the machine allows now.
var actions = map[string]struct {
	path  string
	body  any
	label string
	warn  string
}{
	"protect":          {"protect", nil, "Protect", "The machine's agent starts replicating it with the policy you choose."},
	"pause":            {"pause", nil, "Pause replication", "No new recovery points are taken until you resume."},
	"resume":           {"resume", nil, "Resume replication", ""},
	"resync":           {"resync", nil, "Resync", "The disks are read whole and compared with the vault."},
	"test-failover":    {"test-failover", api.TestFailoverRequest{}, "Test failover (drill)", "A VM boots from the newest point on the isolated test network; production is not touched."},
	"cleanup":          {"test-failover/cleanup", api.CleanupRequest{Notes: "cleaned up from the console"}, "Clean up the drill", "The drill's VM and its disks are removed."},
	"failover":         {"failover", api.FailoverRequest{}, "Fail over", "The newest point boots at the recovery site on the production network; replication of the source pauses."},
	"planned-failover": {"failover", api.FailoverRequest{Planned: true}, "Planned failover", "The source is shut down, a final point is cut, and the machine boots at the recovery site without losing a write."},
	"commit":           {"failover/commit", nil, "Commit the failover", "The old source is no longer replicated; the way back is reprotect."},
	"cancel-failover":  {"failover/cancel", nil, "Cancel the failover", "The recovered VM is removed and replication of the source resumes."},
	"reprotect":        {"reprotect", api.ReprotectRequest{}, "Reprotect", "The recovered VM is replicated back toward the primary site."},
	"failback":         {"failback", nil, "Fail back", "The recovery VM shuts down, a final point is applied at the primary site and the original starts there."},
	"commit-failback":  {"failback/commit", nil, "Commit the failback", "The recovery VM is removed."},
	"cancel-failback":  {"failback/cancel", nil, "Cancel the failback", "The original stops and the recovery VM runs again."},
	"re-enable":        {"re-enable", nil, "Re-enable protection", "The original machine replicates to the recovery site again."},
}

func actionLabel(a string) string {
	if x, ok := actions[a]; ok {
		return x.label
	}
	return a
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, http.StatusOK, "login", nil, map[string]any{"Next": safeNext(r.URL.Query().Get("next"))})
}

// safeNext keeps a redirect inside the console.
func safeNext(n string) string {
	if !strings.HasPrefix(n, "/ui/") || strings.HasPrefix(n, "//") || strings.Contains(n, "\\") {
		return "/ui/"
	}
	return n
}

// login checks the API token through the API (whoami) and opens a
// session for it.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if err := sameOrigin(r); err != nil {
		c.fail(w, r, http.StatusForbidden, err.Error())
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	token := strings.TrimSpace(r.PostFormValue("token"))
	var who api.WhoAmI
	if token == "" || c.call(r, token, http.MethodGet, "/api/v1/whoami", nil, &who) != nil {
		c.render(w, http.StatusUnauthorized, "login", nil, map[string]any{"Error": "That token was refused: check it, or ask an admin for one (lifeboat token create --role viewer|operator|admin).",
			"Next": safeNext(r.PostFormValue("next"))})
		return
	}
	s := &session{id: newID(), csrf: newID(), token: token, who: who, expires: c.o.Clock.Now().Add(c.o.TTL)}
	if !who.Expires.IsZero() && who.Expires.Before(s.expires) {
		s.expires = who.Expires
	}
	c.mu.Lock()
	c.pruneLocked()
	c.sessions[s.id] = s
	c.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: Cookie, Value: s.id, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Expires: s.expires})
	c.log.Info("console login", "token", who.TokenID, "name", who.Name, "role", who.Role, "from", r.RemoteAddr)
	http.Redirect(w, r, safeNext(r.PostFormValue("next")), http.StatusSeeOther)
}

// pruneLocked drops expired sessions, and the oldest when there are too
// many.
func (c *Console) pruneLocked() {
	now := c.o.Clock.Now()
	for id, s := range c.sessions {
		if !now.Before(s.expires) {
			delete(c.sessions, id)
		}
	}
	for len(c.sessions) >= maxSessions {
		var oldest *session
		for _, s := range c.sessions {
			if oldest == nil || s.expires.Before(oldest.expires) {
				oldest = s
			}
		}
		delete(c.sessions, oldest.id)
	}
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, s *session) {
	c.mu.Lock()
	delete(c.sessions, s.id)
	c.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: Cookie, Value: "", Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}

func (c *Console) dashboard(w http.ResponseWriter, r *http.Request, s *session) {
	var st api.Status
	if err := c.call(r, s.token, http.MethodGet, "/api/v1/status", nil, &st); err != nil {
		c.failAPI(w, r, err)
		return
	}
	var js []api.Job
	_ = c.call(r, s.token, http.MethodGet, "/api/v1/jobs?active=true", nil, &js)
	sort.Slice(st.Machines, func(i, j int) bool {
		return rank(st.Machines[i].Health) > rank(st.Machines[j].Health) || rank(st.Machines[i].Health) == rank(st.Machines[j].Health) && st.Machines[i].Name < st.Machines[j].Name
	})
	counts := map[string]int{}
	for _, m := range st.Machines {
		counts[funcs["level"].(func(*api.Health) string)(m.Health)]++
	}
	c.render(w, http.StatusOK, "dashboard", s, map[string]any{"Status": st, "Jobs": js, "Counts": counts, "Live": true, "Since": c.newestEvent(r, s)})
}

func rank(h *api.Health) int {
	if h == nil {
		return 0
	}
	return map[string]int{api.HealthCritical: 3, api.HealthWarning: 2, api.HealthHealthy: 1}[h.Level]
}

func (c *Console) machine(w http.ResponseWriter, r *http.Request, s *session) {
	name := r.PathValue("name")
	var m api.Machine
	if err := c.call(r, s.token, http.MethodGet, client.Path("machines", name), nil, &m); err != nil {
		c.failAPI(w, r, err)
		return
	}
	var pts []api.Point
	_ = c.call(r, s.token, http.MethodGet, "/api/v1/points?machine="+url.QueryEscape(name)+"&limit=50", nil, &pts)
	var offered []string
	for _, a := range m.AllowedActions {
		if _, ok := actions[a]; ok {
			offered = append(offered, a)
		}
	}
	rpoChart, churnChart := charts(pts)
	c.render(w, http.StatusOK, "machine", s, map[string]any{"M": m, "Points": pts, "Actions": offered, "Live": true, "Since": c.newestEvent(r, s),
		"RPOChart": rpoChart, "ChurnChart": churnChart})
}

// confirm asks before an action: what it does, and a form to do it.
func (c *Console) confirm(w http.ResponseWriter, r *http.Request, s *session) {
	name, a := r.PathValue("name"), r.PathValue("action")
	x, ok := actions[a]
	if !ok {
		c.fail(w, r, http.StatusNotFound, "no action "+a)
		return
	}
	data := map[string]any{"Name": name, "Label": x.label, "Warn": x.warn,
		"Post": "/ui/machines/" + url.PathEscape(name) + "/do/" + a, "Back": "/ui/machines/" + url.PathEscape(name)}
	if a == "protect" {
		var ps []api.Policy
		if err := c.call(r, s.token, http.MethodGet, "/api/v1/policies", nil, &ps); err != nil {
			c.failAPI(w, r, err)
			return
		}
		data["Policies"] = ps
	}
	c.render(w, http.StatusOK, "confirm", s, data)
}

// act runs a confirmed action through the API (which checks the role and
// the machine's state) and shows the job it started, or the machine.
func (c *Console) act(w http.ResponseWriter, r *http.Request, s *session) {
	name, a := r.PathValue("name"), r.PathValue("action")
	x, ok := actions[a]
	if !ok {
		c.fail(w, r, http.StatusNotFound, "no action "+a)
		return
	}
	body := x.body
	if a == "protect" {
		body = api.ProtectRequest{Policy: r.PostFormValue("policy")}
	}
	var out map[string]any
	if err := c.call(r, s.token, http.MethodPost, client.Path("machines", name)+"/"+x.path, body, &out); err != nil {
		c.failAPI(w, r, err)
		return
	}
	if id, ok := out["id"].(string); ok && out["kind"] != nil {
		http.Redirect(w, r, "/ui/jobs/"+url.PathEscape(id), http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, "/ui/machines/"+url.PathEscape(name), http.StatusSeeOther)
}

func (c *Console) jobs(w http.ResponseWriter, r *http.Request, s *session) {
	var js []api.Job
	if err := c.call(r, s.token, http.MethodGet, "/api/v1/jobs?limit=100", nil, &js); err != nil {
		c.failAPI(w, r, err)
		return
	}
	c.render(w, http.StatusOK, "jobs", s, map[string]any{"Jobs": js, "Live": true, "Since": c.newestEvent(r, s)})
}

func (c *Console) job(w http.ResponseWriter, r *http.Request, s *session) {
	var j api.Job
	if err := c.call(r, s.token, http.MethodGet, client.Path("jobs", r.PathValue("id")), nil, &j); err != nil {
		c.failAPI(w, r, err)
		return
	}
	c.render(w, http.StatusOK, "job", s, map[string]any{"J": j, "Live": !slices.Contains([]string{"succeeded", "failed", "cancelled"}, j.State), "Since": c.newestEvent(r, s)})
}

// jobOp resumes (acknowledges) or cancels a job.
func (c *Console) jobOp(w http.ResponseWriter, r *http.Request, s *session) {
	id, op := r.PathValue("id"), r.PathValue("op")
	if op != "resume" && op != "cancel" {
		c.fail(w, r, http.StatusNotFound, "no job operation "+op)
		return
	}
	var body any
	if op == "resume" {
		body = api.ResumeRequest{Action: "ack"}
	}
	if err := c.call(r, s.token, http.MethodPost, client.Path("jobs", id, op), body, nil); err != nil {
		c.failAPI(w, r, err)
		return
	}
	http.Redirect(w, r, "/ui/jobs/"+url.PathEscape(id), http.StatusSeeOther)
}

// live is a server-sent event stream: "change" whenever the server has a
// new event, so open pages redraw without a reload by hand.
func (c *Console) live(w http.ResponseWriter, r *http.Request, s *session) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	// The page says which event it was drawn after: one that came
	// between its drawing and this stream redraws it at once.
	last, err := strconv.ParseInt(r.URL.Query().Get("since"), 10, 64)
	if err != nil || last < 0 {
		last = -1
	}
	t := c.o.Clock.NewTicker(2 * time.Second)
	defer t.Stop()
	jobID, jobVersion := r.URL.Query().Get("job"), r.URL.Query().Get("version")
	for {
		if jobID != "" { // a job's page: redraw when the job changes
			var j api.Job
			if err := c.call(r, s.token, http.MethodGet, client.Path("jobs", jobID), nil, &j); err != nil {
				return
			}
			if strconv.FormatInt(j.Version, 10) != jobVersion {
				fmt.Fprintf(w, "event: change\ndata: job\n\n")
				jobVersion = strconv.FormatInt(j.Version, 10)
			}
		}
		var evs []api.Event
		if err := c.call(r, s.token, http.MethodGet, "/api/v1/events?newest=true&limit=1", nil, &evs); err != nil {
			return
		}
		if len(evs) > 0 {
			if last >= 0 && evs[0].ID != last {
				fmt.Fprintf(w, "event: change\ndata: %d\n\n", evs[0].ID)
			}
			last = evs[0].ID
		} else if last < 0 {
			last = 0
		}
		fmt.Fprint(w, ": ping\n\n")
		if rc.Flush() != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-t.C():
		}
		if c.sessionOf(r) == nil {
			return
		}
	}
}

// newestEvent is the ID of the server's newest event (0: none): a live
// page records it, so its stream knows what the page has seen.
func (c *Console) newestEvent(r *http.Request, s *session) int64 {
	var evs []api.Event
	if c.call(r, s.token, http.MethodGet, "/api/v1/events?newest=true&limit=1", nil, &evs) != nil || len(evs) == 0 {
		return 0
	}
	return evs[0].ID
}
