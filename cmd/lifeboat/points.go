package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/progress"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// pointJSON is the --json form of a point.
type pointJSON struct {
	ID string `json:"id"`
	*vault.Point
}

func (a *app) pointsCmd() *cobra.Command {
	c := &cobra.Command{Use: "points", Short: "List, show and compare recovery points",
		Long: `List, show and compare recovery points. list and show read the vault when
one is named (--vault or LIFEBOAT_VAULT); otherwise, or with --server,
they ask the server (the saved login), whose records add the agent's
figures for the cycle that made each point: bytes changed, read and
sent, and the cycle's duration. diff reads the vault.`}
	c.AddCommand(a.pointsListCmd(), a.pointsShowCmd(), a.pointsServeCmd())
	a.vaultFlags(c.PersistentFlags())

	var diskName string
	var ranges, diffJSON bool
	diff := &cobra.Command{
		Use:   "diff A B",
		Short: "Compare two recovery points block by block (equal subtrees are skipped)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			v, err := a.openVault(ctx)
			if err != nil {
				return err
			}
			if _, err := v.LoadIndex(ctx); err != nil {
				return err
			}
			pa, err := v.FindPoint(ctx, args[0])
			if err != nil {
				return err
			}
			pb, err := v.FindPoint(ctx, args[1])
			if err != nil {
				return err
			}
			var all []vault.DiffStats
			for _, d := range pb.Disks {
				if diskName != "" && d.Name != diskName {
					continue
				}
				ra, errA := v.OpenDisk(pa, d.Name)
				rb, errB := v.OpenDisk(pb, d.Name)
				if errA != nil || errB != nil {
					fmt.Fprintf(a.stdout, "disk %s: only in %s\n", d.Name, pb.ID.Short())
					continue
				}
				var fn func(first, n int64)
				if ranges && !diffJSON {
					bs := int64(d.BlockSize)
					fn = func(first, n int64) {
						fmt.Fprintf(a.stdout, "  %s: bytes %d-%d (%d blocks)\n", d.Name, first*bs, (first+n)*bs-1, n)
					}
				}
				st, err := v.Diff(ctx, ra, rb, fn)
				if err != nil {
					return err
				}
				all = append(all, st)
				if !diffJSON {
					size := ""
					if st.SizeA != st.SizeB {
						size = fmt.Sprintf(", size %s -> %s", progress.Bytes(st.SizeA), progress.Bytes(st.SizeB))
					}
					fmt.Fprintf(a.stdout, "disk %s: %d blocks differ (%s)%s; %d equal leaves skipped unread\n",
						d.Name, st.ChangedBlocks, progress.Bytes(st.ChangedBytes), size, st.LeavesSkipped)
				}
			}
			for _, d := range pa.Disks {
				if _, ok := pb.Disk(d.Name); !ok && (diskName == "" || diskName == d.Name) && !diffJSON {
					fmt.Fprintf(a.stdout, "disk %s: only in %s\n", d.Name, pa.ID.Short())
				}
			}
			if diffJSON {
				return writeJSON(a.stdout, all)
			}
			return nil
		},
	}
	diff.Flags().StringVar(&diskName, "disk", "", "compare only this disk")
	diff.Flags().BoolVar(&ranges, "ranges", false, "list the differing byte ranges")
	diff.Flags().BoolVar(&diffJSON, "json", false, "print JSON")
	c.AddCommand(diff)
	return c
}

