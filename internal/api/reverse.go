package api

import "time"

// Reverse is the way back of a committed failover: reverse replication
// of the recovered VM into the vault (reprotect), and what the target
// writer at the primary site applied of it. It is kept in
// Machine.Recovery.Reverse from reprotect until failback is committed.
type Reverse struct {
	// Job is the reprotect job that started it.
	Job     string    `json:"job"`
	Started time.Time `json:"started"`
	// Policy is the failback policy: the reverse direction's RPO
	// threshold and crash interval.
	Policy   string   `json:"policy"`
	Interval Duration `json:"interval"`
	RPO      Duration `json:"rpo_threshold,omitempty"`
	// Agent is set when the agent inside the recovered VM replicates it
	// back (its instance); empty: the server reads the VM's disks through
	// its provider (qemu, libvirt).
	Agent string `json:"agent,omitempty"`
	// Point is the newest reverse point published (a point of the
	// machine with the label direction=reverse).
	Point *ReversePoint `json:"point,omitempty"`
	// Cycles counts reverse cycles published; LastError is the last
	// failed cycle's error ("" after a success).
	Cycles    int64     `json:"cycles"`
	LastError string    `json:"last_error,omitempty"`
	LastCycle time.Time `json:"last_cycle,omitzero"`
	// Target is the target writer's last report.
	Target *TargetReport `json:"target,omitempty"`
	// Failback is the failback under way (nil: none).
	Failback *Failback `json:"failback,omitempty"`
}

// Failback is a failback under way: the recovery VM's guest is shut
// down, a final reverse point is cut and applied at the primary site, and
// the target writer starts the original machine.
type Failback struct {
	Job     string    `json:"job"`
	Started time.Time `json:"started"`
	// Halted: the recovery VM's guest was shut down (its disks stay).
	Halted bool `json:"halted,omitempty"`
	// Final is the final reverse point, cut after the shutdown.
	Final string `json:"final,omitempty"`
	// Start asks the target writer to start the original machine once it
	// holds Final (its --start-command); Stop, a cancel, to stop it again
	// (--stop-command).
	Start bool `json:"start,omitempty"`
	Stop  bool `json:"stop,omitempty"`
	// AgentError is why the agent in the recovery VM could not shut it
	// down (Reverse.Agent set): the failback fails with it.
	AgentError string `json:"agent_error,omitempty"`
}

// FailedBack is a committed failback: the machine runs at the primary
// site again, from point Point, until re-enable protects it forward.
type FailedBack struct {
	Job    string    `json:"job"`
	Point  string    `json:"point"`  // the final reverse point
	Target string    `json:"target"` // the target writer that applied it
	At     time.Time `json:"at"`
	// Disks are the target's disks, with what the final apply compared
	// and wrote.
	Disks []TargetDisk `json:"disks,omitempty"`
}

// Reprotected reports whether the target writer has applied a reverse
// point in full: the primary site holds a copy of the recovered VM.
func (r *Reverse) Reprotected() bool {
	return r != nil && r.Target != nil && r.Target.Applied != ""
}

// ReversePoint is one reverse point.
type ReversePoint struct {
	ID          string        `json:"id"`
	Time        time.Time     `json:"time"`
	Incremental bool          `json:"incremental"` // every disk's changes came from tracking, no full read
	Disks       []ReverseDisk `json:"disks"`
	// ChangedBytes is the block data the cycle read as changed; SentBytes
	// what was new to the vault (the rest deduplicated).
	ChangedBytes int64 `json:"changed_bytes"`
	SentBytes    int64 `json:"sent_bytes"`
}

// ReverseDisk is one disk of a reverse point.
type ReverseDisk struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// LabelDirection is the point label that marks reverse points; LabelVM
// names the recovered VM a reverse point was cut from.
const (
	LabelDirection   = "direction"
	DirectionReverse = "reverse"
	LabelVM          = "vm"
)

// ReverseVMOf returns the recovered VM a point with these labels was cut
// from when it is a reverse point ("" for a forward point, or a reverse
// point without its VM, which nothing applies).
func ReverseVMOf(labels map[string]string) string {
	if labels[LabelDirection] != DirectionReverse {
		return ""
	}
	return labels[LabelVM]
}

// TargetReport is what a target writer (`lifeboat target run`) reports:
// POST /api/v1/machines/{name}/reverse/target. The server answers with
// the machine's Reverse, whose Point is what the target writer applies
// next.
type TargetReport struct {
	// Name is the target writer's name (--name).
	Name string `json:"name"`
	// Disks are the target's disks: the original location (or the
	// alternate one) of each disk of the machine, with their sizes.
	Disks []TargetDisk `json:"disks"`
	// Applied is the newest point applied in full onto every disk, and
	// AppliedAt when; Written and Compared in Disks are that apply's.
	Applied   string    `json:"applied,omitempty"`
	AppliedAt time.Time `json:"applied_at,omitzero"`
	// Applying is the point being applied now, with its progress.
	Applying string          `json:"applying,omitempty"`
	Progress *TargetProgress `json:"progress,omitempty"`
	// Error is the last apply's failure ("" after a success).
	Error string `json:"error,omitempty"`
	// Started is the point the target writer started the original
	// machine on (its --start-command), during a failback; "" when it has
	// not, or stopped it again (a cancelled failback).
	Started string `json:"started,omitempty"`
	// Seen is set by the server: when the report arrived.
	Seen time.Time `json:"seen,omitzero"`
}

// TargetDisk is one disk at the target.
type TargetDisk struct {
	Name string `json:"name"` // the vault's disk name
	Path string `json:"path"` // file or block device
	Size int64  `json:"size"` // bytes the path holds now (0: does not exist: an alternate location)
	// Compared and Written are the bytes of the last apply: read and
	// compared with the point, and written because they differed.
	Compared int64 `json:"compared"`
	Written  int64 `json:"written"`
	Resumed  int64 `json:"resumed,omitempty"` // skipped: applied before a restart
}

// TargetProgress is an apply under way.
type TargetProgress struct {
	Disk  string   `json:"disk"`
	Done  int64    `json:"done"`  // bytes of all disks examined
	Total int64    `json:"total"` // bytes of all disks
	ETA   Duration `json:"eta"`
}

// ReprotectRequest is POST /api/v1/machines/{name}/reprotect.
type ReprotectRequest struct {
	// Policy is the failback policy ("": one named failback-<policy>
	// is created from the machine's policy, if it does not exist).
	Policy string `json:"policy,omitempty"`
}
