package wire

import (
	"encoding/json"
	"time"
)

// CodeLockLost is the error code (HTTP 410) of requests to a session
// whose process server lost its vault write lock: the session is over.
// The other codes are internal/api's.
const CodeLockLost = "lock_lost"

// SessionDisk is one disk of a session.
type SessionDisk struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`           // bytes at the cut
	Base   string `json:"base,omitempty"` // point ID (hex) the changes apply to; "" for none
	Driver string `json:"driver,omitempty"`
}

// SessionRequest opens a session (POST /ingest/v1/sessions): one capture
// cycle of one machine.
type SessionRequest struct {
	Machine string            `json:"machine"` // must be the machine the client certificate names
	Kind    string            `json:"kind"`    // crash (default) | app
	Group   string            `json:"group,omitempty"`
	CutID   string            `json:"cut_id,omitempty"` // group cut; stored as label cut_id
	Time    time.Time         `json:"time"`             // the cut instant; zero: when the session opens
	Labels  map[string]string `json:"labels,omitempty"`
	VMSpec  json.RawMessage   `json:"vm_spec,omitempty"`
	Disks   []SessionDisk     `json:"disks"`
}

// InfoResponse is the answer to GET /ingest/v1/info and part of
// OpenResponse: the process server and its vault.
type InfoResponse struct {
	Name      string `json:"name"`
	VaultID   string `json:"vault_id"`
	BlockSize int    `json:"block_size"`
	BlockKey  string `json:"block_key"` // hex
}

// OpenResponse is the answer to a SessionRequest.
type OpenResponse struct {
	Session string       `json:"session"`
	Info    InfoResponse `json:"info"`
}

// CommitRequest is POST /ingest/v1/sessions/{id}/commit: the number of
// batches the session sent.
type CommitRequest struct {
	Batches uint64 `json:"batches"`
}

// CommitResponse names the published point.
type CommitResponse struct {
	Point string    `json:"point"`
	Time  time.Time `json:"time"`
}

// BatchResponse acknowledges a put batch.
type BatchResponse struct {
	Seq       uint64 `json:"seq"`
	Duplicate bool   `json:"duplicate,omitempty"`
	DataBytes int64  `json:"data_bytes"`
}
