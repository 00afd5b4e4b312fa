// Package enginetest is the conformance suite of engine sinks: Run drives
// the cycle engine with in-memory capture drivers (capturetest.Mem) into
// a sink and checks, through the vault the sink publishes into, that
// points restore exactly, that a stale base makes a full read, and that
// a failed cycle publishes nothing and leaves the drivers' baselines.
package enginetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/capture/capturetest"
	"github.com/lifeboat-dr/lifeboat/internal/engine"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Harness gives Run a sink.
type Harness struct {
	// Machine is the machine the sink accepts points of.
	Machine string
	// New returns a sink onto an empty vault, and a function that opens
	// that vault as it is now (with every point published so far).
	New func(t *testing.T) (engine.Sink, func(t *testing.T) *vault.Vault)
}

// env is one scenario's sink, vault and disks.
type env struct {
	h     Harness
	sink  engine.Sink
	vault func(t *testing.T) *vault.Vault
	disks map[string]*capturetest.Mem
	imgs  map[string][]byte // the disks' content now
	names []string
	rng   *rand.Rand
}

// newEnv makes a sink and disks of sizes(block size) bytes.
func newEnv(t *testing.T, h Harness, sizes func(bs int) []int) *env {
	sink, open := h.New(t)
	e := &env{h: h, sink: sink, vault: open, disks: map[string]*capturetest.Mem{}, imgs: map[string][]byte{}, rng: rand.New(rand.NewPCG(1, 2))}
	bs := sink.BlockSize()
	for i, size := range sizes(bs) {
		name := fmt.Sprintf("d%d", i)
		e.imgs[name] = capturetest.RandomImage(e.rng, int64(size), bs)
		e.disks[name] = capturetest.NewMem(e.imgs[name], bs)
		e.names = append(e.names, name)
	}
	return e
}

// machine is the disks as one machine.
func (e *env) machine() capture.Machine {
	var dds []capture.DiskDriver
	for _, n := range e.names {
		dds = append(dds, capture.DiskDriver{Disk: n, Driver: e.disks[n]})
	}
	return capture.Drivers(dds...)
}

func (e *env) options() engine.Options {
	return engine.Options{Machine: e.h.Machine, Disks: e.names, Logger: slog.New(slog.DiscardHandler),
		Labels: map[string]string{"test": "enginetest"}}
}

func (e *env) run(t *testing.T, sink engine.Sink, o engine.Options) (*engine.Result, error) {
	t.Helper()
	return engine.Run(t.Context(), e.machine(), sink, o)
}

// mutate changes some blocks of every disk.
func (e *env) mutate(t *testing.T) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, n := range e.names {
		img := capturetest.Mutate(e.rng, e.imgs[n], e.sink.BlockSize(), false)
		img[0] ^= 0xff // at least one change
		e.disks[n].Write(img)
		e.imgs[n] = img
		out[n] = img
	}
	return out
}

// points lists the machine's points, oldest first.
func (e *env) points(t *testing.T) []*vault.Point {
	t.Helper()
	pts, _, err := e.vault(t).Points(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []*vault.Point
	for _, p := range pts {
		if p.Machine == e.h.Machine {
			out = append(out, p)
		}
	}
	return out
}

// check verifies that point id holds exactly want for every disk.
func (e *env) check(t *testing.T, id string, want map[string][]byte) {
	t.Helper()
	v := e.vault(t)
	pid, err := vault.ParseID(id)
	if err != nil {
		t.Fatal(err)
	}
	p, err := v.LoadPoint(t.Context(), pid)
	if err != nil {
		t.Fatalf("load point %s: %v", id, err)
	}
	if len(p.Disks) != len(want) {
		t.Fatalf("point %s has %d disks, want %d", id, len(p.Disks), len(want))
	}
	for name, img := range want {
		r, err := v.OpenDisk(p, name)
		if err != nil {
			t.Fatalf("point %s: %v", id, err)
		}
		var got []byte
		for k := range r.Blocks() {
			if got, err = r.ReadBlock(t.Context(), k, got); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(got, img) {
			t.Fatalf("point %s disk %s does not restore exactly (%d bytes, want %d)", id, name, len(got), len(img))
		}
	}
}

// baselines returns every driver's baseline.
func (e *env) baselines(t *testing.T) map[string]string {
	out := map[string]string{}
	for _, n := range e.names {
		bl, err := e.disks[n].Baseline(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		out[n] = bl
	}
	return out
}

// quiet checks that no capture cycle was left open.
func (e *env) quiet(t *testing.T) {
	t.Helper()
	for _, n := range e.names {
		if b, c, a := e.disks[n].Counts(); b != c+a {
			t.Fatalf("disk %s: %d cycles begun, %d committed, %d aborted", n, b, c, a)
		}
	}
}

// failingSink fails the nth Put of each session.
type failingSink struct {
	engine.Sink
	n int
}

var errInjected = errors.New("injected Put failure")

func (s failingSink) Open(ctx context.Context, cut engine.Cut) (engine.Session, error) {
	sess, err := s.Sink.Open(ctx, cut)
	if err != nil {
		return nil, err
	}
	return &failingSession{Session: sess, n: s.n}, nil
}

type failingSession struct {
	engine.Session
	n int
}

func (s *failingSession) Put(ctx context.Context, disk string, b capture.Block) error {
	if s.n--; s.n == 0 {
		return errInjected
	}
	return s.Session.Put(ctx, disk, b)
}
