package processd

import (
	"fmt"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// TestBacklogInBatches: a backlog larger than one heartbeat may carry is
// sent over several, in order, and a failed heartbeat puts its batch back
// in front.
func TestBacklogInBatches(t *testing.T) {
	d := &daemon{cfg: Config{Name: "ps1"}}
	for i := range 1200 {
		d.addEvent(api.Event{Kind: "cache_full", Message: fmt.Sprint(i)})
		d.addPoint(api.Point{ID: fmt.Sprint(i)})
	}
	e, p := d.take()
	if len(e) != maxPerHeartbeat || len(p) != maxPerHeartbeat || e[0].Message != "0" || p[maxPerHeartbeat-1].ID != fmt.Sprint(maxPerHeartbeat-1) {
		t.Fatalf("first batch: %d events, %d points", len(e), len(p))
	}
	d.putBack(e, p) // the heartbeat failed
	var got []string
	for range 10 {
		e, p := d.take()
		if len(e) > maxPerHeartbeat || len(p) > maxPerHeartbeat {
			t.Fatalf("a batch of %d events and %d points", len(e), len(p))
		}
		for _, x := range e {
			got = append(got, x.Message)
		}
	}
	if len(got) != 1200 || got[0] != "0" || got[1199] != "1199" || got[500] != "500" {
		t.Fatalf("%d events sent, first %q last %q", len(got), got[0], got[len(got)-1])
	}
}
