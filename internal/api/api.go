// Package api holds the wire types that Lifeboat's roles exchange: the
// control-plane HTTP JSON API (/api/v1), what agents and process servers
// report to the server, and the settings the server hands back. It holds
// no logic beyond validation helpers; the server, the CLI client, the
// agent and the process server all import it.
package api

import (
	"encoding/json"
	"time"
)

// Version is the API version in every path: /api/v1/...
const Version = "v1"

// Roles. Users authenticate with bearer tokens of the first three roles;
// agents and process servers with client certificates whose role is
// enrolled with a one-time token of the last two.
const (
	RoleViewer   = "viewer"
	RoleOperator = "operator"
	RoleAdmin    = "admin"
	RoleAgent    = "agent"
	RoleProcess  = "process"
	// RoleTarget is a target writer's bearer token (`lifeboat target
	// run`): it may only post that target writer's reports (its name is
	// the token's), nothing else.
	RoleTarget = "target"
)

// Error is every error response body: {"error": {"code": ..., "message": ...}}.
type Error struct {
	Code    string `json:"code"`    // machine-readable, one of the Code* constants
	Message string `json:"message"` // for people: what failed and what to do
}

// ErrorBody wraps Error on the wire.
type ErrorBody struct {
	Error Error `json:"error"`
}

// Error codes.
const (
	CodeBadRequest      = "bad_request"     // 400: malformed body or parameter
	CodeUnauthenticated = "unauthenticated" // 401: no or unknown token / certificate
	CodeForbidden       = "forbidden"       // 403: role may not do this
	CodeNotFound        = "not_found"       // 404
	CodeConflict        = "conflict"        // 409: exists, or in use
	CodeTokenInvalid    = "token_invalid"   // 401: enrollment token unknown, used or expired
	CodeCertRevoked     = "cert_revoked"    // 403
	CodeBusy            = "busy"            // 503: back-pressure, retry after Retry-After
	CodeInternal        = "internal"        // 500
	CodeUnavailable     = "unavailable"     // 503: dependency (vault, store) down
	CodeTooLarge        = "too_large"       // 413
	CodeUnsupported     = "unsupported"     // 415/405
	CodeStale           = "stale"           // 409: base point or session no longer valid
	CodeNoProcess       = "no_process"      // 409: no process server is online to take the machine
	// CodeNotLeader: 503 from a standby server; the leader's API URL is
	// in LeaderHeader (when known). Clients try their next server URL.
	CodeNotLeader = "not_leader"
)

// LeaderHeader carries the leading server's API URL on not_leader answers.
const LeaderHeader = "Lifeboat-Leader"

// Machine states.
const (
	StateUnprotected = "unprotected"
	StateInitial     = "initial-replication"
	StateProtected   = "protected"
	StateResyncing   = "resyncing"
	StatePaused      = "paused"
	StateError       = "error"
)

// Machine states of the way back (Machine.State), after a committed
// failover (recovery.go): replicating the failed-over machine back to
// the primary site, then failing back to it. internal/lifecycle holds
// the model: which actions each state allows.
const (
	StateReprotecting = "reprotecting" // replicating the failed-over machine back to the primary site (initial copy)
	StateReprotected  = "reprotected"  // protected in reverse: the primary site holds the recovery site's changes
	StateFailingBack  = "failing-back" // failed back to the primary site, not committed
	StateFailedBack   = "failed-back"  // failback committed: forward protection can be re-enabled
)

// Duration is a time.Duration that travels as a Go duration string ("15m").
type Duration time.Duration

