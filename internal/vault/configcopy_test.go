package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

// logBuffer returns a logger writing text lines into a buffer.
func logBuffer() (*slog.Logger, *bytes.Buffer) {
	var buf bytes.Buffer
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn})), &buf
}

func openWithLog(t *testing.T, be *mem.Backend, pass string) (*Vault, string, error) {
	t.Helper()
	log, buf := logBuffer()
	v, err := testOpen(t, context.Background(), be, []byte(pass), Options{Logger: log})
	return v, buf.String(), err
}

func checkReport(t *testing.T, v *Vault) *CheckReport {
	t.Helper()
	rep, err := v.Check(context.Background(), CheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func damageNamed(rep *CheckReport, object string) *Damage {
	for i := range rep.Damage {
		if rep.Damage[i].Object == object {
			return &rep.Damage[i]
		}
	}
	return nil
}

func stored(be *mem.Backend, name string) []byte {
	var out []byte
	be.Mutate(name, func(b []byte) []byte { out = bytes.Clone(b); return b })
	return out
}

func TestInitWritesTwoEqualConfigCopies(t *testing.T) {
	be := mem.New()
	newTestVault(t, be, InitOptions{})
	a, b := stored(be, configName), stored(be, configCopyName)
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Fatalf("config copies: %d and %d bytes, equal %v", len(a), len(b), bytes.Equal(a, b))
	}
	if _, err := Init(context.Background(), be, []byte("x"), InitOptions{Options: Options{KDF: testKDF}}); err == nil {
		t.Fatal("init over an existing vault")
	}
	// Only the copy left (the primary lost): still a vault, not re-initialised.
	_ = be.Delete(context.Background(), configName)
	if _, err := Init(context.Background(), be, []byte("x"), InitOptions{Options: Options{KDF: testKDF}}); err == nil {
		t.Fatal("init over a vault that has only config.copy")
	}
}

// TestInitCrashBetweenCopies: init killed after the primary config leaves
// a vault that opens (with a warning) and that repair completes.
func TestInitCrashBetweenCopies(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	be.Fault = func(op mem.Op, name string) error {
		if op == mem.OpPut && name == configCopyName {
			return errors.New("killed")
		}
		return nil
	}
	if _, err := Init(ctx, be, []byte("secret"), InitOptions{Options: Options{KDF: testKDF, SpoolDir: t.TempDir()}}); err == nil {
		t.Fatal("init succeeded although the copy was not written")
	}
	be.Fault = nil
	v, log, err := openWithLog(t, be, "secret")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log, "config copy missing") || !strings.Contains(log, "repair config") {
		t.Fatalf("no warning about the missing copy:\n%s", log)
	}
	if rep := checkReport(t, v); !rep.OK() || !slices.ContainsFunc(rep.Warnings, func(w string) bool { return strings.Contains(w, "config.copy is missing") }) {
		t.Fatalf("check of a one-copy vault: damage %+v warnings %q", rep.Damage, rep.Warnings)
	}
	rep, err := v.RepairConfig(ctx)
	if err != nil || !slices.Equal(rep.Rewritten, []string{configCopyName}) {
		t.Fatalf("repair: %+v %v", rep, err)
	}
	if !bytes.Equal(stored(be, configName), stored(be, configCopyName)) {
		t.Fatal("repaired copy differs from the primary")
	}
	if _, log, err := openWithLog(t, be, "secret"); err != nil || log != "" {
		t.Fatalf("open after repair: %v\n%s", err, log)
	}
}

func TestOneDamagedConfigCopy(t *testing.T) {
	ctx := context.Background()
	for _, bad := range configNames {
		for _, how := range []string{"flipped", "truncated", "missing"} {
			t.Run(bad+" "+how, func(t *testing.T) {
				be := mem.New()
				want := newTestVault(t, be, InitOptions{}).Config()
				switch how {
				case "flipped":
					be.Mutate(bad, func(b []byte) []byte { b[len(b)/2] ^= 4; return b })
				case "truncated":
					be.Mutate(bad, func(b []byte) []byte { return b[:len(b)-10] })
				case "missing":
					_ = be.Delete(ctx, bad)
				}
				v, log, err := openWithLog(t, be, "secret")
				if err != nil {
					t.Fatal(err)
				}
				if v.Config() != want || !strings.Contains(log, bad) || !strings.Contains(log, "WARN") {
					t.Fatalf("opened with config %+v, log:\n%s", v.Config(), log)
				}
				rep := checkReport(t, v)
				if how == "missing" && bad == configCopyName {
					if !rep.OK() || len(rep.Warnings) == 0 {
						t.Fatalf("missing copy: damage %+v warnings %q", rep.Damage, rep.Warnings)
					}
				} else if d := damageNamed(rep, bad); d == nil || !strings.Contains(d.Error, "repair config") {
					t.Fatalf("check does not report %s: %+v", bad, rep.Damage)
				}
				if r, err := v.RepairConfig(ctx); err != nil || !slices.Equal(r.Rewritten, []string{bad}) {
					t.Fatalf("repair: %+v %v", r, err)
				}
				if rep := checkReport(t, v); !rep.OK() || len(rep.Warnings) != 0 {
					t.Fatalf("after repair: damage %+v warnings %q", rep.Damage, rep.Warnings)
				}
			})
		}
	}
}

