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
	a.processTable(nil)
	cols := regexp.MustCompile(`\s{2,}`)
	for _, header := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		want := cols.Split(strings.TrimSpace(header), -1)
		found := false
		for _, line := range strings.Split(sample, "\n") {
			if strings.HasPrefix(line, want[0]+" ") {
				found = true
				if got := cols.Split(strings.TrimSpace(line), -1); strings.Join(got, "|") != strings.Join(want, "|") {
					t.Errorf("README's header %q, the CLI prints %q", got, want)
				}
			}
		}
		if !found {
			t.Errorf("README's status sample has no table %q", want[0])
		}
	}
}
