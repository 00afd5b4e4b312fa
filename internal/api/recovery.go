package api

import (
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/jobs"
)

// Machine states of a failed-over machine (Machine.State). A test
// failover is a side state: the machine keeps its replication state and
// Machine.Recovery.Drill says a drill runs.
const (
	StateFailedOver = "failed-over"           // failed over (not committed): replication paused
	StateCommitted  = "failed-over-committed" // failed over (committed): replication of the old source stopped
)

// Error codes of the failover family (409 unless noted).
const (
	CodeInvalidPoint        = "invalid_point"        // 400: the point choice cannot name a point
	CodeUnknownPoint        = "unknown_point"        // 400: no such point, or a point of another machine
	CodeFailedOver          = "failed_over"          // the machine is already failed over
	CodeNotFailedOver       = "not_failed_over"      // commit, cancel, change-point without an uncommitted failover
	CodeDrillRunning        = "drill_running"        // a test failover of the machine runs already
	CodeNoDrill             = "no_drill"             // cleanup without a test failover
	CodeJobRunning          = "job_running"          // another failover job of the machine has not ended
	CodeProviderUnavailable = "provider_unavailable" // the recovery site's compute provider cannot run VMs
	CodeAgentOffline        = "agent_offline"        // planned failover of a machine whose agent is not there
	// CodeActionNotAllowed refuses an action the machine's state does
	// not allow (internal/lifecycle); the message names the state, what
	// the action needs and the actions allowed now.
	CodeActionNotAllowed = "action_not_allowed"
)

// RecoveryOverrides are a machine's recovery settings: GET/PUT
// /api/v1/machines/{name}/recovery. They mirror orchestrate.Overrides.
type RecoveryOverrides struct {
	VCPUs     int    `json:"vcpus,omitempty"`
	MemoryMiB int64  `json:"memory_mib,omitempty"`
	Network   string `json:"network,omitempty"` // a site network for every NIC (failover)
	// Address is a static IPv4 address with prefix for the first NIC,
	// handed to the guest; Gateway and DNS go with it.
	Address string   `json:"address,omitempty"`
	Gateway string   `json:"gateway,omitempty"`
	DNS     []string `json:"dns,omitempty"`
	// UserData is the cloud-init user-data handed to the guest through
	// the NoCloud seed (at most 16 KiB).
	UserData string `json:"user_data,omitempty"`
}

// RecoveredVM is a VM running at the recovery site for a machine. It
// mirrors orchestrate.VMRecord (recovery.json in the VM's directory).
type RecoveredVM struct {
	Name     string    `json:"name"`
	Dir      string    `json:"dir"`
	Machine  string    `json:"machine"`
	Kind     string    `json:"kind"` // test-failover | failover
	Job      string    `json:"job"`
	Point    string    `json:"point"`
	Provider string    `json:"provider"`
	Created  time.Time `json:"created"`
	// Console is the file the VM's serial console is logged to.
	Console  string          `json:"console,omitempty"`
	Disks    []RecoveredDisk `json:"disks,omitempty"`
	Hydrated bool            `json:"hydrated,omitempty"`
	// AgentInstance is the instance of the machine's agent that reports
	// from inside this VM (another instance than Machine.Instance), and
	// AgentSeen its last heartbeat: such a VM can be replicated back by
	// its own agent (reprotect) where its provider's disks are out of the
	// server's reach.
	AgentInstance string    `json:"agent_instance,omitempty"`
	AgentSeen     time.Time `json:"agent_seen,omitzero"`
}

// RecoveredDisk is the local image (overlay) of one disk of a recovered VM.
type RecoveredDisk struct {
	Name     string `json:"name"`
	Overlay  string `json:"overlay"`
	Hydrated bool   `json:"hydrated"`
}

// Recovery is a machine's recovery state.
type Recovery struct {
	// Drill is the VM of a running test failover.
	Drill *RecoveredVM `json:"drill,omitempty"`
	// Failover is the VM of a failover; Committed once it was committed.
	Failover    *RecoveredVM `json:"failover,omitempty"`
	Committed   bool         `json:"committed,omitempty"`
	CommittedAt time.Time    `json:"committed_at,omitzero"`
	// Shutdown is a planned failover's request to the machine's agent,
	// and Ack its answer.
	Shutdown    *ShutdownRequest `json:"shutdown,omitempty"`
	ShutdownAck *ShutdownAck     `json:"shutdown_ack,omitempty"`
	// Reverse is the reverse replication of a committed failover
	// (reprotect) and the target writer's progress.
	Reverse *Reverse `json:"reverse,omitempty"`
	// FailedBack is a committed failback, until re-enable.
	FailedBack *FailedBack `json:"failed_back,omitempty"`
}

