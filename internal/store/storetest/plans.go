package storetest

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/plan"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

func planYAML(name, machine string) string {
	return fmt.Sprintf("name: %s\ngroups:\n  - machines:\n      - machine: %s\n", name, machine)
}

// testPlans: versions count from 1 per name, a put of the newest YAML
// stores nothing, any version reads back as stored, the list has the
// newest of each by name, and a delete takes every version.
func testPlans(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	_, err := s.GetPlan(ctx, "shop", 0)
	wantErr(t, err, store.ErrNotFound, "get a plan never stored")
	wantErr(t, s.DeletePlan(ctx, "shop"), store.ErrNotFound, "delete a plan never stored")
	if vs, err := s.PlanVersions(ctx, "shop"); err != nil || len(vs) != 0 {
		t.Fatalf("versions of a plan never stored: %v %v", vs, err)
	}
	if l, err := s.ListPlans(ctx); err != nil || len(l) != 0 {
		t.Fatalf("plans of an empty store: %v %v", l, err)
	}

	zone := time.FixedZone("X", 3600)
	v1 := plan.Record{Name: "shop", YAML: planYAML("shop", "db1"), Created: T0.In(zone).Add(123 * time.Nanosecond), Actor: "token ops (operator)"}
	got, added, err := s.PutPlan(ctx, v1)
	must(t, err, "put version 1")
	want := plan.Record{Name: "shop", Version: 1, YAML: v1.YAML, Created: T0, Actor: v1.Actor}
	if !added {
		t.Fatal("the first put added no version")
	}
	sameJSON(t, got, want, "put version 1")

	again := v1
	again.Actor, again.Created = "someone else", T0.Add(time.Hour)
	got, added, err = s.PutPlan(ctx, again)
	must(t, err, "put the same YAML")
	if added {
		t.Fatal("a put of the newest version's YAML added a version")
	}
	sameJSON(t, got, want, "unchanged put")

	v2 := plan.Record{Name: "shop", YAML: planYAML("shop", "db2"), Created: T0.Add(time.Minute), Actor: "b"}
	got, added, err = s.PutPlan(ctx, v2)
	must(t, err, "put version 2")
	if !added || got.Version != 2 {
		t.Fatalf("second YAML: added %v version %d", added, got.Version)
	}
	// The first YAML again is a new version: only the newest counts.
	got, added, err = s.PutPlan(ctx, v1)
	must(t, err, "put version 3")
	if !added || got.Version != 3 || got.YAML != v1.YAML {
		t.Fatalf("first YAML again: added %v version %d", added, got.Version)
	}
	_, _, err = s.PutPlan(ctx, plan.Record{Name: "crm", YAML: planYAML("crm", "app1"), Created: T0})
	must(t, err, "put another plan")
	_, _, err = s.PutPlan(ctx, plan.Record{Name: "a-first", YAML: planYAML("a-first", "x"), Created: T0})
	must(t, err, "put a third plan")

	newest, err := s.GetPlan(ctx, "shop", 0)
	must(t, err, "get newest")
	old, err := s.GetPlan(ctx, "shop", 2)
	must(t, err, "get version 2")
	if newest.Version != 3 || old.Version != 2 || old.YAML != v2.YAML || !old.Created.Equal(v2.Created) || old.Actor != "b" {
		t.Fatalf("newest %+v, version 2 %+v", newest, old)
	}
	_, err = s.GetPlan(ctx, "shop", 4)
	wantErr(t, err, store.ErrNotFound, "get a version not stored")

	vs, err := s.PlanVersions(ctx, "shop")
	must(t, err, "versions")
	if len(vs) != 3 || vs[0].Version != 3 || vs[1].Version != 2 || vs[2].Version != 1 {
		t.Fatalf("versions %+v", vs)
	}
	sameJSON(t, vs[2], want, "version 1 from the list of versions")

	list, err := s.ListPlans(ctx)
	must(t, err, "list")
	var names []string
	for _, r := range list {
		names = append(names, fmt.Sprintf("%s@%d", r.Name, r.Version))
	}
	if strings.Join(names, " ") != "a-first@1 crm@1 shop@3" {
		t.Fatalf("list: %v", names)
	}

	must(t, s.DeletePlan(ctx, "shop"), "delete")
	_, err = s.GetPlan(ctx, "shop", 1)
	wantErr(t, err, store.ErrNotFound, "get a version of a deleted plan")
	wantErr(t, s.DeletePlan(ctx, "shop"), store.ErrNotFound, "delete twice")
	if list, _ := s.ListPlans(ctx); len(list) != 2 {
		t.Fatalf("after delete: %+v", list)
	}
	// A plan stored again after its delete starts at version 1.
	got, _, err = s.PutPlan(ctx, v2)
	must(t, err, "put after delete")
	if got.Version != 1 {
		t.Fatalf("after delete: version %d", got.Version)
	}
}

