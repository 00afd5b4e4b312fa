// Package store is the control plane's durable state: tokens, issued and
// revoked certificates, machines, process servers, policies, groups, cuts,
// points, events, jobs and recovery plans. One interface, two
// implementations (SQLite by default, PostgreSQL for HA), one conformance
// suite (storetest) that both pass.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

// Errors every implementation returns (wrapped) so callers can map them
// to HTTP codes.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("already exists")
	// ErrTokenUsed means a one-time token was already redeemed.
	ErrTokenUsed = errors.New("token already used")
	// ErrNotShared means the state cannot be shared by several servers
	// (SQLite) and another server already uses it.
	ErrNotShared = errors.New("the state is in use by another server")
)

// Token is a stored token; only the SHA-256 of its secret is kept.
type Token struct {
	ID      string
	Hash    []byte // sha256 of the secret part
	Role    string
	Name    string
	OneTime bool // enrollment tokens (agent, process)
	Created time.Time
	Expires time.Time // zero: never
	Used    time.Time // zero: not used (one-time tokens)
	Revoked bool
	// Subject is the machine or process server name an enrollment token
	// enrolls, and the only one it enrolls ("" on tokens made before
	// tokens were bound to a name, and on API tokens).
	Subject string
	// Reenroll marks an operator's re-enroll token: it may enroll
	// Subject although a machine or process server of that name exists.
	Reenroll bool
}

// Cert is an issued certificate.
type Cert struct {
	Serial   string // hex
	Role     string // agent | process | server
	Name     string // machine or process server name
	NotAfter time.Time
	Issued   time.Time
	Revoked  time.Time // zero: not revoked
}

// EventPrune selects the events PruneEvents deletes: those of kind Kind
// (if set), or of every kind but ExceptKind (if set), that are older than
// Before (zero: none by age) or beyond the newest Keep (0: no count
// limit).
type EventPrune struct {
	Kind       string
	ExceptKind string
	Before     time.Time
	Keep       int
}

