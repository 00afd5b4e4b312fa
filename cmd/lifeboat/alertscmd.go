package main

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
)

// alertsCmd is `lifeboat alerts`: the alerts firing, the sinks, and a
// test message through one.
func (a *app) alertsCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{Use: "alerts", Short: "Alerts firing and the sinks (email, webhooks) that deliver them"}
	a.addClientFlags(cmd, &f)
	list := &cobra.Command{
		Use: "list", Short: "Show the alerts firing and each sink's queue", Args: cobra.NoArgs,
		Example: "  lifeboat alerts list\n  lifeboat alerts list --json",
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			var al api.Alerts
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("alerts"), nil, &al); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(al)
			}
			a.alertTables(al)
			return nil
		},
	}
	test := &cobra.Command{
		Use: "test SINK", Short: "Send a test notification through a sink now (admin)", Args: cobra.ExactArgs(1),
		Example: "  lifeboat alerts test ops-mail",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			var res api.AlertTestResult
			if err := c.Do(cmd.Context(), http.MethodPost, client.Path("alerts", "test"), api.AlertTestRequest{Sink: args[0]}, &res); err != nil {
				return err
			}
			if f.json {
				if err := a.printJSON(res); err != nil {
					return err
				}
			} else if res.Sent {
				fmt.Fprintf(a.stdout, "test notification delivered through %s\n", res.Sink)
			}
			if !res.Sent {
				return errors.New("sink " + res.Sink + " did not take the test notification: " + res.Error)
			}
			return nil
		},
	}
	cmd.AddCommand(list, test)
	return cmd
}

func (a *app) alertTables(al api.Alerts) {
	w := a.table()
	fmt.Fprintln(w, "ALERT\tSUBJECT\tSINCE\tMESSAGE")
	for _, x := range al.Active {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", x.Rule, x.Subject, x.Since.Local().Format(time.DateTime), x.Message)
	}
	if len(al.Active) == 0 {
		fmt.Fprintln(w, "(none firing)\t\t\t")
	}
	_ = w.Flush()
	fmt.Fprintln(a.stdout)
	w = a.table()
	fmt.Fprintln(w, "SINK\tKIND\tPENDING\tSENT\tFAILED\tLAST ERROR")
	for _, s := range al.Sinks {
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%s\n", s.Name, s.Kind, s.Pending, s.Sent, s.Failed, dash(s.LastError))
	}
	_ = w.Flush()
}
