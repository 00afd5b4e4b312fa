package vault

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/leftover"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// Lock kinds (§11).
const (
	LockWrite = "write"
	LockPrune = "prune"
)

// Lock timing (§11).
const (
	LockRefresh    = 2 * time.Minute
	LockStaleAfter = 15 * time.Minute
)

// LockInfo is a lock record.
type LockInfo struct {
	Name      string    `json:"-"`
	Kind      string    `json:"kind"`
	Hostname  string    `json:"hostname"`
	PID       int       `json:"pid"`
	Created   time.Time `json:"created"`
	Refreshed time.Time `json:"refreshed"`
}

// Lock is a held lock; it refreshes itself until Unlock.
type Lock struct {
	v    *Vault
	info LockInfo
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// ErrLocked means another process holds a conflicting lock.
var ErrLocked = errors.New("vault is locked")

// Lock takes a lock of the given kind. A prune lock fails with ErrLocked
// while another live prune lock exists.
func (v *Vault) Lock(ctx context.Context, kind string) (*Lock, error) {
	var rnd [16]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	now := v.clock.Now().UTC()
	l := &Lock{v: v, info: LockInfo{Name: "locks/" + hex.EncodeToString(rnd[:]), Kind: kind, Hostname: v.opts.Hostname,
		PID: os.Getpid(), Created: now, Refreshed: now}, stop: make(chan struct{}), done: make(chan struct{})}
	if err := l.write(ctx, l.info); err != nil {
		return nil, fmt.Errorf("take %s lock: %w", kind, err)
	}
	if kind == LockPrune {
		locks, err := v.Locks(ctx)
		if err != nil {
			_ = l.remove(ctx)
			return nil, err
		}
		for _, o := range locks {
			if o.Name != l.info.Name && o.Kind == LockPrune && !v.lockStale(o) {
				_ = l.remove(ctx)
				return nil, fmt.Errorf("%w: another prune runs on %s (pid %d, since %s)", ErrLocked, o.Hostname, o.PID, o.Created.Format(time.RFC3339))
			}
		}
	}
	go l.refresher()
	return l, nil
}

func (l *Lock) write(ctx context.Context, info LockInfo) error {
	b, err := json.Marshal(info)
	if err != nil {
		return err
	}
	sealed := l.v.keys.seal(kindLock, b, false)
	return l.v.be.Put(ctx, l.info.Name, bytes.NewReader(sealed), int64(len(sealed)))
}

func (l *Lock) remove(ctx context.Context) error {
	err := l.v.be.Delete(ctx, l.info.Name)
	if backend.IsNotExist(err) {
		return nil
	}
	return err
}

func (l *Lock) refresher() {
	defer close(l.done)
	t := time.NewTicker(LockRefresh)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			info := l.info
			info.Refreshed = l.v.clock.Now().UTC()
			ctx, cancel := context.WithTimeout(context.Background(), LockRefresh)
			if err := l.write(ctx, info); err != nil {
				l.v.log.Warn("cannot refresh vault lock", "lock", l.info.Name, "err", err)
			}
			cancel()
		}
	}
}

// Info returns the lock's record as taken.
func (l *Lock) Info() LockInfo { return l.info }

// Unlock releases the lock.
func (l *Lock) Unlock(ctx context.Context) error {
	var err error
	l.once.Do(func() {
		close(l.stop)
		<-l.done
		err = l.remove(ctx)
	})
	return err
}

// Locks lists the lock records (unreadable ones are skipped).
func (v *Vault) Locks(ctx context.Context) ([]LockInfo, error) {
	var names []string
	if err := v.be.List(ctx, "locks/", func(fi backend.Info) error {
		names = append(names, fi.Name)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list locks: %w", err)
	}
	var out []LockInfo
	for _, n := range names {
		b, err := v.getSealed(ctx, n, kindLock)
		if backend.IsNotExist(err) {
			continue
		}
		if err != nil {
			v.log.Warn("unreadable lock", "lock", n, "err", err)
			continue
		}
		var li LockInfo
		if err := json.Unmarshal(b, &li); err != nil || (li.Kind != LockWrite && li.Kind != LockPrune) || li.Created.IsZero() {
			v.log.Warn("unreadable lock", "lock", n, "err", err, "kind", li.Kind)
			continue
		}
		li.Name = n
		out = append(out, li)
	}
	return out, nil
}

// lockStale reports whether a lock's holder is gone (§11).
func (v *Vault) lockStale(l LockInfo) bool {
	if v.clock.Now().Sub(l.Refreshed) > LockStaleAfter {
		return true
	}
	return l.Hostname == v.opts.Hostname && l.PID > 0 && l.PID != os.Getpid() && !leftover.ProcessRuns(l.PID)
}
