package control

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/health"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// metricsTimeout bounds the store reads of one scrape.
const metricsTimeout = 10 * time.Second

// serverMetrics is what the server exports on GET /metrics: its own
// registry (no global state), the API's request counts and latencies,
// the vault backend's operations, and what the state store says at
// scrape time (machines, process servers, jobs), read by a collector so
// nothing is kept twice.
type serverMetrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	embedded *swapCollector // the embedded process server's ingest metrics, while it runs
}

// swapCollector collects what the collector it holds now collects
// (nothing while it holds none): the embedded process server starts
// with each run of the server, the registry lives as long as the server.
// It is unchecked: its Describe yields nothing.
type swapCollector struct {
	mu sync.Mutex
	c  prometheus.Collector
}

func (w *swapCollector) set(c prometheus.Collector) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.c = c
}

func (*swapCollector) Describe(chan<- *prometheus.Desc) {}

func (w *swapCollector) Collect(ch chan<- prometheus.Metric) {
	w.mu.Lock()
	c := w.c
	w.mu.Unlock()
	if c != nil {
		c.Collect(ch)
	}
}

// Metric descriptions of the state read at scrape time.
var (
	descRPO = prometheus.NewDesc("lifeboat_machine_rpo_seconds",
		"Age of the machine's newest recovery point (in reverse replication: of its newest reverse point); 0 before the first.", []string{"machine"}, nil)
	descRPOThreshold = prometheus.NewDesc("lifeboat_machine_rpo_threshold_seconds",
		"The RPO threshold of the machine's policy (0: none).", []string{"machine"}, nil)
	descState = prometheus.NewDesc("lifeboat_machine_state",
		"1 for the machine's state in the protection cycle (protected, initial, failed-over, reprotected, ...).", []string{"machine", "state"}, nil)
	descLastPoint = prometheus.NewDesc("lifeboat_machine_last_point_timestamp_seconds",
		"Time of the machine's newest published point, Unix seconds.", []string{"machine"}, nil)
	descChanged = prometheus.NewDesc("lifeboat_machine_last_point_changed_bytes",
		"Bytes changed in the machine's newest point.", []string{"machine"}, nil)
	descSent = prometheus.NewDesc("lifeboat_machine_last_point_sent_bytes",
		"Bytes sent to the vault for the machine's newest point (after deduplication).", []string{"machine"}, nil)
	descAgentUp = prometheus.NewDesc("lifeboat_agent_up",
		"1 while the machine's agent reports to the server, 0 when it is offline.", []string{"machine"}, nil)
	descProcessUp = prometheus.NewDesc("lifeboat_process_server_up",
		"1 while the process server reports to the server.", []string{"process_server"}, nil)
	descCacheUsed = prometheus.NewDesc("lifeboat_process_server_cache_bytes",
		"Bytes in the process server's cache, as it last reported.", []string{"process_server"}, nil)
	descCacheLimit = prometheus.NewDesc("lifeboat_process_server_cache_limit_bytes",
		"The process server's cache limit.", []string{"process_server"}, nil)
	descIngestRate = prometheus.NewDesc("lifeboat_process_server_ingest_bytes_per_second",
		"The process server's ingest rate, as it last reported.", []string{"process_server"}, nil)
	descProcessCPU = prometheus.NewDesc("lifeboat_process_server_cpu_ratio",
		"Share of its host's CPU time the process server's process used over its last 30 s (0-1), as it last reported.", []string{"process_server"}, nil)
	descProcessSessions = prometheus.NewDesc("lifeboat_process_server_sessions",
		"Ingest sessions open on the process server, as it last reported.", []string{"process_server"}, nil)
	descProcessMachines = prometheus.NewDesc("lifeboat_process_server_machines",
		"Machines assigned to the process server.", []string{"process_server"}, nil)
	descProcessScore = prometheus.NewDesc("lifeboat_process_server_load_score",
		"The online process server's load score, (machines + 1) × (1 + cpu + backlog + traffic): the lowest gets the next machine.", []string{"process_server"}, nil)
	descJobs = prometheus.NewDesc("lifeboat_jobs",
		"Jobs the server keeps, by kind and state (queued, running, waiting, succeeded, failed, cancelled).", []string{"kind", "state"}, nil)
	descHealth = prometheus.NewDesc("lifeboat_machine_health",
		"The machine's health: 0 healthy, 1 warning, 2 critical (the reasons are in the API and `lifeboat machines show`).", []string{"machine"}, nil)
	descDiskHealth = prometheus.NewDesc("lifeboat_disk_health",
		"A protected disk's health: 0 healthy, 1 warning, 2 critical.", []string{"machine", "disk"}, nil)
	descVaultBytes = prometheus.NewDesc("lifeboat_vault_stored_bytes",
		"Bytes the vault holds, by area (data: packs; index; points; ...), as the server last measured it by listing the vault (hourly).", []string{"area"}, nil)
	descVaultObjects = prometheus.NewDesc("lifeboat_vault_objects",
		"Objects the vault holds, by area, as last measured.", []string{"area"}, nil)
	descVaultMeasured = prometheus.NewDesc("lifeboat_vault_usage_measured_timestamp_seconds",
		"When the vault's usage was last measured, Unix seconds.", nil, nil)
	descVaultUp = prometheus.NewDesc("lifeboat_vault_up",
		"1 when the vault answered the server's last check, 0 when it did not.", nil, nil)
	descUp = prometheus.NewDesc("lifeboat_server_info",
		"1, labelled with the server's name and build.", []string{"server", "version"}, nil)
)

