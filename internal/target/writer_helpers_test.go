package target

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// every is the writers' poll interval in these tests (on a fake clock).
const every = 2 * time.Second

// sent is one report a fakeReporter received.
type sent struct {
	machine string
	r       api.TargetReport
	at      time.Time // on the test's clock
}

// fakeReporter stands in for the server: it records the reports and
// answers each machine's with the point set for it; it fails while
// failing is above zero (counting down).
type fakeReporter struct {
	clk     clock.Clock
	mu      sync.Mutex
	points  map[string]string
	failing int
	got     []sent
	job     string        // the reprotect job ("" : j1)
	fb      *api.Failback // the failback under way
}

func newReporter(clk clock.Clock) *fakeReporter {
	return &fakeReporter{clk: clk, points: map[string]string{}}
}

func (f *fakeReporter) Report(_ context.Context, machine string, r api.TargetReport) (*api.Reverse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing > 0 {
		f.failing--
		return nil, errors.New("connection refused")
	}
	f.got = append(f.got, sent{machine, r, f.clk.Now()})
	rev := &api.Reverse{Job: "j1", Policy: "failback", Failback: f.fb}
	if f.job != "" {
		rev.Job = f.job
	}
	if id := f.points[machine]; id != "" {
		rev.Point = &api.ReversePoint{ID: id}
	}
	return rev, nil
}

func (f *fakeReporter) point(machine string, p *vault.Point) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.points[machine] = p.ID.String()
}

// set changes the reprotect job and the failback the reporter answers with.
func (f *fakeReporter) set(job string, fb *api.Failback) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.job, f.fb = job, fb
}

func (f *fakeReporter) reports() []sent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

// find returns the first report since index from that matches, or nil.
func (f *fakeReporter) find(from int, match func(sent) bool) *sent {
	rs := f.reports()
	for i := min(from, len(rs)); i < len(rs); i++ {
		if match(rs[i]) {
			return &rs[i]
		}
	}
	return nil
}

// waitReport advances the fake clock by the poll interval until a report
// since index from matches, and returns it.
func (f *fakeReporter) waitReport(t *testing.T, clk *clock.Fake, from int, what string, match func(sent) bool) sent {
	t.Helper()
	var found *sent
	testutil.Eventually(t, 30*time.Second, func() bool {
		if found = f.find(from, match); found != nil {
			return true
		}
		clk.Advance(every)
		return false
	}, "no report %s; got %+v", what, f.reports())
	return *found
}

func applied(id vault.ID) func(sent) bool {
	return func(s sent) bool { return s.r.Applied == id.String() && s.r.Applying == "" }
}

func withError(s sent) bool { return s.r.Error != "" }

// runWriter runs a Writer with o (on clk, reporting to rep) until the
// test ends or the returned function stops it.
func runWriter(t *testing.T, o WriterOptions) (stop func()) {
	t.Helper()
	if o.Logger == nil {
		o.Logger = quiet()
	}
	w, err := NewWriter(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("Run ended with %v, want context.Canceled", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// storeDisks replicates images (disk name → content) as a point of
// machine.
func storeDisks(t testing.TB, v *vault.Vault, machine string, images map[string][]byte) *vault.Point {
	t.Helper()
	dir := t.TempDir()
	var disks []replicate.Disk
	for _, name := range slices.Sorted(maps.Keys(images)) {
		path := filepath.Join(dir, name+".img")
		writeFile(t, path, images[name])
		drv, err := scan.New(scan.Options{Path: path, StateFile: filepath.Join(dir, name+".state"), BlockSize: v.Config().BlockSize})
		if err != nil {
			t.Fatal(err)
		}
		disks = append(disks, replicate.Disk{Name: name, Driver: drv})
	}
	res, err := replicate.RunCycle(context.Background(), replicate.Options{Vault: v, Machine: machine, Disks: disks,
		Labels: map[string]string{api.LabelDirection: api.DirectionReverse}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return res.Point
}

// unchanged fails unless the file at path holds want, byte for byte.
func unchanged(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s was written to: %d bytes, want its %d bytes unchanged", path, len(got), len(want))
	}
}
