package main

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"sync"
)

// jsonLines is the output of `demo --json` and `recover boot|remove
// --json`: one JSON object per line. Progress objects have a "phase"
// and, where counted, "done" and "total"; the last object has "result".
// As an io.Writer it turns each line of prose written to it into
// {"phase":…,"msg":…}; a line "== Title…" starts a phase named by
// phaseOf(Title).
type jsonLines struct {
	mu      sync.Mutex
	w       io.Writer
	phaseOf func(title string) string
	phase   string
	buf     []byte
}

func newJSONLines(w io.Writer, phaseOf func(string) string) *jsonLines {
	return &jsonLines{w: w, phaseOf: phaseOf}
}

// Write emits every complete line as a message of the current phase.
func (j *jsonLines) Write(p []byte) (int, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.buf = append(j.buf, p...)
	for {
		i := bytes.IndexByte(j.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(j.buf[:i])
		j.buf = j.buf[i+1:]
		if err := j.line(line); err != nil {
			return len(p), err
		}
	}
}

func (j *jsonLines) line(line string) error {
	if strings.TrimSpace(line) == "" {
		return nil
	}
	if title, ok := strings.CutPrefix(line, "== "); ok && j.phaseOf != nil {
		j.phase = j.phaseOf(title)
	}
	return j.emitLocked(map[string]any{"phase": j.phase, "msg": strings.TrimSpace(strings.TrimPrefix(line, "== "))})
}

// Progress emits a counted step of phase.
func (j *jsonLines) Progress(phase string, done, total int, fields map[string]any) error {
	obj := map[string]any{"phase": phase, "done": done, "total": total}
	for k, v := range fields {
		obj[k] = v
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.emitLocked(obj)
}

// Result emits the last object: what the command ended with.
func (j *jsonLines) Result(result string, fields map[string]any) error {
	obj := map[string]any{"result": result}
	for k, v := range fields {
		obj[k] = v
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(j.buf) > 0 { // a last line without its newline
		line := string(j.buf)
		j.buf = nil
		if err := j.line(line); err != nil {
			return err
		}
	}
	return j.emitLocked(obj)
}

func (j *jsonLines) emitLocked(obj map[string]any) error {
	b, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	_, err = j.w.Write(append(b, '\n'))
	return err
}

// demoPhase names the demo's phases after the titles of its sections.
func demoPhase(title string) string {
	for _, p := range []struct{ prefix, phase string }{
		{"Fetching the guest kernel", "fetch-kernel"}, {"Sample", "sample"}, {"Server", "server"},
		{"Policy", "policy"}, {"Agent", "agent"}, {"Protected", "protect"}, {"lifeboat status", "status"},
		{"Recovery points", "points"}, {"Restoring", "restore"}, {"Instant access", "instant-access"},
		{"Incremental restore", "incremental-restore"}, {"Diff", "diff"}, {"lifeboat vault check", "check"},
		{"Test failover", "test-failover"}, {"Cleanup", "cleanup"},
	} {
		if strings.HasPrefix(title, p.prefix) {
			return p.phase
		}
	}
	word, _, _ := strings.Cut(strings.ToLower(title), " ")
	return strings.Trim(word, ":,")
}
