package backend_test

import (
	"errors"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

func TestCheckName(t *testing.T) {
	for _, name := range []string{"config", "data/ab/ab12", "a/b.c/.hidden", "x y+z"} {
		if err := backend.CheckName(name); err != nil {
			t.Errorf("CheckName(%q): %v", name, err)
		}
	}
	for _, name := range []string{"", "/a", "a/", "a//b", ".", "..", "a/./b", "a/../b", `a\b`, "a\x00b"} {
		err := backend.CheckName(name)
		if !errors.Is(err, backend.ErrInvalidName) || !backend.IsPermanent(err) {
			t.Errorf("CheckName(%q): %v, want a Permanent ErrInvalidName", name, err)
		}
	}
	for _, p := range []string{"", "data/", "data/ab/", "data/a", "config"} {
		if err := backend.CheckPrefix(p); err != nil {
			t.Errorf("CheckPrefix(%q): %v", p, err)
		}
	}
	for _, p := range []string{"/", "/data/", "data//", "../", "a/./"} {
		if err := backend.CheckPrefix(p); !errors.Is(err, backend.ErrInvalidName) {
			t.Errorf("CheckPrefix(%q): %v, want ErrInvalidName", p, err)
		}
	}
}
