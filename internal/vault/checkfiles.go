package vault

import (
	"context"
	"fmt"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

const (
	// damagedKeyFileAdvice follows a damaged key file in check's report.
	damagedKeyFileAdvice = "no passphrase opens the vault through it; restore it from a copy of the vault, " +
		"or remove it with `lifeboat vault key remove` if the vault's other passphrases are enough"
	// strayAdvice follows a file with a name no Lifeboat writes.
	strayAdvice = "not an object Lifeboat writes under this name (readers ignore it); remove it unless someone keeps it there on purpose"
)

// strayFiles reports files under the vault's ID-named prefixes whose names
// are not IDs. In keys/ such a file is damage: someone put it there, and
// it may be a key file renamed or replaced. Elsewhere readers ignore it,
// so it is a warning. Packs are checked where check lists data/.
func (c *checker) strayFiles(ctx context.Context) error {
	for _, dir := range []string{"keys/", "index/", "points/", "gc/"} {
		err := c.v.be.List(ctx, dir, func(fi backend.Info) error {
			if _, err := ParseID(fi.Name[len(dir):]); err == nil {
				return nil
			}
			if dir == "keys/" {
				c.damage(Damage{Object: fi.Name, Error: "not a key file: its name is not a key ID (keys/ holds only keys/<64 hex characters>); " +
					"remove it, and if it replaced a key file, restore that from a copy of the vault"})
				return nil
			}
			c.warn("%s: %s", fi.Name, strayAdvice)
			return nil
		})
		if err != nil {
			return fmt.Errorf("list %s: %w", dir, err)
		}
	}
	return nil
}
