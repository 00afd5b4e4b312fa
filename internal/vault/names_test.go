package vault

import "testing"

// TestValidateNameRefusesPaths: names become file and directory names
// (agent state, VM directories), so nothing that would name another place
// passes.
func TestValidateNameRefusesPaths(t *testing.T) {
	for _, bad := range []string{"", ".", "..", "a/b", "/a", "a\\b", "a\x00b", "a\nb", "a b", "\x7f", "é",
		string(make([]byte, 256))} {
		if err := ValidateName("machine", bad); err == nil {
			t.Errorf("ValidateName(%q) accepted it", bad)
		}
	}
	for _, good := range []string{"web01", "a.b", "...", ".hidden", "vm@kvm1", "db:1", "a..b"} {
		if err := ValidateName("machine", good); err != nil {
			t.Errorf("ValidateName(%q): %v", good, err)
		}
	}
}
