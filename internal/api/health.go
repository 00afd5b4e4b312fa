package api

import "time"

// Health levels.
const (
	HealthHealthy  = "healthy"
	HealthWarning  = "warning"
	HealthCritical = "critical"
)

// Health is a machine's judgement: the worst level among its reasons.
// A reason that concerns one disk is also in that disk's judgement.
type Health struct {
	Level   string         `json:"level"` // healthy | warning | critical
	Reasons []HealthReason `json:"reasons"`
	// Disks judge each protected disk: its own reasons (gone from the
	// inventory, damaged blocks read) and those of the machine that stop
	// its points (replication fails, agent offline, RPO).
	Disks []DiskHealth `json:"disks,omitempty"`
}

// DiskHealth is one disk's judgement.
type DiskHealth struct {
	Disk    string         `json:"disk"`
	Level   string         `json:"level"`
	Reasons []HealthReason `json:"reasons"`
}

// VaultUsage is what a vault holds: objects and bytes by area (the top
// directory of its layout: data, index, points, ...), measured by listing
// it.
type VaultUsage struct {
	Measured time.Time       `json:"measured"`
	Took     Duration        `json:"took"`
	Objects  int64           `json:"objects"`
	Bytes    int64           `json:"bytes"`
	Areas    []VaultAreaSize `json:"areas"`
	Error    string          `json:"error,omitempty"` // the last measurement failed (the figures are the one before)
}

// VaultAreaSize is one area of VaultUsage.
type VaultAreaSize struct {
	Area    string `json:"area"`
	Objects int64  `json:"objects"`
	Bytes   int64  `json:"bytes"`
}

// HealthReason is one thing wrong, and what to do about it.
type HealthReason struct {
	Level  string `json:"level"`
	Reason string `json:"reason"`
	Remedy string `json:"remedy"`
}

// ConfigChecks is GET /api/v1/checks (`lifeboat check-config`): the
// deployment's configuration checks, run now.
type ConfigChecks struct {
	Time    time.Time     `json:"time"`
	Server  string        `json:"server"`
	Version string        `json:"version"`
	Level   string        `json:"level"` // the worst: healthy | warning | critical
	Checks  []ConfigCheck `json:"checks"`
}

// ConfigCheck is one check's finding.
type ConfigCheck struct {
	Name    string `json:"name"`              // vault, version, clock, certificate, ca, cache, space, state
	Subject string `json:"subject,omitempty"` // the process server, machine or directory
	Level   string `json:"level"`
	Message string `json:"message"`
	Remedy  string `json:"remedy,omitempty"`
}
