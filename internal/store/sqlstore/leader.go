package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// leaderLockKey is the PostgreSQL advisory lock the leading server holds
// (any 64-bit number no other application on the database uses: "lbleader").
const leaderLockKey int64 = 0x6c626c6561646572

// LeadCheckEvery is how often a leader checks the connection holding its
// lock; a leader whose connection broke knows it within about
// LeadCheckEvery + LeadCheckTimeout, and closes lost.
const (
	LeadCheckEvery   = time.Second
	LeadCheckTimeout = time.Second
)

// LeadLease is how long a confirmation of the lead (a successful check of
// its connection) lets the leader act: Leading fails once the last one is
// older, as it is in a process that was frozen.
const LeadLease = LeadCheckEvery + LeadCheckTimeout + time.Second

// DefaultLeadIdleTimeout is PostgreSQL's idle_session_timeout on the
// lock's connection: a leader that stops checking it (frozen) has its
// session, and so the lock, ended by PostgreSQL after this long, and a
// standby takes over; its own checks keep a live leader's session busy.
const DefaultLeadIdleTimeout = 6 * time.Second

// leadState is the lead this store holds, if any.
type leadState struct {
	mu     sync.Mutex
	held   bool
	conn   *pgx.Conn     // PostgreSQL: the connection holding the lock
	file   *os.File      // SQLite: the flocked file
	stop   chan struct{} // closed by resign: the watcher ends
	done   chan struct{} // closed when the watcher ended
	lost   chan struct{}
	closed bool
	// confirmed is when the lead was last confirmed (wall clock with its
	// monotonic reading); idle is the lock session's idle timeout.
	confirmed time.Time
	idle      time.Duration
	// pause, if set (tests), is received from before each check: a
	// test holds the watcher as a frozen process would be held.
	pause chan struct{}
}

// TryLead implements store.Leadership. PostgreSQL: a session-level
// advisory lock (pg_try_advisory_lock) on a connection of its own,
// pinged every LeadCheckEvery; when a ping fails the connection is
// closed (which frees the lock if PostgreSQL still had it) and lost is
// closed. A process killed outright loses its connection, and
// PostgreSQL frees its lock at once. SQLite: an exclusive flock on the
// database file's "-leader" neighbour: a second server on the same file
// gets an error saying standby servers need PostgreSQL.
func (s *Store) TryLead(ctx context.Context) (<-chan struct{}, bool, error) {
	s.lead.mu.Lock()
	defer s.lead.mu.Unlock()
	if s.lead.closed {
		return nil, false, errors.New("sqlstore: the store is closed")
	}
	if s.lead.held {
		return nil, false, errors.New("sqlstore: TryLead called again after the lead was taken")
	}
	if !s.pg {
		return s.leadSQLite()
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, s.dsn)
	if err != nil {
		return nil, false, fmt.Errorf("sqlstore: connect to PostgreSQL %s for the lead: %w", redact(s.dsn), err)
	}
	var ok bool
	if err := conn.QueryRow(cctx, `SELECT pg_try_advisory_lock($1)`, leaderLockKey).Scan(&ok); err != nil {
		conn.Close(context.Background())
		return nil, false, fmt.Errorf("sqlstore: ask PostgreSQL for the lead: %w", err)
	}
	if !ok {
		conn.Close(context.Background())
		return nil, false, nil
	}
	idle := s.lead.idle
	if idle == 0 {
		idle = DefaultLeadIdleTimeout
	}
	// PostgreSQL 14 and later: a session nobody talks to ends, and frees
	// the lock. An older server refuses the setting; the lead then ends
	// only when the connection breaks.
	if _, err := conn.Exec(cctx, fmt.Sprintf("SET idle_session_timeout = %d", idle.Milliseconds())); err != nil {
		if !strings.Contains(err.Error(), "idle_session_timeout") {
			conn.Close(context.Background())
			return nil, false, fmt.Errorf("sqlstore: set the lead's idle timeout: %w", err)
		}
	}
	s.lead.held, s.lead.conn, s.lead.confirmed = true, conn, time.Now() // wallclock: the lease runs on real time
	s.lead.stop, s.lead.done, s.lead.lost = make(chan struct{}), make(chan struct{}), make(chan struct{})
	go s.watchLead(conn, s.lead.stop, s.lead.done, s.lead.lost)
	return s.lead.lost, true, nil
}

// Leading implements store.Leadership.
func (s *Store) Leading() error {
	s.lead.mu.Lock()
	defer s.lead.mu.Unlock()
	switch {
	case !s.lead.held:
		return errors.New("this server does not lead")
	case s.lead.file != nil:
		return nil // SQLite: a flock is not lost while the process lives
	}
	select {
	case <-s.lead.lost:
		return errors.New("this server lost the lead")
	default:
	}
	if age := time.Since(s.lead.confirmed); age > LeadLease { // wallclock: the lease runs on real time
		return fmt.Errorf("the lead was last confirmed %s ago (more than the %s lease: this process was frozen, or the database answers slowly)", age.Round(time.Millisecond), LeadLease)
	}
	return nil
}

// watchLead pings the lock's connection until a ping fails (then it
// closes the connection and lost) or resign stops it.
func (s *Store) watchLead(conn *pgx.Conn, stop, done, lost chan struct{}) {
	defer close(done)
	t := time.NewTicker(LeadCheckEvery) // wallclock: a liveness check of a real connection
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		s.lead.mu.Lock()
		pause := s.lead.pause
		s.lead.mu.Unlock()
		if pause != nil {
			<-pause
		}
		ctx, cancel := context.WithTimeout(context.Background(), LeadCheckTimeout)
		sent := time.Now() // wallclock: the lease runs on real time
		err := conn.Ping(ctx)
		cancel()
		if err == nil {
			s.lead.mu.Lock()
			s.lead.confirmed = sent
			s.lead.mu.Unlock()
		}
		if err != nil {
			cctx, ccancel := context.WithTimeout(context.Background(), LeadCheckTimeout)
			conn.Close(cctx)
			ccancel()
			close(lost)
			return
		}
	}
}

// resign gives the lead up (Close): the lock's connection is closed,
// which frees the lock; lost is not closed.
func (s *Store) resign() {
	s.lead.mu.Lock()
	defer s.lead.mu.Unlock()
	s.lead.closed = true
	if !s.lead.held {
		return
	}
	if s.lead.conn != nil {
		close(s.lead.stop)
		<-s.lead.done
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.lead.conn.Close(ctx)
		cancel()
	}
	if s.lead.file != nil {
		s.lead.file.Close() // releases the flock
	}
	s.lead.held, s.lead.conn, s.lead.file = false, nil, nil
}

// leadSQLite takes the SQLite file's lead lock (s.lead.mu held).
func (s *Store) leadSQLite() (<-chan struct{}, bool, error) {
	path := sqlitePath(s.dsn)
	lockPath := path + "-leader"
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("sqlstore: open the lead lock %s: %w", lockPath, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, fmt.Errorf("sqlstore: %w: another lifeboat server is running on the SQLite database %s (it holds %s): "+
				"only one server may use a SQLite state; standby servers need PostgreSQL (\"db\": \"postgres://...\")", store.ErrNotShared, path, lockPath)
		}
		return nil, false, fmt.Errorf("sqlstore: lock %s: %w", lockPath, err)
	}
	s.lead.held, s.lead.file, s.lead.lost = true, f, make(chan struct{})
	return s.lead.lost, true, nil
}

// sqlitePath is the file a SQLite DSN names.
func sqlitePath(dsn string) string {
	p := strings.TrimPrefix(dsn, "file:")
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	return p
}
