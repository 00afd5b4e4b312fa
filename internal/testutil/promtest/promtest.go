// Package promtest scrapes a Prometheus endpoint in tests and reads the
// values of the samples, parsed as Prometheus does.
package promtest

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/lifeboat-dr/lifeboat/internal/metricsrv"
)

// Serve serves g with metricsrv on 127.0.0.1:0 until the test ends and
// returns the scrape URL.
func Serve(t testing.TB, g prometheus.Gatherer) string {
	t.Helper()
	ln, err := metricsrv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- metricsrv.Serve(ctx, ln, g, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("metrics listener: %v", err)
		}
	})
	return "http://" + ln.Addr().String() + "/metrics"
}

// Families are the metric families of one scrape, by name.
type Families map[string]*dto.MetricFamily

// Scrape GETs url in the text format and parses the answer; anything but
// a 200 with parseable metrics fails t.
func Scrape(t testing.TB, url string) Families {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s\n%s", url, resp.Status, body)
	}
	return Parse(t, url, body)
}

// Parse parses a scrape's body (from where) as Prometheus does; metrics
// that do not parse fail t.
func Parse(t testing.TB, where string, body []byte) Families {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("the metrics of %s do not parse: %v\n%s", where, err, body)
	}
	return fams
}

// Value is the value of the first sample of family name whose labels
// include want: a gauge's or counter's value, a histogram's count.
func (f Families) Value(name string, want map[string]string) (float64, bool) {
	fam := f[name]
	if fam == nil {
		return 0, false
	}
next:
	for _, m := range fam.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// Type is the type of family name (nil when it is absent).
func (f Families) Type(name string) *dto.MetricType {
	if fam := f[name]; fam != nil {
		return fam.Type
	}
	return nil
}
