package qemu

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/compute/computetest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
)

// BenchmarkHydrate measures hydration of a point full of incompressible
// data (256 MiB, every block written), served by recover.PointServer on
// a unix socket: vault reads, decryption, NBD and QEMU's mirror into the
// local base image. The VM has nothing to boot; it runs its firmware
// while its disk is copied.
//
//	go test -run '^$' -bench Hydrate -benchtime 1x ./internal/compute/qemu/
func BenchmarkHydrate(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("runs as root (like the provider's tests)")
	}
	guest.Need(b)
	img := filepath.Join(b.TempDir(), "data.raw")
	f, err := os.Create(img)
	if err != nil {
		b.Fatal(err)
	}
	r := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 1<<20)
	for range 256 {
		r.Read(buf)
		f.Write(buf)
	}
	f.Close()
	pt := computetest.NewPointFrom(b, img, guest.FirmwareBIOS)
	p := newProvider(b, Options{})
	for i := range b.N {
		name := fmt.Sprintf("qemu-bench-%d-%d", os.Getpid()%100000, i)
		dir := b.TempDir()
		ctx := context.Background()
		if _, err := p.Start(ctx, pt.Spec(name, dir)); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := p.Hydrate(ctx, name, dir, nil); err != nil {
			b.Fatal(err)
		}
		took := time.Since(start)
		b.ReportMetric(float64(pt.Size)/took.Seconds()/1e6, "MB/s")
		if err := p.Remove(ctx, name, dir); err != nil {
			b.Fatal(err)
		}
	}
}
