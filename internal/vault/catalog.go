package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// The catalog (§13) keeps, inside the vault, what recovery needs besides
// the points: the recovery site's configuration, the machines with their
// recovery settings, the recovery plans. The control plane writes it
// whenever it changes, so that with only the vault and its passphrase an
// operator can still list the machines and boot them (`lifeboat recover
// --vault`). Each entry is one sealed object catalog/NAME, replaced as a
// whole; its name is bound into the associated data, so an entry cannot
// be passed off as another.

var catalogName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,127}$`)

func catalogKind(name string) string { return "catalog/" + name }

// PutCatalog stores v as JSON under name, replacing what was there.
func (v *Vault) PutCatalog(ctx context.Context, name string, val any) error {
	if !catalogName.MatchString(name) {
		return fmt.Errorf("catalog entry name %q: use lower-case letters, digits, '.', '_' and '-'", name)
	}
	b, err := json.Marshal(val)
	if err != nil {
		return err
	}
	sealed := v.keys.seal(catalogKind(name), b, true)
	if err := v.be.Put(ctx, "catalog/"+name, bytes.NewReader(sealed), int64(len(sealed))); err != nil {
		return fmt.Errorf("write catalog entry %s: %w", name, err)
	}
	return nil
}

// GetCatalog decodes the entry name into val; it reports false when the
// vault has no such entry.
func (v *Vault) GetCatalog(ctx context.Context, name string, val any) (bool, error) {
	if !catalogName.MatchString(name) {
		return false, fmt.Errorf("catalog entry name %q is not valid", name)
	}
	b, err := v.getSealed(ctx, "catalog/"+name, catalogKind(name))
	if backend.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read catalog entry %s: %w", name, err)
	}
	if err := json.Unmarshal(b, val); err != nil {
		return true, fmt.Errorf("catalog entry %s: %w", name, err)
	}
	return true, nil
}

// CatalogNames lists the catalog's entries.
func (v *Vault) CatalogNames(ctx context.Context) ([]string, error) {
	var out []string
	err := v.be.List(ctx, "catalog/", func(fi backend.Info) error {
		n := fi.Name[len("catalog/"):]
		if catalogName.MatchString(n) {
			out = append(out, n)
		}
		return nil
	})
	return out, err
}
