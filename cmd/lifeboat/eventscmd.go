package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
)

// followEvery is how often `events --follow` asks for new events.
const followEvery = time.Second

// eventsFlags are the events command's filters.
type eventsFlags struct {
	machine, kind, severity, since string
	limit                          int
	follow                         bool
}

func (a *app) eventsCmd() *cobra.Command {
	var f clientFlags
	var ef eventsFlags
	cmd := &cobra.Command{
		Use:   "events [--machine M] [--kind K] [--severity S] [--since ID|TIME] [--limit N] [--follow]",
		Short: "List events (RPO alerts, hook failures, back-pressure, drills, audit): the newest, or those since an ID or a time",
		Long: `events lists the server's events with their IDs, oldest first: by default
the newest --limit of them; with --since, those after an event ID or at
or after a time. --follow then prints new events as they come (JSON lines
with --json) until interrupted.`,
		Example: `  lifeboat events --severity error
  lifeboat events --machine web01 --since "2026-12-07 09:00"
  lifeboat events --kind drill_failed --since 1200 --follow`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q, err := ef.query()
			if err != nil {
				return &codeError{exitUsage, err}
			}
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			return a.listEvents(cmd.Context(), c, q, f.json, ef.follow)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&ef.machine, "machine", "", "only this machine's events")
	fl.StringVar(&ef.kind, "kind", "", "only events of this kind (audit, rpo_exceeded, drill_failed, ...)")
	fl.StringVar(&ef.severity, "severity", "", "only events of this severity: info, warning or error")
	fl.StringVar(&ef.since, "since", "", "events after this event ID, or at or after this time (RFC 3339, or \"2006-01-02 15:04\" local)")
	fl.IntVar(&ef.limit, "limit", 100, "at most this many (the newest, without --since)")
	fl.BoolVar(&ef.follow, "follow", false, "then print new events as they come, until interrupted")
	a.addClientFlags(cmd, &f)
	return cmd
}

// query is the API query of the flags.
func (ef eventsFlags) query() (url.Values, error) {
	q := url.Values{}
	for k, v := range map[string]string{"machine": ef.machine, "kind": ef.kind} {
		if v != "" {
			q.Set(k, v)
		}
	}
	switch ef.severity {
	case "":
	case api.SeverityInfo, api.SeverityWarning, api.SeverityError:
		q.Set("severity", ef.severity)
	default:
		return nil, fmt.Errorf("--severity %q: give info, warning or error", ef.severity)
	}
	if ef.limit < 1 || ef.limit > 10000 {
		return nil, fmt.Errorf("--limit %d: give 1 to 10000", ef.limit)
	}
	q.Set("limit", strconv.Itoa(ef.limit))
	switch id, err := strconv.ParseInt(ef.since, 10, 64); {
	case ef.since == "":
		q.Set("newest", "true")
	case err == nil && id >= 0:
		q.Set("since", ef.since)
	default:
		t, err := parseTimeFlag(ef.since)
		if err != nil {
			return nil, fmt.Errorf("--since: an event ID or %w", err)
		}
		q.Set("after", t.UTC().Format(time.RFC3339))
	}
	return q, nil
}

// listEvents prints the events q selects and, with follow, the new ones
// until ctx ends.
func (a *app) listEvents(ctx context.Context, c *client.Client, q url.Values, asJSON, follow bool) error {
	var es []api.Event
	if err := c.Do(ctx, http.MethodGet, client.Path("events")+"?"+q.Encode(), nil, &es); err != nil {
		return err
	}
	if !follow {
		if asJSON {
			return a.printJSON(es)
		}
		a.eventTable(es)
		return nil
	}
	if len(es) == 0 {
		last, err := a.lastEventID(ctx, c)
		if err != nil {
			return err
		}
		q.Set("since", strconv.FormatInt(last, 10))
	}
	q.Del("newest")
	q.Del("after")
	q.Set("limit", "1000")
	t := a.clock().NewTicker(followEvery)
	defer t.Stop()
	for {
		if err := a.printEvents(es, asJSON); err != nil {
			return err
		}
		if len(es) > 0 {
			q.Set("since", strconv.FormatInt(es[len(es)-1].ID, 10))
		}
		select {
		case <-ctx.Done():
			return nil // interrupted: the normal end of --follow
		case <-t.C():
		}
		es = nil
		if err := c.Do(ctx, http.MethodGet, client.Path("events")+"?"+q.Encode(), nil, &es); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// lastEventID is the newest event's ID (0: none), where --follow starts
// when nothing matched yet.
func (a *app) lastEventID(ctx context.Context, c *client.Client) (int64, error) {
	var es []api.Event
	if err := c.Do(ctx, http.MethodGet, client.Path("events")+"?newest=true&limit=1", nil, &es); err != nil || len(es) == 0 {
		return 0, err
	}
	return es[0].ID, nil
}

// printEvents prints events as table lines, or as JSON lines.
func (a *app) printEvents(es []api.Event, asJSON bool) error {
	if !asJSON {
		a.eventTable(es)
		return nil
	}
	enc := json.NewEncoder(a.stdout)
	for _, e := range es {
		if err := enc.Encode(e); err != nil {
			return err
		}
	}
	return nil
}

// eventTable prints one line per event, with its ID.
func (a *app) eventTable(es []api.Event) {
	for _, e := range es {
		who := e.Machine
		if who == "" {
			who = e.Process
		}
		fmt.Fprintf(a.stdout, "%-6d %s %-7s %-16s %-12s %s\n", e.ID, e.Time.Local().Format(time.DateTime), e.Severity, e.Kind, dash(who), e.Message)
	}
}
