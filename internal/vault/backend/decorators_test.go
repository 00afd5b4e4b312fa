package backend_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/backendtest"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

func newLocal(t testing.TB) backend.Backend {
	t.Helper()
	be, err := local.Create(filepath.Join(t.TempDir(), "vault"))
	if err != nil {
		t.Fatal(err)
	}
	return be
}

// TestDecoratedStack runs the conformance suite on the stack the vault uses.
func TestDecoratedStack(t *testing.T) {
	backendtest.RunSuite(t, func(t *testing.T) backend.Backend {
		m, err := backend.Metrics(newLocal(t), prometheus.NewRegistry(), nil)
		if err != nil {
			t.Fatal(err)
		}
		return backend.Retry(backend.Limit(m, 4), backend.RetryOptions{
			InitialDelay: time.Millisecond, MaxDelay: 10 * time.Millisecond,
			Logger: slog.New(slog.DiscardHandler),
		})
	})
}

var errTransient = errors.New("transient failure")

// flaky wraps a Backend and fails the calls for which fail returns an
// error. A failing Put first reads half of its data, a failing List first
// passes one object to fn if listPartial is set, and a failing Delete
// first deletes if deleteFirst is set.
type flaky struct {
	backend.Backend
	fail        func(op string, call int) error
	listPartial bool
	deleteFirst bool

	mu    sync.Mutex
	calls map[string]int
}

func newFlaky(t testing.TB, fail func(op string, call int) error) *flaky {
	return &flaky{Backend: newLocal(t), fail: fail, calls: map[string]int{}}
}

func (f *flaky) inject(op string) error {
	f.mu.Lock()
	f.calls[op]++
	n := f.calls[op]
	f.mu.Unlock()
	if f.fail == nil {
		return nil
	}
	return f.fail(op, n)
}

func (f *flaky) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

func (f *flaky) Put(ctx context.Context, name string, r io.ReadSeeker, size int64) error {
	if err := f.inject("put"); err != nil {
		io.CopyN(io.Discard, r, size/2)
		return err
	}
	return f.Backend.Put(ctx, name, r, size)
}

func (f *flaky) Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	if err := f.inject("get"); err != nil {
		return nil, err
	}
	return f.Backend.Get(ctx, name, offset, length)
}

func (f *flaky) Stat(ctx context.Context, name string) (backend.Info, error) {
	if err := f.inject("stat"); err != nil {
		return backend.Info{}, err
	}
	return f.Backend.Stat(ctx, name)
}

func (f *flaky) Delete(ctx context.Context, name string) error {
	if err := f.inject("delete"); err != nil {
		if f.deleteFirst {
			f.Backend.Delete(ctx, name)
		}
		return err
	}
	return f.Backend.Delete(ctx, name)
}

func (f *flaky) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	if err := f.inject("list"); err != nil {
		if f.listPartial {
			errFirst := errors.New("first")
			f.Backend.List(ctx, prefix, func(fi backend.Info) error {
				if err := fn(fi); err != nil {
					return err
				}
				return errFirst
			})
		}
		return err
	}
	return f.Backend.List(ctx, prefix, fn)
}

// retryOpts returns options driven by a fake clock, recording the delays.
func retryOpts(log io.Writer) (backend.RetryOptions, *[]time.Duration) {
	fc := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var sleeps []time.Duration
	return backend.RetryOptions{
		Logger: slog.New(slog.NewTextHandler(log, nil)),
		Clock:  fc,
		Sleep: func(ctx context.Context, d time.Duration) error {
			sleeps = append(sleeps, d)
			fc.Advance(d)
			return ctx.Err()
		},
	}, &sleeps
}

func failFirst(n int, err error) func(string, int) error {
	return func(_ string, call int) error {
		if call <= n {
			return err
		}
		return nil
	}
}

func TestRetryRecoversTransientFailures(t *testing.T) {
	ctx := t.Context()
	f := newFlaky(t, failFirst(2, errTransient))
	var log bytes.Buffer
	opts, sleeps := retryOpts(&log)
	be := backend.Retry(f, opts)

	data := bytes.Repeat([]byte("0123456789"), 1000)
	if err := be.Put(ctx, "data/ab/x", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if n := f.count("put"); n != 3 {
		t.Errorf("Put called %d times, want 3", n)
	}
	// The failing attempts consumed half the reader: the data is whole
	// only if Retry rewound it.
	got, err := backend.ReadAll(ctx, be, "data/ab/x")
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("content after retried Put: %d bytes, %v", len(got), err)
	}
	if fi, err := be.Stat(ctx, "data/ab/x"); err != nil || fi.Size != int64(len(data)) {
		t.Errorf("Stat: %+v, %v", fi, err)
	}
	if n := f.count("get") + f.count("stat"); n != 6 {
		t.Errorf("Get and Stat called %d times, want 3 each", n)
	}

	// Exponential backoff with jitter: [d/2, d] for d = 200ms, 400ms, ...
	for i, d := range (*sleeps)[:2] {
		nominal := 200 * time.Millisecond << i
		if d < nominal/2 || d > nominal {
			t.Errorf("delay %d = %v, want within [%v, %v]", i, d, nominal/2, nominal)
		}
	}
	if n := strings.Count(log.String(), "retrying"); n != 6 {
		t.Errorf("logged %d retries, want 6:\n%s", n, log.String())
	}
	if !strings.Contains(log.String(), "op=put name=data/ab/x") || !strings.Contains(log.String(), "transient failure") {
		t.Errorf("retry log lacks op, name or error:\n%s", log.String())
	}
}

