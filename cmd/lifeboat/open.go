package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/open"
)

// openBackend opens the storage at loc; create makes a missing directory
// or bucket.
func (a *app) openBackend(ctx context.Context, loc string, create bool) (backend.Backend, error) {
	be, err := open.Backend(ctx, loc, open.Options{Create: create, S3Endpoint: a.s3Endpoint, Getenv: a.getenv, Logger: a.log})
	if errors.Is(err, open.ErrUsage) {
		return nil, &codeError{exitUsage, err}
	}
	return be, err
}

// passphrase returns the vault passphrase from LIFEBOAT_PASSPHRASE,
// --passphrase-file or an interactive prompt (asked twice when confirm).
func (a *app) passphrase(prompt string, confirm bool) ([]byte, error) {
	if p := a.getenv("LIFEBOAT_PASSPHRASE"); p != "" {
		return []byte(p), nil
	}
	if a.passphraseFile != "" {
		return readPassphraseFile(a.passphraseFile)
	}
	return a.prompt(prompt, confirm)
}

func readPassphraseFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read passphrase file: %w", err)
	}
	b = bytes.TrimRight(b, "\r\n")
	if len(b) == 0 {
		return nil, fmt.Errorf("passphrase file %s is empty", path)
	}
	return b, nil
}

func (a *app) prompt(prompt string, confirm bool) ([]byte, error) {
	if !a.isTTY(a.stdin) {
		return nil, &codeError{exitUsage, errors.New("no passphrase: set LIFEBOAT_PASSPHRASE, use --passphrase-file, or run in a terminal to be asked")}
	}
	fmt.Fprintf(a.stderr, "%s: ", prompt)
	p, err := term.ReadPassword(int(a.stdin.Fd()))
	fmt.Fprintln(a.stderr)
	if err != nil {
		return nil, err
	}
	if len(p) == 0 {
		return nil, errors.New("empty passphrase")
	}
	if confirm {
		fmt.Fprintf(a.stderr, "%s (again): ", prompt)
		p2, err := term.ReadPassword(int(a.stdin.Fd()))
		fmt.Fprintln(a.stderr)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(p, p2) {
			return nil, errors.New("the passphrases do not match")
		}
	}
	return p, nil
}

// openVault opens the vault given by --vault.
func (a *app) openVault(ctx context.Context) (*vault.Vault, error) {
	return a.openVaultWith(ctx, vault.Options{Logger: a.log})
}

// indexCacheFlag defines --index-cache on the commands that load a
// vault's index to read or write blocks.
func (a *app) indexCacheFlag(fs *pflag.FlagSet) {
	fs.StringVar(&a.indexCache, "index-cache", a.getenv("LIFEBOAT_INDEX_CACHE"),
		`directory of the on-disk cache of the vault's index, a subdirectory per vault (default: idxcache in the state directory); "off" loads the whole index into memory instead, 52 bytes a block (env LIFEBOAT_INDEX_CACHE)`)
}

// openVaultIndexed opens the vault given by --vault with its index in the
// on-disk cache --index-cache names, by default stateDir/idxcache: memory
// then stays bounded at any vault size, and once the cache exists loading
// the index reads only the index files it lacks (docs/architecture.md,
// "Memory"). Another process using the same cache makes this one load
// the index into memory, with a warning.
func (a *app) openVaultIndexed(ctx context.Context, stateDir string) (*vault.Vault, error) {
	o := vault.Options{Logger: a.log, IndexCachePread: true}
	switch a.indexCache {
	case "off":
	case "":
		o.IndexCacheDir = filepath.Join(stateDir, "idxcache")
	default:
		o.IndexCacheDir = a.indexCache
	}
	return a.openVaultWith(ctx, o)
}

// openVaultWith opens the vault given by --vault with options o.
func (a *app) openVaultWith(ctx context.Context, o vault.Options) (*vault.Vault, error) {
	be, err := a.openBackend(ctx, a.vaultLoc, false)
	if err != nil {
		return nil, err
	}
	pw, err := a.passphrase("Vault passphrase", false)
	if err != nil {
		return nil, err
	}
	if err := o.ApplyTestLockTiming(a.getenv); err != nil {
		return nil, &codeError{exitUsage, err}
	}
	return vault.Open(ctx, be, pw, o)
}

// isTTYWriter reports whether stderr is a terminal (for progress bars).
func (a *app) isTTYWriter() bool {
	f, ok := a.stderr.(*os.File)
	return ok && a.isTTY(f)
}

// vaultFlagNames are the flags of the commands that open a vault.
func vaultFlagNames() []string { return []string{"vault", "passphrase-file", "s3-endpoint"} }

// vaultFlags defines the vault flags on fs: the commands that open a
// vault (vault, points, recover, replicate, restore, server init) have
// them, client commands of the server do not.
func (a *app) vaultFlags(fs *pflag.FlagSet) {
	fs.StringVar(&a.vaultLoc, "vault", a.getenv("LIFEBOAT_VAULT"), "vault location: a directory or s3://BUCKET/PREFIX (env LIFEBOAT_VAULT)")
	fs.StringVar(&a.passphraseFile, "passphrase-file", a.getenv("LIFEBOAT_PASSPHRASE_FILE"), "read the vault passphrase from this file (env LIFEBOAT_PASSPHRASE_FILE; or set LIFEBOAT_PASSPHRASE)")
	fs.StringVar(&a.s3Endpoint, "s3-endpoint", "", "S3 endpoint for S3-compatible services, e.g. http://127.0.0.1:7070 (env AWS_ENDPOINT_URL)")
}

// acceptVaultFlags gives every other command the vault flags hidden and
// without effect, as they were when every command inherited them: a
// command line that passed one (lifeboat status --vault X) still runs,
// with a warning that the flag does nothing there.
func (a *app) acceptVaultFlags(c *cobra.Command) {
	for _, name := range vaultFlagNames() {
		if c.Flag(name) != nil {
			continue
		}
		c.Flags().String(name, "", "")
		_ = c.Flags().MarkDeprecated(name, c.CommandPath()+" does not open a vault: the flag has no effect")
	}
	for _, s := range c.Commands() {
		a.acceptVaultFlags(s)
	}
}
