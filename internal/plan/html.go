package plan

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"
)

// The HTML report of a plan run: one self-contained page (inline style,
// no scripts, no links to anything) that a user can archive or mail.
// Every text from the report and the consoles is escaped by html/template.

// ConsoleLines is how many of a console log's last lines a report shows.
const ConsoleLines = 200

// consoleTailBytes bounds what ReadConsoles reads of each console log.
const consoleTailBytes = 256 << 10

//go:embed report.html.tmpl
var reportTemplateText string

var reportTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"dur":     fmtDur,
	"time":    fmtTime,
	"short":   shortID,
	"verdict": verdict,
	"pct":     overheadShare,
}).Parse(reportTemplateText))

// htmlPage is what the template renders.
type htmlPage struct {
	R        Report
	Result   string // PASS, FAIL or RUNNING
	Consoles []htmlConsole
	Rendered time.Time
}

type htmlConsole struct {
	Machine, Path, Text string
	Lines               int
}

// RenderHTML writes the report page of r. consoles maps a machine to its
// console log's text (ReadConsoles); only the last ConsoleLines lines of
// each are shown; rendered is the time the page says it was made.
func RenderHTML(w io.Writer, r Report, consoles map[string]string, rendered time.Time) error {
	p := htmlPage{R: r, Result: Result(r), Rendered: rendered.UTC()}
	for _, m := range r.Machines {
		text, ok := consoles[m.Machine]
		if !ok {
			continue
		}
		text, n := tailLines(cleanText(text), ConsoleLines)
		p.Consoles = append(p.Consoles, htmlConsole{Machine: m.Machine, Path: m.Console, Text: text, Lines: n})
	}
	var b bytes.Buffer
	if err := reportTemplate.Execute(&b, p); err != nil {
		return fmt.Errorf("render the report of job %s: %w", r.Job, err)
	}
	_, err := w.Write(b.Bytes())
	return err
}

// Result is PASS or FAIL for a run that ended, RUNNING before.
func Result(r Report) string {
	switch {
	case r.Ended.IsZero():
		return "RUNNING"
	case r.Passed:
		return "PASS"
	}
	return "FAIL"
}

// ReadConsoles reads the end of each machine's console log (Console in
// r.Machines) for RenderHTML; a log that cannot be read says why instead.
func ReadConsoles(r Report) map[string]string {
	out := map[string]string{}
	for _, m := range r.Machines {
		if m.Console == "" {
			continue
		}
		text, err := readTail(m.Console, consoleTailBytes)
		if err != nil {
			text = fmt.Sprintf("(the console log cannot be read: %v)", err)
		}
		out[m.Machine] = text
	}
	return out
}

// ConsoleTails is ReadConsoles cut to what a page shows: the last
// ConsoleLines lines of each machine's console log, as valid UTF-8
// without control characters (but tabs and newlines).
func ConsoleTails(r Report) map[string]string {
	out := ReadConsoles(r)
	for m, text := range out {
		out[m], _ = tailLines(cleanText(text), ConsoleLines)
	}
	return out
}

// readTail reads at most limit bytes from the end of the file at path.
func readTail(path string, limit int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	off := max(0, st.Size()-limit)
	b := make([]byte, st.Size()-off)
	n, err := f.ReadAt(b, off)
	if err != nil && err != io.EOF {
		return "", err
	}
	b = b[:n]
	if off > 0 {
		// Drop the partial first line.
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b), nil
}

// tailLines returns the last n lines of s and how many it kept.
func tailLines(s string, n int) (string, int) {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "", 0
	}
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n"), len(lines)
}

// cleanText makes a console log fit for a page: valid UTF-8, carriage
// returns and other control characters (terminal escapes) dropped but
// for tabs and newlines.
func cleanText(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return strings.Map(func(r rune) rune {
		if (r < 0x20 && r != '\n' && r != '\t') || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

func fmtDur(d Duration) string {
	if d <= 0 {
		return "-"
	}
	t := d.Std()
	switch {
	case t >= time.Minute:
		return t.Round(time.Second).String()
	case t >= time.Second:
		return t.Round(100 * time.Millisecond).String()
	}
	return t.Round(time.Millisecond).String()
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func verdict(passed bool) string {
	if passed {
		return "pass"
	}
	return "fail"
}

// overheadShare is Lifeboat's part of the RTO in percent ("" when there
// is no RTO).
func overheadShare(r Report) string {
	if r.RTO <= 0 || r.Overhead <= 0 {
		return ""
	}
	return fmt.Sprintf("%.1f%%", float64(r.Overhead)*100/float64(r.RTO))
}
