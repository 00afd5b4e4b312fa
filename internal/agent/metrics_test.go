package agent

import (
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/metricsrv"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/promtest"
)

// TestMetrics: a cycle that cannot ship (no process server yet) counts as
// failed; once the server names one, a cycle publishes a point and the
// scrape shows it: cycles ok, their duration, the bytes captured, read
// and sent, and the point's time.
func TestMetrics(t *testing.T) {
	h := newHarness(t, "web-1", 256<<10)
	reg := metricsrv.NewRegistry()
	var err error
	if h.metrics, err = NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := NewMetrics(reg); err == nil {
		t.Error("the agent's metrics registered twice in one registry")
	}
	url := promtest.Serve(t, reg)
	m := map[string]string{"machine": "web-1"}
	failed := map[string]string{"machine": "web-1", "result": "failed"}
	ok := map[string]string{"machine": "web-1", "result": "ok"}
	processURL := h.cp.cfg.ProcessURL
	h.cp.setConfig(func(c *api.AgentConfig) {
		c.Protected, c.ProcessURL = true, ""
		c.Policy = &api.Policy{Name: "fast", CrashInterval: api.Duration(300 * time.Millisecond)}
	})
	a, stop := h.startAgent(t)

	var fams promtest.Families
	testutil.Eventually(t, 30*time.Second, func() bool {
		fams = promtest.Scrape(t, url)
		v, _ := fams.Value("lifeboat_agent_cycles_total", failed)
		return v >= 1
	}, "a failed cycle counted")
	if v, present := fams.Value("lifeboat_agent_cycles_total", ok); !present || v != 0 {
		t.Errorf("before any point lifeboat_agent_cycles_total{result=ok} = %v (present %v), want 0", v, present)
	}
	if _, present := fams.Value("lifeboat_agent_last_point_timestamp_seconds", m); present {
		t.Error("lifeboat_agent_last_point_timestamp_seconds is set before any point")
	}

	h.cp.setConfig(func(c *api.AgentConfig) { c.ProcessURL = processURL })
	testutil.Eventually(t, 30*time.Second, func() bool {
		fams = promtest.Scrape(t, url)
		v, _ := fams.Value("lifeboat_agent_cycles_total", ok)
		return v >= 1
	}, "a published cycle counted")
	stop()
	fams = promtest.Scrape(t, url)
	// The published cycles: those the control plane received and those
	// the agent had not delivered yet when it stopped.
	res, _, _, _ := h.cp.snapshot()
	a.mu.Lock()
	res = append(res, a.st.Results...)
	a.mu.Unlock()
	seen := map[string]bool{}
	var okResults float64
	var sent, changed int64
	var last time.Time
	for _, r := range res {
		if r.Error == "" && !seen[r.Point] {
			seen[r.Point] = true
			okResults++
			sent, changed = sent+r.SentBytes, changed+r.ChangedBytes
			if r.Time.After(last) {
				last = r.Time
			}
		}
	}
	if v, _ := fams.Value("lifeboat_agent_cycles_total", ok); v != okResults {
		t.Errorf("lifeboat_agent_cycles_total{result=ok} = %v, the control plane received %v published cycles", v, okResults)
	}
	if v, _ := fams.Value("lifeboat_agent_sent_bytes_total", m); v <= 0 || v != float64(sent) {
		t.Errorf("lifeboat_agent_sent_bytes_total = %v, want the %d bytes the cycles reported", v, sent)
	}
	if v, _ := fams.Value("lifeboat_agent_captured_bytes_total", m); v <= 0 || v != float64(changed) {
		t.Errorf("lifeboat_agent_captured_bytes_total = %v, want the %d bytes the cycles reported", v, changed)
	}
	if v, _ := fams.Value("lifeboat_agent_read_bytes_total", m); v < 128<<10 {
		t.Errorf("lifeboat_agent_read_bytes_total = %v, want at least the disk's data", v)
	}
	if v, _ := fams.Value("lifeboat_agent_cycle_duration_seconds", m); v < okResults+1 {
		t.Errorf("lifeboat_agent_cycle_duration_seconds counts %v cycles, want the failed ones and %v published", v, okResults)
	}
	if v, _ := fams.Value("lifeboat_agent_last_point_timestamp_seconds", m); v != float64(last.UnixMilli())/1000 {
		t.Errorf("lifeboat_agent_last_point_timestamp_seconds = %v, want the last point's cut %v", v, last)
	}

	// A restarted agent knows its newest point from its state.
	reg2 := metricsrv.NewRegistry()
	if h.metrics, err = NewMetrics(reg2); err != nil {
		t.Fatal(err)
	}
	h.cp.setConfig(func(c *api.AgentConfig) { c.Paused = true })
	_, stop = h.startAgent(t)
	defer stop()
	if v, _ := promtest.Scrape(t, promtest.Serve(t, reg2)).Value("lifeboat_agent_last_point_timestamp_seconds", m); v != float64(last.UnixMilli())/1000 {
		t.Errorf("after a restart lifeboat_agent_last_point_timestamp_seconds = %v, want the last point's cut %v", v, last)
	}
}
