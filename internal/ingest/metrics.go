package ingest

import "github.com/prometheus/client_golang/prometheus"

// Metric descriptions of the ingest, read from Stats at each scrape.
var (
	descReceived = prometheus.NewDesc("lifeboat_ingest_received_bytes_total",
		"Block bytes received from agents and acknowledged (after the bandwidth limit, before deduplication).", nil, nil)
	descStored = prometheus.NewDesc("lifeboat_ingest_stored_bytes_total",
		"New block bytes stored into the vault (plaintext, before compression; blocks the vault held already do not count).", nil, nil)
	descSessions = prometheus.NewDesc("lifeboat_ingest_sessions",
		"Ingest sessions open now (one per agent cycle being shipped).", nil, nil)
	descPoints = prometheus.NewDesc("lifeboat_ingest_points_published_total",
		"Recovery points published.", nil, nil)
	descBusy = prometheus.NewDesc("lifeboat_ingest_busy_answers_total",
		"Batches refused with 503 busy because the cache was full (agents are slowed down).", nil, nil)
	descCacheUsed = prometheus.NewDesc("lifeboat_process_cache_bytes",
		"Bytes of acknowledged blocks in the cache, not yet in the vault.", nil, nil)
	descCacheLimit = prometheus.NewDesc("lifeboat_process_cache_limit_bytes",
		"The cache limit: above it, batches are refused as busy.", nil, nil)
)

// Collector returns a Prometheus collector of the server's counters and
// cache, read from Stats at each scrape (nothing is counted twice).
// Register it in one registry only.
func (s *Server) Collector() prometheus.Collector { return collector{s} }

type collector struct{ s *Server }

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReceived, descStored, descSessions, descPoints, descBusy, descCacheUsed, descCacheLimit} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	for _, m := range []struct {
		d *prometheus.Desc
		t prometheus.ValueType
		v int64
	}{
		{descReceived, prometheus.CounterValue, st.BytesReceived},
		{descStored, prometheus.CounterValue, st.BytesStored},
		{descSessions, prometheus.GaugeValue, int64(st.Sessions)},
		{descPoints, prometheus.CounterValue, st.Points},
		{descBusy, prometheus.CounterValue, st.BusyAnswers},
		{descCacheUsed, prometheus.GaugeValue, st.CacheUsed},
		{descCacheLimit, prometheus.GaugeValue, st.CacheLimit},
	} {
		ch <- prometheus.MustNewConstMetric(m.d, m.t, float64(m.v))
	}
}
