package alert

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

// Queue limits and retry timing.
const (
	DefaultQueueSize = 1000
	firstRetry       = 2 * time.Second
	maxRetryWait     = 5 * time.Minute
	// DefaultGiveUp is how long a notification is retried before it is
	// dropped (logged).
	DefaultGiveUp = 6 * time.Hour
	sendTimeout   = time.Minute
)

// Queue delivers one sink's notifications in order, from a goroutine of
// its own: Put never blocks (a full queue drops its oldest), a failed
// send is retried with exponential back-off (2 s doubling to 5 min) until
// GiveUp has passed since the notification was queued.
type Queue struct {
	sink   Sink
	clk    clock.Clock
	log    *slog.Logger
	size   int
	giveUp time.Duration

	mu      sync.Mutex
	items   []queued
	wake    chan struct{}
	sent    int64
	failed  int64
	lastErr string
}

type queued struct {
	n      Notification
	queued time.Time
}

// QueueOptions configure a queue; zero values take the defaults.
type QueueOptions struct {
	Size   int
	GiveUp time.Duration
	Clock  clock.Clock
	Logger *slog.Logger
}

// NewQueue returns a queue for sink; Run delivers.
func NewQueue(sink Sink, o QueueOptions) *Queue {
	q := &Queue{sink: sink, clk: o.Clock, log: o.Logger, size: o.Size, giveUp: o.GiveUp, wake: make(chan struct{}, 1)}
	if q.clk == nil {
		q.clk = clock.System{}
	}
	if q.log == nil {
		q.log = slog.New(slog.DiscardHandler)
	}
	if q.size <= 0 {
		q.size = DefaultQueueSize
	}
	if q.giveUp <= 0 {
		q.giveUp = DefaultGiveUp
	}
	q.log = q.log.With("sink", sink.Name())
	return q
}

// Put queues n without blocking.
func (q *Queue) Put(n Notification) {
	q.mu.Lock()
	if len(q.items) >= q.size {
		q.log.Warn(ErrQueueFull.Error(), "dropped", q.items[0].n.ID)
		q.items = q.items[1:]
	}
	q.items = append(q.items, queued{n: n, queued: q.clk.Now()})
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Stats are a queue's counts.
type Stats struct {
	Pending int    `json:"pending"`
	Sent    int64  `json:"sent"`
	Failed  int64  `json:"failed"` // sends that failed (each retry counts)
	LastErr string `json:"last_error,omitempty"`
}

// Stats returns the queue's counts.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return Stats{Pending: len(q.items), Sent: q.sent, Failed: q.failed, LastErr: q.lastErr}
}

// Run delivers until ctx ends.
func (q *Queue) Run(ctx context.Context) {
	wait := time.Duration(0)
	for {
		if wait > 0 {
			t := q.clk.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C():
			}
		}
		q.mu.Lock()
		if len(q.items) == 0 {
			q.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-q.wake:
			}
			wait = 0
			continue
		}
		it := q.items[0]
		q.mu.Unlock()
		wait = q.deliver(ctx, it, wait)
	}
}

// deliver sends the head of the queue once and returns how long to wait
// before the next try (0 after a success or a give-up).
func (q *Queue) deliver(ctx context.Context, it queued, wait time.Duration) time.Duration {
	sctx, cancel := context.WithTimeout(ctx, sendTimeout)
	err := q.sink.Send(sctx, it.n)
	cancel()
	q.mu.Lock()
	defer q.mu.Unlock()
	if err == nil {
		q.sent++
		q.lastErr = ""
		q.pop(it)
		q.log.Info("alert delivered", "alert", it.n.ID, "status", it.n.Status)
		return 0
	}
	if ctx.Err() != nil {
		return 0
	}
	q.failed++
	q.lastErr = err.Error()
	if q.clk.Now().Sub(it.queued) >= q.giveUp {
		q.pop(it)
		q.log.Error("alert dropped: its sink failed for too long", "alert", it.n.ID, "err", err)
		return 0
	}
	wait = min(max(2*wait, firstRetry), maxRetryWait)
	q.log.Warn("alert not delivered; retrying", "alert", it.n.ID, "in", wait, "err", err)
	return wait
}

// pop removes it from the head if it is still there (Put may have
// dropped it meanwhile).
func (q *Queue) pop(it queued) {
	if len(q.items) > 0 && q.items[0].n.ID == it.n.ID && q.items[0].queued.Equal(it.queued) {
		q.items = q.items[1:]
	}
}
