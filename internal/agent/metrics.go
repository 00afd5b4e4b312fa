package agent

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Metrics are an agent's Prometheus metrics, by machine: a host agent's
// VM agents share its Metrics. Make them with NewMetrics and give them
// in Options; a nil *Metrics records nothing.
type Metrics struct {
	cycles               *prometheus.CounterVec
	duration             *prometheus.HistogramVec
	captured, read, sent *prometheus.CounterVec
	lastPoint            *prometheus.GaugeVec
}

// NewMetrics registers the agent's metrics with reg:
//
//	lifeboat_agent_cycles_total{machine,result}        result: ok, failed
//	lifeboat_agent_cycle_duration_seconds{machine}
//	lifeboat_agent_captured_bytes_total{machine}        changed block data of published cycles
//	lifeboat_agent_read_bytes_total{machine}            read from the disks by published cycles
//	lifeboat_agent_sent_bytes_total{machine}            shipped to the process server by published cycles
//	lifeboat_agent_last_point_timestamp_seconds{machine}
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	bytes := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"machine"})
	}
	m := &Metrics{
		cycles: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lifeboat_agent_cycles_total",
			Help: "Replication cycles finished, by result (ok: a point was published; failed)."}, []string{"machine", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lifeboat_agent_cycle_duration_seconds",
			Help:    "Duration of replication cycles, failed ones included.",
			Buckets: prometheus.ExponentialBuckets(0.25, 4, 10)}, []string{"machine"}), // 0.25 s .. 18 h
		captured: bytes("lifeboat_agent_captured_bytes_total", "Changed (non-zero) block bytes the published cycles captured."),
		read:     bytes("lifeboat_agent_read_bytes_total", "Bytes the published cycles read from the disks."),
		sent:     bytes("lifeboat_agent_sent_bytes_total", "Block bytes the published cycles shipped to the process server (after deduplication)."),
		lastPoint: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lifeboat_agent_last_point_timestamp_seconds",
			Help: "Cut time of the newest point this agent published, Unix seconds."}, []string{"machine"}),
	}
	for _, c := range []prometheus.Collector{m.cycles, m.duration, m.captured, m.read, m.sent, m.lastPoint} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register the agent's metrics: %w", err)
		}
	}
	return m, nil
}

// start makes a machine's series exist from the start (so that its first
// failure is a change) and sets its newest point from the saved state.
func (m *Metrics) start(machine string, st *state) {
	if m == nil {
		return
	}
	m.cycles.WithLabelValues(machine, "ok")
	m.cycles.WithLabelValues(machine, "failed")
	m.duration.WithLabelValues(machine)
	m.captured.WithLabelValues(machine)
	m.read.WithLabelValues(machine)
	m.sent.WithLabelValues(machine)
	if !st.LastPointTime.IsZero() {
		m.lastPoint.WithLabelValues(machine).Set(float64(st.LastPointTime.UnixMilli()) / 1000)
	}
}

// cycle records a finished cycle's result.
func (m *Metrics) cycle(machine string, res api.CycleResult) {
	if m == nil {
		return
	}
	m.duration.WithLabelValues(machine).Observe(res.Duration.Std().Seconds())
	if res.Error != "" {
		m.cycles.WithLabelValues(machine, "failed").Inc()
		return
	}
	m.cycles.WithLabelValues(machine, "ok").Inc()
	m.captured.WithLabelValues(machine).Add(float64(res.ChangedBytes))
	m.read.WithLabelValues(machine).Add(float64(res.ReadBytes))
	m.sent.WithLabelValues(machine).Add(float64(res.SentBytes))
	m.lastPoint.WithLabelValues(machine).Set(float64(res.Time.UnixMilli()) / 1000)
}