func TestRetryDoesNotRetryPermanent(t *testing.T) {
	ctx := t.Context()
	errDenied := errors.New("access denied")
	for _, c := range []struct {
		name string
		err  error
	}{
		{"permanent", backend.Permanent(errDenied)},
		{"not exist", backend.ErrNotExist},
		{"cancelled", context.Canceled},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFlaky(t, failFirst(100, c.err))
			opts, sleeps := retryOpts(io.Discard)
			_, err := backend.Retry(f, opts).Stat(ctx, "x")
			if !errors.Is(err, c.err) || f.count("stat") != 1 || len(*sleeps) != 0 {
				t.Errorf("got %v after %d calls, want %v after 1", err, f.count("stat"), c.err)
			}
		})
	}
	t.Run("context done", func(t *testing.T) {
		f := newFlaky(t, failFirst(100, errTransient))
		opts, _ := retryOpts(io.Discard)
		ctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := backend.Retry(f, opts).Stat(ctx, "x")
		if !errors.Is(err, context.Canceled) || f.count("stat") != 1 {
			t.Errorf("got %v after %d calls, want context.Canceled after 1", err, f.count("stat"))
		}
	})
	t.Run("cancelled while waiting", func(t *testing.T) {
		f := newFlaky(t, failFirst(100, errTransient))
		ctx, cancel := context.WithCancel(ctx)
		opts := backend.RetryOptions{Logger: slog.New(slog.DiscardHandler), Sleep: func(ctx context.Context, _ time.Duration) error {
			cancel()
			return ctx.Err()
		}}
		_, err := backend.Retry(f, opts).Stat(ctx, "x")
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "transient") || f.count("stat") != 1 {
			t.Errorf("got %v after %d calls, want context.Canceled with the last error after 1", err, f.count("stat"))
		}
	})
}

func TestRetryBoundedAttempts(t *testing.T) {
	f := newFlaky(t, failFirst(100, errTransient))
	opts, _ := retryOpts(io.Discard)
	opts.Attempts = 4
	err := backend.Retry(f, opts).Put(t.Context(), "x", bytes.NewReader([]byte("abc")), 3)
	if !errors.Is(err, errTransient) || !strings.Contains(err.Error(), "giving up after 4 attempts") {
		t.Errorf("got %v", err)
	}
	if n := f.count("put"); n != 4 {
		t.Errorf("Put called %d times, want 4", n)
	}
}

func TestRetryBoundedTime(t *testing.T) {
	f := newFlaky(t, failFirst(1000, errTransient))
	opts, sleeps := retryOpts(io.Discard)
	opts.Attempts = 1000
	opts.MaxElapsed = 3 * time.Second
	opts.InitialDelay = 100 * time.Millisecond
	opts.MaxDelay = time.Second
	_, err := backend.Retry(f, opts).Stat(t.Context(), "x")
	if !errors.Is(err, errTransient) || !strings.Contains(err.Error(), "giving up") {
		t.Errorf("got %v", err)
	}
	var total time.Duration
	for _, d := range *sleeps {
		total += d
	}
	if total > 3*time.Second || f.count("stat") < 4 || f.count("stat") > 20 {
		t.Errorf("%d attempts over %v, want a few within 3s", f.count("stat"), total)
	}
}

