package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"time"
)

// Where the time of one sawtooth peak goes, from the host agent's own
// log (JSON lines, millisecond times): the previous point's cut, the
// wait until the next cycle starts (the policy's interval), the
// cycle's setup up to its cut (ingest session, QMP connection, fleece
// overlay, the transaction), reading the dirty blocks and shipping
// them to the process server, the process server's commit (packs,
// index and point into the vault) and the driver's commit, the agent's
// record of the point, and the server's first answer showing it (the
// agent's heartbeat plus the poll).
type phases struct {
	wait, setup, ship, commit, record, report time.Duration
	ok                                        bool // every line was found
}

// phaseNames label phases' fields in order.
var phaseNames = []string{"wait", "setup to cut", "read+ship", "commit", "agent record", "server shows"}

func (p phases) list() []time.Duration {
	return []time.Duration{p.wait, p.setup, p.ship, p.commit, p.record, p.report}
}

// cycleLog is what the host agent logged about one cycle of one VM.
type cycleLog struct {
	begins, read, committed, published time.Time
	cut                                time.Time
	took                               time.Duration
}

// agentLog indexes the host agent's cycle lines by VM and point ID.
type agentLog map[string]map[string]*cycleLog

// readAgentLog parses the host agent's JSON log. The driver's lines
// name the VM in "vm"; the VM agent's "point published" in "machine"
// (the last one, if the host's name comes first).
func readAgentLog(path string) (agentLog, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := agentLog{}
	// The driver logs "cycle begins" and "changes read" before it knows
	// the point: they wait here until "cycle committed" names it.
	open := map[string]*cycleLog{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l, ok := parseLine(sc.Bytes())
		if !ok {
			continue
		}
		switch l.msg {
		case "cycle begins":
			open[l.vm] = &cycleLog{begins: l.time}
		case "changes read":
			if c := open[l.vm]; c != nil {
				c.read = l.time
			}
		case "cycle committed":
			if c := open[l.vm]; c != nil && l.point != "" {
				c.committed = l.time
				if out[l.vm] == nil {
					out[l.vm] = map[string]*cycleLog{}
				}
				out[l.vm][l.point] = c
				delete(open, l.vm)
			}
		case "point published":
			if c := out[l.vm][l.point]; c != nil {
				c.published, c.took = l.time, time.Duration(l.took)
			}
		}
	}
	return out, sc.Err()
}

// logLine is what the benchmark reads of one log line.
type logLine struct {
	time    time.Time // the record's
	msg, vm string
	point   string
	took    int64 // ns
}

// parseLine decodes one JSON log line. A key may come twice ("time" is
// the record's time, then "point published"'s cut): the first wins.
func parseLine(b []byte) (logLine, bool) {
	var l logLine
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return l, false
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return l, false
		}
		key, _ := t.(string)
		var v any
		if err := dec.Decode(&v); err != nil {
			return l, false
		}
		if seen[key] {
			continue
		}
		seen[key] = true
		s, _ := v.(string)
		switch key {
		case "time":
			l.time, _ = time.Parse(time.RFC3339Nano, s)
		case "msg":
			l.msg = s
		case "vm":
			l.vm = s
		case "machine":
			if l.vm == "" {
				l.vm = s
			}
		case "point":
			l.point = s
		case "took":
			f, _ := v.(float64)
			l.took = int64(f)
		}
	}
	return l, !l.time.IsZero()
}

// phasesOf splits the gap from prev's cut to next's first showing.
func (al agentLog) phasesOf(vm string, prev, next shown) phases {
	c := al[vm][next.id]
	if c == nil || c.published.IsZero() || c.read.IsZero() {
		return phases{}
	}
	start := c.published.Add(-c.took)
	return phases{
		wait:   start.Sub(prev.cut),
		setup:  next.cut.Sub(start),
		ship:   c.read.Sub(next.cut),
		commit: c.committed.Sub(c.read),
		record: c.published.Sub(c.committed),
		report: next.first.Sub(c.published),
		ok:     true,
	}
}
