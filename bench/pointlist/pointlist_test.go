// Package pointlist measures listing the recovery points of a vault the
// old way (one read per point record, what `lifeboat points list` did
// before the point index) and from the point index, side by side in one
// run, on a local directory and on S3 (versitygw on loopback):
//
//	go test ./bench/pointlist -run '^$' -bench . -benchtime 1x -v
//	BENCH_POINTS=1000,10000,100000 go test ./bench/pointlist -run '^$' -bench . -benchtime 1x -timeout 2h -v
//
// Each vault gets N points of one tiny all-zero disk (no data), written
// in parallel, then a prune-equivalent index build (RebuildPointIndex),
// then 100 more points published normally, whose markers the index
// listing resolves by reading their records, as it does between prunes.
// Needs versitygw for the S3 half (internal/testutil/s3server).
package pointlist

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/testutil/s3server"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/s3"
)

// pending is how many points are published after the index is built.
const pending = 100

func counts(b *testing.B) []int {
	s := os.Getenv("BENCH_POINTS")
	if s == "" {
		s = "1000,10000"
	}
	var ns []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			b.Fatalf("BENCH_POINTS: %q", f)
		}
		ns = append(ns, n)
	}
	return ns
}

// noMarkers drops the point index's new markers, so that the seeding
// writes only records (the index is then built from them at once).
type noMarkers struct{ backend.Backend }

func (n noMarkers) Put(ctx context.Context, name string, r io.ReadSeeker, size int64) error {
	if strings.HasPrefix(name, "pointindex/new/") {
		return nil
	}
	return n.Backend.Put(ctx, name, r, size)
}

func BenchmarkPointList(b *testing.B) {
	srv := s3server.Start(b)
	backends := map[string]func(b *testing.B) backend.Backend{
		"local": func(b *testing.B) backend.Backend {
			be, err := local.New(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			return be
		},
		"s3": func(b *testing.B) backend.Backend {
			be, err := s3.Open(b.Context(), s3.Config{Endpoint: srv.Endpoint, Bucket: srv.NewBucket(b),
				AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Region: srv.Region})
			if err != nil {
				b.Fatal(err)
			}
			return be
		},
	}
	fmt.Printf("%-6s %8s %10s %12s %12s %8s\n", "store", "points", "seed s", "records s", "index s", "speedup")
	for _, name := range []string{"local", "s3"} {
		for _, n := range counts(b) {
			b.Run(fmt.Sprintf("%s/%d", name, n), func(b *testing.B) {
				for range b.N {
					run(b, name, backends[name](b), n)
				}
			})
		}
	}
}

func run(b *testing.B, store string, be backend.Backend, n int) {
	ctx := b.Context()
	kdf := vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}
	if _, err := vault.Init(ctx, be, []byte("bench"), vault.InitOptions{Options: vault.Options{KDF: kdf}}); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	seed, err := vault.Open(ctx, noMarkers{be}, []byte("bench"), vault.Options{})
	if err != nil {
		b.Fatal(err)
	}
	publish(b, seed, n, time.Now().Add(-time.Duration(n+pending)*time.Second))
	v, err := vault.Open(ctx, be, []byte("bench"), vault.Options{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := v.RebuildPointIndex(ctx); err != nil {
		b.Fatal(err)
	}
	publish(b, v, pending, time.Now().Add(-pending*time.Second))
	seedTime := time.Since(start)

	t0 := time.Now()
	old, _, err := v.Points(ctx)
	tOld := time.Since(t0)
	if err != nil {
		b.Fatal(err)
	}
	t0 = time.Now()
	idx, _, err := v.ListPoints(ctx)
	tIdx := time.Since(t0)
	if err != nil {
		b.Fatal(err)
	}
	if len(old) != n+pending || len(idx) != len(old) {
		b.Fatalf("records list %d points, index %d, want %d", len(old), len(idx), n+pending)
	}
	for i := range old {
		if old[i].ID != idx[i].ID {
			b.Fatalf("point %d: records say %s, index %s", i, old[i].ID.Short(), idx[i].ID.Short())
		}
	}
	b.ReportMetric(tOld.Seconds(), "records-s")
	b.ReportMetric(tIdx.Seconds(), "index-s")
	fmt.Printf("%-6s %8d %10.1f %12.3f %12.3f %7.0fx\n", store, n+pending, seedTime.Seconds(), tOld.Seconds(), tIdx.Seconds(), tOld.Seconds()/tIdx.Seconds())
}

// publish saves n points of machines m0..m9, one second apart from t0,
// 32 at a time.
func publish(b *testing.B, v *vault.Vault, n int, t0 time.Time) {
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			p := &vault.Point{Machine: fmt.Sprintf("m%d", i%10), Time: t0.Add(time.Duration(i) * time.Second), Kind: vault.KindCrash,
				Labels: map[string]string{"reason": "scheduled"}, Hostname: "bench",
				Disks: []vault.Disk{{Name: "root", Size: 4 << 30, BlockSize: 65536, Fanout: 1024, Height: 2, Driver: "scan"}}}
			if err := v.SavePoint(b.Context(), p); err != nil {
				select {
				case errs <- err:
				default:
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
}
