package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/control"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Scriptable setup: the --json forms of server init, agent enroll and
// restore, and server init --token-file (docs/operations.md).

// initJSON is `server init --json`.
type initJSON struct {
	DataDir        string    `json:"data_dir"`
	Vault          string    `json:"vault"`
	CAFingerprint  string    `json:"ca_fingerprint"`
	AdminToken     string    `json:"admin_token,omitempty"`      // not with --token-file
	AdminTokenFile string    `json:"admin_token_file,omitempty"` // --token-file
	AdminExpires   time.Time `json:"admin_token_expires"`
	ServerURL      string    `json:"server_url"`
	Listen         string    `json:"listen"`
	IngestListen   string    `json:"ingest_listen"` // "off": no embedded process server
}

// createTokenFile creates path for the admin token, mode 0600, before
// init runs: an existing file is refused (exit 2) and nothing is created.
func createTokenFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil, &codeError{exitUsage, fmt.Errorf("--token-file %s exists; refusing to overwrite it", path)}
	}
	if err != nil {
		return nil, fmt.Errorf("--token-file: %w", err)
	}
	return f, nil
}

// writeTokenFile writes the token alone (and a newline) to f and closes
// it.
func writeTokenFile(f *os.File, token string) error {
	_, err := f.WriteString(token + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write --token-file %s: %w", f.Name(), err)
	}
	return nil
}

// printInit prints what server init made: prose (with the token, unless
// tokenFile holds it) or, with asJSON, one JSON object.
func (a *app) printInit(o control.InitOptions, ingestListen string, res control.InitResult, tokenFile string, asJSON bool) error {
	if asJSON {
		out := initJSON{DataDir: o.DataDir, Vault: o.VaultURL, CAFingerprint: res.CAFingerprint, AdminToken: res.AdminToken,
			AdminTokenFile: tokenFile, AdminExpires: res.AdminExpires.UTC(), ServerURL: "https://" + o.Listen,
			Listen: o.Listen, IngestListen: ingestListen}
		if tokenFile != "" {
			out.AdminToken = ""
		}
		return a.printJSON(out)
	}
	data := o.DataDir
	fmt.Fprintf(a.stdout, "server state in %s, vault %s\n", data, o.VaultURL)
	fmt.Fprintf(a.stdout, "CA fingerprint (SHA-256): %s\n", res.CAFingerprint)
	if tokenFile != "" {
		fmt.Fprintf(a.stdout, "admin token written to %s (mode 0600; keep it safe)\n", tokenFile)
	} else {
		fmt.Fprintf(a.stdout, "admin token (shown once; keep it safe):\n%s\n", res.AdminToken)
	}
	fmt.Fprintf(a.stdout, "it expires %s; make admin tokens with `lifeboat token create --role admin`, or on this host with `lifeboat server admin-token --data %s`\n",
		res.AdminExpires.Local().Format(time.DateTime), data)
	fmt.Fprintf(a.stdout, "\nnext:\n  lifeboat server run --data %s\n  lifeboat login --server https://%s --token <admin token>\n", data, o.Listen)
	return nil
}

// enrollJSON is `agent enroll --json`.
type enrollJSON struct {
	Name     string `json:"name"`
	Server   string `json:"server"`
	StateDir string `json:"state_dir"`
	Run      string `json:"run"` // the command that starts the agent
}

// restoreJSON is `restore --json`.
type restoreJSON struct {
	Point          string    `json:"point"`
	Machine        string    `json:"machine"`
	PointTime      time.Time `json:"point_time"`
	Disk           string    `json:"disk"`
	Target         string    `json:"target"`
	Device         bool      `json:"device"`
	Size           int64     `json:"size"`
	BytesWritten   int64     `json:"bytes_written"`
	BlocksWritten  int64     `json:"blocks_written"`
	BytesCompared  int64     `json:"bytes_compared"`
	Seconds        float64   `json:"seconds"`
	BytesPerSecond int64     `json:"bytes_per_second"` // of disk
}

func newRestoreJSON(p *vault.Point, disk, target string, res *recover.Result, el time.Duration) restoreJSON {
	return restoreJSON{Point: p.ID.String(), Machine: p.Machine, PointTime: p.Time.UTC(), Disk: disk, Target: target,
		Device: res.Device, Size: res.Size, BytesWritten: res.BytesWritten, BlocksWritten: res.BlocksWritten,
		BytesCompared: res.BytesRead, Seconds: el.Seconds(), BytesPerSecond: int64(float64(res.Size) / max(el.Seconds(), 1e-9))}
}

func (a *app) printEnrollJSON(name, server, stateDir string) error {
	return a.printJSON(enrollJSON{Name: name, Server: server, StateDir: stateDir,
		Run: "lifeboat agent run --state-dir " + stateDir})
}
