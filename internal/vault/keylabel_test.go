package vault

import (
	"context"
	"errors"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

// A process server's key: labelled, cheap KDF, removed by exact ID (again
// without error), and no longer opening the vault once removed.
func TestAddKeyWithAndRemoveKeyID(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	v := newTestVault(t, be, InitOptions{Options: Options{KDF: DefaultKDF}})
	secret := []byte("0123456789abcdef0123456789abcdef-random")
	id, err := v.AddKeyWith(ctx, secret, KeyOptions{KDF: RandomSecretKDF, Label: "process server ps1"})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := v.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, k := range keys {
		if k.ID == id {
			found = k.Label == "process server ps1" && k.Params == RandomSecretKDF && k.Err == ""
		}
	}
	if !found {
		t.Fatalf("key %s not listed with its label and KDF: %+v", id.Short(), keys)
	}
	v2, err := testOpen(t, ctx, be, secret, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := v2.RemoveKeyID(ctx, id); err == nil {
		t.Fatal("removed the key that opened the handle")
	}
	if err := v.RemoveKeyID(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := v.RemoveKeyID(ctx, id); err != nil {
		t.Fatalf("removing a key already gone: %v", err)
	}
	if _, err := Open(ctx, be, secret, Options{}); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("a removed key still opens the vault: %v", err)
	}
	if _, err := v.AddKeyWith(ctx, secret, KeyOptions{Label: string(make([]byte, 300))}); err == nil {
		t.Fatal("accepted a 300-byte label")
	}
}
