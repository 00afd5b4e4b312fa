package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// The config is stored twice (§10): the same sealed bytes under both
// names. Readers use either intact copy and refuse two intact copies that
// differ.
const (
	configName     = "config"
	configCopyName = "config.copy"
)

var configNames = [2]string{configName, configCopyName}

const repairConfigHint = "run `lifeboat vault repair config` to rewrite it from the intact copy"

// storedConfig is what the backend holds under the config's names.
type storedConfig [2]struct {
	sealed  []byte
	missing bool
}

// readConfigCopies reads both copies. Not finding one is recorded, not
// an error; any other read failure is.
func readConfigCopies(ctx context.Context, be backend.Backend) (*storedConfig, error) {
	var sc storedConfig
	for i, name := range configNames {
		b, err := backend.ReadAll(ctx, be, name)
		switch {
		case backend.IsNotExist(err):
			sc[i].missing = true
		case err != nil:
			return nil, fmt.Errorf("read %s: %w", name, err)
		default:
			sc[i].sealed = b
		}
	}
	return &sc, nil
}

func (sc *storedConfig) none() bool { return sc[0].missing && sc[1].missing }

// openedConfig is the outcome of opening both copies with one key.
type openedConfig struct {
	cfg    *Config
	sealed []byte   // the bytes of an intact copy
	good   [2]bool  // which copies are intact
	errs   [2]error // why a copy is not: nil when missing or intact
}

// errNoConfigCopy means no copy opens with the key: the key is another
// vault's, or both copies are damaged.
var errNoConfigCopy = errors.New("no copy of the config opens with this key")