func TestRetryGetOnlyUntilReader(t *testing.T) {
	f := newFlaky(t, failFirst(1, errTransient))
	opts, _ := retryOpts(io.Discard)
	be := backend.Retry(f, opts)
	if err := f.Backend.Put(t.Context(), "x", bytes.NewReader([]byte("hello")), 5); err != nil {
		t.Fatal(err)
	}
	rc, err := be.Get(t.Context(), "x", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if _, err := io.ReadAll(rc); err == nil {
		t.Error("read from a closed reader succeeded")
	}
	if n := f.count("get"); n != 2 {
		t.Errorf("Get called %d times, want 2 (a read error must not cause another Get)", n)
	}
}

func TestRetryList(t *testing.T) {
	ctx := t.Context()
	setup := func(t *testing.T, partial bool) (*flaky, backend.Backend) {
		f := newFlaky(t, failFirst(1, errTransient))
		f.listPartial = partial
		for _, n := range []string{"index/a", "index/b"} {
			if err := f.Backend.Put(ctx, n, bytes.NewReader(nil), 0); err != nil {
				t.Fatal(err)
			}
		}
		opts, _ := retryOpts(io.Discard)
		return f, backend.Retry(f, opts)
	}
	t.Run("failure before fn is retried", func(t *testing.T) {
		f, be := setup(t, false)
		n := 0
		if err := be.List(ctx, "index/", func(backend.Info) error { n++; return nil }); err != nil || n != 2 {
			t.Errorf("got %v with %d objects", err, n)
		}
		if f.count("list") != 2 {
			t.Errorf("List called %d times, want 2", f.count("list"))
		}
	})
	t.Run("failure after fn is not retried", func(t *testing.T) {
		f, be := setup(t, true)
		n := 0
		err := be.List(ctx, "index/", func(backend.Info) error { n++; return nil })
		if !errors.Is(err, errTransient) || n != 1 || f.count("list") != 1 {
			t.Errorf("got %v with %d objects after %d calls; want errTransient, 1, 1", err, n, f.count("list"))
		}
	})
	t.Run("error of fn is returned as is", func(t *testing.T) {
		f := newFlaky(t, nil)
		if err := f.Backend.Put(ctx, "index/a", bytes.NewReader(nil), 0); err != nil {
			t.Fatal(err)
		}
		opts, _ := retryOpts(io.Discard)
		errFn := errors.New("from fn")
		err := backend.Retry(f, opts).List(ctx, "", func(backend.Info) error { return errFn })
		if err != errFn || f.count("list") != 1 {
			t.Errorf("got %v after %d calls, want errFn after 1", err, f.count("list"))
		}
	})
}

func TestRetryDeleteWithLostReply(t *testing.T) {
	f := newFlaky(t, failFirst(1, errTransient))
	f.deleteFirst = true
	if err := f.Backend.Put(t.Context(), "locks/l", bytes.NewReader([]byte("x")), 1); err != nil {
		t.Fatal(err)
	}
	opts, _ := retryOpts(io.Discard)
	be := backend.Retry(f, opts)
	if err := be.Delete(t.Context(), "locks/l"); err != nil {
		t.Errorf("Delete whose first reply was lost: %v", err)
	}
	if err := be.Delete(t.Context(), "locks/l"); !backend.IsNotExist(err) {
		t.Errorf("Delete of a missing object: %v, want ErrNotExist", err)
	}
}

type badSeeker struct{ io.Reader }

func (badSeeker) Seek(int64, int) (int64, error) { return 0, errors.New("cannot seek") }

func TestRetryRewindFailureIsPermanent(t *testing.T) {
	f := newFlaky(t, nil)
	opts, _ := retryOpts(io.Discard)
	err := backend.Retry(f, opts).Put(t.Context(), "x", badSeeker{bytes.NewReader([]byte("x"))}, 1)
	if !backend.IsPermanent(err) || f.count("put") != 0 {
		t.Errorf("got %v after %d calls", err, f.count("put"))
	}
}

// gauge records the most operations of its Backend running at once; each
// operation takes a little while, and a Get lasts until its reader closes.
type gauge struct {
	backend.Backend
	cur, max atomic.Int64
}

func (g *gauge) enter() {
	n := g.cur.Add(1)
	for {
		m := g.max.Load()
		if n <= m || g.max.CompareAndSwap(m, n) {
			break
		}
	}
	time.Sleep(2 * time.Millisecond) // deliberate: holds the slot so calls overlap
}

func (g *gauge) Put(ctx context.Context, name string, r io.ReadSeeker, size int64) error {
	g.enter()
	defer g.cur.Add(-1)
	return g.Backend.Put(ctx, name, r, size)
}

func (g *gauge) Stat(ctx context.Context, name string) (backend.Info, error) {
	g.enter()
	defer g.cur.Add(-1)
	return g.Backend.Stat(ctx, name)
}

func (g *gauge) Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	g.enter()
	rc, err := g.Backend.Get(ctx, name, offset, length)
	if err != nil {
		g.cur.Add(-1)
		return nil, err
	}
	return &gaugeReader{ReadCloser: rc, g: g}, nil
}

type gaugeReader struct {
	io.ReadCloser
	g *gauge
}

func (r *gaugeReader) Close() error {
	r.g.cur.Add(-1)
	return r.ReadCloser.Close()
}

