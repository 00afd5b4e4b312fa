package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/progress"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/retention"
)

// DefaultRetention is what `vault prune` applies without --retention.
const DefaultRetention = "1h:all,24h:5m,72h:1h,keep-app=15d"

func (a *app) vaultCmd() *cobra.Command {
	c := &cobra.Command{Use: "vault", Short: "Create, check and maintain a vault"}
	c.AddCommand(a.vaultInitCmd(), a.vaultKeyCmd(), a.vaultCheckCmd(), a.vaultPruneCmd(), a.vaultRepairCmd())
	a.vaultFlags(c.PersistentFlags())
	return c
}

func (a *app) vaultInitCmd() *cobra.Command {
	var blockSize, packSize int
	var compression string
	c := &cobra.Command{
		Use:   "init DIR|s3://BUCKET/PREFIX",
		Short: "Create a new vault",
		Long: `Create a new, empty vault in a directory or an S3 bucket (created if
missing). The passphrase comes from LIFEBOAT_PASSPHRASE, --passphrase-file,
or a prompt. Keep it safe: without a passphrase the vault cannot be read.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			be, err := a.openBackend(ctx, args[0], true)
			if err != nil {
				return err
			}
			pw, err := a.passphrase("New vault passphrase", true)
			if err != nil {
				return err
			}
			v, err := vault.Init(ctx, be, pw, vault.InitOptions{Options: vault.Options{Logger: a.log},
				BlockSize: blockSize, PackSize: packSize, Compress: compression})
			if err != nil {
				return err
			}
			cfg := v.Config()
			fmt.Fprintf(a.stdout, "created vault %s at %s (block size %s, %s, %s)\n", cfg.ID[:16], v.Location(),
				progress.Bytes(int64(cfg.BlockSize)), cfg.Cipher, cfg.Compression)
			return nil
		},
	}
	c.Flags().IntVar(&blockSize, "block-size", vault.DefaultBlockSize, "block size in bytes (power of two, 4096..4194304)")
	c.Flags().StringVar(&compression, "compression", "zstd",
		"compression of stored blocks: zstd (smaller vault), s2 (less CPU per GB written and read, about a quarter more bytes) or none")
	c.Flags().IntVar(&packSize, "pack-size", vault.DefaultPackSize, "target pack file size in bytes (1 MiB..1 GiB)")
	_ = c.Flags().MarkHidden("pack-size")
	return c
}

func (a *app) vaultKeyCmd() *cobra.Command {
	c := &cobra.Command{Use: "key", Short: "Manage the passphrases that open a vault"}
	var newFile string
	add := &cobra.Command{
		Use:   "add",
		Short: "Add a passphrase (the new one from --new-passphrase-file, LIFEBOAT_NEW_PASSPHRASE or a prompt)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := a.openVault(cmd.Context())
			if err != nil {
				return err
			}
			var pw []byte
			switch {
			case a.getenv("LIFEBOAT_NEW_PASSPHRASE") != "":
				pw = []byte(a.getenv("LIFEBOAT_NEW_PASSPHRASE"))
			case newFile != "":
				if pw, err = readPassphraseFile(newFile); err != nil {
					return err
				}
			default:
				if pw, err = a.prompt("New passphrase", true); err != nil {
					return err
				}
			}
			id, err := v.AddKey(cmd.Context(), pw)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "added key %s\n", id.Short())
			return nil
		},
	}
	add.Flags().StringVar(&newFile, "new-passphrase-file", "", "read the new passphrase from this file")
	var jsonOut bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the vault's keys",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := a.openVault(cmd.Context())
			if err != nil {
				return err
			}
			keys, err := v.Keys(cmd.Context())
			if err != nil {
				return err
			}
			if jsonOut {
				return writeJSON(a.stdout, keys)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, " \tID\tCREATED\tUSER@HOST\tKDF\tLABEL")
			for _, k := range keys {
				cur := " "
				if k.Current {
					cur = "*"
				}
				kdf := fmt.Sprintf("%s t=%d m=%dKiB p=%d", k.KDF, k.Params.Time, k.Params.MemoryKiB, k.Params.Threads)
				if k.Err != "" {
					kdf = "unreadable: " + k.Err
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s@%s\t%s\t%s\n", cur, k.ID.Short(), k.Created.Local().Format("2006-01-02 15:04"), k.Username, k.Hostname, kdf, k.Label)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	remove := &cobra.Command{
		Use:   "remove KEY-ID",
		Short: "Remove a passphrase (not the one used to open the vault, not the last one)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := a.openVault(cmd.Context())
			if err != nil {
				return err
			}
			id, err := v.RemoveKey(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "removed key %s\n", id.Short())
			return nil
		},
	}
	c.AddCommand(add, list, remove)
	return c
}

func (a *app) stageProgress() func(stage string, done, total int64) {
	tty := a.isTTY(a.stdin) && a.isTTYWriter()
	if !tty {
		return nil
	}
	last := ""
	return func(stage string, done, total int64) {
		if stage != last {
			if last != "" {
				fmt.Fprintln(a.stderr)
			}
			last = stage
		}
		fmt.Fprintf(a.stderr, "\r\033[K%s %d/%d", stage, done, total)
	}
}

func (a *app) vaultCheckCmd() *cobra.Command {
	var readData, jsonOut bool
	c := &cobra.Command{
		Use:   "check",
		Short: "Verify the vault's structure (and with --read-data every stored byte)",
		Long: `Check verifies that every index file, pack header, recovery point and tree
node is intact and that every referenced block is stored. With --read-data
it also reads every pack, checks it against its name and re-hashes every
block. Damage is listed per object with the recovery points it affects:
also a damaged copy of the config, a damaged key file, and any file in
keys/ that is not a key file. Files with names Lifeboat does not write
elsewhere, and a missing second config copy, are warnings.
Exit status 3 means damage was found.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			v, err := a.openVault(ctx)
			if err != nil {
				return err
			}
			start := time.Now() // wallclock: the duration is only shown
			rep, err := v.Check(ctx, vault.CheckOptions{ReadData: readData, Progress: a.stageProgress()})
			if err != nil {
				return err
			}
			if jsonOut {
				if err := writeJSON(a.stdout, rep); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(a.stdout, "checked %d points, %d index files, %d packs, %d blobs", rep.Points, rep.IndexFiles, rep.Packs, rep.Blobs)
				if readData {
					fmt.Fprintf(a.stdout, ", read %s", progress.Bytes(rep.ReadBytes))
				}
				fmt.Fprintf(a.stdout, " in %s\n", time.Since(start).Round(time.Millisecond)) // wallclock: only shown
				if rep.Duplicates > 0 {
					fmt.Fprintf(a.stdout, "%d blobs (%s) are stored twice (concurrent or interrupted writers); prune reclaims them\n", rep.Duplicates, progress.Bytes(rep.DuplicateBytes))
				}
				for _, w := range rep.Warnings {
					fmt.Fprintf(a.stdout, "warning: %s\n", w)
				}
				for _, d := range rep.Damage {
					fmt.Fprintf(a.stdout, "DAMAGED %s", d.Object)
					if d.Blob != "" {
						fmt.Fprintf(a.stdout, " (blob %s)", d.Blob[:16])
					}
					fmt.Fprintf(a.stdout, ": %s\n", d.Error)
					if len(d.Points) > 0 {
						fmt.Fprintf(a.stdout, "  affects points: %s\n", shortIDs(d.Points))
					}
				}
				if len(rep.Affected) > 0 {
					fmt.Fprintf(a.stdout, "%d recovery point(s) cannot be restored intact: %s\n", len(rep.Affected), shortIDs(rep.Affected))
				}
			}
			if !rep.OK() {
				return &codeError{exitDamaged, fmt.Errorf("vault check found %d damaged object(s)", len(rep.Damage))}
			}
			if !jsonOut {
				fmt.Fprintln(a.stdout, "no damage found")
			}
			return nil
		},
	}
	c.Flags().BoolVar(&readData, "read-data", false, "read and verify every stored byte")
	c.Flags().BoolVar(&jsonOut, "json", false, "print the report as JSON")
	return c
}

