package control

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// TestEventQuery: GET /api/v1/events filters by kind, severity and time,
// lists the newest N in time order with newest=true, and refuses a bad
// parameter with a 400 that names it.
func TestEventQuery(t *testing.T) {
	ts := startServer(t, serverOpts{})
	for i := range 4 {
		ts.mustAPI("POST", "/api/v1/policies", ts.admin, api.Policy{Name: fmt.Sprintf("p%d", i)}, http.StatusCreated, nil)
		ts.clock.Advance(time.Minute)
	}
	get := func(q string) []api.Event {
		t.Helper()
		var evs []api.Event
		ts.mustAPI("GET", "/api/v1/events?"+q, ts.admin, nil, http.StatusOK, &evs)
		return evs
	}
	all := get("kind=audit&limit=10000")
	if len(all) != 4 {
		t.Fatalf("%d audit events, want 4", len(all))
	}
	newest := get("kind=audit&newest=true&limit=2")
	if len(newest) != 2 || newest[0].ID != all[2].ID || newest[1].ID != all[3].ID {
		t.Fatalf("the newest 2: %+v, want IDs %d, %d", newest, all[2].ID, all[3].ID)
	}
	after := get("kind=audit&after=" + url.QueryEscape(all[1].Time.Format(time.RFC3339Nano)))
	if len(after) != 3 || after[0].ID != all[1].ID {
		t.Fatalf("after %s: %+v", all[1].Time, after)
	}
	if evs := get("severity=error"); len(evs) != 0 {
		t.Fatalf("error events: %+v", evs)
	}
	if evs := get("severity=info&kind=audit&since=" + fmt.Sprint(all[2].ID)); len(evs) != 1 || evs[0].ID != all[3].ID {
		t.Fatalf("info audit events after %d: %+v", all[2].ID, evs)
	}
	for q, want := range map[string]string{
		"severity=fatal":   "severity",
		"after=yesterday":  "after",
		"newest=1":         "newest",
		"limit=0":          "limit",
		"since=-1":         "since",
		"kind=a%00b":       "kind",
		"machine=..%2Fetc": "machine",
	} {
		r := ts.api("GET", "/api/v1/events?"+q, ts.admin, nil)
		if r.status != http.StatusBadRequest || !strings.Contains(string(r.body), want) {
			t.Errorf("GET /api/v1/events?%s: %d %s, want 400 naming %s", q, r.status, r.body, want)
		}
	}
}
