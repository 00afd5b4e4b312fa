package processd

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
)

// A process server reports its load in every heartbeat: the ingest
// statistics (cache, sessions, rate) and the share of its host's CPU
// time its process used (psload.CPU, from its own resource usage). The
// server weighs them when it chooses a process server for a machine.

// sampler measures the CPU share (psload.CPU).
type sampler interface {
	Sample() (float64, bool)
}

// loadReport fills in the CPU share, unless the server is too old to
// take it.
type loadReport struct {
	cpu sampler
	off atomic.Bool // the server refused the field
}

func (l *loadReport) fill(hb *api.ProcessHeartbeat) {
	if l.cpu == nil || l.off.Load() {
		return
	}
	if cpu, ok := l.cpu.Sample(); ok {
		hb.CPU = min(max(cpu, 0), 1)
	}
}

// refusedCPU reports whether err is a server older than this process
// server refusing the cpu field (its heartbeats refuse unknown fields),
// and stops sending it.
func (l *loadReport) refusedCPU(err error) bool {
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != http.StatusBadRequest || !strings.Contains(ce.Message, `unknown field "cpu"`) {
		return false
	}
	l.off.Store(true)
	return true
}

// send sends one heartbeat with the load filled in; a server too old
// for the CPU share gets it again without, and from then on never.
func (d *daemon) send(ctx context.Context, hb api.ProcessHeartbeat) (api.ProcessConfig, error) {
	d.load.fill(&hb)
	pc, err := d.heartbeat(ctx, hb)
	if err != nil && hb.CPU != 0 && d.load.refusedCPU(err) {
		d.log.Warn("the server is older than this process server and refuses its CPU share: it reports without it from now on; upgrade the server", "err", err)
		hb.CPU = 0
		pc, err = d.heartbeat(ctx, hb)
	}
	return pc, err
}