func shortIDs(ids []string) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = id[:min(8, len(id))]
	}
	return strings.Join(s, " ")
}

func (a *app) vaultPruneCmd() *cobra.Command {
	var (
		expr, keepApp  string
		dryRun, asJSON bool
		margin         time.Duration
		repack         float64
		maxMemMiB      int64
	)
	c := &cobra.Command{
		Use:   "prune",
		Short: "Forget recovery points by retention and collect unreferenced data",
		Long: `Prune applies a retention grid to each machine's recovery points, deletes
the points it does not keep, and collects data no remaining point needs, in
two phases: unreferenced packs are first marked and removed from the index,
and deleted only after --gc-margin once no writer that could still use them
is running. It is safe while replication runs.

Retention grammar: SPAN:INTERVAL terms, for example
  1h:all,24h:5m,72h:1h,keep-app=15d
keeps every point of the last hour, one per 5 minutes for a day, one per
hour for three days, and app-consistent points for 15 days. The newest point
of each machine is always kept (keep-last=1).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if keepApp != "" {
				expr += ",keep-app=" + keepApp
			}
			pol, err := retention.Parse(expr)
			if err != nil {
				return &codeError{exitUsage, fmt.Errorf("--retention: %w", err)}
			}
			v, err := a.openVault(ctx)
			if err != nil {
				return err
			}
			rep, err := v.Prune(ctx, vault.PruneOptions{Policy: pol, DryRun: dryRun, Margin: margin,
				RepackThreshold: repack, MaxMemory: maxMemMiB << 20, Progress: a.stageProgress()})
			if err != nil {
				if errors.Is(err, vault.ErrLocked) {
					return &codeError{exitError, err}
				}
				return err
			}
			if asJSON {
				return writeJSON(a.stdout, rep)
			}
			verb := ""
			if dryRun {
				verb = "would "
			}
			fmt.Fprintf(a.stdout, "retention %s: keep %d points, %sforget %d\n", pol, rep.Kept, verb, len(rep.Forgotten))
			for m, ds := range rep.Decisions {
				for _, d := range ds {
					if !d.Keep {
						fmt.Fprintf(a.stdout, "  %sforget %s %s %s\n", verb, d.Point.ID[:8], m, d.Point.Time.Local().Format("2006-01-02 15:04:05"))
					}
				}
			}
			fmt.Fprintf(a.stdout, "garbage: %smark %d packs (%s), %srepack %d packs (%s live)\n",
				verb, rep.PacksMarked, progress.Bytes(rep.BytesMarked), verb, rep.PacksRepacked, progress.Bytes(rep.BytesRepacked))
			if !dryRun {
				fmt.Fprintf(a.stdout, "deleted %d packs (%s), resurrected %d, index files rewritten %d, compacted %d\n",
					rep.PacksDeleted, progress.Bytes(rep.BytesDeleted), rep.PacksResurrected, rep.IndexRewritten, rep.IndexCompacted)
				if rep.MarksPending > 0 {
					fmt.Fprintf(a.stdout, "%d mark(s) wait for a later prune: %s\n", rep.MarksPending, rep.PendingReason)
				}
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&expr, "retention", DefaultRetention, "retention grid")
	f.StringVar(&keepApp, "keep-app", "", "keep app-consistent points this long (adds keep-app=D to the grid)")
	f.BoolVar(&dryRun, "dry-run", false, "show what would be forgotten and collected; change nothing")
	f.DurationVar(&margin, "gc-margin", time.Hour, "how long marked data waits before deletion")
	f.Float64Var(&repack, "repack-threshold", 0.3, "repack packs with at least this fraction of unused bytes (1 disables)")
	f.Int64Var(&maxMemMiB, "max-memory", 256, "MiB for the liveness set; larger vaults take several passes")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return c
}

func (a *app) vaultRepairCmd() *cobra.Command {
	c := &cobra.Command{Use: "repair", Short: "Repair vault metadata"}
	c.AddCommand(&cobra.Command{
		Use:   "index",
		Short: "Rebuild the index from the pack headers, and the point index from the point records",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := a.openVault(cmd.Context())
			if err != nil {
				return err
			}
			rep, err := v.RepairIndex(cmd.Context(), nil)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "indexed %d blobs of %d packs into %d index files (replacing %d)\n", rep.Blobs, rep.Packs, rep.NewFiles, rep.OldFiles)
			for _, u := range rep.Unreadable {
				fmt.Fprintf(a.stdout, "pack %s has an unreadable header: kept what the old index said about it\n", u[:16])
			}
			prep, err := v.RebuildPointIndex(cmd.Context())
			if err != nil {
				return fmt.Errorf("point index: %w", err)
			}
			fmt.Fprintf(a.stdout, "rebuilt the point index from %d point records\n", prep.Points)
			return nil
		},
	})
	c.AddCommand(&cobra.Command{
		Use:   "config",
		Short: "Rewrite a missing or damaged copy of the vault's config from the intact one",
		Long: `The config is stored twice (config and config.copy). Repair config rewrites
a copy that is missing (vaults made before Lifeboat kept two) or damaged with
the bytes of the intact one. It refuses when the two copies are both intact
but differ: that is tampering or a bug, and it does not choose.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := a.openVault(cmd.Context())
			if err != nil {
				return err
			}
			rep, err := v.RepairConfig(cmd.Context())
			if err != nil {
				return err
			}
			if len(rep.Rewritten) == 0 {
				fmt.Fprintln(a.stdout, "both copies of the config are intact: nothing to do")
				return nil
			}
			fmt.Fprintf(a.stdout, "rewrote %s from the intact copy\n", strings.Join(rep.Rewritten, " and "))
			return nil
		},
	})
	return c
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
