package control

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Vault keys of stand-alone process servers. Each gets a key file of its
// own in the vault: the master key wrapped under 32 random bytes that
// only that process server receives, in the answer to its heartbeat (mTLS,
// process role, a certificate this server issued to that name and did not
// revoke). The server keeps no copy of the secret: a process server asks
// for a new key at every start (the previous key file is deleted then).
// Revoking a process server's certificates deletes its key file, so a
// copy of its secret no longer opens the vault. The master key itself is
// not rotated: whoever read it out of a process server's memory keeps it.
// The embedded process server uses the server's own passphrase.

// processKeySetting + name is the store setting recording a process
// server's key: a processKey in JSON ("" for none).
const processKeySetting = "process-key/"

// processKeyLabel starts the label of every process server key file; the
// name and this server's CA follow, so that servers sharing a vault leave
// each other's keys alone.
const processKeyLabel = "lifeboat process server "

type processKey struct {
	Key     string    `json:"key"`  // key file ID
	Cert    string    `json:"cert"` // serial of the certificate it was handed to
	Created time.Time `json:"created"`
}

func (s *Server) keyLabel(name string) string {
	return processKeyLabel + name + " (CA " + s.ca.Fingerprint()[:16] + ")"
}

// labelName returns the process server a key label of this server names.
func (s *Server) labelName(label string) (string, bool) {
	rest, ok := strings.CutPrefix(label, processKeyLabel)
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, " (CA "+s.ca.Fingerprint()[:16]+")")
}

func (s *Server) getProcessKey(ctx context.Context, name string) (processKey, bool, error) {
	v, err := s.store.GetSetting(ctx, processKeySetting+name)
	if errors.Is(err, store.ErrNotFound) || err == nil && v == "" {
		return processKey{}, false, nil
	}
	if err != nil {
		return processKey{}, false, fmt.Errorf("read the vault key of process server %s: %w", name, err)
	}
	var pk processKey
	if err := json.Unmarshal([]byte(v), &pk); err != nil {
		s.log.Warn("damaged vault key record of a process server; it gets a new key", "process", name, "err", err)
		return processKey{}, false, nil
	}
	return pk, true, nil
}

func (s *Server) putProcessKey(ctx context.Context, name string, pk *processKey) error {
	v := ""
	if pk != nil {
		b, err := json.Marshal(pk)
		if err != nil {
			return err
		}
		v = string(b)
	}
	if err := s.store.PutSetting(ctx, processKeySetting+name, v); err != nil {
		return fmt.Errorf("record the vault key of process server %s: %w", name, err)
	}
	return nil
}

// processKeyDue says whether the answer to this heartbeat of a process
// server gets a vault key of its own: when it asks (need: then it must be
// a live process server, or the heartbeat is refused before it changes
// anything), or when it has none yet (existing clusters; quietly not when
// its certificate is not one this server issued and did not revoke).
func (s *Server) processKeyDue(ctx context.Context, c *caller, need bool) (bool, error) {
	if need {
		return true, s.liveProcess(ctx, c)
	}
	if _, had, err := s.getProcessKey(ctx, c.Name); err != nil || had {
		return false, err
	}
	return s.liveProcess(ctx, c) == nil, nil
}

// handProcessKey makes the calling process server a new vault key file,
// deletes the one it had, and puts the secret into pc.
func (s *Server) handProcessKey(ctx context.Context, c *caller, pc *api.ProcessConfig) error {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	// Revoked since processKeyDue? Revocations update s.rl before they
	// reconcile keys under keyMu, so a key minted here is either refused
	// now or deleted by that reconciliation.
	if s.rl.Revoked(c.Peer.Serial) {
		return errf(http.StatusForbidden, api.CodeCertRevoked, "certificate of process server %s (serial %s) was revoked; enroll again with a new token", c.Name, c.Peer.Serial)
	}
	old, had, err := s.getProcessKey(ctx, c.Name)
	if err != nil {
		return err
	}
	secret, id, err := s.mintProcessKey(ctx, c.Name, c.Peer.Serial)
	if err != nil {
		return err
	}
	msg := fmt.Sprintf("process server %s has a vault key of its own: key file %s", c.Name, id.Short())
	if had && old.Key != id.String() {
		if err := s.removeKeyFile(ctx, old.Key); err != nil {
			s.keysDirty.Store(true)
			s.log.Warn("cannot delete a process server's previous vault key; retrying later", "process", c.Name, "key", old.Key, "err", err)
		} else {
			msg += fmt.Sprintf(" (its previous one, %s, is deleted)", short(old.Key))
		}
	}
	s.event(ctx, api.Event{Kind: "process_key_created", Process: c.Name, Message: msg})
	pc.Passphrase, pc.KeyID = secret, id.String()
	return nil
}