// Empty reports whether nothing is recorded.
func (r *Recovery) Empty() bool {
	return r == nil || r.Drill == nil && r.Failover == nil && r.Shutdown == nil && r.ShutdownAck == nil && r.Reverse == nil && r.FailedBack == nil
}

// ShutdownRequest asks a machine's agent (AgentConfig.Shutdown) to shut
// the machine down, cut one final point after the shutdown, and stop:
// for a VM of a host agent the guest is powered off through its
// hypervisor; an agent in the guest runs its pre-shutdown hooks, syncs,
// cuts the point, acknowledges it and then runs its shutdown hooks.
type ShutdownRequest struct {
	ID string `json:"id"`
	// Timeout bounds the guest's power-off (and each hook).
	Timeout   Duration  `json:"timeout"`
	Requested time.Time `json:"requested"`
}

// Shutdown acknowledgement states.
const (
	ShutdownStopping = "stopping" // the agent began
	ShutdownStopped  = "stopped"  // the source writes nothing more (powered off, or quiesced in the guest)
	ShutdownDone     = "done"     // the final point is published: Point
	ShutdownFailed   = "failed"   // Error says why; the source may still run
)

// ShutdownAck is an agent's answer to a ShutdownRequest.
type ShutdownAck struct {
	ID    string    `json:"id"`
	State string    `json:"state"`
	Point string    `json:"point,omitempty"`
	Error string    `json:"error,omitempty"`
	Time  time.Time `json:"time"`
}

// OpenSession is a machine with an ingest session open on a process
// server: acknowledged blocks that are not yet a point.
type OpenSession struct {
	Machine    string    `json:"machine"`
	LastUsed   time.Time `json:"last_used"`
	Committing bool      `json:"committing,omitempty"`
}

// TestFailoverRequest is POST /api/v1/machines/{name}/test-failover.
type TestFailoverRequest struct {
	// Point is latest (default), latest-processed, latest-app,
	// latest-group or a point ID (at least 4 hex characters).
	Point string `json:"point,omitempty"`
	// At picks the newest point (of that kind) at or before it.
	At time.Time `json:"at,omitzero"`
	// Hydrate copies the disks to local images while the drill runs.
	Hydrate bool `json:"hydrate,omitempty"`
}

// CleanupRequest is POST /api/v1/machines/{name}/test-failover/cleanup.
type CleanupRequest struct {
	Notes string `json:"notes,omitempty"` // kept in the drill history
}

// FailoverRequest is POST /api/v1/machines/{name}/failover.
type FailoverRequest struct {
	Point string    `json:"point,omitempty"`
	At    time.Time `json:"at,omitzero"`
	// Planned shuts the source down through its agent and boots a point
	// cut after the shutdown (Point and At must be empty).
	Planned bool `json:"planned,omitempty"`
}

// ChangePointRequest is POST /api/v1/machines/{name}/failover/change-point.
type ChangePointRequest struct {
	Point string    `json:"point,omitempty"`
	At    time.Time `json:"at,omitzero"`
}

// ResumeRequest is POST /api/v1/jobs/{id}/resume.
type ResumeRequest struct {
	Action string `json:"action"` // ack | abort
}

// DrillCleanup is the drill history entry a test failover's cleanup
// records in the test failover's job.
type DrillCleanup struct {
	Job   string    `json:"job"`
	Notes string    `json:"notes"`
	Time  time.Time `json:"time"`
	Actor string    `json:"actor,omitempty"`
}

// Job is a durable job as the API shows it: the job with its steps,
// and what it recovered.
type Job struct {
	jobs.Job
	// Version changes whenever the job changes: GET /api/v1/jobs/{id}
	// ?wait=20s&version=V holds the answer until it differs.
	Version int64 `json:"version"`
	// Point is the point the job chose (full ID).
	Point string `json:"point,omitempty"`
	// VMs are the VMs the job started or acts on.
	VMs []RecoveredVM `json:"vms,omitempty"`
	// Cleanup is, on a test failover, its cleanup (the drill history).
	Cleanup *DrillCleanup `json:"cleanup,omitempty"`
	// ReversePoint is, on a reprotect, the first reverse point (bytes
	// changed and sent per cycle), and Target the target writer's
	// apply of it (bytes compared and written per disk).
	ReversePoint *ReversePoint `json:"reverse_point,omitempty"`
	// FailedBack is, on a failback or its commit, the final point and
	// what the target wrote.
	FailedBack   *FailedBack   `json:"failed_back,omitempty"`
	TargetWriter *TargetReport `json:"target_writer,omitempty"`
}
