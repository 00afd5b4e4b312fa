package ingest

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
)

// BenchmarkIngest ships new data from concurrent sessions through
// loopback HTTP into a local vault (hash, have-check, cache fsync,
// compress, encrypt, pack, commit). Every iteration's data is new, so
// nothing deduplicates.
func BenchmarkIngest(b *testing.B) {
	const (
		blockSize = 64 << 10
		sessions  = 4
		perDisk   = 16 << 20
	)
	for _, kind := range []string{"random", "compressible"} {
		b.Run(kind, func(b *testing.B) {
			v, _ := newVault(b, blockSize, 16<<20)
			_, hs, _ := startServer(b, v, b.TempDir(), nil)
			ctx := context.Background()
			b.SetBytes(sessions * perDisk)
			iter := 0
			for b.Loop() {
				iter++
				var wg sync.WaitGroup
				errs := make([]error, sessions)
				for s := range sessions {
					wg.Add(1)
					go func() {
						defer wg.Done()
						m := fmt.Sprintf("m%d", s)
						sess, err := newClient(b, hs.URL, m).Open(ctx, wire.SessionRequest{Machine: m, Disks: []wire.SessionDisk{{Name: "vda", Size: perDisk}}})
						if err != nil {
							errs[s] = err
							return
						}
						r := rand.NewChaCha8([32]byte{byte(iter), byte(iter >> 8), byte(s)})
						blk := make([]byte, blockSize)
						for k := range perDisk / blockSize {
							if kind == "random" {
								_, _ = r.Read(blk)
							} else {
								for i := 0; i < len(blk); i += 64 {
									copy(blk[i:], "lifeboat compressible block content, mostly text-like data. ")
								}
								binary.LittleEndian.PutUint64(blk[8:], r.Uint64())
							}
							if err := sess.Put(ctx, "vda", capture.Block{Index: int64(k), Data: blk}); err != nil {
								errs[s] = err
								return
							}
						}
						_, errs[s] = sess.Commit(ctx)
					}()
				}
				wg.Wait()
				for _, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
