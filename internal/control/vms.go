package control

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// maxVMs bounds one VM report.
const maxVMs = 256

// agentVMs records the VMs a host agent discovered. Each becomes a
// machine whose Host is the reporting agent's machine; with a CSR the VM
// also gets its own agent certificate, under which the host agent
// replicates it (heartbeats and ingest then work exactly as for a
// machine with its own agent). A VM whose name belongs to another
// machine, or to a VM of another host, is refused in its entry and the
// rest of the report still applies.
func (s *Server) agentVMs(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req api.VMReport
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if len(req.VMs) > maxVMs {
		return badRequest("%d VMs in one report: at most %d", len(req.VMs), maxVMs)
	}
	ctx := r.Context()
	host, err := s.store.GetMachine(ctx, c.Name)
	if errors.Is(err, store.ErrNotFound) {
		return notFound("machine %q is not known to this server (deleted?): enroll the agent again", c.Name)
	}
	if err != nil {
		return err
	}
	if host.Host != "" {
		return errf(http.StatusForbidden, api.CodeForbidden, "%s is a VM replicated by host %s: only a host's own agent reports VMs", c.Name, host.Host)
	}
	// Check the report's shape before changing anything. A VM whose own
	// description is refused is answered in its entry: the host's other
	// VMs go on.
	seen := map[string]bool{}
	for _, vm := range req.VMs {
		if err := validComponentName("machine", vm.Name); err != nil {
			return badRequest("%v", err)
		}
		if seen[vm.Name] {
			return badRequest("VM %q is reported twice", vm.Name)
		}
		seen[vm.Name] = true
	}
	resp := api.VMReportResponse{VMs: []api.VMResult{}}
	for _, vm := range req.VMs {
		if vm.Name == c.Name {
			resp.VMs = append(resp.VMs, api.VMResult{Name: vm.Name, Error: "a VM cannot have its host's name: rename the VM"})
			continue
		}
		if err := validateInventory(&vm.Inventory); err != nil {
			resp.VMs = append(resp.VMs, api.VMResult{Name: vm.Name, Error: "VM " + vm.Name + ": " + err.Error()})
			continue
		}
		res, err := s.recordVM(r, c, vm)
		if err != nil {
			var he *httpError
			if !errors.As(err, &he) {
				return err
			}
			res = api.VMResult{Name: vm.Name, Error: he.Message}
		}
		resp.VMs = append(resp.VMs, res)
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// recordVM creates or refreshes the machine of one discovered VM and
// signs its certificate when asked.
func (s *Server) recordVM(r *http.Request, c *caller, vm api.DiscoveredVM) (api.VMResult, error) {
	ctx := r.Context()
	now := s.clock.Now()
	res := api.VMResult{Name: vm.Name}
	m, err := s.store.GetMachine(ctx, vm.Name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		proc, _, err := s.assignProcess(ctx, vm.Name)
		if err != nil {
			return res, err
		}
		m = api.Machine{Name: vm.Name, Host: c.Name, State: api.StateUnprotected, Process: proc, Created: now.UTC(), Inventory: vm.Inventory}
		if err := s.store.PutMachine(ctx, m); err != nil && !errors.Is(err, store.ErrConflict) {
			return res, err
		}
		s.event(ctx, api.Event{Kind: "vm_discovered", Machine: vm.Name,
			Message: fmt.Sprintf("host %s discovered VM %s (%d disks); protect it with `lifeboat protect %s --policy NAME`", c.Name, vm.Name, len(vm.Inventory.Disks), vm.Name)})
	case err != nil:
		return res, err
	case m.Host != c.Name:
		owner := "its own agent"
		if m.Host != "" {
			owner = "host " + m.Host
		}
		return res, conflict("a machine named %s is already replicated by %s: rename the VM, or remove that machine first", vm.Name, owner)
	}
	var serial string
	if vm.CSR != "" {
		certPEM, sn, notAfter, err := s.ca.SignCSR([]byte(vm.CSR), api.RoleAgent, vm.Name, nil, s.cfg.CertTTL.Std(), now)
		if err != nil {
			return res, badRequest("VM %s: %v", vm.Name, err)
		}
		if err := s.store.AddCert(ctx, store.Cert{Serial: sn, Role: api.RoleAgent, Name: vm.Name, NotAfter: notAfter, Issued: now.UTC()}); err != nil {
			return res, fmt.Errorf("record certificate: %w", err)
		}
		res.Certificate, serial = string(certPEM), sn
	} else if m.Agent != "" && s.rl.Revoked(m.Agent) {
		res.Reenroll = true
	}
	_, err = s.store.UpdateMachine(ctx, vm.Name, func(m *api.Machine) error {
		if m.Host != c.Name {
			return conflict("machine %s moved to another host meanwhile", vm.Name)
		}
		if m.LastSeen.IsZero() || len(m.Inventory.Disks) == 0 {
			m.Inventory = vm.Inventory // the VM's own heartbeats keep it current afterwards
		}
		if serial != "" {
			m.Agent = serial
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	if serial != "" {
		s.event(ctx, api.Event{Kind: "enrolled", Machine: vm.Name,
			Message: fmt.Sprintf("VM %s enrolled through host %s (certificate %s)", vm.Name, c.Name, serial)})
	}
	s.notify.notify(vm.Name)
	return res, nil
}

// checkDrivers validates a protect request's drivers against machine m.
func checkDrivers(m *api.Machine, drivers map[string]string) error {
	if len(drivers) > 257 {
		return badRequest("%d drivers: at most one per disk", len(drivers))
	}
	for disk, d := range drivers {
		if !validDriver(d) {
			return badRequest("driver %q: want scan or qemu (libvirt domains take qemu or libvirt)", d)
		}
		var infos []api.DiskInfo
		for _, di := range m.Inventory.Disks {
			if disk == "" || di.Name == disk {
				infos = append(infos, di)
			}
		}
		if disk != "" && len(infos) == 0 && len(m.Inventory.Disks) > 0 {
			return badRequest("machine %s has no disk %q (its agent reports %s)", m.Name, disk, diskNames(m.Inventory.Disks))
		}
		for _, di := range infos {
			if err := driverFits(m, di, d); err != nil {
				return err
			}
		}
	}
	return nil
}

// driverFits says whether driver d can capture disk di of machine m.
func driverFits(m *api.Machine, di api.DiskInfo, d string) error {
	switch {
	case d == api.DriverScan && di.Format == "qcow2":
		return badRequest("disk %s of %s is a qcow2 image: the scan driver reads raw disks only; use --driver qemu", di.Name, m.Name)
	case d != api.DriverScan && di.Kind != "vm":
		return badRequest("disk %s of %s is a %s disk of a machine with its own agent: the %s driver needs a VM discovered by a host agent; use --driver scan",
			di.Name, m.Name, strings.TrimSpace(di.Kind+" "), d)
	}
	return nil
}
