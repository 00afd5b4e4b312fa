package target

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzReadJournal: whatever bytes sit in the journal file, readJournal
// returns a journal whose checksum holds, or an error (errBadJournal for
// anything malformed); it never panics and never trusts a damaged one.
func FuzzReadJournal(f *testing.F) {
	good := journal{Version: journalVersion, Point: "p", Disk: "vda", Target: "/x", Size: 1 << 20, Leaf: 3}
	good.Check = good.checksum()
	dir := f.TempDir()
	seed := filepath.Join(dir, "seed")
	if err := writeJournal(seed, good); err != nil {
		f.Fatal(err)
	}
	b, err := os.ReadFile(seed)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "journal")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		j, err := readJournal(p)
		switch {
		case err != nil && !errors.Is(err, errBadJournal):
			t.Fatalf("error not marked as a damaged journal: %v", err)
		case err == nil && len(data) == 0:
			// An empty file is damaged, not "no journal".
			t.Fatal("empty journal accepted")
		case err == nil && j != nil && j.Check != j.checksum():
			t.Fatal("journal accepted with a wrong checksum")
		}
	})
}