func TestBothConfigCopiesBadOrDifferent(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	v := newTestVault(t, be, InitOptions{})
	clean := snapshot(be)

	for _, name := range configNames {
		be.Mutate(name, func(b []byte) []byte { b[0] ^= 1; return b })
	}
	_, _, err := openWithLog(t, be, "secret")
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "damaged config") {
		t.Fatalf("both copies damaged: %v", err)
	}
	if _, _, err := openWithLog(t, be, "wrong"); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("both copies damaged, wrong passphrase: %v", err)
	}

	// Both authentic, different content: refused, nothing chosen.
	restoreSnapshot(be, clean)
	other := v.Config()
	other.PackSize *= 2
	ob, _ := json.Marshal(other)
	sealed := v.keys.seal(kindConfig, ob, false)
	be.Mutate(configCopyName, func([]byte) []byte { return sealed })
	_, _, err = openWithLog(t, be, "secret")
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "differ") || !strings.Contains(err.Error(), "pack_size") {
		t.Fatalf("copies differ: %v", err)
	}
	if _, err := v.RepairConfig(ctx); !errors.Is(err, ErrDamaged) {
		t.Fatalf("repair of copies that differ: %v", err)
	}
	rep := checkReport(t, v)
	if d := damageNamed(rep, "config"); d == nil || !strings.Contains(d.Error, "differ") {
		t.Fatalf("check of copies that differ: %+v", rep.Damage)
	}
	// Both authentic, same content, other bytes (sealed twice): fine.
	cb, _ := json.Marshal(v.Config())
	resealed := v.keys.seal(kindConfig, cb, false)
	be.Mutate(configCopyName, func([]byte) []byte { return resealed })
	if _, log, err := openWithLog(t, be, "secret"); err != nil || log != "" {
		t.Fatalf("copies sealed separately: %v\n%s", err, log)
	}
}

func TestDamagedKeyFileIsNotAWrongPassphrase(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	v := newTestVault(t, be, InitOptions{})
	first := "keys/" + v.keyID.String()
	clean := snapshot(be)
	for name, mutate := range map[string]func([]byte) []byte{
		"truncated":        func(b []byte) []byte { return b[:len(b)/2] },
		"empty":            func([]byte) []byte { return nil },
		"wrapped cut":      func(b []byte) []byte { return cutWrapped(t, b) },
		"one byte missing": func(b []byte) []byte { return b[:len(b)-1] },
	} {
		restoreSnapshot(be, clean)
		be.Mutate(first, mutate)
		_, _, err := openWithLog(t, be, "secret")
		if !errors.Is(err, ErrDamaged) || errors.Is(err, ErrWrongPassphrase) ||
			!strings.Contains(err.Error(), "damaged key file "+first) {
			t.Errorf("%s key file: %v, want a damaged key file naming %s", name, err, first)
		}
		var de *DamagedError
		if !errors.As(err, &de) || de.Object != first {
			t.Errorf("%s key file: %v is not a DamagedError for %s", name, err, first)
		}
	}
	// A second, intact key: the vault opens with its passphrase (warning
	// about the damaged one if it tried it first); a passphrase of neither
	// is ambiguous, so the damage is reported.
	restoreSnapshot(be, clean)
	if _, err := v.AddKey(ctx, []byte("second")); err != nil {
		t.Fatal(err)
	}
	be.Mutate(first, func(b []byte) []byte { return b[:len(b)/2] })
	v2, _, err := openWithLog(t, be, "second")
	if err != nil {
		t.Fatalf("open with the intact key: %v", err)
	}
	if _, _, err := openWithLog(t, be, "neither"); !errors.Is(err, ErrDamaged) {
		t.Fatalf("passphrase of no key with a damaged key present: %v", err)
	}
	if d := damageNamed(checkReport(t, v2), first); d == nil || !strings.Contains(d.Error, "damaged key file") {
		t.Fatal("check does not report the damaged key file")
	}
	// Intact key files only: a wrong passphrase is a wrong passphrase.
	restoreSnapshot(be, clean)
	if _, _, err := openWithLog(t, be, "wrong"); !errors.Is(err, ErrWrongPassphrase) || errors.Is(err, ErrDamaged) {
		t.Fatalf("wrong passphrase: %v", err)
	}
}

