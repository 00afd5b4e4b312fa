package dist

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestPrometheusRules: promtool checks the alerting rules and runs their
// unit tests (prometheus/lifeboat-rules_test.yml: which alerts fire
// when, with which words). That the metrics they name exist is checked
// against a real scrape in internal/control (TestMetricsNamedByDist).
func TestPrometheusRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		msg := "promtool not found: apt-get install prometheus"
		if os.Getenv("CI") != "" {
			t.Fatal(msg + " (CI)")
		}
		t.Skip(msg)
	}
	for _, args := range [][]string{{"check", "rules", "lifeboat-rules.yml"}, {"test", "rules", "lifeboat-rules_test.yml"}} {
		cmd := exec.CommandContext(t.Context(), promtool, args...)
		cmd.Dir = "prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}
}

// TestGrafanaDashboard: the dashboard is JSON Grafana imports: a title,
// a uid, and panels that each query something; with promtool, every
// query parses as PromQL (checked as a recording rule).
func TestGrafanaDashboard(t *testing.T) {
	var d struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(GrafanaDashboard, &d); err != nil {
		t.Fatal(err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard: title %q uid %q, %d panels", d.Title, d.UID, len(d.Panels))
	}
	rules := "groups:\n  - name: dashboard\n    rules:\n"
	for i, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for j, tg := range p.Targets {
			if tg.Expr == "" {
				t.Errorf("panel %q has an empty query", p.Title)
			}
			q, _ := json.Marshal(tg.Expr)
			rules += fmt.Sprintf("      - record: lifeboat:dashboard_%d_%d\n        expr: %s\n", i, j, q)
		}
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		return // TestPrometheusRules says so
	}
	f := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(f, []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(t.Context(), promtool, "check", "rules", f).CombinedOutput(); err != nil {
		t.Errorf("the dashboard's queries: promtool check rules: %v\n%s", err, out)
	}
}
