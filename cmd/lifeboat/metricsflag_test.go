package main

import (
	"net"
	"strings"
	"testing"
)

// TestMetricsListenFlag: `agent run` and `process run` refuse a
// --metrics-listen that is no HOST:PORT as a usage error naming the flag
// and what it wants, before they read their state; an address in use is
// an error naming the flag; a good one is served (and stopped) even when
// the daemon then fails.
func TestMetricsListenFlag(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, role := range []string{"agent", "process"} {
		state := t.TempDir() // not enrolled
		for _, bad := range []string{"localhost", "127.0.0.1:port", "127.0.0.1:99999"} {
			_, stderr, code := runCLI(t, nil, role, "run", "--state-dir", state, "--metrics-listen", bad)
			if code != exitUsage || !strings.Contains(stderr, "--metrics-listen \""+bad+"\"") || !strings.Contains(stderr, "HOST:PORT") {
				t.Errorf("%s run --metrics-listen %s: exit %d, stderr %q; want a usage error naming the flag and HOST:PORT", role, bad, code, stderr)
			}
		}
		_, stderr, code := runCLI(t, nil, role, "run", "--state-dir", state, "--metrics-listen", busy.Addr().String())
		if code != exitError || !strings.Contains(stderr, "--metrics-listen "+busy.Addr().String()) || !strings.Contains(stderr, "address already in use") {
			t.Errorf("%s run --metrics-listen on an address in use: exit %d, stderr %q", role, code, stderr)
		}
		_, stderr, code = runCLI(t, nil, role, "run", "--state-dir", state, "--metrics-listen", "127.0.0.1:0")
		if code != exitError || !strings.Contains(stderr, "serving metrics") || !strings.Contains(stderr, "enroll") {
			t.Errorf("%s run --metrics-listen 127.0.0.1:0 without enrollment: exit %d, stderr %q; want metrics served, then the enrollment error", role, code, stderr)
		}
	}
}
