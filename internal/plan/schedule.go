package plan

import (
	"fmt"
	"time"

	"github.com/adhocore/gronx"
)

// NextDrill is the first time after t (UTC, whole minutes) at which the
// plan's schedule runs a drill; ok is false when the plan has none.
func (p *Plan) NextDrill(t time.Time) (next time.Time, ok bool, err error) {
	if p.Schedule == "" {
		return time.Time{}, false, nil
	}
	next, err = gronx.NextTickAfter(p.Schedule, t.UTC(), false)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("plan %s: schedule %q: %w", p.Name, p.Schedule, err)
	}
	return next.UTC(), true, nil
}
