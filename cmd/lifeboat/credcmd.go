package main

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/control"
)

// Credential commands of agents and process servers: re-enroll, approve a
// key rotation, and (process servers) revoke and remove. `agent revoke`
// is in rolecmd.go.

// reenrollCmd is `agent reenroll` (resource "machines") and `process
// reenroll` ("process-servers"): revoke the certificates now and print a
// token that enrolls the same name again.
func (a *app) reenrollCmd(f *clientFlags, role, resource string) *cobra.Command {
	var ttl time.Duration
	noun := kindName(role)
	cmd := &cobra.Command{
		Use:   "reenroll NAME [--ttl 1h]",
		Short: fmt.Sprintf("Enroll an existing %s again: revoke its certificates now and print a one-time token for that name", noun),
		Long: fmt.Sprintf(`Revoke every certificate of the %s NAME at once (it is refused from now
on) and print a one-time token that enrolls NAME again, for a reinstalled
host, a lost or stolen key, or a new key. Nothing else can enroll an
existing name. The token is printed on stdout; the revoked certificates
on stderr. The re-enroll is audited.

Then, on the host: lifeboat %s enroll --token TOKEN --name NAME ...`, noun, cliGroup(role)),
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(f)
			if err != nil {
				return err
			}
			var resp api.TokenResponse
			if err := c.Do(cmd.Context(), http.MethodPost, client.Path(resource, args[0], "reenroll"), api.ReenrollRequest{TTL: api.Duration(ttl)}, &resp); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(resp)
			}
			fmt.Fprintln(a.stdout, resp.Token)
			fmt.Fprintf(a.stderr, "%s %s: revoked %d certificate(s) %s; re-enroll token %s %s; enroll with: lifeboat %s enroll --token TOKEN --name %s ...\n",
				noun, args[0], len(resp.Revoked), strings.Join(resp.Revoked, ", "), resp.ID, expiryText(resp.Expires, a.clock().Now()), cliGroup(role), args[0])
			return nil
		},
	}
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "lifetime of the token (default 1h)")
	return cmd
}

func cliGroup(role string) string {
	if role == api.RoleProcess {
		return "process"
	}
	return "agent"
}

// rotateKeyCmd approves one key rotation.
func (a *app) rotateKeyCmd(f *clientFlags, role, resource string) *cobra.Command {
	noun := kindName(role)
	return &cobra.Command{
		Use:   "rotate-key NAME",
		Short: fmt.Sprintf("Let the %s's next certificate renewal use a new key, once (it renews at once)", noun),
		Long: fmt.Sprintf(`Renewals keep the key a certificate was issued for, so a copied key can
renew only itself and dies with a revocation. rotate-key approves one
renewal for a new key: the %s learns it with its next configuration,
makes a new key and renews at once; every certificate of the old key is
revoked then. The approval is audited and used once.`, noun),
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(f)
			if err != nil {
				return err
			}
			var resp api.RotateKeyResponse
			if err := c.Do(cmd.Context(), http.MethodPost, client.Path(resource, args[0], "rotate-key"), nil, &resp); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(resp)
			}
			fmt.Fprintf(a.stdout, "%s %s: one key rotation approved; it renews with a new key at its next contact\n", noun, args[0])
			return nil
		},
	}
}

// processRevokeCmds are `process revoke` and `process remove`.
func (a *app) processRevokeCmds(f *clientFlags) []*cobra.Command {
	out := func(cmd *cobra.Command, method string, args []string, elems ...string) error {
		c, err := a.client(f)
		if err != nil {
			return err
		}
		var res api.ProcessRevokeResult
		if err := c.Do(cmd.Context(), method, client.Path(elems...), nil, &res); err != nil {
			return err
		}
		if f.json {
			return a.printJSON(res)
		}
		what := "revoked"
		if method == http.MethodDelete {
			what = "removed; revoked"
		}
		fmt.Fprintf(a.stdout, "process server %s: %s %d certificate(s) %s\n", args[0], what, len(res.Revoked), strings.Join(res.Revoked, ", "))
		if len(res.Moved) > 0 {
			fmt.Fprintf(a.stdout, "moved its machines to online process servers: %s\n", strings.Join(res.Moved, ", "))
		}
		if res.Warning != "" {
			fmt.Fprintf(a.stderr, "lifeboat: warning: %s\n", res.Warning)
		}
		return nil
	}
	revoke := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a process server's certificates: refused at once; its machines move to an online process server",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return out(cmd, http.MethodPost, args, "process-servers", args[0], "revoke")
		},
	}
	remove := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a process server: its machines move to an online process server first (refused if none can take them), then its certificates are revoked",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return out(cmd, http.MethodDelete, args, "process-servers", args[0])
		},
	}
	return []*cobra.Command{revoke, remove}
}

// adminTokenCmd is `server admin-token`: an admin token made from the
// server's data directory, for when no admin token is left.
func (a *app) adminTokenCmd() *cobra.Command {
	var data, name string
	var ttl time.Duration
	var noExpiry bool
	cmd := &cobra.Command{
		Use:   "admin-token --data DIR [--ttl D | --no-expiry] [--name LABEL]",
		Short: "Make an admin API token from the server's data directory (when every admin token expired or was revoked)",
		Long: `Make an admin API token by writing it straight into the server's state
database. It needs the server's data directory (its CA and database), so
only the server's owner can run it; it works while the server runs and
is recorded as an audit event. The token is printed once on stdout.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if data == "" {
				return &codeError{exitUsage, errors.New("--data DIR is required")}
			}
			if cmd.Flags().Changed("ttl") && ttl == 0 {
				noExpiry = true
			}
			tok, info, err := control.NewAdminToken(cmd.Context(), data, control.AdminTokenOptions{Name: name, TTL: ttl, NoExpiry: noExpiry})
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, tok)
			fmt.Fprintf(a.stderr, "admin token %s (%s), %s\n", info.ID, info.Name, expiryText(info.Expires, a.clock().Now()))
			return nil
		},
	}
	cmd.Flags().StringVar(&data, "data", a.getenv("LIFEBOAT_SERVER_DATA"), "the server's state directory (env LIFEBOAT_SERVER_DATA)")
	cmd.Flags().StringVar(&name, "name", "", "a label for the token (default admin-local)")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "lifetime (default 90 days; 0: never expires)")
	cmd.Flags().BoolVar(&noExpiry, "no-expiry", false, "a token that never expires")
	return cmd
}
