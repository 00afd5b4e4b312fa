package vault

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

func TestCatalog(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	v := newTestVault(t, be, InitOptions{})
	type site struct{ Provider string }
	if ok, err := v.GetCatalog(ctx, "site", &site{}); ok || err != nil {
		t.Fatalf("missing entry: %v %v", ok, err)
	}
	if err := v.PutCatalog(ctx, "site", site{"qemu"}); err != nil {
		t.Fatal(err)
	}
	if err := v.PutCatalog(ctx, "site", site{"libvirt"}); err != nil {
		t.Fatal(err)
	}
	var got site
	if ok, err := v.GetCatalog(ctx, "site", &got); !ok || err != nil || got.Provider != "libvirt" {
		t.Fatalf("get: %v %v %+v", ok, err, got)
	}
	for _, bad := range []string{"", "../x", "Site", "a/b", ".hidden"} {
		if err := v.PutCatalog(ctx, bad, 1); err == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
	// An entry copied under another name does not open.
	b, _ := backend.ReadAll(ctx, be, "catalog/site")
	if err := be.Put(ctx, "catalog/machines", bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	if _, err := v.GetCatalog(ctx, "machines", &got); !errors.Is(err, ErrAuth) {
		t.Fatalf("entry renamed: %v, want ErrAuth", err)
	}
	names, err := v.CatalogNames(ctx)
	if err != nil || len(names) != 2 {
		t.Fatalf("names %v %v", names, err)
	}
}