// newServerMetrics registers the server's metrics and returns the vault
// backend wrapped to count its operations (role="server").
func newServerMetrics(s *Server, be backend.Backend) (*serverMetrics, backend.Backend, error) {
	m := &serverMetrics{reg: prometheus.NewRegistry(), embedded: &swapCollector{}}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lifeboat_api_requests_total",
		Help: "API requests, by route and HTTP status code."}, []string{"route", "code"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lifeboat_api_request_duration_seconds",
		Help: "API request latency, by route (a long poll counts its wait).", Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)}, []string{"route"})
	for _, c := range []prometheus.Collector{m.requests, m.latency, stateCollector{s}, m.embedded,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := m.reg.Register(c); err != nil {
			return nil, nil, err
		}
	}
	mb, err := backend.Metrics(be, m.reg, prometheus.Labels{"role": "server"})
	if err != nil {
		return nil, nil, err
	}
	return m, mb, nil
}

// observe records one API request.
func (m *serverMetrics) observe(route string, code int, d time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	m.latency.WithLabelValues(route).Observe(d.Seconds())
}

// serveMetrics answers GET /metrics in Prometheus's text format.
func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request, _ *caller) error {
	promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{ErrorLog: slogPrinter{s}, ErrorHandling: promhttp.ContinueOnError}).ServeHTTP(w, r)
	return nil
}

// slogPrinter hands promhttp's errors to the server's log.
type slogPrinter struct{ s *Server }

func (p slogPrinter) Println(v ...any) { p.s.log.Warn("metrics", "err", v) }

// stateCollector reads machines, process servers and jobs from the store
// at each scrape.
type stateCollector struct{ s *Server }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRPO, descRPOThreshold, descState, descLastPoint, descChanged, descSent,
		descAgentUp, descProcessUp, descCacheUsed, descCacheLimit, descIngestRate, descJobs, descHealth, descUp,
		descProcessCPU, descProcessSessions, descProcessMachines, descProcessScore,
		descDiskHealth, descVaultBytes, descVaultObjects, descVaultMeasured, descVaultUp} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	ctx, cancel := context.WithTimeout(context.Background(), metricsTimeout)
	defer cancel()
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 1, s.cfg.Name, s.version)
	if err := c.machines(ctx, ch); err != nil {
		ch <- prometheus.NewInvalidMetric(descRPO, err)
	}
	if err := c.processes(ctx, ch); err != nil {
		ch <- prometheus.NewInvalidMetric(descProcessUp, err)
	}
	if err := c.jobs(ctx, ch); err != nil {
		ch <- prometheus.NewInvalidMetric(descJobs, err)
	}
	c.vault(ch)
}

// vault: whether it answered the last check and what it held at the
// last measurement.
func (c stateCollector) vault(ch chan<- prometheus.Metric) {
	problem, u := c.s.seen.vault()
	up := 1.0
	if problem != "" {
		up = 0
	}
	ch <- prometheus.MustNewConstMetric(descVaultUp, prometheus.GaugeValue, up)
	if u == nil || u.Measured.IsZero() {
		return
	}
	ch <- prometheus.MustNewConstMetric(descVaultMeasured, prometheus.GaugeValue, float64(u.Measured.UnixMilli())/1000)
	for _, a := range u.Areas {
		area := a.Area
		if area == "" {
			area = "top"
		}
		ch <- prometheus.MustNewConstMetric(descVaultBytes, prometheus.GaugeValue, float64(a.Bytes), area)
		ch <- prometheus.MustNewConstMetric(descVaultObjects, prometheus.GaugeValue, float64(a.Objects), area)
	}
}

