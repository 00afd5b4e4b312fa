package target

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

// powerLog records the start and stop commands a writer ran.
type powerLog struct {
	mu    sync.Mutex
	calls []string
}

func (p *powerLog) hook(what string) func(context.Context, string, string) error {
	return func(_ context.Context, machine, point string) error {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.calls = append(p.calls, what+" "+machine+" "+point)
		return nil
	}
}

func (p *powerLog) get() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.calls...)
}

// A failback's start runs once the disks hold the final point; while the
// original runs, no point is applied onto its disks; a cancel's stop
// runs, and applying goes on; a new reprotect (another job) means the
// original was failed over again; a writer without a start command says
// so in its report.
func TestWriterStartsAndStopsTheOriginal(t *testing.T) {
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	img1 := randomImage(rand.New(rand.NewPCG(21, 1)), 32*bs, bs)
	p1 := storeDisks(t, v, "m", map[string][]byte{"d": img1})
	img2 := changeBlocks(append([]byte(nil), img1...), bs, 4, 9)
	p2 := storeDisks(t, v, "m", map[string][]byte{"d": img2})
	orig := filepath.Join(dir, "orig.img")
	writeFile(t, orig, img1)
	clk := clock.NewFake(epoch)
	rep := newReporter(clk)
	rep.point("m", p1)
	var pl powerLog
	runWriter(t, WriterOptions{Vault: v, Reporter: rep, Name: "primary", Disks: map[string]map[string]string{"m": {"d": orig}},
		StateDir: filepath.Join(dir, "state"), Every: every, Clock: clk, Start: pl.hook("start"), Stop: pl.hook("stop")})
	rep.waitReport(t, clk, 0, "point 1 applied", applied(p1.ID))

	rep.set("", &api.Failback{Job: "f1", Final: p1.ID.String(), Start: true})
	rep.waitReport(t, clk, 0, "the original started", func(s sent) bool { return s.r.Started == p1.ID.String() })
	if got := pl.get(); len(got) != 1 || got[0] != "start m "+p1.ID.String() {
		t.Fatalf("commands run: %q, want one start on point 1", got)
	}
	// While it runs, a newer point is not applied onto its disks.
	rep.point("m", p2)
	n := len(rep.reports())
	rep.waitReport(t, clk, n+3, "three rounds with the original running", func(sent) bool { return true })
	sameContent(t, orig, img1)
	if len(pl.get()) != 1 {
		t.Fatalf("the start command ran again: %q", pl.get())
	}

	rep.set("", &api.Failback{Job: "f1", Final: p1.ID.String(), Stop: true})
	rep.waitReport(t, clk, len(rep.reports()), "the original stopped", func(s sent) bool { return s.r.Started == "" })
	rep.set("", nil)
	rep.waitReport(t, clk, 0, "point 2 applied after the stop", applied(p2.ID))
	sameContent(t, orig, img2)

	// Started on point 2, then a new reprotect: applying goes on.
	rep.set("", &api.Failback{Job: "f2", Final: p2.ID.String(), Start: true})
	rep.waitReport(t, clk, len(rep.reports()), "the original started on point 2", func(s sent) bool { return s.r.Started == p2.ID.String() })
	rep.set("j2", nil)
	rep.waitReport(t, clk, len(rep.reports()), "started cleared by a new reprotect", func(s sent) bool { return s.r.Started == "" })
	if got := pl.get(); len(got) != 3 || got[1] != "stop m "+p1.ID.String() || got[2] != "start m "+p2.ID.String() {
		t.Fatalf("commands run: %q", got)
	}
}

// A failback that asks a writer without --start-command to start the
// original gets a report that says what is missing.
func TestWriterWithoutStartCommand(t *testing.T) {
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	img := randomImage(rand.New(rand.NewPCG(22, 1)), 16*bs, bs)
	p := storeDisks(t, v, "m", map[string][]byte{"d": img})
	clk := clock.NewFake(epoch)
	rep := newReporter(clk)
	rep.point("m", p)
	runWriter(t, WriterOptions{Vault: v, Reporter: rep, Name: "primary", Disks: map[string]map[string]string{"m": {"d": filepath.Join(dir, "orig.img")}},
		StateDir: filepath.Join(dir, "state"), Every: every, Clock: clk})
	rep.waitReport(t, clk, 0, "applied", applied(p.ID))
	rep.set("", &api.Failback{Job: "f1", Final: p.ID.String(), Start: true})
	rep.waitReport(t, clk, 0, "an error naming --start-command", func(s sent) bool {
		return strings.Contains(s.r.Error, "--start-command") && s.r.Started == ""
	})
}
