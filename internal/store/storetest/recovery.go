package storetest

import (
	"reflect"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// testMachineRecovery: a machine's recovery state and overrides survive
// the round trip and UpdateMachine.
func testMachineRecovery(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	vm := &api.RecoveredVM{Name: "lb-1a2b3c4d-web-9f00", Dir: "/srv/recovery/lb-1a2b3c4d-web-9f00", Machine: "web", Kind: "failover",
		Job: "1a2b3c4d5e6f7a8b", Point: "ab12", Provider: "qemu", Created: T0, Console: "/srv/recovery/x/console.log",
		Disks: []api.RecoveredDisk{{Name: "vda", Overlay: "/srv/recovery/x/disk0.qcow2", Hydrated: true}}, Hydrated: true}
	m := api.Machine{Name: "web", State: api.StateFailedOver,
		Recovery:          &api.Recovery{Failover: vm, Shutdown: &api.ShutdownRequest{ID: "s1", Requested: T0}, ShutdownAck: &api.ShutdownAck{ID: "s1", State: api.ShutdownDone, Point: "ab12", Time: T0}},
		RecoveryOverrides: &api.RecoveryOverrides{VCPUs: 4, MemoryMiB: 2048, Network: "prod", Address: "10.0.0.5/24", Gateway: "10.0.0.1", DNS: []string{"10.0.0.2"}}}
	must(t, s.PutMachine(ctx, m), "put machine")
	got, err := s.GetMachine(ctx, "web")
	must(t, err, "get machine")
	if !reflect.DeepEqual(got.Recovery, m.Recovery) || !reflect.DeepEqual(got.RecoveryOverrides, m.RecoveryOverrides) {
		t.Fatalf("recovery round trip:\n got %+v %+v\nwant %+v %+v", got.Recovery, got.RecoveryOverrides, m.Recovery, m.RecoveryOverrides)
	}
	up, err := s.UpdateMachine(ctx, "web", func(m *api.Machine) error {
		m.Recovery.Committed, m.Recovery.CommittedAt = true, T0
		return nil
	})
	must(t, err, "update machine")
	if !up.Recovery.Committed || up.Recovery.Failover.Name != vm.Name || up.RecoveryOverrides.VCPUs != 4 {
		t.Fatalf("after update: %+v", up.Recovery)
	}
}
