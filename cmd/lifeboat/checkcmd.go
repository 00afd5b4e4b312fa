package main

import (
	"fmt"
	"net/http"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
)

// checkConfigCmd is `lifeboat check-config`: the server runs its
// configuration checks now.
func (a *app) checkConfigCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "check-config",
		Short: "Check the deployment now: vault reachable, one build everywhere, clocks in step, CA validity, cache and disk space",
		Long: `check-config asks the server to run its configuration checks now (it also
runs them every hour, raising config_check_failed and config_check_ok
events that alert). Each finding says what to do. The exit status is 1
when any check warns or fails, 0 when all pass.`,
		Example: "  lifeboat check-config\n  lifeboat check-config --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			var res api.ConfigChecks
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("checks"), nil, &res); err != nil {
				return err
			}
			if f.json {
				if err := a.printJSON(res); err != nil {
					return err
				}
			} else {
				a.checkTable(res)
			}
			if res.Level != api.HealthHealthy {
				return &codeError{exitError, fmt.Errorf("configuration checks: %s", res.Level)}
			}
			return nil
		},
	}
	a.addClientFlags(cmd, &f)
	return cmd
}

func (a *app) checkTable(res api.ConfigChecks) {
	fmt.Fprintf(a.stdout, "server %s (%s): %s\n\n", res.Server, res.Version, res.Level)
	w := a.table()
	fmt.Fprintln(w, "CHECK\tSUBJECT\tLEVEL\tFINDING\tWHAT TO DO")
	for _, c := range res.Checks {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", c.Name, dash(c.Subject), c.Level, c.Message, dash(c.Remedy))
	}
	_ = w.Flush()
}
