package layers

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// wallclockFuncs are the functions of package time that read or wait on
// the wall clock. Outside internal/clock, code takes its time from a
// clock.Clock, so tests can drive retries, timeouts, schedules and expiry
// without sleeping.
var wallclockFuncs = []string{"Now", "Since", "Until", "NewTimer", "NewTicker", "After", "AfterFunc", "Tick", "Sleep"}

// wallclockMarker, followed by a reason, lets one use stay on the wall
// clock: on its line or the line above.
const wallclockMarker = "// wallclock:"

// wallclockFree reports whether the file at path (relative to the module,
// slash-separated) may use the wall clock without saying why: the clock
// itself, test helpers and suites, benchmarks and test data.
func wallclockFree(path string) bool {
	dir := filepath.ToSlash(filepath.Dir(path))
	if under(dir, "internal/clock", "internal/testutil", "bench") || strings.HasSuffix(dir, "test") {
		return true
	}
	return slices.Contains(strings.Split(dir, "/"), "testdata")
}

// wallclockUses lists, as "file:line: message", the uses of wallclockFuncs
// in f that carry no wallclockMarker with a reason.
func wallclockUses(fset *token.FileSet, name string, f *ast.File) []string {
	local := ""
	for _, imp := range f.Imports {
		if p, _ := strconv.Unquote(imp.Path.Value); p == "time" {
			local = "time"
			if imp.Name != nil {
				local = imp.Name.Name
			}
		}
	}
	if local == "" || local == "_" {
		return nil
	}
	marked := map[int]bool{}
	for _, g := range f.Comments {
		for _, c := range g.List {
			if i := strings.Index(c.Text, wallclockMarker); i >= 0 && strings.TrimSpace(c.Text[i+len(wallclockMarker):]) != "" {
				marked[fset.Position(c.Slash).Line] = true
			}
		}
	}
	var out []string
	ast.Inspect(f, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok || !slices.Contains(wallclockFuncs, sel.Sel.Name) {
			return true
		}
		id, ok := sel.X.(*ast.Ident)
		if !ok || id.Name != local || id.Obj != nil { // id.Obj: a local variable named like the package
			return true
		}
		line := fset.Position(sel.Pos()).Line
		if !marked[line] && !marked[line-1] {
			out = append(out, fmt.Sprintf("%s:%d: time.%s outside internal/clock: take the time from a clock.Clock "+
				"(a field or option defaulting to clock.System{}) so tests can drive it; if it must be the wall clock "+
				"(an OS deadline, an elapsed time only logged), say why with %q on the line or the line above",
				name, line, sel.Sel.Name, wallclockMarker+" <why>"))
		}
		return true
	})
	return out
}

// TestWallclock: outside internal/clock, no non-test file of the module
// reads or waits on the wall clock without saying why.
func TestWallclock(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("no module at %s: %v", root, err)
	}
	fset := token.NewFileSet()
	files := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := filepath.ToSlash(strings.TrimPrefix(path, root+string(filepath.Separator)))
		if d.IsDir() {
			if path != root && (strings.HasPrefix(d.Name(), ".") || strings.HasPrefix(d.Name(), "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(rel, ".go") || strings.HasSuffix(rel, "_test.go") || wallclockFree(rel) {
			return nil
		}
		files++
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		for _, v := range wallclockUses(fset, rel, f) {
			t.Error(v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 100 {
		t.Fatalf("checked %d files: is this the module?", files)
	}
}

// TestWallclockCatches: uses are caught, aliased or as values, and the
// marker lets one through only with a reason.
func TestWallclockCatches(t *testing.T) {
	for _, c := range []struct {
		src  string
		want int
	}{
		{"import \"time\"\nfunc f() { _ = time.Now() }", 1},
		{"import \"time\"\nvar now = time.Now", 1},
		{"import t \"time\"\nfunc f() { <-t.After(1) }", 1},
		{"import \"time\"\nfunc f() {\n\ttime.Sleep(1)\n\t_ = time.Since(time.Time{})\n}", 2},
		{"import \"time\"\nfunc f() { time.Sleep(1) } // wallclock: pacing a real device", 0},
		{"import \"time\"\n// wallclock: a socket deadline\nfunc f() { _ = time.Now() }", 0},
		{"import \"time\"\nfunc f() { _ = time.Now() } // wallclock:", 1},
		{"import \"time\"\nfunc f() { var d time.Duration; _ = time.Duration(d); _ = time.Unix(0, 0) }", 0},
		{"import \"time\"\nfunc f(time struct{ Now func() }) { time.Now() }", 0},
		{"func f() { time.Now() }", 0},
	} {
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, "x.go", "package x\n"+c.src, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if got := wallclockUses(fset, "x.go", f); len(got) != c.want {
			t.Errorf("%q: %d findings, want %d: %q", c.src, len(got), c.want, got)
		}
	}
	for path, free := range map[string]bool{
		"internal/clock/clock.go": true, "internal/testutil/guest/boot.go": true, "internal/store/storetest/events.go": true,
		"bench/qemu/rpo.go": true, "internal/push/testdata/fakeagent/main.go": true,
		"internal/control/sched.go": false, "cmd/lifeboat/demo.go": false, "test/e2e/helpers.go": false,
	} {
		if wallclockFree(path) != free {
			t.Errorf("wallclockFree(%s) = %v, want %v", path, !free, free)
		}
	}
}
