package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/progress"
)

// `points list` and `points show` read the vault when one is named
// (--vault, LIFEBOAT_VAULT), and ask the server otherwise (--server, or
// the saved login). The server's records add what the vault does not
// keep: the agent's figures for the cycle that made each point.

// figuresPending is what the CLI says where a point's figures have not
// reached the server yet.
const figuresPending = "figures pending from the agent"

// maxServerPoints is the most points the API lists in one answer.
const maxServerPoints = 10000

// pointsFromServer reports whether points list/show ask the server.
func (a *app) pointsFromServer(cmd *cobra.Command) (bool, error) {
	fl := cmd.Flags()
	switch vault, server := fl.Changed("vault"), fl.Changed("server"); {
	case vault && server:
		return false, &codeError{exitUsage, errors.New("give --vault (read the vault) or --server (ask the server), not both")}
	case server:
		return true, nil
	case vault:
		return false, nil
	}
	return a.vaultLoc == "", nil
}

// pointsClient is the server client of points list/show.
func (a *app) pointsClient(f *clientFlags) (*client.Client, error) {
	c, err := a.client(f)
	var ce *codeError
	if errors.As(err, &ce) && ce.code == exitUsage {
		return nil, &codeError{exitUsage, fmt.Errorf("no vault and no server: pass --vault (or set LIFEBOAT_VAULT) to read a vault, or --server, or run `lifeboat login` to ask the server (%w)", ce.err)}
	}
	return c, err
}

// cycleText describes what the cycle that made a point did.
func cycleText(changed, read, sent int64, took api.Duration) string {
	return fmt.Sprintf("%s changed, %s read, %s sent in %s", progress.Bytes(changed), progress.Bytes(read),
		progress.Bytes(sent), took.Std().Round(time.Millisecond))
}

// resultText describes a machine's last point's cycle, or says that its
// figures are still to come.
func resultText(r api.CycleResult) string {
	if r.FiguresPending {
		return figuresPending
	}
	return cycleText(r.ChangedBytes, r.ReadBytes, r.SentBytes, r.Duration)
}

// serverPointsList is `points list` against the server: oldest first.
func (a *app) serverPointsList(ctx context.Context, f *clientFlags, machine string) error {
	c, err := a.pointsClient(f)
	if err != nil {
		return err
	}
	q := url.Values{"limit": {fmt.Sprint(maxServerPoints)}}
	if machine != "" {
		q.Set("machine", machine)
	}
	var pts []api.Point
	if err := c.Do(ctx, http.MethodGet, client.Path("points")+"?"+q.Encode(), nil, &pts); err != nil {
		return err
	}
	slices.Reverse(pts)
	if f.json {
		return a.printJSON(pts)
	}
	w := a.table()
	fmt.Fprintln(w, "ID\tTIME\tMACHINE\tKIND\tGROUP\tCHANGED\tREAD\tSENT\tTOOK")
	for _, p := range pts {
		figures := figuresPending
		if fg := p.CycleFigures; fg != nil {
			figures = fmt.Sprintf("%s\t%s\t%s\t%s", progress.Bytes(fg.ChangedBytes), progress.Bytes(fg.ReadBytes),
				progress.Bytes(fg.SentBytes), fg.Duration.Std().Round(time.Millisecond))
		}
		id := p.ID
		if len(id) > 8 {
			id = id[:8]
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", id, p.Time.Local().Format(time.DateTime), p.Machine, p.Kind, dash(p.Group), figures)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	more := ""
	if len(pts) == maxServerPoints {
		more = " (the newest; the vault may hold more)"
	}
	fmt.Fprintf(a.stdout, "%d points%s\n", len(pts), more)
	return nil
}

// serverPointShow is `points show` against the server.
func (a *app) serverPointShow(ctx context.Context, f *clientFlags, ref string) error {
	c, err := a.pointsClient(f)
	if err != nil {
		return err
	}
	var p api.Point
	if err := c.Do(ctx, http.MethodGet, client.Path("points", ref), nil, &p); err != nil {
		return err
	}
	if f.json {
		return a.printJSON(p)
	}
	fmt.Fprintf(a.stdout, "point    %s\nmachine  %s\ntime     %s\nkind     %s\n", p.ID, p.Machine, p.Time.Local().Format(time.RFC3339Nano), p.Kind)
	if p.Group != "" {
		fmt.Fprintf(a.stdout, "group    %s\n", p.Group)
	}
	if p.CutID != "" {
		fmt.Fprintf(a.stdout, "cut      %s\n", p.CutID)
	}
	if p.Process != "" {
		fmt.Fprintf(a.stdout, "process  %s\n", p.Process)
	}
	cycle := figuresPending
	if fg := p.CycleFigures; fg != nil {
		cycle = cycleText(fg.ChangedBytes, fg.ReadBytes, fg.SentBytes, fg.Duration)
	}
	fmt.Fprintf(a.stdout, "cycle    %s\n", cycle)
	return nil
}
