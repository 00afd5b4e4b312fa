package main

import (
	"time"

	"github.com/spf13/pflag"

	"github.com/lifeboat-dr/lifeboat/internal/vault/retention"
)

// durFlag is a duration flag that also takes days and weeks ("15d",
// "2w", "1d12h"), as retention grids do, and shows its default that way.
type durFlag struct{ d *time.Duration }

func (f durFlag) String() string {
	if f.d == nil || *f.d == 0 {
		return "0"
	}
	return retention.FormatDuration(*f.d)
}

func (f durFlag) Set(s string) error {
	if s == "0" {
		*f.d = 0
		return nil
	}
	d, err := retention.ParseDuration(s)
	if err != nil {
		return err
	}
	*f.d = d
	return nil
}

func (durFlag) Type() string { return "duration" }

// durVar defines a durFlag on fs.
func durVar(fs *pflag.FlagSet, p *time.Duration, name string, def time.Duration, usage string) {
	*p = def
	fs.Var(durFlag{p}, name, usage)
}
