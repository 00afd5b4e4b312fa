package benchkit

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

// Passphrase is the benchmarks' vault passphrase.
const Passphrase = "bench-passphrase"

// cheapKDF keeps creating and opening a vault fast; the benchmarks
// measure cycles and applies, not key derivation.
var cheapKDF = vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

// NewVault creates a local vault in dir with blocks of blockSize bytes
// (zstd, the default pack size).
func NewVault(ctx context.Context, dir string, blockSize int, log *slog.Logger) (*vault.Vault, error) {
	be, err := local.Create(dir)
	if err != nil {
		return nil, err
	}
	v, err := vault.Init(ctx, be, []byte(Passphrase), vault.InitOptions{Options: vault.Options{KDF: cheapKDF, Logger: log}, BlockSize: blockSize})
	if err != nil {
		return nil, fmt.Errorf("create vault in %s: %w", dir, err)
	}
	return v, nil
}
