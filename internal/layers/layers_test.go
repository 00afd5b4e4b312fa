// Package layers holds the test that keeps the import graph to the
// layering docs/architecture.md describes ("Packages"): data flows
// downward, from the binary through the roles and engines to the vault
// and the capture drivers, and nothing imports upward.
package layers

import (
	"encoding/json"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/lifeboat-dr/lifeboat/"

// pkg is a package of the module with its non-test imports of the module.
type pkg struct {
	Path    string
	Imports []string
}

// graph lists every package of the module (go list) with its imports of
// the module, as paths relative to the module ("internal/vault").
func graph(t *testing.T) []pkg {
	cmd := exec.Command("go", "list", "-json=ImportPath,Imports", module+"...")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var all []pkg
	for {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		q := pkg{Path: strings.TrimPrefix(p.ImportPath, module)}
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, module) {
				q.Imports = append(q.Imports, strings.TrimPrefix(imp, module))
			}
		}
		all = append(all, q)
	}
	return all
}

// under reports whether path is dir or below it.
func under(path string, dirs ...string) bool {
	return slices.ContainsFunc(dirs, func(d string) bool { return path == d || strings.HasPrefix(path, d+"/") })
}

// testSupport: packages that exist for tests (helpers, conformance suites).
func testSupport(path string) bool {
	return under(path, "internal/testutil", "test", "bench") || strings.HasSuffix(path, "test")
}

// rule: the packages it applies to may import only what allowed accepts.
type rule struct {
	what    string
	applies func(string) bool
	allowed func(from, imp string) bool
}

var rules = []rule{
	{"foundations import nothing of Lifeboat",
		func(p string) bool {
			return slices.Contains([]string{"internal/clock", "internal/leftover", "internal/directio", "internal/nbd", "internal/qemu/qmp", "internal/progress",
				"internal/buildinfo", "internal/units", "internal/vault/retention", "internal/capture", "internal/atomicfile"}, p)
		},
		func(string, string) bool { return false }},
	{"the vault imports nothing above it",
		func(p string) bool { return under(p, "internal/vault") && !testSupport(p) },
		func(_, imp string) bool {
			return under(imp, "internal/vault", "internal/clock", "internal/leftover", "internal/directio", "internal/atomicfile")
		}},
	{"models and wire types stay models",
		func(p string) bool {
			return slices.Contains([]string{"internal/plan", "internal/api", "internal/jobs"}, p)
		},
		func(_, imp string) bool {
			return slices.Contains([]string{"internal/units", "internal/plan", "internal/jobs", "internal/clock"}, imp)
		}},
	{"the machine state model knows only the wire types",
		func(p string) bool { return p == "internal/lifecycle" },
		func(_, imp string) bool { return imp == "internal/api" }},
	{"the state store knows only the models",
		func(p string) bool { return under(p, "internal/store") && !testSupport(p) },
		func(_, imp string) bool {
			return under(imp, "internal/store", "internal/api", "internal/jobs", "internal/plan", "internal/clock")
		}},
	{"capture drivers and compute providers know no vault, store or role",
		func(p string) bool { return under(p, "internal/capture", "internal/compute") && !testSupport(p) },
		func(_, imp string) bool {
			return under(imp, "internal/capture", "internal/compute", "internal/nbd", "internal/qemu/qmp", "internal/api", "internal/leftover", "internal/clock", "internal/atomicfile", "internal/libvirtconn")
		}},
	{"the cycle engine knows only the capture interface (and the clock)",
		func(p string) bool { return p == "internal/engine" },
		func(_, imp string) bool { return imp == "internal/capture" || imp == "internal/clock" }},
	{"roles are imported only by the binary",
		func(p string) bool { return !under(p, "cmd") && !testSupport(p) },
		func(_, imp string) bool {
			return !under(imp, "internal/control", "internal/agent", "internal/processd", "internal/push")
		}},
	{"the agent and the ingest client link no ingest server",
		func(p string) bool {
			return under(p, "internal/agent", "internal/ingest/ingestclient") && !testSupport(p)
		},
		func(_, imp string) bool { return imp != "internal/ingest" }},
	{"the ingest wire format imports neither the server nor the client",
		func(p string) bool { return under(p, "internal/ingest/wire") },
		func(_, imp string) bool { return !under(imp, "internal/ingest") || under(imp, "internal/ingest/wire") }},
	{"test helpers and conformance suites stay out of the product",
		func(p string) bool { return !testSupport(p) },
		func(_, imp string) bool { return !testSupport(imp) }},
}

// violations lists the imports of all that break a rule.
func violations(all []pkg) []string {
	var out []string
	for _, r := range rules {
		for _, p := range all {
			if !r.applies(p.Path) {
				continue
			}
			for _, imp := range p.Imports {
				if !r.allowed(p.Path, imp) {
					out = append(out, r.what+": "+p.Path+" imports "+imp)
				}
			}
		}
	}
	return out
}

// TestLayers: every package's imports keep to the rules.
func TestLayers(t *testing.T) {
	all := graph(t)
	if len(all) < 30 || !slices.ContainsFunc(all, func(p pkg) bool { return p.Path == "internal/control" && len(p.Imports) > 5 }) {
		t.Fatalf("go list found %d packages, or none with imports: is this the module?", len(all))
	}
	for _, v := range violations(all) {
		t.Error(v)
	}
}

// TestRulesCatch: each kind of upward import is caught.
func TestRulesCatch(t *testing.T) {
	for _, bad := range []pkg{
		{"internal/vault", []string{"internal/api"}},
		{"internal/clock", []string{"internal/vault"}},
		{"internal/plan", []string{"internal/store"}},
		{"internal/store/sqlstore", []string{"internal/vault"}},
		{"internal/compute/qemu", []string{"internal/vault"}},
		{"internal/orchestrate", []string{"internal/control"}},
		{"internal/agent", []string{"internal/testutil/guest"}},
		{"internal/agent", []string{"internal/ingest"}},
		{"internal/ingest/ingestclient", []string{"internal/ingest"}},
		{"internal/ingest/wire", []string{"internal/ingest"}},
		{"internal/ingest/wire", []string{"internal/ingest/ingestclient"}},
		{"internal/engine", []string{"internal/vault"}},
		{"internal/lifecycle", []string{"internal/jobs"}},
		{"internal/api", []string{"internal/lifecycle"}},
	} {
		if v := violations([]pkg{bad}); len(v) == 0 {
			t.Errorf("%s importing %v is not caught", bad.Path, bad.Imports)
		}
	}
}
