package main

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/control"
)

// ---- tokens ----

func (a *app) tokenCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{Use: "token", Short: "Create, list and revoke enrollment and API tokens"}
	a.addClientFlags(cmd, &f)
	cmd.AddCommand(a.tokenCreateCmd(&f), a.tokenListCmd(&f), a.tokenRevokeCmd(&f))
	return cmd
}

func (a *app) tokenCreateCmd(f *clientFlags) *cobra.Command {
	var role, name string
	var ttl time.Duration
	var noExpiry bool
	create := &cobra.Command{
		Use:   "create --role agent|process|target --name NAME | --role viewer|operator|admin [--name LABEL] [--ttl D | --no-expiry]",
		Short: "Create a token: agent and process tokens enroll the one machine or process server they name, once",
		Long: `Create a token. The token is printed once on stdout; the server keeps only its hash.

agent and process tokens are one-time enrollment tokens for the machine or
process server --name (required): they enroll that name only, expire after
--ttl (default 1h), and cannot take over a name that is already enrolled
(for that, "lifeboat agent reenroll NAME" / "lifeboat process reenroll NAME").

viewer, operator and admin tokens are API tokens (--name is a label). They
expire after --ttl, by default 90 days; --no-expiry (or --ttl 0) makes one
that never expires.

A target token is the target writer's (lifeboat target run --name NAME): it
may only post the reports of the writer --name (required), nothing else, so a
stolen one cannot fail over, read or change anything.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := api.TokenRequest{Role: role, TTL: api.Duration(ttl), Name: name, NoExpiry: noExpiry}
			enroll := role == api.RoleAgent || role == api.RoleProcess
			switch {
			case role == api.RoleTarget && name == "":
				return &codeError{exitUsage, errors.New("a target token reports as one target writer: give its name with --name (the writer's --name)")}
			case enroll && name == "":
				return &codeError{exitUsage, fmt.Errorf("an %s token enrolls one %s: give its name with --name", role, kindName(role))}
			case enroll && noExpiry:
				return &codeError{exitUsage, errors.New("--no-expiry: enrollment tokens always expire (give --ttl)")}
			case !enroll && cmd.Flags().Changed("ttl") && ttl == 0:
				req.NoExpiry = true // --ttl 0: never expires, said explicitly
			}
			c, err := a.client(f)
			if err != nil {
				return err
			}
			var resp api.TokenResponse
			if err := c.Do(cmd.Context(), http.MethodPost, client.Path("tokens"), req, &resp); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(resp)
			}
			fmt.Fprintln(a.stdout, resp.Token)
			fmt.Fprintf(a.stderr, "token %s (%s%s), %s\n", resp.ID, resp.Role, forName(resp), expiryText(resp.Expires, a.clock().Now()))
			return nil
		},
	}
	create.Flags().StringVar(&role, "role", api.RoleAgent, "agent | process (one-time enrollment) or viewer | operator | admin (API)")
	create.Flags().DurationVar(&ttl, "ttl", 0, "lifetime (default 1h for enrollment tokens, 90 days (2160h) for API tokens; 0: API token that never expires)")
	create.Flags().BoolVar(&noExpiry, "no-expiry", false, "an API token that never expires")
	create.Flags().StringVar(&name, "name", "", "agent and process tokens: the machine or process server it enrolls (required); API tokens: a label for the audit log")
	return create
}

func kindName(role string) string {
	if role == api.RoleProcess {
		return "process server"
	}
	return "machine"
}

func forName(t api.TokenResponse) string {
	if t.Name == "" {
		return ""
	}
	return " for " + kindName(t.Role) + " " + t.Name
}

// expiryText says when t is, and how long after now.
func expiryText(t, now time.Time) string {
	if t.IsZero() {
		return "never expires"
	}
	return fmt.Sprintf("expires %s (in %s)", t.Local().Format(time.DateTime), t.Sub(now).Round(time.Minute))
}

func (a *app) tokenListCmd(f *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use: "list", Short: "List tokens by ID (their secrets are never shown again)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client(f)
			if err != nil {
				return err
			}
			var ts []control.TokenInfo
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("tokens"), nil, &ts); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(ts)
			}
			w := a.table()
			fmt.Fprintln(w, "ID\tROLE\tNAME\tENROLLS\tCREATED\tEXPIRES\tSTATE")
			now := a.clock().Now()
			for _, t := range ts {
				state := "valid"
				switch {
				case t.Revoked:
					state = "revoked"
				case !t.Used.IsZero() && t.OneTime:
					state = "used " + t.Used.Local().Format(time.DateTime)
				case !t.Expires.IsZero() && now.After(t.Expires):
					state = "expired"
				}
				exp := "never"
				if !t.Expires.IsZero() {
					exp = t.Expires.Local().Format(time.DateTime)
				}
				enrolls := dash(t.Subject)
				if t.Reenroll {
					enrolls += " (re-enroll)"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Role, dash(t.Name), enrolls, t.Created.Local().Format(time.DateTime), exp, state)
			}
			return w.Flush()
		},
	}
}

func (a *app) tokenRevokeCmd(f *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use: "revoke ID", Short: "Revoke a token by its ID (see token list); it is refused from then on", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(f)
			if err != nil {
				return err
			}
			var t control.TokenInfo
			if err := c.Do(cmd.Context(), http.MethodPost, client.Path("tokens", args[0], "revoke"), nil, &t); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(t)
			}
			fmt.Fprintf(a.stdout, "token %s (%s, %s) revoked\n", t.ID, t.Role, t.Name)
			return nil
		},
	}
}

// tokenWarnBefore is how long before the saved login's token expires
// client commands warn.
const tokenWarnBefore = control.TokenWarnBefore

// warnTokenExpiry tells the user, after a command, that the API token it
// used expires soon.
func (a *app) warnTokenExpiry() {
	for _, c := range a.clients {
		exp := c.TokenExpires()
		if exp.IsZero() {
			continue
		}
		if left := exp.Sub(a.clock().Now()); left < tokenWarnBefore {
			fmt.Fprintf(a.stderr, "lifeboat: warning: this API token expires %s (in %s): ask an admin for a new one (`lifeboat token create --role ROLE`) and run `lifeboat login` with it\n",
				exp.Local().Format(time.DateTime), left.Round(time.Minute))
		}
		return
	}
}