func (a *app) pointsListCmd() *cobra.Command {
	var machine string
	var fromRecords bool
	var f clientFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "List recovery points, oldest first",
		Long: `List recovery points, oldest first. From a vault, the list comes from the
vault's point index (the VM spec is left out of --json there; points show
has it); vaults without one are listed from the point records, as is
every vault with --from-records.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			srv, err := a.pointsFromServer(cmd)
			switch {
			case err != nil:
				return err
			case srv:
				return a.serverPointsList(cmd.Context(), &f, machine)
			}
			return a.vaultPointsList(cmd.Context(), machine, f.json, fromRecords)
		},
	}
	list.Flags().StringVar(&machine, "machine", "", "only this machine's points")
	list.Flags().BoolVar(&fromRecords, "from-records", false, "read every point record instead of the vault's point index (slow on large vaults)")
	a.addClientFlags(list, &f)
	return list
}

func (a *app) vaultPointsList(ctx context.Context, machine string, jsonOut, fromRecords bool) error {
	v, err := a.openVault(ctx)
	if err != nil {
		return err
	}
	list := v.ListPoints
	if fromRecords {
		list = v.Points
	}
	pts, bad, err := list(ctx)
	if err != nil {
		return err
	}
	var sel []*vault.Point
	for _, p := range pts {
		if machine == "" || p.Machine == machine {
			sel = append(sel, p)
		}
	}
	for _, b := range bad {
		a.log.Warn("unreadable point record; run `lifeboat vault check`", "point", b.ID.Short(), "err", b.Err)
	}
	if jsonOut {
		out := make([]pointJSON, len(sel))
		for i, p := range sel {
			out[i] = pointJSON{ID: p.ID.String(), Point: p}
		}
		return writeJSON(a.stdout, out)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTIME\tMACHINE\tKIND\tDISKS\tLABELS")
	for _, p := range sel {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.ID.Short(), p.Time.Local().Format("2006-01-02 15:04:05"),
			p.Machine, p.Kind, diskList(p), labelList(p.Labels))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "%d points\n", len(sel))
	return nil
}

func (a *app) pointsShowCmd() *cobra.Command {
	var f clientFlags
	show := &cobra.Command{
		Use:   "show POINT",
		Short: "Show a recovery point (ID prefix, latest, or latest:MACHINE)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			srv, err := a.pointsFromServer(cmd)
			switch {
			case err != nil:
				return err
			case srv:
				return a.serverPointShow(cmd.Context(), &f, args[0])
			}
			return a.vaultPointShow(cmd.Context(), args[0], f.json)
		},
	}
	a.addClientFlags(show, &f)
	return show
}

func (a *app) vaultPointShow(ctx context.Context, ref string, jsonOut bool) error {
	v, err := a.openVault(ctx)
	if err != nil {
		return err
	}
	p, err := v.FindPoint(ctx, ref)
	if err != nil {
		return err
	}
	if jsonOut {
		return writeJSON(a.stdout, pointJSON{ID: p.ID.String(), Point: p})
	}
	fmt.Fprintf(a.stdout, "point    %s\nmachine  %s\ntime     %s\nkind     %s\n", p.ID, p.Machine, p.Time.Local().Format(time.RFC3339Nano), p.Kind)
	if p.Group != "" {
		fmt.Fprintf(a.stdout, "group    %s\n", p.Group)
	}
	if p.Parent != "" {
		fmt.Fprintf(a.stdout, "parent   %s\n", p.Parent[:8])
	}
	if p.Hostname != "" {
		fmt.Fprintf(a.stdout, "written  by %s\n", p.Hostname)
	}
	if len(p.Labels) > 0 {
		fmt.Fprintf(a.stdout, "labels   %s\n", labelList(p.Labels))
	}
	if len(p.VMSpec) > 0 {
		fmt.Fprintf(a.stdout, "vm spec  %d bytes\n", len(p.VMSpec))
	}
	for _, d := range p.Disks {
		fmt.Fprintf(a.stdout, "disk     %s: %s (%d bytes), %s blocks, tree height %d, root %s, driver %s\n",
			d.Name, progress.Bytes(d.Size), d.Size, progress.Bytes(int64(d.BlockSize)), d.Height, d.Root.Short(), d.Driver)
	}
	return nil
}

func diskList(p *vault.Point) string {
	s := make([]string, len(p.Disks))
	for i, d := range p.Disks {
		s[i] = d.Name + ":" + progress.Bytes(d.Size)
	}
	return strings.Join(s, ",")
}

func labelList(l map[string]string) string {
	var s []string
	for k, v := range l {
		s = append(s, k+"="+v)
	}
	sort.Strings(s)
	return strings.Join(s, ",")
}