// cutWrapped shortens a key file's wrapped key by one byte, keeping the
// JSON well formed.
func cutWrapped(t *testing.T, b []byte) []byte {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	var kf keyFile
	_ = json.Unmarshal(b, &kf)
	m["wrapped"] = kf.Wrapped[:len(kf.Wrapped)-1]
	out, _ := json.Marshal(m)
	return out
}

func TestCheckReportsStrayFiles(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	v := newTestVault(t, be, InitOptions{})
	fzPut(t, be, "keys/backdoor", []byte(`{"version":1}`))
	fzPut(t, be, "keys/"+strings.Repeat("0", 64), []byte("not a key"))
	fzPut(t, be, "index/notes.txt", []byte("x"))
	fzPut(t, be, "data/00/"+strings.Repeat("1", 64), []byte("misplaced pack"))
	rep := checkReport(t, v)
	for _, name := range []string{"keys/backdoor", "keys/" + strings.Repeat("0", 64)} {
		if damageNamed(rep, name) == nil {
			t.Errorf("check does not report %s as damage: %+v", name, rep.Damage)
		}
	}
	for _, name := range []string{"index/notes.txt", "data/00/" + strings.Repeat("1", 64)} {
		if !slices.ContainsFunc(rep.Warnings, func(w string) bool { return strings.HasPrefix(w, name+": not an object") }) {
			t.Errorf("check does not warn about %s: %q", name, rep.Warnings)
		}
	}
	if len(rep.Damage) != 2 {
		t.Errorf("damage %+v, want the two key files only", rep.Damage)
	}
	if _, err := Open(ctx, be, []byte("secret"), Options{Logger: fzLogger}); err != nil {
		t.Fatalf("stray files stop the vault from opening: %v", err)
	}
}

// FuzzConfigCopies: whatever the two stored copies hold, opening them
// either fails as "no copy opens" / damage / newer version, or yields a
// config that an intact copy holds, and never one of two intact copies
// that differ.
func FuzzConfigCopies(f *testing.F) {
	k := fzKeys(f)
	cb, _ := json.Marshal(fzConfig())
	valid := k.seal(kindConfig, cb, false)
	other := fzConfig()
	other.TreeFanout = 64
	ob, _ := json.Marshal(other)
	newer := fzConfig()
	newer.Version = 2
	nb, _ := json.Marshal(newer)
	f.Add(valid, false, valid, false)
	f.Add(valid, false, []byte(nil), true)
	f.Add([]byte(nil), true, valid, false)
	f.Add(valid, false, valid[:len(valid)-1], false)
	f.Add(valid, false, k.seal(kindConfig, ob, true), false)
	f.Add(k.seal(kindConfig, nb, false), false, valid, false)
	f.Add([]byte("garbage"), false, k.seal(kindPoint, cb, false), false)
	f.Fuzz(func(t *testing.T, a []byte, aMissing bool, b []byte, bMissing bool) {
		sc := &storedConfig{{sealed: a, missing: aMissing}, {sealed: b, missing: bMissing}}
		oc, err := sc.open(k)
		var intact [2]*Config
		for i := range sc {
			if sc[i].missing {
				continue
			}
			if plain, err := k.open(kindConfig, sc[i].sealed); err == nil {
				intact[i], _ = decodeConfig(plain)
			}
		}
		if err != nil {
			if oc != nil {
				t.Fatal("config returned with an error")
			}
			if !errors.Is(err, errNoConfigCopy) && !errors.Is(err, ErrDamaged) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("unexpected kind of error: %v", err)
			}
			if errors.Is(err, errNoConfigCopy) && (intact[0] != nil || intact[1] != nil) {
				t.Fatalf("an intact copy was not used: %v", err)
			}
			return
		}
		for i := range sc {
			if oc.good[i] != (intact[i] != nil) {
				t.Fatalf("copy %d: good %v, independently intact %v", i, oc.good[i], intact[i] != nil)
			}
		}
		if intact[0] != nil && intact[1] != nil && len(configDiff(intact[0], intact[1])) > 0 {
			t.Fatal("two intact copies that differ were accepted")
		}
		in := func(c *Config) bool { return c != nil && len(configDiff(oc.cfg, c)) == 0 }
		if !in(intact[0]) && !in(intact[1]) {
			t.Fatalf("opened config %+v is in no intact copy", oc.cfg)
		}
		checkConfig(t, oc.cfg)
	})
}