func (c stateCollector) machines(ctx context.Context, ch chan<- prometheus.Metric) error {
	ms, err := c.s.store.ListMachines(ctx)
	if err != nil {
		return err
	}
	views, err := c.s.machineViews(ctx, ms)
	if err != nil {
		return err
	}
	thresholds := c.thresholds(ctx)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, m := range views {
		gauge(descRPO, m.RPO.Std().Seconds(), m.Name)
		gauge(descRPOThreshold, thresholds[m.Policy].Seconds(), m.Name)
		gauge(descState, 1, m.Name, m.State)
		if m.Health != nil {
			gauge(descHealth, health.Value(m.Health.Level), m.Name)
			for _, d := range m.Health.Disks {
				gauge(descDiskHealth, health.Value(d.Level), m.Name, d.Disk)
			}
		}
		up := 0.0
		if c.s.factsOf(m, nil).AgentOnline {
			up = 1
		}
		gauge(descAgentUp, up, m.Name)
		if p := m.LastPoint; p != nil {
			gauge(descLastPoint, float64(p.Time.UnixMilli())/1000, m.Name)
			gauge(descChanged, float64(p.ChangedBytes), m.Name)
			gauge(descSent, float64(p.SentBytes), m.Name)
		}
	}
	return nil
}

// thresholds are the RPO thresholds by policy name.
func (c stateCollector) thresholds(ctx context.Context) map[string]time.Duration {
	out := map[string]time.Duration{}
	ps, err := c.s.store.ListPolicies(ctx)
	if err != nil {
		return out
	}
	for _, p := range ps {
		out[p.Name] = p.RPOThreshold.Std()
	}
	return out
}

func (c stateCollector) processes(ctx context.Context, ch chan<- prometheus.Metric) error {
	ps, err := c.s.processList(ctx)
	if err != nil {
		return err
	}
	for _, p := range ps {
		up := 0.0
		if p.State == api.ProcessOnline {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descProcessUp, prometheus.GaugeValue, up, p.Name)
		ch <- prometheus.MustNewConstMetric(descCacheUsed, prometheus.GaugeValue, float64(p.CacheUsed), p.Name)
		ch <- prometheus.MustNewConstMetric(descCacheLimit, prometheus.GaugeValue, float64(p.CacheLimit), p.Name)
		ch <- prometheus.MustNewConstMetric(descIngestRate, prometheus.GaugeValue, p.IngestRate, p.Name)
		ch <- prometheus.MustNewConstMetric(descProcessCPU, prometheus.GaugeValue, p.CPU, p.Name)
		ch <- prometheus.MustNewConstMetric(descProcessSessions, prometheus.GaugeValue, float64(p.Sessions), p.Name)
		ch <- prometheus.MustNewConstMetric(descProcessMachines, prometheus.GaugeValue, float64(p.Agents), p.Name)
		if p.Load != nil {
			ch <- prometheus.MustNewConstMetric(descProcessScore, prometheus.GaugeValue, p.Load.Score, p.Name)
		}
	}
	return nil
}

// maxMetricJobs bounds the jobs one scrape reads.
const maxMetricJobs = 10000

func (c stateCollector) jobs(ctx context.Context, ch chan<- prometheus.Metric) error {
	js, err := c.s.store.ListJobs(ctx, jobs.ListOptions{Limit: maxMetricJobs})
	if err != nil {
		return err
	}
	type key struct{ kind, state string }
	n := map[key]int{}
	// Every kind and state has its series from the start, so that the
	// first failure of a kind is a change (an alert on delta sees it).
	for _, k := range c.s.rec.runner.Kinds() {
		for _, st := range []string{jobs.StateQueued, jobs.StateRunning, jobs.StateWaiting, jobs.StateSucceeded, jobs.StateFailed, jobs.StateCancelled} {
			n[key{k, st}] = 0
		}
	}
	for _, j := range js {
		n[key{j.Kind, j.State}]++
	}
	for k, v := range n {
		ch <- prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, float64(v), k.kind, k.state)
	}
	return nil
}

// statusWriter remembers the status code a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (long polls
// flush through it).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}