// MarshalJSON writes "15m0s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON accepts "15m" or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n float64
		if err2 := json.Unmarshal(b, &n); err2 != nil {
			return err
		}
		*d = Duration(n * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Std is the time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// ---- tokens and enrollment ----

// TokenRequest creates a token (POST /api/v1/tokens, admin).
type TokenRequest struct {
	Role string `json:"role"` // agent | process | viewer | operator | admin
	// TTL is the token's lifetime: default 1h for enrollment tokens, 90
	// days for API tokens.
	TTL Duration `json:"ttl,omitempty"`
	// NoExpiry makes an API token that never expires (an explicit choice;
	// enrollment tokens always expire).
	NoExpiry bool `json:"no_expiry,omitempty"`
	// Name is, for agent and process tokens, the machine or process
	// server name the token enrolls, and the only one (required); for API
	// tokens a label shown in the audit trail.
	Name string `json:"name,omitempty"`
}

// TokenResponse carries the token once; the server keeps only its hash.
type TokenResponse struct {
	Token   string    `json:"token"`
	ID      string    `json:"id"`
	Role    string    `json:"role"`
	Name    string    `json:"name,omitempty"` // enrollment tokens: the name it enrolls
	Expires time.Time `json:"expires,omitzero"`
	// Revoked lists the certificates a re-enroll token's creation revoked.
	Revoked []string `json:"revoked,omitempty"`
}

// ReenrollRequest is POST /api/v1/machines/{name}/reenroll and
// /api/v1/process-servers/{name}/reenroll (operator): revoke the
// identity's certificates now and make a one-time token that enrolls that
// name again. The answer is a TokenResponse.
type ReenrollRequest struct {
	TTL Duration `json:"ttl,omitempty"` // default 1h
}

// RotateKeyResponse answers POST /api/v1/machines/{name}/rotate-key and
// /api/v1/process-servers/{name}/rotate-key (operator): the identity's
// next renewal may present a new key, once.
type RotateKeyResponse struct {
	Role     string    `json:"role"`
	Name     string    `json:"name"`
	Approved time.Time `json:"approved"`
}

// ProcessRevokeResult answers POST /api/v1/process-servers/{name}/revoke
// and DELETE /api/v1/process-servers/{name} (admin).
type ProcessRevokeResult struct {
	Process string   `json:"process"`
	Revoked []string `json:"revoked"`         // certificate serials
	Moved   []string `json:"moved,omitempty"` // machines moved to an online process server
	Warning string   `json:"warning,omitempty"`
}

// WhoAmI is GET /api/v1/whoami: the API token a request came with.
type WhoAmI struct {
	TokenID string    `json:"token_id"`
	Name    string    `json:"name"`
	Role    string    `json:"role"`
	Expires time.Time `json:"expires,omitzero"` // zero: never
}

// TokenExpiresHeader is set on every answer to a request made with an API
// token that expires: the expiry, RFC 3339. Clients warn before it.
const TokenExpiresHeader = "Lifeboat-Token-Expires"

// EnrollRequest exchanges a one-time token for a client certificate
// (POST /api/v1/enroll; authenticated by the token, the client pins the
// server's CA by the fingerprint the token carries).
type EnrollRequest struct {
	Token    string `json:"token"`
	Role     string `json:"role"` // must match the token's
	Name     string `json:"name"` // machine name (agent) or process server name
	Hostname string `json:"hostname,omitempty"`
	CSR      string `json:"csr"` // PEM certificate signing request
	// Hosts are the names and IPs a process server serves agents on; they
	// become the certificate's SANs (process role only).
	Hosts []string `json:"hosts,omitempty"`
}

// EnrollResponse returns the certificate.
type EnrollResponse struct {
	Certificate string `json:"certificate"` // PEM
	CA          string `json:"ca"`          // PEM
	Name        string `json:"name"`
	// Warning says what keeps a new component from working yet (no
	// process server online to take a new machine).
	Warning string `json:"warning,omitempty"`
}

// RenewRequest renews the caller's certificate (POST /api/v1/certs/renew, mTLS).
type RenewRequest struct {
	CSR string `json:"csr"`
}

// RevokedList is GET /api/v1/certs/revoked (mTLS, process servers).
type RevokedList struct {
	Serials []string  `json:"serials"` // hex
	AsOf    time.Time `json:"as_of"`
}

// ---- policies ----

// Policy drives cycles and retention for the machines that use it.
type Policy struct {
	Name          string   `json:"name"`
	RPOThreshold  Duration `json:"rpo_threshold"`  // only raises events
	Retention     string   `json:"retention"`      // "1h:all,24h:5m,72h:1h"
	KeepApp       Duration `json:"keep_app"`       // app-consistent points kept this long
	CrashInterval Duration `json:"crash_interval"` // a crash-consistent point this often
	AppInterval   Duration `json:"app_interval"`   // an app-consistent point this often (0: never)
	HookTimeout   Duration `json:"hook_timeout,omitempty"`
	// Driver is the capture driver for the disks of machines with this
	// policy ("" = each disk's default: qemu/libvirt for discovered VMs,
	// scan otherwise). A protect request's drivers override it.
	Driver  string    `json:"driver,omitempty"`
	Created time.Time `json:"created,omitzero"`
	Updated time.Time `json:"updated,omitzero"`
}

// ---- machines ----

// DiskInfo is one disk an agent reports.
type DiskInfo struct {
	Name string `json:"name"`
	Path string `json:"path"`
	Size int64  `json:"size"`
	Kind string `json:"kind"` // "file" | "block" | "vm"
	// Format is the image format of a VM disk ("qcow2", "raw").
	Format string `json:"format,omitempty"`
	// Driver is the capture driver the agent uses for the disk unless
	// the server says otherwise ("scan", "qemu", "libvirt").
	Driver string `json:"driver,omitempty"`
}

// Capture drivers.
const (
	DriverScan    = "scan"    // read the whole disk, compare block hashes
	DriverQEMU    = "qemu"    // QEMU dirty bitmaps over QMP, data over NBD
	DriverLibvirt = "libvirt" // libvirt checkpoints and pull-mode backup
)

// VMSpec describes a virtual machine for recovery: what it takes to
// build it again at the recovery site. Discovery fills it from libvirt
// domain XML or from QMP; agents may also read it from a file.
type VMSpec struct {
	Name      string   `json:"name"`
	UUID      string   `json:"uuid,omitempty"`
	Source    string   `json:"source"` // "libvirt" | "qmp" | "file"
	VCPUs     int      `json:"vcpus"`
	MemoryMiB int64    `json:"memory_mib"`
	Firmware  string   `json:"firmware"`          // "bios" | "uefi"
	Machine   string   `json:"machine,omitempty"` // e.g. "pc-q35-7.2"
	Disks     []VMDisk `json:"disks"`
	NICs      []VMNIC  `json:"nics"`
}

// VMDisk is one disk of a VM.
type VMDisk struct {
	Name   string `json:"name"`             // target/device name: "vda", or the QEMU device id
	Node   string `json:"node,omitempty"`   // QEMU block node name (QMP targets)
	Image  string `json:"image,omitempty"`  // image file on the host
	Format string `json:"format,omitempty"` // "qcow2" | "raw"
	Size   int64  `json:"size"`             // virtual size in bytes
	Bus    string `json:"bus,omitempty"`    // "virtio" | "sata" | "scsi" | "ide"
}

// VMNIC is one network interface of a VM.
type VMNIC struct {
	MAC     string `json:"mac"`
	Network string `json:"network,omitempty"` // libvirt network or bridge; QEMU netdev id
	Model   string `json:"model,omitempty"`   // "virtio" | "e1000" ...
}

// Inventory is what an agent knows about its machine.
type Inventory struct {
	Hostname string `json:"hostname"`
	OS       string `json:"os"`
	Arch     string `json:"arch"`
	Agent    string `json:"agent_version"` // the agent's build (buildinfo); "" from old agents
	// Instance names the hardware (or virtual hardware) the agent runs
	// on: its SMBIOS system UUID, or agent.json's instance_id. A copy of
	// the machine booted elsewhere (a failover's recovered VM) carries the
	// same certificate and state but another instance; "" unknown.
	Instance string          `json:"instance,omitempty"`
	Disks    []DiskInfo      `json:"disks"`
	VMSpec   json.RawMessage `json:"vm_spec,omitempty"`
}

// Progress of a running cycle (initial replication or resync).
type Progress struct {
	Phase   string    `json:"phase"` // "initial" | "resync" | "incremental"
	Done    int64     `json:"done"`  // bytes examined
	Total   int64     `json:"total"`
	Sent    int64     `json:"sent"` // bytes shipped
	Percent float64   `json:"percent"`
	ETA     Duration  `json:"eta,omitempty"`
	Started time.Time `json:"started"`
}

// CycleResult is what an agent reports after a cycle.
type CycleResult struct {
	Point        string    `json:"point,omitempty"`
	Kind         string    `json:"kind"`
	Time         time.Time `json:"time"` // the cut
	Group        string    `json:"group,omitempty"`
	CutID        string    `json:"cut_id,omitempty"`
	Duration     Duration  `json:"duration"`
	ChangedBytes int64     `json:"changed_bytes"` // non-zero block data the cycle reported
	// ReadBytes is what the capture drivers read from the disks: the
	// dirty extents (qemu, libvirt), the whole disk or its allocated
	// part (scan).
	ReadBytes int64  `json:"read_bytes"`
	SentBytes int64  `json:"sent_bytes"` // block data actually shipped
	Error     string `json:"error,omitempty"`
	Resync    bool   `json:"resync,omitempty"`
	// FiguresPending is set by the server on a machine's last point
	// while the agent's figures for it (duration and bytes) have not
	// arrived: the process server reported the point first. Agents leave
	// it unset.
	FiguresPending bool `json:"figures_pending,omitempty"`
}

// Machine is a protected (or known) machine as the API shows it.
type Machine struct {
	Name      string    `json:"name"`
	Agent     string    `json:"agent"` // certificate serial of its agent, hex
	Inventory Inventory `json:"inventory"`
	Policy    string    `json:"policy,omitempty"`
	Group     string    `json:"group,omitempty"`
	Disks     []string  `json:"disks,omitempty"` // protected disks; empty = all
	// Drivers chooses capture drivers by disk name; the key "" applies to
	// every disk not named. Empty: the policy's driver, else the disk's
	// default.
	Drivers map[string]string `json:"drivers,omitempty"`
	// Host is the machine whose agent replicates this one: set for VMs
	// discovered by a host agent ("" for a machine with its own agent).
	Host string `json:"host,omitempty"`
	// Instance is the instance its agent runs on at the protected site
	// (Inventory.Instance of its heartbeats while the machine is not
	// failed over). While it is, an agent reporting from another instance
	// runs in the recovered VM: it is told not to replicate forward, and
	// it is the one that replicates back at reprotect.
	Instance     string       `json:"instance,omitempty"`
	Process      string       `json:"process,omitempty"`
	State        string       `json:"state"`
	Reason       string       `json:"reason,omitempty"` // for error and resyncing
	Paused       bool         `json:"paused"`
	ResyncWanted bool         `json:"resync_wanted,omitempty"`
	Bandwidth    int64        `json:"bandwidth,omitempty"` // bytes/s, 0 = unlimited
	Progress     *Progress    `json:"progress,omitempty"`
	LastPoint    *CycleResult `json:"last_point,omitempty"` // last published point
	LastError    string       `json:"last_error,omitempty"`
	LastSeen     time.Time    `json:"last_seen,omitzero"`
	RPO          Duration     `json:"rpo"` // now - time of the last point (0: none yet)
	Created      time.Time    `json:"created,omitzero"`
	// Recovery is what runs for the machine at the recovery site (a
	// test failover, a failover) and the planned failover's shutdown.
	Recovery *Recovery `json:"recovery,omitempty"`
	// Health judges the machine (internal/health): the server fills it
	// in every answer, the store does not keep it.
	Health *Health `json:"health,omitempty"`
	// AllowedActions are the actions the machine's state allows now
	// (internal/lifecycle: protect, pause, test-failover, failover,
	// commit, ...); the server fills them in every answer, the store
	// does not keep them.
	AllowedActions []string `json:"allowed_actions"`
	// RecoveryOverrides are the machine's recovery settings (GET/PUT
	// /api/v1/machines/{name}/recovery).
	RecoveryOverrides *RecoveryOverrides `json:"recovery_overrides,omitempty"`
}

// ProtectRequest is POST /api/v1/machines/{name}/protect.
type ProtectRequest struct {
	Policy string   `json:"policy"`
	Group  string   `json:"group,omitempty"`
	Disks  []string `json:"disks,omitempty"`
	// Drivers by disk name ("" = all disks); see Machine.Drivers.
	Drivers map[string]string `json:"drivers,omitempty"`
}

// VMReport is POST /api/v1/agent/vms: a host agent reports the virtual
// machines it discovered. Each becomes a machine (unprotected until
// someone protects it) replicated by that host's agent.
type VMReport struct {
	VMs []DiscoveredVM `json:"vms"`
}

// DiscoveredVM is one VM of a VMReport.
type DiscoveredVM struct {
	Name      string    `json:"name"` // the machine name (the domain name)
	Inventory Inventory `json:"inventory"`
	// CSR, if set, asks for the VM's own agent certificate: the host
	// agent replicates the VM under that identity.
	CSR string `json:"csr,omitempty"`
}

// VMReportResponse answers a VMReport, one entry per reported VM.
type VMReportResponse struct {
	VMs []VMResult `json:"vms"`
}

// VMResult is the outcome for one reported VM.
type VMResult struct {
	Name        string `json:"name"`
	Certificate string `json:"certificate,omitempty"` // PEM, when a CSR was sent
	Error       string `json:"error,omitempty"`       // why the VM was refused
	// Reenroll says the VM's certificate was revoked (with its host's):
	// the host sends a new CSR for it in its next report.
	Reenroll bool `json:"reenroll,omitempty"`
}

// MoveRequest is POST /api/v1/machines/{name}/move.
type MoveRequest struct {
	Process string `json:"process"`
}

// BandwidthRequest is POST /api/v1/machines/{name}/bandwidth and
// /api/v1/process-servers/{name}/bandwidth.
type BandwidthRequest struct {
	BytesPerSecond int64 `json:"bytes_per_second"` // 0 = unlimited
}

// GroupRequest is POST /api/v1/machines/{name}/group (join, or leave with "").
type GroupRequest struct {
	Group string `json:"group"`
}

// ---- process servers ----

// ProcessServer as the API shows it.
type ProcessServer struct {
	Name       string  `json:"name"`
	URL        string  `json:"url"` // https://host:port agents connect to
	Embedded   bool    `json:"embedded"`
	Bandwidth  int64   `json:"bandwidth,omitempty"`
	CacheUsed  int64   `json:"cache_used"`
	CacheLimit int64   `json:"cache_limit"`
	Sessions   int     `json:"sessions"`
	Throttled  bool    `json:"throttled"` // applying back-pressure now
	IngestRate float64 `json:"ingest_bytes_per_second"`
	// CPU is the share of its host's CPU time the process server's
	// process used over its last 30 s, as it reported (0 to 1; 0 also
	// when it reports none, as older versions do).
	CPU      float64   `json:"cpu,omitempty"`
	LastSeen time.Time `json:"last_seen,omitzero"`
	Agents   int       `json:"agents"`
	// Load is how the server weighs an online process server when it
	// chooses one for a machine (output only; absent for the others).
	Load *ProcessLoad `json:"load,omitempty"`
	// State is online, offline, never-seen (enrolled, never reported) or
	// revoked; only online process servers are given machines.
	State string `json:"state,omitempty"`
	// Revoked: its certificates were revoked (until it enrolls again).
	Revoked bool `json:"revoked,omitempty"`
	// Version is the lifeboat build it last reported (buildinfo), ""
	// for one too old to report it.
	Version string `json:"version,omitempty"`
}

// ProcessLoad is a process server's load score: a new machine goes to
// the online process server with the lowest Score, (Agents + 1) ×
// Factor, where Factor is 1 + CPU + Backlog + Traffic (docs/architecture.md,
// "Roles and processes").
type ProcessLoad struct {
	CPU     float64 `json:"cpu"`     // the CPU share it reported, 0-1
	Backlog float64 `json:"backlog"` // its cache's fill, 1 while it refuses batches, 0-1
	Traffic float64 `json:"traffic"` // its ingest rate against its bandwidth limit or the reference rate, 0-1
	Factor  float64 `json:"factor"`  // 1 + cpu + backlog + traffic: 1 to 4
	Score   float64 `json:"score"`   // (agents + 1) × factor
}

// Process server states (ProcessServer.State).
const (
	ProcessOnline    = "online"
	ProcessOffline   = "offline"
	ProcessNeverSeen = "never-seen"
	ProcessRevoked   = "revoked"
)

// ProcessHeartbeat is POST /api/v1/process/heartbeat (mTLS, process role).
type ProcessHeartbeat struct {
	URL        string  `json:"url"`
	CacheUsed  int64   `json:"cache_used"`
	CacheLimit int64   `json:"cache_limit"`
	Sessions   int     `json:"sessions"`
	Throttled  bool    `json:"throttled"`
	IngestRate float64 `json:"ingest_bytes_per_second"`
	// CPU is the share of its host's CPU time the process used over its
	// last 30 s (0 to 1, from its own resource usage); older process
	// servers leave it out, and so does one that has no measure yet.
	CPU    float64 `json:"cpu,omitempty"`
	Events []Event `json:"events,omitempty"`
	Points []Point `json:"points,omitempty"` // points published since the last heartbeat
	// NeedKey asks for a vault key of this process server's own: a new key
	// file is made for it (and the one it had deleted) and its secret is
	// in the answer. Process servers ask at start, until they get one.
	NeedKey bool `json:"need_key,omitempty"`
	// Open lists the machines with an ingest session open on this
	// process server (a failover to "latest" waits for them).
	Open []OpenSession `json:"open_sessions,omitempty"`
	// Version is the process server's build (buildinfo); older ones
	// leave it out.
	Version string `json:"version,omitempty"`
	// Time is the process server's clock when it sent the heartbeat.
	Time time.Time `json:"time,omitzero"`
}

// ProcessConfig is the server's answer to a process heartbeat and
// GET /api/v1/process/config: where the vault is, and (in the answer to a
// heartbeat only) how to open it.
type ProcessConfig struct {
	Vault string `json:"vault"` // URL or path
	// Passphrase is the secret of this process server's own vault key
	// file (KeyID), never the server's passphrase. Only the answer to a
	// heartbeat that asked for it (NeedKey), or that gave a process server
	// without a key its first one, carries it; the server keeps no copy.
	Passphrase string            `json:"passphrase,omitempty"`
	KeyID      string            `json:"key_id,omitempty"` // the key file Passphrase opens
	Env        map[string]string `json:"env,omitempty"`
	Bandwidth  int64             `json:"bandwidth,omitempty"`
	Revoked    []string          `json:"revoked"` // certificate serials, hex
	// RotateKey: an operator approved a new key; renew with one now.
	RotateKey bool `json:"rotate_key,omitempty"`
}

// ---- agent control channel ----

// AgentHeartbeat is POST /api/v1/agent/heartbeat (mTLS, agent role). The
// server answers with AgentConfig; with ?wait=20s it holds the request
// until the config's Version differs from KnownVersion or the wait ends.
type AgentHeartbeat struct {
	Inventory    Inventory     `json:"inventory"`
	State        string        `json:"state,omitempty"` // agent's own view: idle, cycling, error
	Progress     *Progress     `json:"progress,omitempty"`
	Results      []CycleResult `json:"results,omitempty"` // cycles finished since the last heartbeat
	Events       []Event       `json:"events,omitempty"`
	CutAcks      []CutAck      `json:"cut_acks,omitempty"`
	KnownVersion int64         `json:"known_version"`
	ResyncDone   bool          `json:"resync_done,omitempty"` // a requested resync has completed
	// Shutdown reports the agent's progress through the shutdown the
	// server asked for (AgentConfig.Shutdown); repeated until the server
	// no longer asks.
	Shutdown *ShutdownAck `json:"shutdown,omitempty"`
	// Time is the agent's clock when it sent the heartbeat: the server
	// compares it with its own (clock skew distorts RPO).
	Time time.Time `json:"time,omitzero"`
}

// AgentConfig is what the server tells an agent to do.
type AgentConfig struct {
	Version   int64    `json:"version"`   // changes whenever anything below changes
	Protected bool     `json:"protected"` // false: report inventory only
	Paused    bool     `json:"paused"`
	Disks     []string `json:"disks,omitempty"` // empty = all inventory disks
	// Drivers chooses capture drivers by disk ("" key: all disks), from
	// the protect request, else the policy; empty: the agent's default.
	Drivers        map[string]string `json:"drivers,omitempty"`
	Policy         *Policy           `json:"policy,omitempty"`
	Group          string            `json:"group,omitempty"`
	Process        string            `json:"process,omitempty"`     // name
	ProcessURL     string            `json:"process_url,omitempty"` // https://...
	Bandwidth      int64             `json:"bandwidth,omitempty"`   // bytes/s
	Resync         bool              `json:"resync,omitempty"`      // compare with the vault and send the difference
	Cuts           []Cut             `json:"cuts,omitempty"`        // group cuts this agent takes part in
	RenewBefore    Duration          `json:"renew_before,omitempty"`
	HeartbeatEvery Duration          `json:"heartbeat_every"`
	// RotateKey: an operator approved a new key; renew with one now.
	RotateKey bool `json:"rotate_key,omitempty"`
	// Shutdown asks the agent to shut the machine down and cut a final
	// point (planned failover); see ShutdownRequest. To the agent in a
	// recovered VM that replicates back, it is the failback's request.
	Shutdown *ShutdownRequest `json:"shutdown,omitempty"`
	// Reverse, to the agent in a recovered VM, says it replicates the VM
	// back toward the primary site (reprotect): its points are reverse
	// points. Nil: forward (or not at all).
	Reverse *AgentReverse `json:"reverse,omitempty"`
}

// AgentReverse is AgentConfig.Reverse.
type AgentReverse struct {
	// ID is the reprotect job's: a new ID starts the capture drivers'
	// tracking afresh (the first reverse point reads the disks whole and
	// sends what the vault lacks).
	ID string `json:"id"`
	// VM is the recovered VM's name, labelled on every reverse point
	// (the target writer applies only points of the current VM); Base
	// the point it booted.
	VM   string `json:"vm"`
	Base string `json:"base"`
}

// Cut is one coordinated group cut. All members take their point at At;
// for app-consistent cuts the server runs a barrier: members freeze
// (Phase "freeze"), report CutAck "frozen", and only when all are frozen
// does the server move the cut to Phase "snapshot"; members snapshot,
// report "snapped", thaw and ship.
type Cut struct {
	ID      string    `json:"id"`
	Group   string    `json:"group"`
	Kind    string    `json:"kind"` // crash | app
	At      time.Time `json:"at"`   // the point's time for every member
	Phase   string    `json:"phase"`
	Members []string  `json:"members"`
	Expires time.Time `json:"expires"` // abandon (thaw, no point) after this
}

// Cut phases.
const (
	PhaseFreeze   = "freeze"   // app cuts: run pre-freeze hooks, report frozen
	PhaseSnapshot = "snapshot" // take the snapshot now (or at At), report snapped
	PhaseAbort    = "abort"    // thaw, no point from this cut
	PhaseDone     = "done"
)

// CutAck reports an agent's progress through a cut.
type CutAck struct {
	ID     string `json:"id"`
	Status string `json:"status"` // frozen | snapped | failed
	Reason string `json:"reason,omitempty"`
}

// ---- groups, points, events, status ----

// Group is a replication group.
type Group struct {
	Name    string   `json:"name"`
	Members []string `json:"members"`
	LastCut *Cut     `json:"last_cut,omitempty"`
}

// Point is a recovery point as the control plane records it.
type Point struct {
	ID      string    `json:"id"`
	Machine string    `json:"machine"`
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"`
	Group   string    `json:"group,omitempty"`
	CutID   string    `json:"cut_id,omitempty"` // set on group-consistent points
	Process string    `json:"process,omitempty"`
	// CycleFigures are the agent's figures for the cycle that made the
	// point. They arrive with the agent's cycle result, which may reach
	// the server after the process server's report of the point: nil
	// (and their fields absent from the JSON) until then.
	*CycleFigures
	// FiguresPending is output only: true while CycleFigures is nil.
	FiguresPending bool `json:"figures_pending,omitempty"`
	// VM is set on a reverse point (label direction=reverse): the
	// recovered VM it was cut from (label vm). Reverse points are not
	// forward points of the machine.
	ReverseVM string `json:"reverse_vm,omitempty"`
}

// CycleFigures are what the cycle that made a point did, as its agent
// reports them (see CycleResult).
type CycleFigures struct {
	ChangedBytes int64    `json:"changed_bytes"` // non-zero block data the cycle reported
	ReadBytes    int64    `json:"read_bytes"`    // read from the disks by the capture drivers
	SentBytes    int64    `json:"sent_bytes"`    // block data shipped to the process server
	Duration     Duration `json:"duration"`      // from the snapshot to the published point
}

// Figures returns the figures a successful cycle result carries.
func (r CycleResult) Figures() CycleFigures {
	return CycleFigures{ChangedBytes: r.ChangedBytes, ReadBytes: r.ReadBytes, SentBytes: r.SentBytes, Duration: r.Duration}
}

// Event severities.
const (
	SeverityInfo    = "info"
	SeverityWarning = "warning"
	SeverityError   = "error"
)

// Event is something an operator may want to know.
type Event struct {
	ID       int64     `json:"id"`
	Time     time.Time `json:"time"`
	Severity string    `json:"severity"`
	Kind     string    `json:"kind"` // rpo_exceeded, hook_failed, cache_full, cert_refused, ...
	Machine  string    `json:"machine,omitempty"`
	Process  string    `json:"process,omitempty"`
	Message  string    `json:"message"`
	// Actor is who made the change an audit event records (nil on other
	// events). The server sets it; what components report never has one.
	Actor *Actor `json:"actor,omitempty"`
}

// EventAudit is the kind of the events that record changes made through
// the API; only the server writes them.
const EventAudit = "audit"

// Actor identifies who made a request: the API token (by its ID: names
// are labels and need not be unique) or the client certificate, the role,
// and the address the request came from.
type Actor struct {
	Role       string `json:"role"`                  // viewer, operator, admin (tokens); agent, process (certificates)
	TokenID    string `json:"token_id,omitempty"`    // bearer-token callers
	TokenName  string `json:"token_name,omitempty"`  // the token's label, as created
	CertSerial string `json:"cert_serial,omitempty"` // certificate callers: serial, hex
	CertName   string `json:"cert_name,omitempty"`   // certificate callers: machine or process server name
	Address    string `json:"address"`               // the client's IP:port as the server saw it
}

// Status is GET /api/v1/status.
type Status struct {
	Server  string    `json:"server"`
	Version string    `json:"version"`
	Time    time.Time `json:"time"`
	Vault   string    `json:"vault"`
	// VaultUsage is what the vault holds, as the server last measured
	// it (nil before the first measurement).
	VaultUsage *VaultUsage     `json:"vault_usage,omitempty"`
	Machines   []Machine       `json:"machines"`
	Processes  []ProcessServer `json:"process_servers"`
	Events     []Event         `json:"recent_events"`
}

// Alerts is GET /api/v1/alerts: the alerts firing and the sinks.
type Alerts struct {
	Active []ActiveAlert `json:"active"`
	Sinks  []AlertSink   `json:"sinks"`
}

// ActiveAlert is an alert that fired and is not resolved yet.
type ActiveAlert struct {
	Rule    string    `json:"rule"`
	Subject string    `json:"subject"` // the machine, process server or server
	Since   time.Time `json:"since"`
	Message string    `json:"message"`
}

// AlertSink is a configured sink and its queue (since the server started).
type AlertSink struct {
	Name      string `json:"name"`
	Kind      string `json:"kind"` // email | webhook
	Pending   int    `json:"pending"`
	Sent      int64  `json:"sent"`
	Failed    int64  `json:"failed"`
	LastError string `json:"last_error,omitempty"`
}

// AlertTestRequest is POST /api/v1/alerts/test.
type AlertTestRequest struct {
	Sink string `json:"sink"`
}

// AlertTestResult says whether the sink took the test notification.
type AlertTestResult struct {
	Sink  string `json:"sink"`
	Sent  bool   `json:"sent"`
	Error string `json:"error,omitempty"`
}
