package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// EventPointReadError is raised for a read of a served point that failed:
// a damaged block in the vault, which the recovered VM saw as an I/O
// error (never as wrong data).
const EventPointReadError = "point_read_error"

// readErrorsShown is how long a failed point read marks its disk in the
// machine's health.
const readErrorsShown = 24 * time.Hour

// maxReadErrorEvents bounds the events one VM's failed reads raise per
// scheduler tick (a guest retrying a damaged block must not flood them).
const maxReadErrorEvents = 10

// tickReadErrors raises an event for each failed read the point servers
// of recovered VMs recorded (orchestrate.ReadErrorsFile in each VM's
// directory) since the last tick.
func (s *Server) tickReadErrors(ctx context.Context) error {
	if s.rec == nil || s.rec.site.Dir == "" {
		return nil
	}
	recs, err := orchestrate.ReadRecords(s.rec.site.Dir)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, r := range recs {
		path := filepath.Join(r.Dir, orchestrate.ReadErrorsFile)
		seen[path] = true
		for _, e := range s.newReadErrors(path) {
			s.event(ctx, api.Event{Severity: api.SeverityError, Kind: EventPointReadError, Machine: r.Machine,
				Message: fmt.Sprintf("recovered VM %s: reading disk %s of point %.12s at offset %d failed (%s): the VM got an I/O error, never wrong data; run `lifeboat vault check --read-data`",
					r.Name, e.Disk, e.Point, e.Offset, e.Error)}) // readErrorDisk parses it

		}
	}
	s.rec.mu.Lock()
	for p := range s.rec.readErrOff {
		if !seen[p] {
			delete(s.rec.readErrOff, p) // the VM is gone
		}
	}
	s.rec.mu.Unlock()
	return nil
}

// newReadErrors returns the complete lines appended to path since the last
// call (at most maxReadErrorEvents; the rest wait for the next tick).
func (s *Server) newReadErrors(path string) []orchestrate.ReadError {
	s.rec.mu.Lock()
	off := s.rec.readErrOff[path]
	s.rec.mu.Unlock()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	n, _ := f.ReadAt(buf, off)
	if n == 0 {
		return nil
	}
	var out []orchestrate.ReadError
	used := 0
	for len(out) < maxReadErrorEvents {
		i := bytes.IndexByte(buf[used:n], '\n')
		if i < 0 {
			break
		}
		var e orchestrate.ReadError
		if json.Unmarshal(buf[used:used+i], &e) == nil {
			out = append(out, e)
		}
		used += i + 1
	}
	if used == 0 && n == len(buf) {
		used = n // a line longer than the buffer: skip it
	}
	s.rec.mu.Lock()
	s.rec.readErrOff[path] = off + int64(used)
	s.rec.mu.Unlock()
	return out
}

// readErrorDisk returns the disk a point_read_error event's message names.
func readErrorDisk(msg string) (string, bool) {
	_, rest, ok := strings.Cut(msg, ": reading disk ")
	if !ok {
		return "", false
	}
	disk, _, ok := strings.Cut(rest, " of point ")
	return disk, ok && disk != ""
}

// recentReadErrors returns, by machine and disk, the newest failed read
// of a served point within readErrorsShown.
func (s *Server) recentReadErrors(ctx context.Context) (map[string]map[string]string, error) {
	evs, err := s.store.ListEvents(ctx, store.EventQuery{Kind: EventPointReadError, Since: s.clock.Now().Add(-readErrorsShown), Limit: 1000, Newest: true})
	if err != nil {
		return nil, fmt.Errorf("read the point read errors: %w", err)
	}
	out := map[string]map[string]string{}
	for _, e := range evs { // oldest first: the newest wins
		disk, ok := readErrorDisk(e.Message)
		if !ok || e.Machine == "" {
			continue
		}
		if out[e.Machine] == nil {
			out[e.Machine] = map[string]string{}
		}
		out[e.Machine][disk] = e.Time.UTC().Format(time.RFC3339) + " " + e.Message
	}
	return out, nil
}
