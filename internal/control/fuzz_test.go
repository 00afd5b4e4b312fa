package control

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// fuzzRig is a server without listeners, driven through its handler.
type fuzzRig struct {
	s        *Server
	operator string
	admin    string
	enroll   string // an unused agent enrollment token
	agent    *x509.Certificate
	process  *x509.Certificate
}

func newFuzzRig(tb testing.TB) *fuzzRig {
	tb.Helper()
	dir := tb.TempDir()
	ctx := context.Background()
	if _, err := Init(ctx, InitOptions{DataDir: filepath.Join(dir, "s"), VaultURL: filepath.Join(dir, "v"), Passphrase: []byte("p"),
		VaultKDF: cheapKDF, IngestDisabled: true}); err != nil {
		tb.Fatal(err)
	}
	s, err := Open(ctx, RunOptions{DataDir: filepath.Join(dir, "s"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), VaultKDF: cheapKDF})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	rig := &fuzzRig{s: s}
	mk := func(role string, oneTime bool) string {
		tok, hash, err := pki.NewToken(s.ca.Fingerprint())
		if err != nil {
			tb.Fatal(err)
		}
		if err := s.store.CreateToken(ctx, store.Token{ID: randomID(8), Hash: hash, Role: role, Name: role, OneTime: oneTime,
			Created: time.Now()}); err != nil {
			tb.Fatal(err)
		}
		return tok
	}
	rig.operator, rig.admin, rig.enroll = mk(api.RoleOperator, false), mk(api.RoleAdmin, false), mk(api.RoleAgent, true)
	cert := func(role, name string) *x509.Certificate {
		_, csr, err := pki.NewKeyAndCSR(name)
		if err != nil {
			tb.Fatal(err)
		}
		p, _, _, err := s.ca.SignCSR(csr, role, name, nil, time.Hour, time.Now())
		if err != nil {
			tb.Fatal(err)
		}
		b, _ := pem.Decode(p)
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			tb.Fatal(err)
		}
		return c
	}
	rig.agent, rig.process = cert(api.RoleAgent, "m1"), cert(api.RoleProcess, "ps1")
	if err := s.store.PutMachine(ctx, api.Machine{Name: "m1", State: api.StateUnprotected,
		Inventory: api.Inventory{Disks: []api.DiskInfo{{Name: "vda", Size: 1 << 20}}}}); err != nil {
		tb.Fatal(err)
	}
	if err := s.store.CreatePolicy(ctx, api.Policy{Name: "gold", CrashInterval: api.Duration(time.Minute), RPOThreshold: api.Duration(time.Hour),
		HookTimeout: api.Duration(time.Minute), Retention: DefaultRetention}); err != nil {
		tb.Fatal(err)
	}
	return rig
}

// fuzzTargets are the handlers FuzzAPIBodies drives.
var fuzzTargets = []struct {
	method, path, auth string
}{
	{"POST", "/api/v1/policies", "operator"},
	{"PUT", "/api/v1/policies/gold", "operator"},
	{"POST", "/api/v1/machines/m1/protect", "operator"},
	{"POST", "/api/v1/machines/m1/bandwidth", "operator"},
	{"POST", "/api/v1/machines/m1/group", "operator"},
	{"POST", "/api/v1/machines/m1/move", "operator"},
	{"POST", "/api/v1/machines/m1/pause", "operator"},
	{"POST", "/api/v1/tokens", "admin"},
	{"POST", "/api/v1/agent/heartbeat", "agent"},
	{"POST", "/api/v1/agent/heartbeat?wait=1ms", "agent"},
	{"POST", "/api/v1/agent/vms", "agent"},
	{"POST", "/api/v1/process/heartbeat", "process"},
	{"POST", "/api/v1/certs/renew", "agent"},
	{"POST", "/api/v1/enroll", ""},
}

func (rig *fuzzRig) do(target int, body []byte) *httptest.ResponseRecorder {
	t := fuzzTargets[target]
	req := httptest.NewRequest(t.method, t.path, strings.NewReader(string(body)))
	req.Header.Set("Content-Type", "application/json")
	switch t.auth {
	case "operator":
		req.Header.Set("Authorization", "Bearer "+rig.operator)
	case "admin":
		req.Header.Set("Authorization", "Bearer "+rig.admin)
	case "agent", "process":
		c := rig.agent
		if t.auth == "process" {
			c = rig.process
		}
		req.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}, VerifiedChains: [][]*x509.Certificate{{c, rig.s.ca.Cert()}}}
	}
	rec := httptest.NewRecorder()
	rig.s.Handler().ServeHTTP(rec, req)
	return rec
}

