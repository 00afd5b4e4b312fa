package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
)

// MemStore is a Store in memory, for tests and for `lifeboat recover`
// runs that have no state database.
type MemStore struct {
	mu   sync.Mutex
	jobs map[string][]byte // JSON, so callers never share memory with the store
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore { return &MemStore{jobs: map[string][]byte{}} }

// CreateJob stores a new job.
func (m *MemStore) CreateJob(_ context.Context, j Job) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.jobs[j.ID]; ok {
		return fmt.Errorf("job %s exists", j.ID)
	}
	m.jobs[j.ID] = b
	return nil
}

// GetJob returns a job.
func (m *MemStore) GetJob(_ context.Context, id string) (Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.get(id)
}

func (m *MemStore) get(id string) (Job, error) {
	b, ok := m.jobs[id]
	if !ok {
		return Job{}, fmt.Errorf("job %s: %w", id, ErrNotFound)
	}
	var j Job
	err := json.Unmarshal(b, &j)
	return j, err
}

// UpdateJob changes a job atomically.
func (m *MemStore) UpdateJob(_ context.Context, id string, fn func(*Job) error) (Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j, err := m.get(id)
	if err != nil {
		return j, err
	}
	if err := fn(&j); err != nil {
		return j, err
	}
	b, err := json.Marshal(j)
	if err != nil {
		return j, err
	}
	m.jobs[id] = b
	return j, nil
}

// ListJobs lists jobs, newest first.
func (m *MemStore) ListJobs(_ context.Context, o ListOptions) ([]Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Job
	for id := range m.jobs {
		j, err := m.get(id)
		if err != nil {
			return nil, err
		}
		if (o.Target != "" && j.Target != o.Target) || (o.Kind != "" && j.Kind != o.Kind) || (o.Active && Terminal(j.State)) {
			continue
		}
		out = append(out, j)
	}
	slices.SortFunc(out, func(a, b Job) int { return b.Created.Compare(a.Created) })
	if o.Limit <= 0 {
		o.Limit = 100
	}
	return out[:min(len(out), o.Limit)], nil
}
