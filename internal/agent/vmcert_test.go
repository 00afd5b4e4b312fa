package agent

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// TestReportVMsCertificates: the host asks for a VM certificate when the
// VM has none, when its identity is damaged, when it has expired, and at
// once when the server says it was revoked; otherwise it sends no CSR.
func TestReportVMsCertificates(t *testing.T) {
	now := time.Now()
	ca, srvCert := testCA(t, now)
	var (
		mu      sync.Mutex
		revoked = map[string]bool{}
		csrs    []string // the VMs each request carried CSRs for, "-" for none
	)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/agent/vms" {
			http.Error(w, "not here", http.StatusNotFound)
			return
		}
		var req api.VMReport
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		resp := api.VMReportResponse{}
		got := "-"
		for _, vm := range req.VMs {
			res := api.VMResult{Name: vm.Name}
			if vm.CSR != "" {
				cert, _, _, err := ca.SignCSR([]byte(vm.CSR), pki.RoleAgent, vm.Name, nil, time.Hour, now)
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadRequest)
					return
				}
				res.Certificate = string(cert)
				revoked[vm.Name] = false
				if got == "-" {
					got = ""
				}
				got += vm.Name
			} else if revoked[vm.Name] {
				res.Reenroll = true
			}
			resp.VMs = append(resp.VMs, res)
		}
		csrs = append(csrs, got)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(resp)
	}))
	srv.TLS = pki.ServerTLS(srvCert, ca.Pool(), false)
	srv.StartTLS()
	t.Cleanup(srv.Close)

	log := slog.New(slog.DiscardHandler)
	clk := clock.NewFake(now)
	a := &Agent{cfg: &Config{Machine: "kvm1", StateDir: t.TempDir(), Server: srv.URL, VMs: &VMHostConfig{}},
		log: log, baseLog: log, clk: clk, id: &pki.Identity{CAPEM: ca.CertPEM()}, ctrl: srv.Client()}
	vms := []discovered{{spec: api.VMSpec{Name: "web"}, source: "qmp", qmp: "/nonexistent/web.qmp"}}
	keyFile := filepath.Join(a.vmStateDir("web"), IdentityDir, pki.IdentityKeyFile)

	round := func(wantCSRs []string, wantReissued bool) {
		t.Helper()
		mu.Lock()
		csrs = nil
		mu.Unlock()
		reissued, err := a.reportVMs(t.Context(), vms)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		got := append([]string(nil), csrs...)
		mu.Unlock()
		if len(got) != len(wantCSRs) {
			t.Fatalf("requests carried CSRs for %q, want %q", got, wantCSRs)
		}
		for i := range got {
			if got[i] != wantCSRs[i] {
				t.Fatalf("requests carried CSRs for %q, want %q", got, wantCSRs)
			}
		}
		if reissued["web"] != wantReissued {
			t.Fatalf("reissued %v, want web %v", reissued, wantReissued)
		}
		if _, err := pki.LoadIdentity(filepath.Join(a.vmStateDir("web"), IdentityDir)); err != nil {
			t.Fatalf("identity after the report: %v", err)
		}
	}
	round([]string{"web"}, true) // no identity yet
	key1, _ := os.ReadFile(keyFile)
	round([]string{"-"}, false) // enrolled: no CSR

	mu.Lock()
	revoked["web"] = true
	mu.Unlock()
	round([]string{"-", "web"}, true) // revoked: a second request at once
	key2, _ := os.ReadFile(keyFile)
	if string(key1) == string(key2) {
		t.Fatal("a revoked VM kept its key")
	}
	round([]string{"-"}, false)

	// A key left half-written: ask again rather than stay stuck.
	if err := os.WriteFile(keyFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	round([]string{"web"}, true)

	// Expired while the host was down.
	clk.Advance(2 * time.Hour)
	round([]string{"web"}, true)
}
