package vault

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// FormatVersion is the vault format this code reads and writes.
const FormatVersion = 1

// Defaults for new vaults.
const (
	DefaultBlockSize  = 64 << 10
	DefaultTreeFanout = 1024
	DefaultPackSize   = 32 << 20
	minBlockSize      = 4 << 10
	maxBlockSize      = 4 << 20
)

// Config is the vault's format parameters (the "config" object).
type Config struct {
	Version     int       `json:"version"`
	ID          string    `json:"id"`
	Created     time.Time `json:"created"`
	BlockSize   int       `json:"block_size"`
	TreeFanout  int       `json:"tree_fanout"`
	PackSize    int       `json:"pack_size"`
	BlockHash   string    `json:"block_hash"`
	Cipher      string    `json:"cipher"`
	Compression string    `json:"compression"`
}

// validate checks the fields. A version newer than this Lifeboat reads,
// or a compression it does not know, is ErrUnsupported; anything else
// wrong names the field.
func (c *Config) validate() error {
	switch {
	case c.Version > FormatVersion:
		return fmt.Errorf("vault format version %d is %w (this Lifeboat reads version %d); upgrade Lifeboat", c.Version, ErrUnsupported, FormatVersion)
	case c.Version != FormatVersion:
		return fmt.Errorf("version %d is not a vault format version", c.Version)
	}
	// An authentic config naming a compression this Lifeboat does not
	// know was written by a newer one: refuse to open the vault rather
	// than fail on its first blob of that kind.
	if _, ok := compressionID(c.Compression); !ok {
		return fmt.Errorf("compression %q is %w (this Lifeboat knows %s); upgrade Lifeboat", c.Compression, ErrUnsupported, compressionNames)
	}
	switch {
	case c.BlockSize < minBlockSize || c.BlockSize > maxBlockSize || c.BlockSize&(c.BlockSize-1) != 0:
		return fmt.Errorf("block_size %d is not a power of two in %d..%d", c.BlockSize, minBlockSize, maxBlockSize)
	case c.TreeFanout < 2 || c.TreeFanout > 65535:
		return fmt.Errorf("tree_fanout %d outside 2..65535", c.TreeFanout)
	case c.PackSize < 1<<20 || c.PackSize > 1<<30:
		return fmt.Errorf("pack_size %d outside 1 MiB..1 GiB", c.PackSize)
	case c.BlockHash != "blake3-keyed":
		return fmt.Errorf("block_hash %q is not supported", c.BlockHash)
	case c.Cipher != "xchacha20-poly1305":
		return fmt.Errorf("cipher %q is not supported", c.Cipher)
	}
	if _, err := ParseID(c.ID); err != nil {
		return fmt.Errorf("id %q is not 64 hex characters", c.ID)
	}
	return nil
}

// decodeConfig parses an opened config. Bytes that no Lifeboat of this
// format writes are a *DamagedError; a newer format version or an
// unknown compression is ErrUnsupported.
func decodeConfig(b []byte) (*Config, error) {
	// The version first: a newer format may change any other field.
	var ver struct{ Version int }
	if err := json.Unmarshal(b, &ver); err != nil {
		return nil, damaged("config", "not a JSON config: %w", err)
	}
	if ver.Version > FormatVersion {
		return nil, fmt.Errorf("vault format version %d is %w (this Lifeboat reads version %d); upgrade Lifeboat", ver.Version, ErrUnsupported, FormatVersion)
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, damaged("config", "not a JSON config: %w", err)
	}
	if err := c.validate(); err != nil {
		if errors.Is(err, ErrUnsupported) {
			return nil, err
		}
		return nil, damaged("config", "%w", err)
	}
	return &c, nil
}
