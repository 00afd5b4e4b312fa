package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestPhasesFromLogs(t *testing.T) {
	dir := t.TempDir()
	agent := `{"time":"2026-12-08T12:00:00.000Z","level":"INFO","msg":"agent starting","machine":"host1"}
{"time":"2026-12-08T12:00:00.100Z","level":"INFO","msg":"cycle begins","machine":"host1","vm":"vm01","cut":"12:00:00.1"}
{"time":"2026-12-08T12:00:00.300Z","level":"INFO","msg":"changes read","machine":"host1","vm":"vm01"}
{"time":"2026-12-08T12:00:00.500Z","level":"INFO","msg":"cycle committed","machine":"host1","vm":"vm01","point":"aaaa1111"}
{"time":"2026-12-08T12:00:00.510Z","level":"INFO","msg":"point published","host":"host1","machine":"vm01","point":"aaaa1111","time":"2026-12-08T12:00:00.090Z","took":420000000}
{"time":"2026-12-08T12:00:01.100Z","level":"INFO","msg":"cycle begins","machine":"host1","vm":"vm01"}
{"time":"2026-12-08T12:00:01.400Z","level":"INFO","msg":"changes read","machine":"host1","vm":"vm01"}
{"time":"2026-12-08T12:00:01.700Z","level":"INFO","msg":"cycle committed","machine":"host1","vm":"vm01","point":"bbbb2222"}
{"time":"2026-12-08T12:00:01.710Z","level":"INFO","msg":"point published","host":"host1","machine":"vm01","point":"bbbb2222","time":"2026-12-08T12:00:01.095Z","took":620000000}
`
	ps := `{"time":"2026-12-08T12:00:00.450Z","level":"INFO","msg":"recovery point published","point":"aaaa","machine":"vm01"}
{"time":"2026-12-08T12:00:01.600Z","level":"INFO","msg":"recovery point published","point":"bbbb","machine":"vm01"}
`
	ap, pp := filepath.Join(dir, "agent.log"), filepath.Join(dir, "ps.log")
	if err := os.WriteFile(ap, []byte(agent), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pp, []byte(ps), 0o600); err != nil {
		t.Fatal(err)
	}
	al, err := readAgentLog(ap)
	if err != nil {
		t.Fatal(err)
	}
	if err := al.readPSLog(pp); err != nil {
		t.Fatal(err)
	}
	at := func(s string) time.Time { v, _ := time.Parse(time.RFC3339Nano, "2026-12-08T12:00:"+s+"Z"); return v }
	prev := shown{id: "aaaa1111", cut: at("00.090"), first: at("00.550")}
	next := shown{id: "bbbb2222", cut: at("01.095"), first: at("01.760")}
	p := al.phasesOf("vm01", prev, next)
	want := []time.Duration{420, 585, 305, 200, 100, 10, 50} // ms
	if !p.ok {
		t.Fatalf("phases not found: %+v", al["vm01"])
	}
	var sum time.Duration
	for i, d := range p.list() {
		sum += d
		if d != want[i]*time.Millisecond {
			t.Errorf("%s: %s, want %d ms", phaseNames[i], d, want[i])
		}
	}
	if sum != next.first.Sub(prev.cut) {
		t.Errorf("phases add up to %s, the gap is %s", sum, next.first.Sub(prev.cut))
	}
}