// Store is the control plane's state. Every method is safe for concurrent
// use. Get* return ErrNotFound; Create* return ErrConflict for a name that
// exists.
type Store interface {
	// Tokens.
	CreateToken(ctx context.Context, t Token) error
	// TokenByHash finds a token by the hash of its secret.
	TokenByHash(ctx context.Context, hash []byte) (Token, error)
	// UseToken atomically marks a one-time token used at now; it returns
	// ErrTokenUsed when it was already used, ErrNotFound when unknown.
	UseToken(ctx context.Context, id string, now time.Time) error
	ListTokens(ctx context.Context) ([]Token, error)
	RevokeToken(ctx context.Context, id string) error

	// Certificates.
	AddCert(ctx context.Context, c Cert) error
	GetCert(ctx context.Context, serial string) (Cert, error)
	// RevokeCerts revokes every unrevoked certificate issued to role/name
	// and returns their serials.
	RevokeCerts(ctx context.Context, role, name string, now time.Time) ([]string, error)
	RevokedSerials(ctx context.Context) ([]string, error)

	// Key rotations an operator approved: the next renewal of role/name
	// may present a new key, once. ApproveRotation records (or renews)
	// the approval; RotationApproved returns when it was given
	// (ErrNotFound: none pending); TakeRotation consumes it atomically:
	// of concurrent callers exactly one succeeds, the others get
	// ErrNotFound.
	ApproveRotation(ctx context.Context, role, name string, now time.Time) error
	RotationApproved(ctx context.Context, role, name string) (time.Time, error)
	TakeRotation(ctx context.Context, role, name string) error

	// Machines. PutMachine creates or replaces; machine names are unique.
	PutMachine(ctx context.Context, m api.Machine) error
	GetMachine(ctx context.Context, name string) (api.Machine, error)
	ListMachines(ctx context.Context) ([]api.Machine, error)
	DeleteMachine(ctx context.Context, name string) error
	// UpdateMachine reads, applies fn and writes back atomically (a
	// transaction, or a compare-and-swap loop); fn may be called again.
	UpdateMachine(ctx context.Context, name string, fn func(*api.Machine) error) (api.Machine, error)

	// Process servers.
	PutProcess(ctx context.Context, p api.ProcessServer) error
	GetProcess(ctx context.Context, name string) (api.ProcessServer, error)
	ListProcesses(ctx context.Context) ([]api.ProcessServer, error)
	DeleteProcess(ctx context.Context, name string) error

	// Policies.
	CreatePolicy(ctx context.Context, p api.Policy) error
	GetPolicy(ctx context.Context, name string) (api.Policy, error)
	ListPolicies(ctx context.Context) ([]api.Policy, error)
	UpdatePolicy(ctx context.Context, p api.Policy) error // ErrNotFound if missing
	DeletePolicy(ctx context.Context, name string) error

	// Group cuts (the group itself is the set of machines naming it).
	PutCut(ctx context.Context, c api.Cut) error
	GetCut(ctx context.Context, id string) (api.Cut, error)
	// OpenCuts lists cuts whose phase is not done or abort.
	OpenCuts(ctx context.Context) ([]api.Cut, error)
	LastCut(ctx context.Context, group string) (api.Cut, error)

	// Points recorded from agent and process server reports (the vault
	// stays the truth). AddPoint is idempotent on ID: the first record
	// wins, except that a point stored without figures (CycleFigures nil)
	// takes the figures of a later record that has them, once. Points
	// read back have FiguresPending set when they have no figures.
	AddPoint(ctx context.Context, p api.Point) error
	ListPoints(ctx context.Context, machine, group string, limit int) ([]api.Point, error) // newest first; "" = any
	// PointsByPrefix lists the points whose ID begins with prefix, newest
	// first, at most limit of them when limit > 0.
	PointsByPrefix(ctx context.Context, prefix string, limit int) ([]api.Point, error)
	DeletePoints(ctx context.Context, ids []string) error

	// Events, with increasing IDs assigned by the store. An event's
	// Actor is kept when its Role is set (nil otherwise).
	AddEvent(ctx context.Context, e api.Event) (int64, error)
	ListEvents(ctx context.Context, q EventQuery) ([]api.Event, error) // oldest first
	// PruneEvents deletes the events p selects that are older than
	// p.Before, then all but the newest p.Keep of them (by ID), in
	// batches, and returns how many it deleted.
	PruneEvents(ctx context.Context, p EventPrune) (int64, error)

	// Jobs: durable operations (failovers, drills) with their steps and
	// data; UpdateJob is atomic (jobs.Store, jobstest).
	jobs.Store

	// Recovery plans, versioned: each version keeps its YAML as written.
	// PutPlan stores r as the plan's next version (newest+1, or 1), unless
	// r.YAML equals the newest version's YAML: then it returns that
	// version and false. Concurrent puts never give two versions one
	// number. A name that does not match plan.NameRE, YAML larger than
	// plan.MaxSize or not valid UTF-8 (or with NUL bytes) is refused and
	// nothing is stored.
	PutPlan(ctx context.Context, r plan.Record) (plan.Record, bool, error)
	// GetPlan returns a version of a plan (0: the newest); ErrNotFound.
	GetPlan(ctx context.Context, name string, version int64) (plan.Record, error)
	// ListPlans returns the newest version of every plan, by name.
	ListPlans(ctx context.Context) ([]plan.Record, error)
	// PlanVersions returns every version of a plan, newest first (none:
	// an empty list).
	PlanVersions(ctx context.Context, name string) ([]plan.Record, error)
	// DeletePlan deletes every version of a plan; ErrNotFound if none.
	DeletePlan(ctx context.Context, name string) error

	// Settings: small key/value pairs (server identity, schedule marks).
	GetSetting(ctx context.Context, key string) (string, error)
	PutSetting(ctx context.Context, key, value string) error

	// Leadership: which of several servers sharing this store leads.
	Leadership

	Close() error
}

// Leadership decides which of the servers sharing one store leads: the
// leader runs the scheduler, retention, the embedded process server and
// the jobs; the others stand by. PostgreSQL holds a session-level
// advisory lock on a connection of its own; SQLite serves one server,
// and refuses a second one on the same file.
type Leadership interface {
	// TryLead tries once to take the lead. ok: this store leads until
	// lost is closed (the lead was lost: the connection holding it
	// broke) or the store is closed. !ok with a nil error: another
	// process leads; try again later. An error means the lead cannot be
	// taken here at all (for SQLite: another server uses the file), or
	// the database could not be asked. Once ok, TryLead is not called
	// again on this store.
	TryLead(ctx context.Context) (lost <-chan struct{}, ok bool, err error)
	// Leading is nil while this store holds the lead and confirmed it
	// within the lease (a check of the lock's connection less than a few
	// seconds ago); otherwise it says why not. A process frozen for a
	// while (SIGSTOP, a paused VM) finds its lease expired when it wakes,
	// before its connection check has run: what it would do as leader
	// waits until the lead is confirmed again, or lost.
	Leading() error
}

// EventQuery selects events: those with an ID above SinceID, at or after
// Since, of Machine, Kind and Severity when they are set. Limit bounds
// how many (0: all): the oldest that match, or with Newest the newest
// that match. Either way they are listed oldest first.
type EventQuery struct {
	SinceID  int64
	Since    time.Time
	Machine  string
	Kind     string
	Severity string
	Limit    int
	Newest   bool
}