// testPlanConcurrent: concurrent puts of different YAML each get their
// own version, numbered 1..n without gaps; concurrent puts of one YAML
// store it once.
func testPlanConcurrent(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	const workers, each = 6, 5
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers*each)
	versions := make(chan int64, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				y := planYAML("race", fmt.Sprintf("m%d-%d", w, i))
				r, added, err := s.PutPlan(ctx, plan.Record{Name: "race", YAML: y, Created: T0})
				if err != nil {
					errs <- err
					continue
				}
				if !added || r.YAML != y {
					errs <- fmt.Errorf("put %s: added %v, YAML %q", y, added, r.YAML)
				}
				versions <- r.Version
				if _, _, err := s.PutPlan(ctx, plan.Record{Name: "same", YAML: planYAML("same", "x"), Created: T0}); err != nil {
					errs <- err
				}
				if _, err := s.GetPlan(ctx, "race", 0); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	close(versions)
	for err := range errs {
		t.Fatalf("concurrent put: %v", err)
	}
	seen := map[int64]bool{}
	for v := range versions {
		if seen[v] {
			t.Fatalf("two puts got version %d", v)
		}
		seen[v] = true
	}
	vs, err := s.PlanVersions(ctx, "race")
	must(t, err, "versions")
	if len(vs) != workers*each || vs[0].Version != workers*each || vs[len(vs)-1].Version != 1 {
		t.Fatalf("%d versions, newest %d; want %d", len(vs), vs[0].Version, workers*each)
	}
	if vs, _ := s.PlanVersions(ctx, "same"); len(vs) != 1 {
		t.Fatalf("one YAML put concurrently made %d versions", len(vs))
	}
}

// testPlanHostile: what a plan record may not hold is refused with an
// error that names it, and nothing is stored; hostile but valid YAML
// round-trips byte for byte.
func testPlanHostile(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	good := planYAML("p", "a")
	bad := []struct {
		what string
		r    plan.Record
		want string
	}{
		{"too large", plan.Record{Name: "p", YAML: good + "# " + strings.Repeat("x", plan.MaxSize)}, "bytes"},
		{"bad UTF-8", plan.Record{Name: "p", YAML: good + "# \xff\xfe\n"}, "UTF-8"},
		{"NUL", plan.Record{Name: "p", YAML: good + "# \x00\n"}, "NUL"},
		{"empty", plan.Record{Name: "p"}, "empty"},
		{"upper case", plan.Record{Name: "Shop", YAML: good}, "plan name"},
		{"empty name", plan.Record{Name: "", YAML: good}, "plan name"},
		{"path", plan.Record{Name: "../etc/passwd", YAML: good}, "plan name"},
		{"SQL", plan.Record{Name: "x'; DROP TABLE plans; --", YAML: good}, "plan name"},
		{"long name", plan.Record{Name: strings.Repeat("a", 64), YAML: good}, "plan name"},
		{"bad actor", plan.Record{Name: "p", YAML: good, Actor: "\xff"}, "UTF-8"},
	}
	for _, b := range bad {
		_, _, err := s.PutPlan(ctx, b.r)
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Fatalf("%s: error %v, want one that says %q", b.what, err, b.want)
		}
	}
	if l, err := s.ListPlans(ctx); err != nil || len(l) != 0 {
		t.Fatalf("refused puts stored %+v (%v)", l, err)
	}
	for _, probe := range []string{"", "'", "%", "p%", "x'; DROP TABLE plans; --"} {
		_, err := s.GetPlan(ctx, probe, 0)
		wantErr(t, err, store.ErrNotFound, fmt.Sprintf("get plan %q", probe))
	}
	odd := "name: p # '; DROP TABLE plans; -- ü🚀 \u202e\ngroups:\n  - machines:\n      - machine: \"O'Brien\"\n" +
		"# " + strings.Repeat("ü", (plan.MaxSize-200)/2) + "\n"
	r, _, err := s.PutPlan(ctx, plan.Record{Name: "p", YAML: odd, Actor: hostileNames[0]})
	must(t, err, "put a large, odd but valid plan")
	got, err := s.GetPlan(ctx, "p", r.Version)
	must(t, err, "get it")
	if got.YAML != odd || got.Actor != hostileNames[0] {
		t.Fatal("the plan's YAML or actor changed in the round trip")
	}
}
