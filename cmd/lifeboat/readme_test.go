package main

import (
	"bytes"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestREADMEStatusSample keeps README's sample of `lifeboat status`
// honest: its table headers are the ones the CLI prints, column for
// column, and its first line has the form the CLI writes.
func TestREADMEStatusSample(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sample, ok := strings.Cut(string(readme), "sleep 10; ./lifeboat status\n```\n\n```\n")
	if !ok {
		t.Fatal("README.md has no sample output after `./lifeboat status`")
	}
	sample, _, _ = strings.Cut(sample, "```")
	if !regexp.MustCompile(`^server \S+ \(\S+\), vault /\S+\n\n`).MatchString(sample) {
		t.Errorf("the sample's first line is not what status prints (server NAME (VERSION), vault LOC):\n%s", sample)
	}
	var out bytes.Buffer
	a := &app{stdout: &out}
	a.machineTable(nil)
	a.nextActionsTable(nil)
	a.processTable(nil)
	cols := regexp.MustCompile(`\s{2,}`)
	for _, header := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		// Tables may share their first column (MACHINE): a header
		// matches one line that starts like it, column for column.
		want := cols.Split(strings.TrimSpace(header), -1)
		var near []string
		found := false
		for _, line := range strings.Split(sample, "\n") {
			if strings.HasPrefix(line, want[0]+" ") {
				got := cols.Split(strings.TrimSpace(line), -1)
				found = found || strings.Join(got, "|") == strings.Join(want, "|")
				near = append(near, strings.Join(got, "|"))
			}
		}
		if !found {
			t.Errorf("README's status sample has no table %q; the CLI prints %q, README's headers starting so are %q", want[0], want, near)
		}
	}
}
