package plan

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func sampleReport() Report {
	t0 := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	return Report{Job: "1a2b3c4d5e6f7a8b", Kind: "plan-drill", Plan: "shop", PlanVersion: 3, Started: t0, Ended: t0.Add(5 * time.Minute),
		Passed: false, Error: "check \"postgres answers\" of db1 failed",
		RTO: Duration(150 * time.Second), RPO: Duration(42 * time.Second), Boot: Duration(120 * time.Second), Overhead: Duration(12 * time.Second),
		Machines: []MachineReport{
			{Machine: "db1", Group: "database", Point: "0123456789abcdef0123", PointTime: t0.Add(-42 * time.Second), RPO: Duration(42 * time.Second),
				VM: "lb-1a2b3c4d-db1", Console: "/srv/recovery/db1/console.log", Running: t0.Add(5 * time.Second), Ready: t0.Add(90 * time.Second),
				ReadyAfter: Duration(90 * time.Second), Condition: "TCP port 5432 accepts",
				Checks: []CheckReport{{Name: "postgres answers", Condition: "guest command [\"/usr/bin/pg_isready\"] exits 0", Error: "exit status 2", Took: Duration(time.Second)}}},
			{Machine: "<script>alert('m')</script>", Group: "app", Passed: true, ReadyAfter: Duration(150 * time.Second), Condition: "console matches \"READY\"",
				Error: "<img src=x onerror=alert(1)>"},
		},
		Actions: []ActionReport{
			{Group: "database", Name: "point apps at the database", Kind: "script", When: "after", State: "done", Took: Duration(2 * time.Second)},
			{Group: "app", Name: "check the shop", Kind: "manual", When: "after", State: "failed", Error: "aborted by an operator"},
		},
		CleanedUp: true,
	}
}

// TestRenderHTML: the page names the plan, version and verdict, shows
// the figures, every machine with its checks, the actions, the cleanup
// and the consoles' last lines, and loads nothing from elsewhere.
func TestRenderHTML(t *testing.T) {
	var lines []string
	for i := range 250 {
		lines = append(lines, fmt.Sprintf("boot line %d", i))
	}
	consoles := map[string]string{"db1": strings.Join(lines, "\n") + "\n"}
	var b bytes.Buffer
	if err := RenderHTML(&b, sampleReport(), consoles, time.Now()); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, want := range []string{
		"<title>Plan shop version 3: FAIL (plan-drill 1a2b3c4d5e6f7a8b)</title>",
		`<span class="badge FAIL">FAIL</span>`,
		"<th>RTO</th><td>2m30s", "<th>RPO</th><td>42s", "<th>Lifeboat overhead</th><td>12s", "(8.0% of the RTO)",
		"<h3>db1 <span class=\"badge fail\">FAIL</span></h3>", "<th>Group</th><td>database</td>",
		"<code>0123456789ab</code> at 2026-12-07 02:59:18 UTC", "lb-1a2b3c4d-db1", "<th>Ready after</th><td>1m30s",
		"TCP port 5432 accepts", "postgres answers", `<td class="fail">fail</td>`, "exit status 2",
		"point apps at the database", `<td class="pass">done</td>`, "aborted by an operator",
		"every VM the run made was removed",
		"last 200 lines of /srv/recovery/db1/console.log", "boot line 50\n", "boot line 249</pre>",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if strings.Contains(page, "boot line 49\n") {
		t.Error("the page shows more than the console's last 200 lines")
	}
	// Self-contained: no scripts, no external style sheets, images or links.
	for _, bad := range []*regexp.Regexp{regexp.MustCompile(`(?i)<script`), regexp.MustCompile(`(?i)<link`), regexp.MustCompile(`(?i)<img`),
		regexp.MustCompile(`(?i)<[a-z][^>]*\s(src|href)=`), regexp.MustCompile(`(?i)url\(`), regexp.MustCompile(`(?i)@import`)} {
		if loc := bad.FindStringIndex(page); loc != nil {
			t.Errorf("the page is not self-contained: %q at %d", page[loc[0]:min(len(page), loc[1]+40)], loc[0])
		}
	}
}

// TestRenderHTMLEscapes: names, errors and console text that hold markup
// come out as text.
func TestRenderHTMLEscapes(t *testing.T) {
	r := sampleReport()
	r.Plan = "x</title><script>alert(1)</script>"
	r.Error = "</p><script>alert(2)</script>"
	r.Machines[0].Checks[0].Name = "<b onmouseover=alert(3)>c</b>"
	r.Actions[0].Name = "<iframe src=//evil>"
	evil := r.Machines[1].Machine
	consoles := map[string]string{"db1": "login: </pre><script>alert(4)</script>\x1b[0m\xff\r\n", evil: "<script>alert(5)</script>"}
	var b bytes.Buffer
	if err := RenderHTML(&b, r, consoles, time.Now()); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, bad := range []string{"<script", "<img", "<iframe", "<b onmouseover", "</pre><script"} {
		if strings.Contains(strings.ToLower(page), bad) {
			t.Errorf("the page holds %q unescaped", bad)
		}
	}
	for _, want := range []string{"&lt;script&gt;alert(4)&lt;/script&gt;", "&lt;script&gt;alert(&#39;m&#39;)&lt;/script&gt;", "\uFFFD", "&lt;img src=x onerror=alert(1)&gt;"} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks the escaped text %q", want)
		}
	}
	if strings.Contains(page, "\x1b") || strings.Contains(page, "\r") {
		t.Error("control characters of the console reached the page")
	}
}

func TestResultAndReadConsoles(t *testing.T) {
	r := sampleReport()
	if Result(r) != "FAIL" {
		t.Fatal(Result(r))
	}
	r.Passed = true
	if Result(r) != "PASS" {
		t.Fatal(Result(r))
	}
	r.Ended = time.Time{}
	if Result(r) != "RUNNING" {
		t.Fatal(Result(r))
	}
	dir := t.TempDir()
	big := filepath.Join(dir, "big.log")
	var b strings.Builder
	for i := 0; b.Len() < consoleTailBytes+100000; i++ {
		fmt.Fprintf(&b, "line %d of a long console log\n", i)
	}
	if err := os.WriteFile(big, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	r.Machines[0].Console = big
	r.Machines[1].Console = filepath.Join(dir, "missing.log")
	c := ReadConsoles(r)
	got := c["db1"]
	if len(got) > consoleTailBytes || !strings.HasPrefix(got, "line ") || !strings.HasSuffix(b.String(), got) {
		t.Fatalf("tail of %d bytes starts %q", len(got), got[:min(40, len(got))])
	}
	if !strings.Contains(c[r.Machines[1].Machine], "cannot be read") {
		t.Fatalf("missing log: %q", c[r.Machines[1].Machine])
	}
	tails := ConsoleTails(r)
	if n := strings.Count(tails["db1"], "\n") + 1; n != ConsoleLines || !strings.HasSuffix(strings.TrimRight(b.String(), "\n"), tails["db1"]) {
		t.Fatalf("ConsoleTails kept %d lines, want the last %d", n, ConsoleLines)
	}
}
