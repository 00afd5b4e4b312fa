package vault

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// damagedKeyHint says what to do about a damaged key file that may have
// been the passphrase's.
const damagedKeyHint = "no intact key file opens with this passphrase; if it belongs to this key file, " +
	"restore the file from a copy of the vault, otherwise the passphrase is wrong; `lifeboat vault check` lists damaged key files"

// keyAttempts collects why the key files did not open the vault.
type keyAttempts struct {
	damaged     []error // *DamagedError with the object name
	unsupported error
	readErr     error
	unwrapped   []ID // keys the passphrase opened, whose config did not
	configErr   error
}

// openVault unlocks the vault (Open without its option checks): it tries
// every key file, then opens both copies of the config with the key.
func openVault(ctx context.Context, be backend.Backend, passphrase []byte, o Options) (*Vault, error) {
	sc, err := readConfigCopies(ctx, be)
	if err != nil {
		return nil, fmt.Errorf("open vault at %s: %w", be.Location(), err)
	}
	if sc.none() {
		return nil, fmt.Errorf("%w: %s has no vault config; create a vault with `lifeboat vault init %s`", ErrNoVault, be.Location(), be.Location())
	}
	kids, err := listIDs(ctx, be, "keys/")
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	if len(kids) == 0 {
		return nil, fmt.Errorf("vault at %s: %w", be.Location(), &DamagedError{What: "vault", Object: "keys/",
			Err: errors.New("there are no key files, so it cannot be opened"), Hint: "restore keys/ from a copy of the vault"})
	}
	var at keyAttempts
	for _, kid := range kids {
		name := "keys/" + kid.String()
		b, err := backend.ReadAll(ctx, be, name)
		if err != nil {
			at.readErr = fmt.Errorf("read %s: %w", name, err)
			continue
		}
		kf, err := parseKeyFile(b)
		if err != nil {
			o.Logger.Warn("skipping key file that cannot be used", "key", name, "err", err)
			if errors.Is(err, ErrDamaged) {
				at.damaged = append(at.damaged, withObject(err, name, ""))
			} else {
				at.unsupported = fmt.Errorf("%s: %w", name, err)
			}
			continue
		}
		k, err := kf.unwrap(passphrase)
		if err != nil {
			continue
		}
		oc, err := sc.open(k)
		if errors.Is(err, errNoConfigCopy) {
			// A key of another vault (a leftover of an interrupted init),
			// or a config damaged in both copies.
			at.unwrapped = append(at.unwrapped, kid)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("open vault at %s: %w", be.Location(), err)
		}
		oc.warn(o.Logger, sc)
		for _, d := range at.damaged {
			o.Logger.Warn("vault opened with another key; a key file is damaged", "err", d)
		}
		v := newVault(be, k, *oc.cfg, o)
		v.keyID = kid
		return v, nil
	}
	return nil, fmt.Errorf("open vault at %s: %w", be.Location(), at.err(sc))
}

// err is the reason no key opened the vault, most telling first: a
// config no key opens, a damaged key file, a newer key file, a read
// error, or a wrong passphrase.
func (at *keyAttempts) err(sc *storedConfig) error {
	switch {
	case len(at.unwrapped) > 0:
		var names []string
		for _, id := range at.unwrapped {
			names = append(names, "keys/"+id.Short())
		}
		present := configName + " and " + configCopyName
		switch {
		case sc[0].missing:
			present = configCopyName + " (" + configName + " is missing)"
		case sc[1].missing:
			present = configName + " (" + configCopyName + " is missing)"
		}
		return &DamagedError{What: "config", Object: present,
			Err:  fmt.Errorf("it does not authenticate with the key the passphrase opens (%s)", strings.Join(names, ", ")),
			Hint: "restore the config from a copy of the vault; if that key file belongs to another vault, remove it"}
	case len(at.damaged) > 0:
		err := withObject(at.damaged[0], "", damagedKeyHint)
		if len(at.damaged) > 1 {
			return fmt.Errorf("%w; %d more key files are damaged", err, len(at.damaged)-1)
		}
		return err
	case at.unsupported != nil:
		return at.unsupported
	case at.readErr != nil:
		return at.readErr
	}
	return ErrWrongPassphrase
}