// snapshot is the state a refused request must not change.
func (rig *fuzzRig) snapshot(tb testing.TB) string {
	tb.Helper()
	ctx := context.Background()
	st := rig.s.store
	var parts []any
	pols, err1 := st.ListPolicies(ctx)
	ms, err2 := st.ListMachines(ctx)
	toks, err3 := st.ListTokens(ctx)
	ps, err4 := st.ListProcesses(ctx)
	pts, err5 := st.ListPoints(ctx, "", "", 100000)
	evs, err6 := st.ListEvents(ctx, store.EventQuery{Limit: 100000})
	for _, err := range []error{err1, err2, err3, err4, err5, err6} {
		if err != nil {
			tb.Fatal(err)
		}
	}
	parts = append(parts, pols, ms, toks, ps, pts, len(evs))
	b, _ := json.Marshal(parts)
	return string(b)
}

func FuzzAPIBodies(f *testing.F) {
	seeds := [][]byte{
		[]byte(`{"name":"silver","crash_interval":"5m","rpo_threshold":"30m","retention":"1h:all,24h:1h"}`),
		[]byte(`{"name":"gold","crash_interval":"1m","app_interval":"1h","keep_app":"48h"}`),
		[]byte(`{"policy":"gold","group":"g1","disks":["vda"]}`),
		[]byte(`{"bytes_per_second":1000}`),
		[]byte(`{"group":"g2"}`),
		[]byte(`{"process":"nope"}`),
		[]byte(`{}`),
		[]byte(`{"vms":[{"name":"web","inventory":{"hostname":"h","disks":[{"name":"vda","size":10,"kind":"vm","format":"qcow2","driver":"qemu"}]}},{"name":"m1","inventory":{}}]}`),
		[]byte(`{"role":"viewer","ttl":"1h","name":"v1"}`),
		[]byte(`{"inventory":{"hostname":"h","disks":[{"name":"vda","size":10,"kind":"file"}]},"known_version":1,"results":[{"point":"` + strings.Repeat("ab", 32) + `","kind":"crash","time":"2025-01-01T00:00:00Z"}],"events":[{"severity":"info","kind":"x","message":"m"}],"cut_acks":[{"id":"c","status":"frozen"}]}`),
		[]byte(`{"inventory":{"vm_spec":{"cpus":2}},"progress":{"phase":"initial","done":1,"total":2,"percent":50}}`),
		[]byte(`{"url":"https://127.0.0.1:1","cache_used":1,"points":[{"id":"` + strings.Repeat("cd", 32) + `","machine":"m1","kind":"app","time":"2025-01-01T00:00:00Z"}]}`),
		[]byte(`{"csr":"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}`),
		[]byte(`{"token":"lbt1.x.y","role":"agent","name":"n","csr":"x"}`),
		[]byte(`{"name":"x","crash_interval":-5}`),
		[]byte(`{"name":"x","crash_interval":1e300}`),
		[]byte(`{"name":"x"}{"name":"y"}`),
		[]byte(`null`),
		[]byte(`[]`),
		[]byte("{\"name\":\"\x00\"}"),
	}
	for i, s := range seeds {
		for t := range fuzzTargets {
			if t%3 == i%3 || i < 8 {
				f.Add(uint8(t), s)
			}
		}
	}
	rig := newFuzzRig(f)
	f.Fuzz(func(t *testing.T, target uint8, body []byte) {
		ti := int(target) % len(fuzzTargets)
		before := rig.snapshot(t)
		rec := rig.do(ti, body)
		if rec.Code >= 500 {
			t.Fatalf("%s %s with %q: %d %s", fuzzTargets[ti].method, fuzzTargets[ti].path, body, rec.Code, rec.Body.String())
		}
		var eb api.ErrorBody
		if rec.Code >= 400 {
			if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil || eb.Error.Code == "" || eb.Error.Message == "" {
				t.Fatalf("error answer is not an api.ErrorBody: %d %s", rec.Code, rec.Body.String())
			}
			if after := rig.snapshot(t); after != before {
				t.Fatalf("refused request (%d %s) changed the state:\nbefore %s\nafter  %s", rec.Code, rec.Body.String(), before, after)
			}
		}
	})
}
