package control

import (
	"crypto/tls"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// TestHostReportsVMs: a host agent reports VMs; each becomes an
// unprotected machine with its own certificate, which heartbeats like any
// agent; names owned by others are refused per entry; protect checks the
// drivers against the disks.
func TestHostReportsVMs(t *testing.T) {
	ts := startServer(t, serverOpts{ingest: true})
	host := ts.enroll("kvm1")
	other := ts.enroll("kvm2")
	plain := ts.enroll("plain")
	plain.heartbeat(api.AgentHeartbeat{})

	vmInv := api.Inventory{Hostname: "kvm1", OS: "VM (qmp)", Arch: "amd64", Disks: []api.DiskInfo{
		{Name: "vda", Path: "/var/lib/vm/web.qcow2", Size: 8 << 30, Kind: "vm", Format: "qcow2", Driver: "qemu"},
		{Name: "vdb", Path: "/var/lib/vm/web-data.raw", Size: 1 << 30, Kind: "vm", Format: "raw", Driver: "qemu"}},
		VMSpec: []byte(`{"name":"web","vcpus":2,"memory_mib":2048,"firmware":"bios","disks":[],"nics":[]}`)}
	oddInv := vmInv
	oddInv.Disks = []api.DiskInfo{{Name: "root0", Path: "/var/lib/vm/odd.qcow2", Size: 1 << 30, Kind: "vm", Format: "copy-before-write", Driver: "qemu"}}
	keyPEM, csrPEM, err := pki.NewKeyAndCSR("web")
	if err != nil {
		t.Fatal(err)
	}
	var resp api.VMReportResponse
	r := do(t, host.client, "POST", ts.url("/api/v1/agent/vms"), "", api.VMReport{VMs: []api.DiscoveredVM{
		{Name: "web", Inventory: vmInv, CSR: string(csrPEM)},
		{Name: "plain", Inventory: vmInv},
		{Name: "kvm1", Inventory: vmInv},
		{Name: "odd", Inventory: oddInv},
	}})
	if r.status != 200 {
		t.Fatalf("report: %d %s", r.status, r.body)
	}
	r.decode(t, &resp)
	if len(resp.VMs) != 4 || resp.VMs[0].Certificate == "" || resp.VMs[0].Error != "" {
		t.Fatalf("web: %+v", resp.VMs)
	}
	// One VM the server cannot take (here a filter node reported as its
	// disk) is refused in its entry; the others of the report go on.
	if !strings.Contains(resp.VMs[3].Error, `format "copy-before-write"`) {
		t.Fatalf("odd: %+v", resp.VMs[3])
	}
	if r := ts.api("GET", "/api/v1/machines/odd", ts.admin, nil); r.status != http.StatusNotFound {
		t.Fatalf("a VM with an invalid description became a machine: %d %s", r.status, r.body)
	}
	if !strings.Contains(resp.VMs[1].Error, "already replicated by its own agent") {
		t.Fatalf("plain: %+v", resp.VMs[1])
	}
	if !strings.Contains(resp.VMs[2].Error, "host's name") {
		t.Fatalf("kvm1: %+v", resp.VMs[2])
	}
	// The discovered VM is listed, unprotected, with its host.
	var m api.Machine
	ts.mustAPI("GET", "/api/v1/machines/web", ts.admin, nil, 200, &m)
	if m.Host != "kvm1" || m.State != api.StateUnprotected || len(m.Inventory.Disks) != 2 {
		t.Fatalf("machine web: %+v", m)
	}
	if len(ts.events("vm_discovered")) != 1 {
		t.Fatalf("no vm_discovered event")
	}
	// Another host may not claim it.
	r = do(t, other.client, "POST", ts.url("/api/v1/agent/vms"), "", api.VMReport{VMs: []api.DiscoveredVM{{Name: "web", Inventory: vmInv}}})
	resp = api.VMReportResponse{}
	r.decode(t, &resp)
	if r.status != 200 || !strings.Contains(resp.VMs[0].Error, "host kvm1") {
		t.Fatalf("other host claims web: %d %s", r.status, r.body)
	}
	// The VM's certificate works for heartbeats and may not report VMs itself.
	cert, err := tls.X509KeyPair([]byte(resp0(t, host, ts, vmInv).Certificate), keyPEM)
	if err == nil {
		t.Fatalf("a second report re-signed web although it sent no CSR")
	}
	cert, err = tls.X509KeyPair([]byte(firstCert(t, ts, host, vmInv, keyPEM, csrPEM)), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	vm := &agent{ts: ts, name: "web", cert: cert, client: httpClient(pki.ClientTLS(&cert, ts.pool))}
	cfg := vm.heartbeat(api.AgentHeartbeat{Inventory: vmInv})
	if cfg.Protected {
		t.Fatalf("unprotected VM got %+v", cfg)
	}
	r = do(t, vm.client, "POST", ts.url("/api/v1/agent/vms"), "", api.VMReport{VMs: []api.DiscoveredVM{{Name: "nested", Inventory: vmInv}}})
	if r.status != 403 || !strings.Contains(r.err().Message, "only a host's own agent") {
		t.Fatalf("VM reports VMs: %d %s", r.status, r.body)
	}

	// Drivers: validated against the disks, carried to the agent.
	pol := api.Policy{Name: "fast", CrashInterval: api.Duration(5 * time.Second), RPOThreshold: api.Duration(time.Minute), Retention: "1h:all"}
	ts.mustAPI("POST", "/api/v1/policies", ts.admin, pol, http.StatusCreated, nil)
	for _, c := range []struct {
		machine string
		drivers map[string]string
		want    string
	}{
		{"web", map[string]string{"": "scan"}, "qcow2 image"},
		{"web", map[string]string{"vdc": "qemu"}, "no disk \"vdc\""},
		{"web", map[string]string{"": "floppy"}, "want scan or qemu"},
		{"plain", map[string]string{"": "qemu"}, "needs a VM discovered by a host agent"},
	} {
		r := ts.api("POST", "/api/v1/machines/"+c.machine+"/protect", ts.admin, api.ProtectRequest{Policy: "fast", Drivers: c.drivers})
		if r.status != 400 || !strings.Contains(r.err().Message, c.want) {
			t.Fatalf("protect %s %v: %d %s", c.machine, c.drivers, r.status, r.body)
		}
	}
	ts.mustAPI("POST", "/api/v1/machines/web/protect", ts.admin, api.ProtectRequest{Policy: "fast", Drivers: map[string]string{"vdb": "scan"}}, 200, nil)
	cfg = vm.heartbeat(api.AgentHeartbeat{Inventory: vmInv})
	if !cfg.Protected || cfg.Drivers["vdb"] != "scan" {
		t.Fatalf("protected VM config: %+v", cfg)
	}
	// A policy driver applies when the machine names none.
	pol.Name, pol.Driver = "fastq", "qemu"
	ts.mustAPI("POST", "/api/v1/policies", ts.admin, pol, http.StatusCreated, nil)
	ts.mustAPI("POST", "/api/v1/machines/web/protect", ts.admin, api.ProtectRequest{Policy: "fastq"}, 200, nil)
	cfg = vm.heartbeat(api.AgentHeartbeat{Inventory: vmInv})
	if cfg.Drivers[""] != "qemu" {
		t.Fatalf("policy driver not applied: %+v", cfg.Drivers)
	}
	pol.Name, pol.Driver = "bad", "tape"
	if r := ts.api("POST", "/api/v1/policies", ts.admin, pol); r.status != 400 {
		t.Fatalf("policy with driver tape: %d %s", r.status, r.body)
	}
}

// resp0 reports web again without a CSR and returns its result.
func resp0(t *testing.T, host *agent, ts *testServer, inv api.Inventory) api.VMResult {
	t.Helper()
	var resp api.VMReportResponse
	r := do(t, host.client, "POST", ts.url("/api/v1/agent/vms"), "", api.VMReport{VMs: []api.DiscoveredVM{{Name: "web", Inventory: inv}}})
	if r.status != 200 {
		t.Fatalf("report: %d %s", r.status, r.body)
	}
	r.decode(t, &resp)
	return resp.VMs[0]
}

// firstCert asks for web's certificate again with its CSR.
func firstCert(t *testing.T, ts *testServer, host *agent, inv api.Inventory, _, csrPEM []byte) string {
	t.Helper()
	var resp api.VMReportResponse
	r := do(t, host.client, "POST", ts.url("/api/v1/agent/vms"), "", api.VMReport{VMs: []api.DiscoveredVM{{Name: "web", Inventory: inv, CSR: string(csrPEM)}}})
	if r.status != 200 {
		t.Fatalf("report: %d %s", r.status, r.body)
	}
	r.decode(t, &resp)
	if resp.VMs[0].Error != "" {
		t.Fatalf("web: %s", resp.VMs[0].Error)
	}
	return resp.VMs[0].Certificate
}

// TestRevokeHostRevokesVMs: a host agent holds its VMs' keys, so revoking
// the host revokes them; the VMs get new certificates through the host's
// next report once it is enrolled again; and no plain agent may enroll
// under a VM's name.
func TestRevokeHostRevokesVMs(t *testing.T) {
	ts := startServer(t, serverOpts{})
	host := ts.enroll("kvm1")
	bystander := ts.enroll("other")
	inv := api.Inventory{Hostname: "kvm1", OS: "VM (qmp)", Arch: "amd64", Disks: []api.DiskInfo{
		{Name: "vda", Path: "/var/lib/vm/web.qcow2", Size: 1 << 30, Kind: "vm", Format: "qcow2", Driver: "qemu"}}}
	vmAgent := func(host *agent) *agent {
		t.Helper()
		keyPEM, csrPEM, err := pki.NewKeyAndCSR("web")
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair([]byte(firstCert(t, ts, host, inv, keyPEM, csrPEM)), keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return &agent{ts: ts, name: "web", cert: cert, client: httpClient(pki.ClientTLS(&cert, ts.pool))}
	}
	vm := vmAgent(host)
	vm.heartbeat(api.AgentHeartbeat{Inventory: inv})
	if res := resp0(t, host, ts, inv); res.Reenroll || res.Error != "" {
		t.Fatalf("report of a VM with a good certificate: %+v", res)
	}

	// A plain agent may not take the VM's name: no token is made for it,
	// and no re-enroll token either (a VM's certificate comes from its host).
	if r := ts.api("POST", "/api/v1/tokens", ts.admin, api.TokenRequest{Role: api.RoleAgent, Name: "web"}); r.status != http.StatusConflict ||
		!strings.Contains(r.err().Message, "already enrolled") {
		t.Fatalf("token for a plain agent named web: %d %s", r.status, r.body)
	}
	if r := ts.api("POST", "/api/v1/machines/web/reenroll", ts.admin, nil); r.status != http.StatusConflict ||
		!strings.Contains(r.err().Message, "VM replicated by host kvm1") {
		t.Fatalf("re-enroll token for VM web: %d %s", r.status, r.body)
	}

	var rev struct{ Revoked []string }
	ts.mustAPI("POST", "/api/v1/machines/kvm1/revoke", ts.admin, nil, 200, &rev)
	if len(rev.Revoked) != 2 {
		t.Fatalf("revoking host kvm1 revoked %v, want its own and web's certificate", rev.Revoked)
	}
	if r := vm.heartbeatRaw(api.AgentHeartbeat{Inventory: inv}, ""); r.status != 403 || r.err().Code != api.CodeCertRevoked {
		t.Fatalf("VM heartbeat after its host was revoked: %d %s", r.status, r.body)
	}
	var m api.Machine
	ts.mustAPI("GET", "/api/v1/machines/web", ts.admin, nil, 200, &m)
	if m.State != api.StateError || !strings.Contains(m.Reason, "host kvm1") {
		t.Fatalf("VM after its host was revoked: %s %q", m.State, m.Reason)
	}
	// Other machines keep working.
	bystander.heartbeat(api.AgentHeartbeat{})
	if evs := ts.events("audit"); len(evs) == 0 || !strings.Contains(evs[len(evs)-1].Message, "its VMs web") {
		t.Fatalf("audit events: %+v", evs)
	}

	// The host, enrolled again, is told to send a new CSR for web.
	host = ts.reenroll(api.RoleAgent, "kvm1")
	if res := resp0(t, host, ts, inv); !res.Reenroll {
		t.Fatalf("report of a VM whose certificate was revoked: %+v, want reenroll", res)
	}
	vm = vmAgent(host)
	if cfg := vm.heartbeat(api.AgentHeartbeat{Inventory: inv}); cfg.Protected {
		t.Fatalf("config %+v", cfg)
	}
	ts.mustAPI("GET", "/api/v1/machines/web", ts.admin, nil, 200, &m)
	if m.State == api.StateError {
		t.Fatalf("VM enrolled again is still in error: %q", m.Reason)
	}
	if res := resp0(t, host, ts, inv); res.Reenroll {
		t.Fatalf("report after the VM was enrolled again: %+v", res)
	}
	// Revoking a VM alone does not touch its host, which issues the VM a
	// new key.
	ts.mustAPI("POST", "/api/v1/machines/web/revoke", ts.admin, nil, 200, &rev)
	if len(rev.Revoked) != 1 {
		t.Fatalf("revoking VM web revoked %v", rev.Revoked)
	}
	if res := resp0(t, host, ts, inv); !res.Reenroll || res.Error != "" {
		t.Fatalf("host report after its VM was revoked: %+v", res)
	}
}