func TestLimitConcurrency(t *testing.T) {
	const n = 3
	g := &gauge{Backend: newLocal(t)}
	be := backend.Limit(g, n)
	ctx := t.Context()
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			name := "data/00/" + string(rune('a'+i%26))
			if err := be.Put(ctx, name, bytes.NewReader([]byte("abc")), 3); err != nil {
				t.Error(err)
				return
			}
			if _, err := be.Stat(ctx, name); err != nil {
				t.Error(err)
			}
			rc, err := be.Get(ctx, name, 0, -1)
			if err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond) // hold the reader open
			io.ReadAll(rc)
			rc.Close()
		})
	}
	wg.Wait()
	if m := g.max.Load(); m > n || m < 2 {
		t.Errorf("at most %d operations ran at once, want 2..%d", m, n)
	}
}

func TestLimitGetHoldsSlotUntilClose(t *testing.T) {
	l := newLocal(t)
	ctx := t.Context()
	if err := l.Put(ctx, "x", bytes.NewReader([]byte("x")), 1); err != nil {
		t.Fatal(err)
	}
	be := backend.Limit(l, 2)
	open := func() io.ReadCloser {
		t.Helper()
		rc, err := be.Get(ctx, "x", 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		return rc
	}
	statBlocks := func() bool {
		ctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		_, err := be.Stat(ctx, "x")
		return errors.Is(err, context.DeadlineExceeded)
	}
	r1, r2 := open(), open()
	if !statBlocks() {
		t.Fatal("Stat ran while two readers held both slots")
	}
	r1.Close()
	r1.Close() // a second Close must not free a second slot
	if statBlocks() {
		t.Fatal("Stat blocked after a reader was closed")
	}
	r3 := open()
	if !statBlocks() {
		t.Fatal("Stat ran while two readers held both slots (double Close freed two?)")
	}
	r2.Close()
	r3.Close()
}

func TestMetrics(t *testing.T) {
	ctx := t.Context()
	reg := prometheus.NewRegistry()
	m, err := backend.Metrics(newLocal(t), reg, prometheus.Labels{"vault": "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Put(ctx, "data/ab/x", bytes.NewReader(make([]byte, 100)), 100); err != nil {
		t.Fatal(err)
	}
	if _, err := backend.ReadAll(ctx, m, "data/ab/x"); err != nil {
		t.Fatal(err)
	}
	if err := backend.ReadRange(ctx, m, "data/ab/x", 5, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, "data/ab/x", 99, 2); err == nil { // past the end: an error
		t.Fatal("Get past the end succeeded")
	}
	m.Stat(ctx, "data/ab/x")
	m.Stat(ctx, "data/ab/missing") // missing: not an error
	m.List(ctx, "", func(backend.Info) error { return nil })
	if err := m.Delete(ctx, "data/ab/x"); err != nil {
		t.Fatal(err)
	}

	want := backend.Stats{Ops: 8, Errors: 1, BytesRead: 110, BytesWritten: 100}
	if got := m.Stats(); got != want {
		t.Errorf("Stats: %+v, want %+v", got, want)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	value := func(name, op string) float64 {
		for _, f := range families {
			if f.GetName() != name {
				continue
			}
			for _, mt := range f.GetMetric() {
				if label(mt, "op") == op && label(mt, "vault") == "v1" {
					if h := mt.GetHistogram(); h != nil {
						return float64(h.GetSampleCount())
					}
					return mt.GetCounter().GetValue()
				}
			}
		}
		t.Fatalf("no metric %s{op=%q}", name, op)
		return 0
	}
	for _, c := range []struct {
		name, op string
		want     float64
	}{
		{"lifeboat_backend_operations_total", "put", 1},
		{"lifeboat_backend_operations_total", "get", 3},
		{"lifeboat_backend_operations_total", "stat", 2},
		{"lifeboat_backend_operations_total", "list", 1},
		{"lifeboat_backend_operations_total", "delete", 1},
		{"lifeboat_backend_errors_total", "get", 1},
		{"lifeboat_backend_errors_total", "stat", 0},
		{"lifeboat_backend_bytes_total", "put", 100},
		{"lifeboat_backend_bytes_total", "get", 110},
		{"lifeboat_backend_operation_duration_seconds", "get", 3},
	} {
		if got := value(c.name, c.op); got != c.want {
			t.Errorf("%s{op=%q} = %v, want %v", c.name, c.op, got, c.want)
		}
	}

	if _, err := backend.Metrics(newLocal(t), reg, prometheus.Labels{"vault": "v1"}); err == nil {
		t.Error("registering the same metrics twice succeeded")
	}
	if _, err := backend.Metrics(newLocal(t), reg, prometheus.Labels{"vault": "v2"}); err != nil {
		t.Errorf("metrics of a second vault: %v", err)
	}
	if _, err := backend.Metrics(newLocal(t), nil, nil); err != nil {
		t.Errorf("metrics without a registry: %v", err)
	}
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
