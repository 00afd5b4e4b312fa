package console

import (
	"fmt"
	"html/template"
	"sort"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Chart sizes (SVG user units).
const (
	chartW, chartH = 600.0, 120.0
	chartPad       = 4.0
)

// chart is a bar chart of one value per point, drawn on the server as
// inline SVG (no script, no external library), with its largest value
// and a text alternative for screen readers.
type chart struct {
	SVG   template.HTML
	Max   string
	Label string
}

// charts draws, from a machine's points (newest first, as the API lists
// them), the RPO each point closed (the time since the point before)
// and the churn (bytes changed) of each.
func charts(pts []api.Point) (rpo, churn *chart) {
	if len(pts) < 2 {
		return nil, nil
	}
	ps := append([]api.Point(nil), pts...)
	sort.Slice(ps, func(i, j int) bool { return ps[i].Time.Before(ps[j].Time) })
	var gaps, changed []float64
	for i := 1; i < len(ps); i++ {
		gaps = append(gaps, ps[i].Time.Sub(ps[i-1].Time).Seconds())
		c := 0.0
		if ps[i].CycleFigures != nil {
			c = float64(ps[i].ChangedBytes)
		}
		changed = append(changed, c)
	}
	rpo = bars(gaps, "RPO closed by each of the last %d points", func(v float64) string { return (time.Duration(v) * time.Second).String() })
	churn = bars(changed, "bytes changed in each of the last %d points", func(v float64) string { return fmt.Sprintf("%.1f MiB", v/(1<<20)) })
	return rpo, churn
}

func bars(vs []float64, label string, unit func(float64) string) *chart {
	max := 0.0
	for _, v := range vs {
		max = maxf(max, v)
	}
	w := (chartW - 2*chartPad) / float64(len(vs))
	var b strings.Builder
	fmt.Fprintf(&b, `<svg viewBox="0 0 %.0f %.0f" class="chart" role="img" aria-label="%s">`, chartW, chartH, template.HTMLEscapeString(fmt.Sprintf(label, len(vs))))
	for i, v := range vs {
		h := 0.0
		if max > 0 {
			h = (chartH - 2*chartPad) * v / max
		}
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%s</title></rect>`,
			chartPad+float64(i)*w, chartH-chartPad-h, maxf(w-1, 0.5), h, template.HTMLEscapeString(unit(v)))
	}
	b.WriteString(`</svg>`)
	return &chart{SVG: template.HTML(b.String()), Max: unit(max), Label: fmt.Sprintf(label, len(vs))}
}

func maxf(a, b float64) float64 {
	if a > b {
		return a
	}
	return b
}
