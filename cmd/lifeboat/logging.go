package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/progress"
)

// Logging: --log-level and --log-format (env LIFEBOAT_LOG_LEVEL and
// LIFEBOAT_LOG_FORMAT; a flag wins over its variable). Daemons log at info
// unless told otherwise, one-shot commands at warn (docs/operations.md).

const (
	envLogLevel  = "LIFEBOAT_LOG_LEVEL"
	envLogFormat = "LIFEBOAT_LOG_FORMAT"
)

// daemonCmds are the long-running commands by path below the root; the
// value, if not empty, names a boolean flag that makes the command one-shot
// (replicate --once).
var daemonCmds = map[string]string{
	"server run":   "",
	"agent run":    "",
	"process run":  "",
	"points serve": "",
	"target run":   "",
	"replicate":    "once",
}

// isDaemon reports whether cmd runs until it is stopped.
func isDaemon(cmd *cobra.Command) bool {
	path := strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
	oneShot, ok := daemonCmds[path]
	if !ok {
		return false
	}
	if oneShot != "" {
		if once, err := cmd.Flags().GetBool(oneShot); err == nil && once {
			return false
		}
	}
	return true
}

// logSettings resolves the level and the format of cmd's logs: the flag if
// given, else the environment variable, else the default (level info for
// daemons and warn otherwise; format text). A bad value is a usage error.
func (a *app) logSettings(cmd *cobra.Command) (slog.Level, bool, error) {
	level, format := a.logLevel, a.logFormat
	if !cmd.Flags().Changed("log-level") {
		level = a.getenv(envLogLevel)
	}
	if !cmd.Flags().Changed("log-format") {
		format = a.getenv(envLogFormat)
	}
	if level == "" {
		level = "warn"
		if isDaemon(cmd) {
			level = "info"
		}
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return 0, false, &codeError{exitUsage, fmt.Errorf("--log-level (or %s) %q: use debug, info, warn or error", envLogLevel, level)}
	}
	switch format {
	case "", "text":
		return lvl, false, nil
	case "json":
		return lvl, true, nil
	}
	return 0, false, &codeError{exitUsage, fmt.Errorf("--log-format (or %s) %q: use text or json", envLogFormat, format)}
}

// setupLog builds a.log for cmd.
func (a *app) setupLog(cmd *cobra.Command) error {
	lvl, jsonLogs, err := a.logSettings(cmd)
	if err != nil {
		return err
	}
	a.jsonLogs = jsonLogs
	opts := &slog.HandlerOptions{Level: lvl}
	if jsonLogs {
		a.log = slog.New(slog.NewJSONHandler(a.stderr, opts))
	} else {
		a.log = slog.New(slog.NewTextHandler(a.stderr, opts))
	}
	return nil
}

// announce tells the operator what a daemon does (its addresses, what it
// serves): the prose line as it is with text logs, or a log record at
// level info, whatever the level, with JSON logs, so that every line of
// the daemon's stderr is JSON.
func (a *app) announce(prose, msg string, attrs ...any) {
	a.emit(slog.LevelInfo, prose, msg, attrs...)
}

// emit writes prose to stderr, or with JSON logs a record of msg and attrs
// at level lvl whatever the configured level.
func (a *app) emit(lvl slog.Level, prose, msg string, attrs ...any) {
	if !a.jsonLogs || a.log == nil {
		fmt.Fprint(a.stderr, prose)
		return
	}
	r := slog.NewRecord(time.Now(), lvl, msg, 0) // wallclock: a log line's time, as slog gives it
	r.Add(attrs...)
	_ = a.log.Handler().Handle(context.Background(), r)
}

// newBar is a progress bar on stderr, or with JSON logs one whose lines
// are log records at level info (msg "progress").
func (a *app) newBar(label string, total int64) *progress.Bar {
	if a.jsonLogs && a.log != nil {
		return progress.New(logLines{a.log}, label, total, false)
	}
	return progress.New(a.stderr, label, total, a.isTTYWriter())
}

// logLines logs each line written to it.
type logLines struct{ log *slog.Logger }

func (w logLines) Write(p []byte) (int, error) {
	for _, line := range strings.Split(string(p), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			w.log.Info("progress", "progress", line)
		}
	}
	return len(p), nil
}
