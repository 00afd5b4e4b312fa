package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"
)

// withdrawTimeout bounds the deletion of a point written under a lock that
// was lost meanwhile.
const withdrawTimeout = time.Minute

// SavePointLocked publishes p under lock (§11, §12): it checks that the
// lock is valid before it writes the point record and again after the
// write completed. If the lock was lost in between (the process was paused
// inside the write), a GC may have judged the lock stale and deleted data
// the point needs before the point became visible, so the record is
// deleted again and the error wraps ErrLockLost. It sets p.ID on success.
func (v *Vault) SavePointLocked(ctx context.Context, l *Lock, p *Point) error {
	id, sealed, err := v.sealPoint(p)
	if err != nil {
		return err
	}
	if err := l.Err(); err != nil {
		return fmt.Errorf("save point: %w", err)
	}
	// The point index's marker goes first: a reader that finds a marker
	// reads the record, and skips it while it does not exist (§9a).
	if err := v.putMarker(ctx, pointIndexNewDir, id); err != nil {
		return fmt.Errorf("save point: %w", err)
	}
	perr := v.be.Put(ctx, pointName(id), bytes.NewReader(sealed), int64(len(sealed)))
	lerr := l.Err()
	switch {
	case lerr != nil:
		// Also after a failed put: a put cancelled because the lock was
		// lost may still have stored the record.
		if derr := v.withdraw(ctx, id, perr == nil); derr != nil {
			return fmt.Errorf("save point: %w; %w", lerr, derr)
		}
		return fmt.Errorf("save point: %w", lerr)
	case perr != nil:
		return fmt.Errorf("save point: %w", perr)
	}
	p.ID = id
	return nil
}

// withdraw deletes a point record written while its lock was being lost.
func (v *Vault) withdraw(ctx context.Context, id ID, written bool) error {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), withdrawTimeout)
	defer cancel()
	if err := v.DeletePoint(dctx, id); err != nil {
		v.log.Error("a point record written while the vault lock was lost could not be deleted: it may reference data GC removed; remove the object points/"+id.String()+" from the vault and run `lifeboat vault check`",
			"point", id.Short(), "err", err)
		return fmt.Errorf("withdraw point %s: %w", id.Short(), err)
	}
	if written {
		v.log.Error("withdrew the point record just written: the vault lock was lost while it was written", "point", id.Short())
	}
	return nil
}

// DeletePointLocked deletes a point record under a prune lock: it refuses
// once the lock is lost (another prune may run by then, §11).
func (v *Vault) DeletePointLocked(ctx context.Context, l *Lock, id ID) error {
	if l == nil {
		return errors.New("DeletePointLocked: no lock")
	}
	if err := l.Err(); err != nil {
		return fmt.Errorf("delete point %s: %w", id.Short(), err)
	}
	return v.DeletePoint(ctx, id)
}
