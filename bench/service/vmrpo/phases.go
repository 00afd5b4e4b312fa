package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"time"
)

// Where the time of one sawtooth peak goes, from the daemons' own logs
// (JSON lines), from the previous point's cut to the server's first
// answer showing the next point:
//
//   - previous cycle: the rest of the previous cycle after its cut, until
//     the agent recorded its point;
//   - to next cut: from there to the next cut: idle until the next cycle
//     is due (the policy's interval counts from the previous cut; no wait
//     when cycles run back to back), then the cycle's setup (ingest
//     session, QMP, fleece overlay, the transaction). The logs cannot
//     split the two exactly: the agent logs its cycle's duration after
//     saving its state, so a start computed from it comes out late;
//   - read+ship: reading the dirty blocks over NBD and sending them to the
//     process server, until the driver has read the last one;
//   - PS commit: the process server's commit (the last packs, the index
//     and the point into the vault) until it logs the point published;
//   - driver commit: its answer to the agent, and the driver's commit
//     (the fleece torn down, the bitmap state saved);
//   - agent record: the agent records the point;
//   - server shows: the agent's heartbeat, and the poll that sees it.
type phases struct {
	prev, toCut, ship, psCommit, drvCommit, record, report time.Duration
	ok                                                     bool // every line was found
}

// phaseNames label phases' fields in order.
var phaseNames = []string{"previous cycle", "to next cut", "read+ship", "PS commit", "driver commit", "agent record", "server shows"}

func (p phases) list() []time.Duration {
	return []time.Duration{p.prev, p.toCut, p.ship, p.psCommit, p.drvCommit, p.record, p.report}
}

// cycleLog is what the host agent and the process server logged about
// one cycle of one VM.
type cycleLog struct {
	read, psPublished, committed, published time.Time
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
			open[l.vm] = &cycleLog{}
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
				c.published = l.time
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
		}
	}
	return l, !l.time.IsZero()
}

// readPSLog adds the process server's "recovery point published"
// times (the point's short ID, the machine) to al.
func (al agentLog) readPSLog(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l, ok := parseLine(sc.Bytes())
		if !ok || l.msg != "recovery point published" || l.point == "" {
			continue
		}
		for id, c := range al[l.vm] {
			if strings.HasPrefix(id, l.point) {
				c.psPublished = l.time
			}
		}
	}
	return sc.Err()
}

// phasesOf splits the gap from prev's cut to next's first showing.
func (al agentLog) phasesOf(vm string, prev, next shown) phases {
	p, c := al[vm][prev.id], al[vm][next.id]
	if p == nil || c == nil || p.published.IsZero() || c.published.IsZero() || c.read.IsZero() || c.psPublished.IsZero() {
		return phases{}
	}
	return phases{
		prev:      p.published.Sub(prev.cut),
		toCut:     next.cut.Sub(p.published),
		ship:      c.read.Sub(next.cut),
		psCommit:  c.psPublished.Sub(c.read),
		drvCommit: c.committed.Sub(c.psPublished),
		record:    c.published.Sub(c.committed),
		report:    next.first.Sub(c.published),
		ok:        true,
	}
}
