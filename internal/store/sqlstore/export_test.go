package sqlstore

import (
	"context"
	"time"
)

// RebindForTest exposes rebind to the external tests.
func RebindForTest(q string) string { return rebind(q) }

// ExecForTest runs a write statement written with ? placeholders.
func ExecForTest(ctx context.Context, s *Store, q string, args ...any) error {
	_, err := s.exec(ctx, q, args...)
	return err
}

// CountForTest runs a query returning one integer.
func CountForTest(ctx context.Context, s *Store, q string, args ...any) (int, error) {
	var n int
	err := s.w.QueryRowContext(ctx, s.q(q), args...).Scan(&n)
	return n, err
}

// OpenAtVersionForTest opens dsn migrating its schema only up to version
// v (not concurrency-safe: tests using it must not run in parallel).
func OpenAtVersionForTest(ctx context.Context, dsn string, v int) (*Store, error) {
	migrateUpTo = v
	defer func() { migrateUpTo = 0 }()
	return Open(ctx, dsn)
}

// FreezeLeadForTest sets the lock session's idle timeout for the next
// TryLead; freeze then holds the lead's connection checks, as in a frozen
// process, until thaw.
func FreezeLeadForTest(s *Store, idle time.Duration) (freeze func(), thaw func()) {
	s.lead.idle = idle
	gate := make(chan struct{})
	return func() {
			s.lead.mu.Lock()
			s.lead.pause = gate
			s.lead.mu.Unlock()
		}, func() {
			close(gate)
		}
}
