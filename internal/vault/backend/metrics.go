package backend

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Stats is a snapshot of the totals a MetricsBackend has counted.
type Stats struct {
	Ops          int64 // operations done, failed ones included
	Errors       int64 // operations that failed, missing objects excepted
	BytesRead    int64 // bytes read from Get readers
	BytesWritten int64 // bytes stored by successful Puts
}

// MetricsBackend is a Backend that counts the operations of another one.
// Create it with Metrics.
type MetricsBackend struct {
	be Backend

	ops, errs, bytes *prometheus.CounterVec
	latency          *prometheus.HistogramVec

	nOps, nErrs, nRead, nWritten atomic.Int64
}

// Metrics returns a Backend that counts the operations of be, both in
// Stats and, if reg is not nil, in these Prometheus metrics registered with
// reg, each with the label "op" (put, get, stat, delete, list) and the
// constant labels given (which tell several backends in one registry apart):
//
//	lifeboat_backend_operations_total
//	lifeboat_backend_errors_total            (missing objects are not errors)
//	lifeboat_backend_bytes_total             (op="put": stored, op="get": read)
//	lifeboat_backend_operation_duration_seconds
//
// The duration of a Get is the time until it returns its reader, not the
// time taken to read it. Registering the same metrics with the same
// constant labels twice in one registry is an error.
func Metrics(be Backend, reg prometheus.Registerer, labels prometheus.Labels) (*MetricsBackend, error) {
	m := &MetricsBackend{
		be: be,
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lifeboat_backend_operations_total", Help: "Storage backend operations done, failed ones included.",
			ConstLabels: labels,
		}, []string{"op"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lifeboat_backend_errors_total", Help: "Storage backend operations that failed (missing objects excepted).",
			ConstLabels: labels,
		}, []string{"op"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lifeboat_backend_bytes_total", Help: "Bytes stored by Put and read from Get.",
			ConstLabels: labels,
		}, []string{"op"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lifeboat_backend_operation_duration_seconds", Help: "Duration of storage backend operations.",
			ConstLabels: labels,
			Buckets:     prometheus.ExponentialBuckets(0.001, 4, 9), // 1ms .. 65s
		}, []string{"op"}),
	}
	for _, op := range []string{"put", "get", "stat", "delete", "list"} {
		m.ops.WithLabelValues(op)
		m.errs.WithLabelValues(op)
		m.latency.WithLabelValues(op)
	}
	m.bytes.WithLabelValues("put")
	m.bytes.WithLabelValues("get")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.ops, m.errs, m.bytes, m.latency} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register storage backend metrics: %w", err)
			}
		}
	}
	return m, nil
}

// Stats returns the totals counted so far.
func (m *MetricsBackend) Stats() Stats {
	return Stats{
		Ops:          m.nOps.Load(),
		Errors:       m.nErrs.Load(),
		BytesRead:    m.nRead.Load(),
		BytesWritten: m.nWritten.Load(),
	}
}

// begin is when an operation began, for its latency.
func begin() time.Time {
	return time.Now() // wallclock: the latency of a real operation, only measured
}

// observe counts one finished operation; start is when it began.
func (m *MetricsBackend) observe(op string, start time.Time, err error) {
	m.nOps.Add(1)
	m.ops.WithLabelValues(op).Inc()
	m.latency.WithLabelValues(op).Observe(time.Since(start).Seconds()) // wallclock: only measured
	if err != nil && !IsNotExist(err) {
		m.nErrs.Add(1)
		m.errs.WithLabelValues(op).Inc()
	}
}

// Location implements Backend.
func (m *MetricsBackend) Location() string { return m.be.Location() }

// Put implements Backend.
func (m *MetricsBackend) Put(ctx context.Context, name string, r io.ReadSeeker, size int64) error {
	start := begin()
	err := m.be.Put(ctx, name, r, size)
	m.observe("put", start, err)
	if err == nil {
		m.nWritten.Add(size)
		m.bytes.WithLabelValues("put").Add(float64(size))
	}
	return err
}

// Get implements Backend.
func (m *MetricsBackend) Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	start := begin()
	rc, err := m.be.Get(ctx, name, offset, length)
	m.observe("get", start, err)
	if err != nil {
		return nil, err
	}
	return &countingReader{ReadCloser: rc, m: m, bytes: m.bytes.WithLabelValues("get")}, nil
}

type countingReader struct {
	io.ReadCloser
	m     *MetricsBackend
	bytes prometheus.Counter
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if n > 0 {
		r.m.nRead.Add(int64(n))
		r.bytes.Add(float64(n))
	}
	return n, err
}

// Stat implements Backend.
func (m *MetricsBackend) Stat(ctx context.Context, name string) (Info, error) {
	start := begin()
	fi, err := m.be.Stat(ctx, name)
	m.observe("stat", start, err)
	return fi, err
}

// Delete implements Backend.
func (m *MetricsBackend) Delete(ctx context.Context, name string) error {
	start := begin()
	err := m.be.Delete(ctx, name)
	m.observe("delete", start, err)
	return err
}

// List implements Backend. Its duration includes the time spent in fn.
func (m *MetricsBackend) List(ctx context.Context, prefix string, fn func(Info) error) error {
	start := begin()
	err := m.be.List(ctx, prefix, fn)
	m.observe("list", start, err)
	return err
}

// Close implements Backend.
func (m *MetricsBackend) Close() error { return m.be.Close() }

// Unwrap returns the wrapped backend.
func (m *MetricsBackend) Unwrap() Backend { return m.be }