// open opens both copies with k. It returns errNoConfigCopy when neither
// does, ErrUnsupported for a newer format, and a *DamagedError for two
// intact copies that differ.
func (sc *storedConfig) open(k *keys) (*openedConfig, error) {
	oc := &openedConfig{}
	var cfgs [2]*Config
	for i, name := range configNames {
		if sc[i].missing {
			continue
		}
		plain, err := k.open(kindConfig, sc[i].sealed)
		if err != nil {
			oc.errs[i] = &DamagedError{What: "config", Object: name, Err: err}
			continue
		}
		c, err := decodeConfig(plain)
		if errors.Is(err, ErrUnsupported) {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if err != nil {
			oc.errs[i] = withObject(err, name, "")
			continue
		}
		cfgs[i], oc.good[i] = c, true
		if oc.cfg == nil {
			oc.cfg, oc.sealed = c, sc[i].sealed
		}
	}
	switch {
	case oc.cfg == nil:
		return nil, errNoConfigCopy
	case oc.good[0] && oc.good[1] && len(configDiff(cfgs[0], cfgs[1])) > 0:
		return nil, &DamagedError{What: "config", Object: configName + " and " + configCopyName,
			Err:  fmt.Errorf("both copies are authentic but differ in %q", configDiff(cfgs[0], cfgs[1])),
			Hint: "tampering or a bug: keep the vault as it is and report it; nothing was changed"}
	}
	return oc, nil
}

// configDiff names the fields in which two configs differ.
func configDiff(a, b *Config) []string {
	var out []string
	add := func(field string, differ bool) {
		if differ {
			out = append(out, field)
		}
	}
	add("version", a.Version != b.Version)
	add("id", a.ID != b.ID)
	add("created", !a.Created.Equal(b.Created))
	add("block_size", a.BlockSize != b.BlockSize)
	add("tree_fanout", a.TreeFanout != b.TreeFanout)
	add("pack_size", a.PackSize != b.PackSize)
	add("block_hash", a.BlockHash != b.BlockHash)
	add("cipher", a.Cipher != b.Cipher)
	add("compression", a.Compression != b.Compression)
	return out
}

// problems describes the copies that are not intact, for a warning or a
// check report: one entry per copy, damage (err) or missing.
func (oc *openedConfig) problems(sc *storedConfig) (damage []Damage, missing []string) {
	for i, name := range configNames {
		switch {
		case oc.good[i]:
		case sc[i].missing:
			missing = append(missing, name)
		default:
			damage = append(damage, Damage{Object: name, Error: oc.errs[i].Error() + "; " + repairConfigHint})
		}
	}
	return damage, missing
}

// warn logs what is wrong with a copy when the vault opens from the other.
func (oc *openedConfig) warn(log *slog.Logger, sc *storedConfig) {
	damage, missing := oc.problems(sc)
	for _, d := range damage {
		log.Warn("vault config copy damaged; using the intact copy", "object", d.Object, "err", d.Error)
	}
	for _, name := range missing {
		log.Warn("vault config copy missing; using the other copy", "object", name, "fix", "run `lifeboat vault repair config`")
	}
}

// writeConfigCopies stores a new vault's sealed config: the primary first,
// then the copy, each durable before the next (a crash between them leaves
// a vault with one copy, which opens with a warning).
func writeConfigCopies(ctx context.Context, be backend.Backend, sealed []byte) error {
	for _, name := range configNames {
		if err := be.Put(ctx, name, bytes.NewReader(sealed), int64(len(sealed))); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

// configExists reports whether either copy of a config is stored.
func configExists(ctx context.Context, be backend.Backend) (bool, error) {
	for _, name := range configNames {
		_, err := be.Stat(ctx, name)
		if err == nil {
			return true, nil
		}
		if !backend.IsNotExist(err) {
			return false, fmt.Errorf("check %s: %w", be.Location(), err)
		}
	}
	return false, nil
}

// ConfigRepair says what RepairConfig did.
type ConfigRepair struct {
	Rewritten []string `json:"rewritten"` // copies written from the intact one
}

// RepairConfig rewrites a missing or damaged copy of the config with the
// bytes of the intact one. It refuses when the copies are both intact but
// differ, or when no copy opens with the vault's key.
func (v *Vault) RepairConfig(ctx context.Context) (*ConfigRepair, error) {
	sc, err := readConfigCopies(ctx, v.be)
	if err != nil {
		return nil, err
	}
	oc, err := sc.open(v.keys)
	if errors.Is(err, errNoConfigCopy) {
		return nil, &DamagedError{What: "config", Object: configName + " and " + configCopyName,
			Err: errors.New("no copy opens with the vault's key any more"), Hint: "restore the config from a copy of the vault"}
	}
	if err != nil {
		return nil, err
	}
	if len(configDiff(oc.cfg, &v.cfg)) > 0 {
		return nil, &DamagedError{What: "config", Object: configName,
			Err: errors.New("the stored config differs from the one this command opened the vault with"), Hint: "run the repair again"}
	}
	rep := &ConfigRepair{}
	for i, name := range configNames {
		if oc.good[i] {
			continue
		}
		if err := v.be.Put(ctx, name, bytes.NewReader(oc.sealed), int64(len(oc.sealed))); err != nil {
			return rep, fmt.Errorf("write %s: %w", name, err)
		}
		rep.Rewritten = append(rep.Rewritten, name)
		v.log.Info("rewrote vault config copy", "object", name)
	}
	return rep, nil
}

// checkConfig reports damaged copies as damage and a missing copy as a
// warning (vaults made before the copy existed have only "config").
func (c *checker) checkConfig(ctx context.Context) error {
	sc, err := readConfigCopies(ctx, c.v.be)
	if err != nil {
		return err
	}
	oc, err := sc.open(c.v.keys)
	switch {
	case errors.Is(err, errNoConfigCopy):
		c.damage(Damage{Object: configName, Error: "no copy of the config opens with the vault's key any more"})
		return nil
	case err != nil:
		c.damage(Damage{Object: configName, Error: err.Error()})
		return nil
	}
	damage, missing := oc.problems(sc)
	for _, d := range damage {
		c.damage(d)
	}
	for _, name := range missing {
		if name == configName {
			c.damage(Damage{Object: name, Error: "missing; the vault opened from " + configCopyName + "; " + repairConfigHint})
			continue
		}
		c.warn("%s is missing: the config is stored once (vaults made before Lifeboat kept two copies, or the copy was lost); run `lifeboat vault repair config` to add it", name)
	}
	return nil
}
