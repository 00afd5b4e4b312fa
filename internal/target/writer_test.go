package target

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

var epoch = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

// The writer applies the point the server names onto the original disk
// (reporting progress, then what it compared and wrote), waits a poll
// interval of its clock between rounds, applies a newer point by writing
// only the blocks that changed, and after a restart does not apply the
// point its disks hold again.
func TestWriterAppliesReversePoints(t *testing.T) {
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	img1 := randomImage(rand.New(rand.NewPCG(11, 1)), 64*bs, bs)
	p1 := storeDisks(t, v, "m", map[string][]byte{"d": img1})
	img2 := changeBlocks(append([]byte(nil), img1...), bs, 3, 10, 40)
	p2 := storeDisks(t, v, "m", map[string][]byte{"d": img2})

	orig := filepath.Join(dir, "orig.img")
	writeFile(t, orig, changeBlocks(append([]byte(nil), img1...), bs, 5, 6))
	clk := clock.NewFake(epoch)
	rep := newReporter(clk)
	rep.point("m", p1)
	o := WriterOptions{Vault: v, Reporter: rep, Name: "primary", Disks: map[string]map[string]string{"m": {"d": orig}},
		StateDir: filepath.Join(dir, "state"), Every: every, Clock: clk, CheckpointBytes: 4 * 16 * bs}
	stop := runWriter(t, o)

	first := rep.waitReport(t, clk, 0, "applying point 1", applied(p1.ID))
	sameContent(t, orig, img1)
	if d := first.r.Disks; len(d) != 1 || d[0].Name != "d" || d[0].Path != orig || d[0].Size != int64(len(img1)) ||
		d[0].Compared != int64(len(img1)) || d[0].Written != 2*bs || first.r.Error != "" || first.r.AppliedAt.IsZero() {
		t.Fatalf("report after applying point 1: %+v, want all %d bytes compared and 2 blocks written", first.r, len(img1))
	}
	start := rep.find(0, func(s sent) bool { return s.r.Applying == p1.ID.String() })
	if start == nil || start.r.Progress == nil || start.r.Progress.Total != int64(len(img1)) || start.r.Progress.Disk != "d" || start.r.Applied != "" {
		t.Fatalf("no progress report for point 1 before it was applied: %+v", rep.reports())
	}

	// The next round comes after the poll interval, not before: once
	// the writer waits (its timer is the clock's only one), moving the
	// clock short of the interval starts no round.
	if err := clk.BlockUntil(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	n := len(rep.reports())
	clk.Advance(every - time.Millisecond)
	if w, got := clk.Waiters(), len(rep.reports()); w != 1 || got != n {
		t.Fatalf("before the poll interval: %d timers, %d reports (had %d)", w, got, n)
	}
	rep.point("m", p2)
	clk.Advance(time.Millisecond)
	second := rep.waitReport(t, clk, n, "applying point 2", applied(p2.ID))
	sameContent(t, orig, img2)
	if d := second.r.Disks[0]; d.Written != 3*bs || d.Compared != int64(len(img2)) || d.Resumed != 0 {
		t.Fatalf("point 2 onto point 1: %+v, want the 3 changed blocks (%d bytes) written", d, 3*bs)
	}
	if second.at.Sub(first.at) < every {
		t.Fatalf("rounds %s apart on the writer's clock, want at least %s", second.at.Sub(first.at), every)
	}
	stop()

	// A restarted writer with the same state reports point 2 applied as
	// it was, and does not apply it again.
	n = len(rep.reports())
	clk.Advance(time.Hour)
	runWriter(t, o)
	rep.waitReport(t, clk, n+3, "from the restarted writer, three rounds in", func(sent) bool { return true })
	for _, s := range rep.reports()[n:] {
		if s.r.Applying != "" || s.r.Applied != p2.ID.String() || !s.r.AppliedAt.Equal(second.r.AppliedAt) || s.r.Disks[0].Written != 3*bs {
			t.Fatalf("the restarted writer reported %+v, want point 2 applied at %s and nothing applied again", s.r, second.r.AppliedAt)
		}
	}
	sameContent(t, orig, img2)
}

// An existing original disk smaller than the point's is refused with an
// error in the report and left as it was; the writer keeps reporting.
func TestWriterRefusesASmallerDisk(t *testing.T) {
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	img := randomImage(rand.New(rand.NewPCG(12, 1)), 64*bs, bs)
	p := storeDisks(t, v, "m", map[string][]byte{"d": img})
	orig := filepath.Join(dir, "small.img")
	small := changeBlocks(append([]byte(nil), img[:32*bs]...), bs, 1)
	writeFile(t, orig, small)
	clk := clock.NewFake(epoch)
	rep := newReporter(clk)
	rep.point("m", p)
	state := filepath.Join(dir, "state")
	runWriter(t, WriterOptions{Vault: v, Reporter: rep, Name: "primary", Disks: map[string]map[string]string{"m": {"d": orig}},
		StateDir: state, Every: every, Clock: clk})

	s := rep.waitReport(t, clk, 0, "with an error", withError)
	for _, want := range []string{"the original disk " + orig, "is 131072 bytes, the recovered disk is 262144", "grow it or give an alternate location", "nothing written"} {
		if !strings.Contains(s.r.Error, want) {
			t.Fatalf("error %q does not say %q", s.r.Error, want)
		}
	}
	if s.r.Applied != "" || s.r.Disks[0].Size != int64(len(small)) {
		t.Fatalf("report %+v", s.r)
	}
	next := rep.waitReport(t, clk, len(rep.reports()), "in a later round", func(sent) bool { return true })
	if next.r.Error == "" {
		t.Fatalf("a later round forgot the error: %+v", next.r)
	}
	unchanged(t, orig, small)
	if js, _ := filepath.Glob(filepath.Join(state, "m", ".*.journal")); len(js) != 0 {
		t.Fatalf("journals were written: %v", js)
	}
}

// A disk path that does not exist (an alternate location) is reported
// with size 0 and created holding the point.
func TestWriterCreatesAMissingDisk(t *testing.T) {
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	img := randomImage(rand.New(rand.NewPCG(13, 1)), 40*bs+100, bs)
	p := storeDisks(t, v, "m", map[string][]byte{"d": img})
	alt := filepath.Join(dir, "alt.img")
	clk := clock.NewFake(epoch)
	rep := newReporter(clk)
	runWriter(t, WriterOptions{Vault: v, Reporter: rep, Name: "primary", Disks: map[string]map[string]string{"m": {"d": alt}},
		StateDir: filepath.Join(dir, "state"), Every: every, Clock: clk})

	first := rep.waitReport(t, clk, 0, "at all", func(sent) bool { return true })
	if d := first.r.Disks; len(d) != 1 || d[0].Size != 0 || first.r.Applied != "" || first.r.Applying != "" {
		t.Fatalf("before a point: %+v, want the missing disk reported with size 0", first.r)
	}
	if _, err := os.Stat(alt); !os.IsNotExist(err) {
		t.Fatalf("the disk was made before a point was named: %v", err)
	}
	rep.point("m", p)
	s := rep.waitReport(t, clk, 0, "applied", applied(p.ID))
	sameContent(t, alt, img)
	if d := s.r.Disks[0]; d.Size != int64(len(img)) || d.Compared != 0 || d.Written == 0 {
		t.Fatalf("alternate location: %+v, want a new file written without comparing", d)
	}
}

// A reporter that fails (the server is down) does not stop the writer:
// it reports again next round and applies the point then.
func TestWriterOutlivesAFailingReporter(t *testing.T) {
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	img := randomImage(rand.New(rand.NewPCG(14, 1)), 16*bs, bs)
	p := storeDisks(t, v, "m", map[string][]byte{"d": img})
	clk := clock.NewFake(epoch)
	rep := newReporter(clk)
	rep.point("m", p)
	rep.failing = 3
	var log logBuf
	runWriter(t, WriterOptions{Vault: v, Reporter: rep, Name: "primary", Disks: map[string]map[string]string{"m": {"d": filepath.Join(dir, "t.img")}},
		StateDir: filepath.Join(dir, "state"), Every: every, Clock: clk, Logger: log.logger()})

	rep.waitReport(t, clk, 0, "applied", applied(p.ID))
	sameContent(t, filepath.Join(dir, "t.img"), img)
	if c := strings.Count(log.String(), "cannot report to the server"); c != 1 {
		t.Fatalf("%d warnings for 3 failed reports, want 1:\n%s", c, log.String())
	}
	if !strings.Contains(log.String(), "the server answers again") {
		t.Fatalf("no log line says the server answers again:\n%s", log.String())
	}
}

// Points that do not fit the configured disks, and point IDs the vault
// does not hold or that are another machine's, are refused in the report
// with nothing written.
func TestWriterRefusesPointsThatDoNotFit(t *testing.T) {
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	rng := rand.New(rand.NewPCG(15, 1))
	a, b := randomImage(rng, 16*bs, bs), randomImage(rng, 8*bs, bs)
	one := storeDisks(t, v, "m", map[string][]byte{"d": a})
	two := storeDisks(t, v, "m", map[string][]byte{"d": a, "e": b})
	other := storeDisks(t, v, "n", map[string][]byte{"d": a})
	for _, c := range []struct {
		name, point, want string
		disks             []string
	}{
		{"disk without a path", two.ID.String(), "has disk e, which has no path here: give --disk m/e=PATH", []string{"d"}},
		{"configured disk the point lacks", one.ID.String(), "disk m/e is configured but point " + one.ID.Short() + " has no disk e", []string{"d", "e"}},
		{"point not in the vault", strings.Repeat("ab", 32), "is not in the vault", []string{"d"}},
		{"another machine's point", other.ID.String(), "of machine n to apply onto machine m", []string{"d"}},
		{"not an ID", "latest", "not a point ID", []string{"d"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			sub := t.TempDir()
			disks := map[string]string{}
			for _, d := range c.disks {
				disks[d] = filepath.Join(sub, d+".img")
			}
			clk := clock.NewFake(epoch)
			rep := newReporter(clk)
			rep.points["m"] = c.point
			runWriter(t, WriterOptions{Vault: v, Reporter: rep, Name: "primary", Disks: map[string]map[string]string{"m": disks},
				StateDir: filepath.Join(sub, "state"), Every: every, Clock: clk})
			s := rep.waitReport(t, clk, 0, "with an error", withError)
			if !strings.Contains(s.r.Error, c.want) {
				t.Fatalf("error %q, want it to say %q", s.r.Error, c.want)
			}
			for _, path := range disks {
				if _, err := os.Stat(path); !os.IsNotExist(err) {
					t.Fatalf("%s was made: %v", path, err)
				}
			}
		})
	}
}

// Every disk of every machine configured is applied; progress counts
// the bytes of all the machine's disks.
func TestWriterAppliesEveryDiskOfEveryMachine(t *testing.T) {
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	rng := rand.New(rand.NewPCG(16, 1))
	a, b, c := randomImage(rng, 24*bs, bs), randomImage(rng, 8*bs+7, bs), randomImage(rng, 16*bs, bs)
	pm := storeDisks(t, v, "m", map[string][]byte{"root": a, "data": b})
	pn := storeDisks(t, v, "n", map[string][]byte{"vda": c})
	clk := clock.NewFake(epoch)
	rep := newReporter(clk)
	rep.point("m", pm)
	rep.point("n", pn)
	path := func(name string) string { return filepath.Join(dir, name+".img") }
	runWriter(t, WriterOptions{Vault: v, Reporter: rep, Name: "primary", StateDir: filepath.Join(dir, "state"), Every: every, Clock: clk,
		Disks: map[string]map[string]string{"m": {"root": path("root"), "data": path("data")}, "n": {"vda": path("vda")}}})

	sm := rep.waitReport(t, clk, 0, "of m applied", applied(pm.ID))
	rep.waitReport(t, clk, 0, "of n applied", applied(pn.ID))
	sameContent(t, path("root"), a)
	sameContent(t, path("data"), b)
	sameContent(t, path("vda"), c)
	if len(sm.r.Disks) != 2 || sm.r.Disks[0].Name != "data" || sm.r.Disks[1].Name != "root" || sm.r.Disks[1].Size != int64(len(a)) {
		t.Fatalf("m's disks: %+v", sm.r.Disks)
	}
	if s := rep.find(0, func(s sent) bool { return s.machine == "m" && s.r.Progress != nil }); s == nil || s.r.Progress.Total != int64(len(a)+len(b)) {
		t.Fatalf("m's progress is not over both disks: %+v", s)
	}
	if s := rep.find(0, func(s sent) bool { return s.machine == "n" && s.r.Applied == pm.ID.String() }); s != nil {
		t.Fatalf("n reported m's point: %+v", s.r)
	}
}

// Progress sums the disks and estimates the time left at this run's rate.
func TestApplyProgressOverDisks(t *testing.T) {
	clk := clock.NewFake(epoch)
	pr := &applyProgress{clk: clk, start: clk.Now(), total: 300}
	pr.startDisk("a")
	pr.set(Progress{Done: 100, Total: 100})
	pr.endDisk(100, 0)
	pr.startDisk("b")
	pr.set(Progress{Done: 150, Total: 200, Resumed: 100}) // 50 of b applied now
	clk.Advance(15 * time.Second)
	got := pr.snapshot()
	// 150 bytes in 15s: 150 left take 15s.
	if got.Disk != "b" || got.Done != 250 || got.Total != 300 || time.Duration(got.ETA) != 5*time.Second {
		t.Fatalf("progress %+v, want disk b, 250 of 300 done, 5s left", got)
	}
}

// NewWriter refuses options it cannot run with.
func TestNewWriterChecksOptions(t *testing.T) {
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	ok := WriterOptions{Vault: v, Reporter: newReporter(clock.System{}), Name: "w", StateDir: dir, Disks: map[string]map[string]string{"m": {"d": "/x"}}}
	if _, err := NewWriter(ok); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(o *WriterOptions){
		"no state dir":     func(o *WriterOptions) { o.StateDir = "" },
		"no name":          func(o *WriterOptions) { o.Name = "" },
		"no disks":         func(o *WriterOptions) { o.Disks = nil },
		"bad machine":      func(o *WriterOptions) { o.Disks = map[string]map[string]string{"../m": {"d": "/x"}} },
		"bad disk":         func(o *WriterOptions) { o.Disks = map[string]map[string]string{"m": {"a/b": "/x"}} },
		"empty path":       func(o *WriterOptions) { o.Disks = map[string]map[string]string{"m": {"d": ""}} },
		"one path twice":   func(o *WriterOptions) { o.Disks = map[string]map[string]string{"m": {"d": "/x"}, "n": {"d": "/x"}} },
		"machine no disks": func(o *WriterOptions) { o.Disks = map[string]map[string]string{"m": {}} },
		"negative every":   func(o *WriterOptions) { o.Every = -time.Second },
	} {
		o := ok
		change(&o)
		if _, err := NewWriter(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// An apply that fails part way (another apply holds the second disk) is
// reported and tried again; until a point is applied in full the record
// says the disks hold neither, so a restarted writer told to apply the
// point applied before applies it again rather than trusting the disks.
func TestWriterRetriesAFailedApply(t *testing.T) {
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	rng := rand.New(rand.NewPCG(17, 1))
	a0, b0 := randomImage(rng, 16*bs, bs), randomImage(rng, 16*bs, bs)
	p0 := storeDisks(t, v, "m", map[string][]byte{"a": a0, "b": b0})
	a1, b1 := changeBlocks(append([]byte(nil), a0...), bs, 2), changeBlocks(append([]byte(nil), b0...), bs, 4)
	p1 := storeDisks(t, v, "m", map[string][]byte{"a": a1, "b": b1})
	pa, pb := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	clk := clock.NewFake(epoch)
	rep := newReporter(clk)
	rep.point("m", p0)
	o := WriterOptions{Vault: v, Reporter: rep, Name: "primary", Disks: map[string]map[string]string{"m": {"a": pa, "b": pb}},
		StateDir: filepath.Join(dir, "state"), Every: every, Clock: clk}
	stop := runWriter(t, o)
	rep.waitReport(t, clk, 0, "applied point 0", applied(p0.ID))

	// Disk b's lock is taken, as by another apply onto it.
	d, _ := p1.Disk("b")
	lk := &apply{target: pb, d: d}
	if err := lk.takeLock(lk.names(filepath.Join(o.StateDir, "m"))); err != nil {
		t.Fatal(err)
	}
	n := len(rep.reports())
	rep.point("m", p1)
	s := rep.waitReport(t, clk, n, "with an error", withError)
	if !strings.Contains(s.r.Error, "another apply onto "+pb) || s.r.Applied != p0.ID.String() {
		t.Fatalf("report %+v, want point 0 applied and an error about b.img", s.r)
	}
	sameContent(t, pa, a1) // disk a holds point 1 now
	n = len(rep.reports())
	rep.waitReport(t, clk, n+1, "in the next round", func(sent) bool { return true })
	if rep.find(n, func(s sent) bool { return s.r.Applying == p1.ID.String() }) == nil {
		t.Fatal("the failed apply was not tried again next round")
	}
	stop()

	lk.unlock()
	n = len(rep.reports())
	rep.point("m", p0)
	clk.Advance(time.Hour)
	restart := clk.Now()
	runWriter(t, o)
	if s := rep.waitReport(t, clk, n, "from the restarted writer", func(sent) bool { return true }); !strings.Contains(s.r.Error, "did not finish") {
		t.Fatalf("the restarted writer's first report %+v does not say the apply did not finish", s.r)
	}
	s = rep.waitReport(t, clk, n, "applied point 0 again", func(s sent) bool {
		return applied(p0.ID)(s) && s.r.Error == "" && !s.r.AppliedAt.Before(restart)
	})
	sameContent(t, pa, a0)
	sameContent(t, pb, b0)
	if s.r.Disks[0].Name != "a" || s.r.Disks[0].Written != bs {
		t.Fatalf("disk a: %+v, want the block that point 1 changed written back", s.r.Disks[0])
	}
}
