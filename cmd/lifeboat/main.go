// Command lifeboat is Lifeboat's single binary: every role and every client
// command is a subcommand. See README.md and docs/.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Exit codes (documented in docs/operations.md). Errors that are not a
// codeError get exitDamaged when they wrap vault.ErrDamaged (a damaged
// config or key file, damage found by check) and exitUsage when a target
// or disk was refused before anything was read or written.
const (
	exitOK      = 0
	exitError   = 1
	exitUsage   = 2
	exitDamaged = 3
)

// exitError carries a specific exit code.
type codeError struct {
	code int
	err  error
}

func (e *codeError) Error() string { return e.err.Error() }
func (e *codeError) Unwrap() error { return e.err }

// app holds what every command shares: global flags and I/O.
type app struct {
	stdout, stderr io.Writer
	stdin          *os.File
	getenv         func(string) string

	vaultLoc       string
	passphraseFile string
	indexCache     string // --index-cache
	s3Endpoint     string
	logLevel       string
	logFormat      string
	jsonLogs       bool // --log-format json
	cpuProfile     string
	log            *slog.Logger
	stopProfile    func()
	clients        []*client.Client // API clients the command made (warnTokenExpiry)
	lines          *jsonLines       // JSON lines output (demo, recover --json), else nil
	clk            clock.Clock      // nil: the system clock (tests set a clock.Fake)
}

func main() {
	a := &app{stdout: os.Stdout, stderr: os.Stderr, stdin: os.Stdin, getenv: os.Getenv}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := a.root().ExecuteContext(ctx)
	stop()
	os.Exit(a.exitCode(err))
}

func (a *app) exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var ce *codeError
	if errors.As(err, &ce) {
		if ce.err != nil {
			a.emit(slog.LevelError, fmt.Sprintf("lifeboat: %v\n", ce.err), ce.err.Error(), "exit", ce.code)
		}
		return ce.code
	}
	a.emit(slog.LevelError, fmt.Sprintf("lifeboat: error: %v\n", err), err.Error())
	switch {
	case errors.Is(err, vault.ErrDamaged):
		return exitDamaged
	case errors.Is(err, recover.ErrRefused), errors.Is(err, scan.ErrNotDisk):
		return exitUsage
	}
	return exitError
}

func (a *app) isTTY(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

func (a *app) root() *cobra.Command {
	root := &cobra.Command{
		Use:   "lifeboat",
		Short: "Lifeboat replicates disks to a recovery site and brings machines back from any recovery point",
		Long: `Lifeboat replicates the disks of machines into an encrypted, deduplicated
vault (a directory or S3-compatible storage), keeps a history of recovery
points, and restores any point byte for byte.

Start with "lifeboat demo" to see the whole cycle on a sample disk.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.setupLog(cmd); err != nil {
				return err
			}
			if a.cpuProfile != "" {
				f, err := os.Create(a.cpuProfile)
				if err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				a.stopProfile = func() { pprof.StopCPUProfile(); f.Close() }
			}
			return nil
		},
		PersistentPostRun: func(*cobra.Command, []string) {
			if a.stopProfile != nil {
				a.stopProfile()
			}
			a.warnTokenExpiry()
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &codeError{exitUsage, err} })
	pf := root.PersistentFlags()
	pf.StringVar(&a.logLevel, "log-level", "", "log level: debug, info, warn, error (env "+envLogLevel+"; default info for daemons, warn otherwise)")
	pf.StringVar(&a.logFormat, "log-format", "", "log format: text or json (env "+envLogFormat+"; default text)")
	pf.StringVar(&a.cpuProfile, "cpuprofile", "", "write a Go CPU profile to this file (diagnostics)")
	_ = pf.MarkHidden("cpuprofile")
	root.AddCommand(a.vaultCmd(), a.replicateCmd(), a.pointsCmd(), a.restoreCmd(), a.demoCmd(), a.versionCmd(),
		a.serverCmd(), a.agentCmd(), a.processCmd(), a.loginCmd(), a.tokenCmd(), a.policyCmd(), a.machinesCmd(),
		a.statusCmd(), a.eventsCmd(), a.groupsCmd(), a.testFailoverCmd(), a.failoverCmd(), a.reprotectCmd(), a.failbackCmd(), a.reEnableCmd(), a.jobsCmd(), a.recoveryCmd(), a.recoverCmd(),
		a.planCmd(), a.drillsCmd(), a.targetCmd(), a.alertsCmd(), a.checkConfigCmd())
	root.AddCommand(a.protectCmds()...)
	a.acceptVaultFlags(root)
	a.versionFlag(root)
	setExamples(root)
	return root
}
