package vault

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

// TestMeasureUsage: the usage adds up every object's size once, by the
// top directory it is in; a vault that cannot be listed is an error.
func TestMeasureUsage(t *testing.T) {
	be := mem.New()
	put := func(name string, n int) {
		if err := be.Put(t.Context(), name, bytes.NewReader(make([]byte, n)), int64(n)); err != nil {
			t.Fatal(err)
		}
	}
	put("config", 10)
	put("data/ab/ab01", 1000)
	put("data/cd/cd02", 3000)
	put("index/x", 70)
	u, err := MeasureUsage(t.Context(), be)
	if err != nil {
		t.Fatal(err)
	}
	want := []AreaUsage{{"", 1, 10}, {"data", 2, 4000}, {"index", 1, 70}}
	if u.Objects != 4 || u.Bytes != 4080 || len(u.Areas) != len(want) {
		t.Fatalf("usage %+v", u)
	}
	for i, a := range want {
		if u.Areas[i] != a {
			t.Fatalf("area %d: %+v, want %+v", i, u.Areas[i], a)
		}
	}
	if _, err := MeasureUsage(t.Context(), failingList{be}); err == nil {
		t.Fatal("a listing that fails measured")
	}
}

type failingList struct{ backend.Backend }

func (failingList) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	return errors.New("listing refused")
}
