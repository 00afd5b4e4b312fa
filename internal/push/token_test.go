package push

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestPushTokenForTheName: without a token, Push asks NewToken for one
// once the machine's name is known (the remote host name by default) and
// enrolls with it; a refused NewToken fails the enroll step.
func TestPushTokenForTheName(t *testing.T) {
	e := startSSHD(t)
	bin := goBuild(t, ".", "./testdata/fakeagent")
	l := newLayout(t)
	var prog progressLog
	o := e.options(t, bin, l, &prog)
	o.Token, o.Name = "", ""
	var asked []string
	o.NewToken = func(_ context.Context, name string) (string, error) {
		asked = append(asked, name)
		return "token-for-" + name, nil
	}
	res, err := Push(context.Background(), o)
	if err != nil {
		t.Fatalf("push: %v\nprogress:\n%s", err, prog.String())
	}
	killAgent(t, res.PID)
	host, _ := os.Hostname()
	if len(asked) != 1 || asked[0] != res.Name || res.Name != host {
		t.Fatalf("NewToken asked for %q; enrolled %q; remote host name %q", asked, res.Name, host)
	}
	var enrolled map[string][]string
	b, err := os.ReadFile(filepath.Join(l.state, "enroll.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &enrolled); err != nil {
		t.Fatal(err)
	}
	if got := enrolled["--token"]; len(got) != 1 || got[0] != "token-for-"+host {
		t.Fatalf("enrolled with token %q", got)
	}

	o.NewToken = func(context.Context, string) (string, error) { return "", errors.New("machine exists") }
	_, err = Push(context.Background(), o)
	stepError(t, err, StepEnroll)
}
