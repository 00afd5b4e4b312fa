package guest

import "github.com/lifeboat-dr/lifeboat/internal/sampleguest"

// Guest console markers (see sampleguest for what prints each).
const (
	// ReadyMarker is printed once the disk is mounted (and qemu-ga
	// started; a guest booted from its own disk has also configured its
	// network from its seed by then).
	ReadyMarker = sampleguest.ReadyMarker
	// ManifestMarker starts the line printed after each manifest is
	// committed: "LIFEBOAT-GUEST-MANIFEST seq N files M".
	ManifestMarker = sampleguest.ManifestMarker
	// FailMarker starts the line printed before init gives up.
	FailMarker = sampleguest.FailMarker
	// AgentPortName is the virtio-serial port name qemu-ga listens on.
	AgentPortName = sampleguest.AgentPortName
	// ManifestPassMarker starts the line printed at boot, before the
	// guest writes anything, when every file its newest committed
	// manifest names has the recorded SHA-256:
	// "LIFEBOAT-MANIFEST-PASS seq N files M".
	ManifestPassMarker = sampleguest.ManifestPassMarker
	// ManifestFailMarker starts the line printed instead when a file is
	// missing or differs; the guest then writes nothing and idles.
	ManifestFailMarker = sampleguest.ManifestFailMarker
	// ManifestNoneMarker is printed at boot when the disk has no manifest
	// yet (a new disk).
	ManifestNoneMarker = sampleguest.ManifestNoneMarker
	// NetMarker starts the line a guest booted from its own disk prints
	// after configuring its network from a NoCloud seed.
	NetMarker = sampleguest.NetMarker
	// ProbeMarker starts the line printed for each probe the seed's
	// user-data lists.
	ProbeMarker = sampleguest.ProbeMarker
	// PowerOffMarker is printed when the guest powers off because its
	// ACPI power button was pressed (a graceful shutdown request).
	PowerOffMarker = sampleguest.PowerOffMarker
	// ListenMarker starts the line printed for each TCP port the seed's
	// user-data lists under lifeboat_listen: once the guest listens on
	// it: "LIFEBOAT-GUEST-LISTEN PORT".
	ListenMarker = sampleguest.ListenMarker
)