// liveProcess checks that the caller's certificate is one this server
// issued to a stand-alone process server of that name and did not revoke.
func (s *Server) liveProcess(ctx context.Context, c *caller) error {
	cert, err := s.store.GetCert(ctx, c.Peer.Serial)
	if errors.Is(err, store.ErrNotFound) {
		return errf(http.StatusForbidden, api.CodeForbidden, "certificate %s was not issued by this server: enroll the process server again", c.Peer.Serial)
	}
	if err != nil {
		return err
	}
	switch {
	case cert.Role != api.RoleProcess || cert.Name != c.Name:
		return errf(http.StatusForbidden, api.CodeForbidden, "certificate %s was issued to %s %s, not process server %s", c.Peer.Serial, cert.Role, cert.Name, c.Name)
	case !cert.Revoked.IsZero() || s.rl.Revoked(c.Peer.Serial):
		return errf(http.StatusForbidden, api.CodeCertRevoked, "certificate of process server %s (serial %s) was revoked; enroll again with a new token", c.Name, c.Peer.Serial)
	}
	p, err := s.store.GetProcess(ctx, c.Name)
	if errors.Is(err, store.ErrNotFound) {
		return errf(http.StatusForbidden, api.CodeForbidden, "process server %s is not enrolled (removed?): enroll it again with a new token", c.Name)
	}
	if err != nil {
		return err
	}
	if p.Embedded {
		return conflict("%q is the embedded process server's name: this certificate gets no vault key", c.Name)
	}
	return nil
}

// mintProcessKey adds a key file under a fresh secret for process server
// name and records it; s.keyMu is held.
func (s *Server) mintProcessKey(ctx context.Context, name, serial string) (string, vault.ID, error) {
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", vault.ID{}, err
	}
	secret := base64.RawURLEncoding.EncodeToString(raw[:])
	id, err := s.vault.AddKeyWith(ctx, []byte(secret), vault.KeyOptions{KDF: vault.RandomSecretKDF, Label: s.keyLabel(name)})
	if err != nil {
		return "", vault.ID{}, fmt.Errorf("add a vault key for process server %s: %w", name, err)
	}
	if err := s.putProcessKey(ctx, name, &processKey{Key: id.String(), Cert: serial, Created: s.clock.Now().UTC()}); err != nil {
		if rerr := s.vault.RemoveKeyID(ctx, id); rerr != nil {
			s.keysDirty.Store(true)
		}
		return "", vault.ID{}, err
	}
	return secret, id, nil
}

func (s *Server) removeKeyFile(ctx context.Context, key string) error {
	id, err := vault.ParseID(key)
	if err != nil {
		return nil // not a key file this server made
	}
	return s.vault.RemoveKeyID(ctx, id)
}

// DropProcessKey deletes process server name's vault key file, if it has
// one, with a process_key_removed event saying why. Revoking or removing a
// process server must call it (loadRevoked does, through
// reconcileProcessKeys, for every process server whose key went to a
// certificate that is now revoked).
func (s *Server) DropProcessKey(ctx context.Context, name, why string) error {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	pk, ok, err := s.getProcessKey(ctx, name)
	if err != nil || !ok {
		return err
	}
	return s.dropKey(ctx, name, pk.Key, why)
}

// dropKey deletes key file key of process server name and its record if
// it is the recorded one; s.keyMu is held.
func (s *Server) dropKey(ctx context.Context, name, key, why string) error {
	if err := s.removeKeyFile(ctx, key); err != nil {
		s.keysDirty.Store(true)
		s.event(ctx, api.Event{Kind: "process_key_remove_failed", Severity: api.SeverityError, Process: name,
			Message: fmt.Sprintf("cannot delete vault key file %s of process server %s (%s): %v; retrying every minute", short(key), name, why, err)})
		return fmt.Errorf("delete the vault key of process server %s: %w", name, err)
	}
	if pk, ok, err := s.getProcessKey(ctx, name); err == nil && ok && pk.Key == key {
		if err := s.putProcessKey(ctx, name, nil); err != nil {
			return err
		}
	}
	s.event(ctx, api.Event{Kind: "process_key_removed", Severity: api.SeverityWarning, Process: name,
		Message: fmt.Sprintf("vault key file %s of process server %s deleted (%s): a copy of its secret no longer opens the vault", short(key), name, why)})
	return nil
}

// reconcileProcessKeys deletes the process server key files this server
// made that must not open the vault any longer: handed to a certificate
// that is now revoked, of a process server no longer enrolled, or no
// longer recorded (replaced, or left by a crash).
func (s *Server) reconcileProcessKeys(ctx context.Context) error {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	keys, err := s.vault.Keys(ctx)
	if err != nil {
		s.keysDirty.Store(true)
		return fmt.Errorf("list the vault's keys: %w", err)
	}
	var errs []error
	for _, k := range keys {
		name, ok := s.labelName(k.Label)
		if !ok {
			continue
		}
		why, err := s.staleKey(ctx, name, k.ID.String())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if why != "" {
			errs = append(errs, s.dropKey(ctx, name, k.ID.String(), why))
		}
	}
	err = errors.Join(errs...)
	s.keysDirty.Store(err != nil)
	return err
}

// staleKey says why key file key of process server name must go ("" if
// it stays).
func (s *Server) staleKey(ctx context.Context, name, key string) (string, error) {
	pk, ok, err := s.getProcessKey(ctx, name)
	if err != nil {
		return "", err
	}
	if !ok || pk.Key != key {
		return "no longer the process server's key", nil
	}
	if s.rl.Revoked(pk.Cert) {
		return "its certificate " + pk.Cert + " was revoked", nil
	}
	if _, err := s.store.GetProcess(ctx, name); errors.Is(err, store.ErrNotFound) {
		return "the process server was removed", nil
	} else if err != nil {
		return "", err
	}
	return "", nil
}

// keyJanitor retries failed key deletions every minute until ctx ends.
func (s *Server) keyJanitor(ctx context.Context) {
	t := s.clock.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		if s.keysDirty.Load() {
			if err := s.reconcileProcessKeys(ctx); err != nil {
				s.log.Warn("cannot delete process server vault keys yet; retrying in a minute", "err", err)
			}
		}
	}
}
