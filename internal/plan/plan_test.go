package plan

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func known(names ...string) func(string) bool {
	return func(n string) bool {
		for _, k := range names {
			if k == n {
				return true
			}
		}
		return false
	}
}

func TestParseExample(t *testing.T) {
	src, err := os.ReadFile("testdata/shop.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse(src, "shop.yaml", known("db1", "app1", "app2"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "shop" || len(p.Groups) != 2 || p.GroupName(1) != "app" {
		t.Fatalf("plan %+v", p)
	}
	db := p.Groups[0].Machines[0]
	if db.Overrides.Memory != 2<<30 || db.Ready.TCP != 5432 || db.Ready.TimeoutOr() != 5*time.Minute || db.Checks[0].Command[0] != "/usr/bin/pg_isready" {
		t.Fatalf("db1 %+v", db)
	}
	if a := p.Groups[1].After; a[0].Kind() != "guest" || !a[0].Continue() || a[1].Kind() != "manual" || a[1].TimeoutOr() != DefaultActionTimeout {
		t.Fatalf("actions %+v", a)
	}
	if got := strings.Join(p.Machines(), ","); got != "db1,app1,app2" {
		t.Fatalf("machines %s", got)
	}
	if p.Groups[1].Machines[1].Ready.Kind() != "agent" || p.Groups[1].Machines[1].Ready.TimeoutOr() != 90*time.Second {
		t.Fatalf("app2 ready %+v", p.Groups[1].Machines[1].Ready)
	}
}

// TestParseErrors: each broken plan gives an error naming its line and
// field.
func TestParseErrors(t *testing.T) {
	cases := []struct{ name, src, want string }{
		{"syntax", "name: x\ngroups: [\n", "p.yaml:2: did not find"},
		{"unknown field", "name: x\ngroups:\n  - machines:\n      - machine: a\n        colour: red\n", `p.yaml:5: unknown field "colour"`},
		{"empty group", "name: x\ngroups:\n  - name: db\n    machines: []\n", `p.yaml:4: groups[0].machines: group "db" has no machines`},
		{"no groups", "name: x\n", "a plan needs at least one group"},
		{"unknown machine", "name: x\ngroups:\n  - machines:\n      - machine: nosuch\n", `p.yaml:4: groups[0].machines[0].machine: no protected machine "nosuch"`},
		{"twice", "name: x\ngroups:\n  - machines:\n      - machine: a\n  - machines:\n      - machine: a\n", `p.yaml:6: groups[1].machines[0].machine: machine "a" is already in group 1`},
		{"bad name", "name: Shop!\ngroups:\n  - machines:\n      - machine: a\n", `p.yaml:1: name: plan name "Shop!"`},
		{"bad schedule", "name: x\nschedule: every day\ngroups:\n  - machines:\n      - machine: a\n", `p.yaml:2: schedule: "every day" is not a cron schedule`},
		{"bad regexp", "name: x\ngroups:\n  - machines:\n      - machine: a\n        ready: {console: \"(\"}\n", `p.yaml:5: groups[0].machines[0].ready.console: "(" is not a regular expression`},
		{"two conditions", "name: x\ngroups:\n  - machines:\n      - machine: a\n        ready:\n          tcp: 22\n          agent: true\n", `p.yaml:6: groups[0].machines[0].ready: give exactly one`},
		{"bad duration", "name: x\ngroups:\n  - machines:\n      - machine: a\n        ready: {tcp: 22, timeout: soon}\n", `p.yaml:5: duration "soon"`},
		{"bad port", "name: x\ngroups:\n  - machines:\n      - machine: a\n        ready: {tcp: 70000}\n", "port 70000"},
		{"guest too early", "name: x\ngroups:\n  - machines:\n      - machine: a\n    before:\n      - name: s\n        guest: a\n        command: [/bin/true]\n", `p.yaml:7: groups[0].before[0].guest: "a" is not recovered yet`},
		{"relative script", "name: x\ngroups:\n  - machines:\n      - machine: a\n    after:\n      - name: s\n        script: fix.sh\n", `p.yaml:7: groups[0].after[0].script: "fix.sh": give the script's absolute path`},
		{"two kinds", "name: x\ngroups:\n  - machines:\n      - machine: a\n    after:\n      - name: s\n        script: /x\n        manual: do it\n", "give exactly one of script"},
		{"manual timeout", "name: x\ngroups:\n  - machines:\n      - machine: a\n    after:\n      - name: s\n        manual: do it\n        timeout: 5m\n", "no timeout"},
		{"on-failure", "name: x\ngroups:\n  - machines:\n      - machine: a\n    after:\n      - name: s\n        script: /x\n        on-failure: retry\n", `p.yaml:8: groups[0].after[0].on-failure: "retry"`},
		{"same action name", "name: x\ngroups:\n  - machines:\n      - machine: a\n    before:\n      - {name: s, script: /x}\n    after:\n      - {name: s, script: /y}\n", `a second action named "s"`},
		{"two documents", "name: x\n---\nname: y\n", "one YAML document"},
		{"empty", "", "the plan is empty"},
		{"not a mapping", "- a\n- b\n", "p.yaml:1:"},
		{"memory", "name: x\ngroups:\n  - machines:\n      - machine: a\n        overrides: {memory: 1KiB}\n", "at least 16MiB"},
		{"address", "name: x\ngroups:\n  - machines:\n      - machine: a\n        overrides: {address: 10.0.0.5}\n", "with its prefix length"},
		{"relative command", "name: x\ngroups:\n  - machines:\n      - machine: a\n        checks: [{name: c, command: [pg_isready]}]\n", `p.yaml:5: groups[0].machines[0].checks[0].command: "pg_isready"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.src), "p.yaml", known("a"))
			if err == nil {
				t.Fatalf("no error for\n%s", c.src)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q\nwant it to contain %q", err, c.want)
			}
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("%v is not a *plan.Error", err)
			}
		})
	}
}

func TestValidateWithoutLines(t *testing.T) {
	p := &Plan{Name: "x", Groups: []Group{{Machines: []Machine{{Machine: "a", Ready: &Condition{}}}}}}
	err := Validate(p, nil)
	if err == nil || !strings.Contains(err.Error(), "groups[0].machines[0].ready: give exactly one") {
		t.Fatalf("got %v", err)
	}
}

func FuzzParse(f *testing.F) {
	src, _ := os.ReadFile("testdata/shop.yaml")
	f.Add(src)
	f.Add([]byte("name: x\ngroups: [{machines: [{machine: a, ready: {tcp: 1}}]}]\n"))
	f.Add([]byte("&a [*a]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b, "f.yaml", nil)
		if err != nil {
			if p != nil {
				t.Fatal("a plan and an error")
			}
			return
		}
		if err := Validate(p, nil); err != nil {
			t.Fatalf("parsed plan does not validate: %v", err)
		}
	})
}

func TestNextDrill(t *testing.T) {
	p := &Plan{Name: "x", Schedule: "*/5 * * * *"}
	at := time.Date(2026, 12, 7, 9, 2, 30, 0, time.UTC)
	next, ok, err := p.NextDrill(at)
	if err != nil || !ok || !next.Equal(time.Date(2026, 12, 7, 9, 5, 0, 0, time.UTC)) {
		t.Fatalf("next %v %v %v", next, ok, err)
	}
	next2, _, _ := p.NextDrill(next)
	if !next2.Equal(next.Add(5 * time.Minute)) {
		t.Fatalf("after %v: %v", next, next2)
	}
	if _, ok, _ := (&Plan{}).NextDrill(at); ok {
		t.Fatal("a plan without a schedule has a next drill")
	}
}
