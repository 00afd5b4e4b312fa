package alert

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/testutil"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/mailpit"
)

// TestEmailMailpit: a real SMTP server that requires STARTTLS and a
// password receives the notification; a wrong password, or a relay
// whose certificate is not trusted, is a clear error.
func TestEmailMailpit(t *testing.T) {
	mp := mailpit.Start(t)
	ca, err := os.ReadFile(mp.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"/pw": []byte(mp.Password + "\n"), "/bad": []byte("wrong"), "/ca.pem": ca}
	read := func(p string) ([]byte, error) {
		if b, ok := files[p]; ok {
			return b, nil
		}
		return nil, os.ErrNotExist
	}
	cfg := Config{Sinks: []SinkConfig{
		{Name: "ops", Kind: "email", SMTP: mp.SMTP, From: "lifeboat@example.org", To: []string{"ops@example.org"}, Username: mp.Username, PasswordFile: "/pw", CAFile: "/ca.pem"},
		{Name: "badpw", Kind: "email", SMTP: mp.SMTP, From: "lifeboat@example.org", To: []string{"ops@example.org"}, Username: mp.Username, PasswordFile: "/bad", CAFile: "/ca.pem"},
		{Name: "untrusted", Kind: "email", SMTP: mp.SMTP, From: "lifeboat@example.org", To: []string{"ops@example.org"}, Username: mp.Username, PasswordFile: "/pw"},
	}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	sinks, err := cfg.Build(read)
	if err != nil {
		t.Fatal(err)
	}
	n := Notification{ID: "rpo_exceeded/web/firing/7", Status: Firing, Severity: "warning", Summary: "RPO of web is over its threshold",
		Message: "newest point is 12m old\r\nBcc: evil@example.org", Time: time.Now()}
	if err := sinks[0].Send(t.Context(), n); err != nil {
		t.Fatal(err)
	}
	var got []mailpit.Message
	testutil.Eventually(t, 30*time.Second, func() bool { got, _ = mp.Messages(t.Context()); return len(got) == 1 }, "the mail in mailpit")
	if got[0].Subject != "[Lifeboat] warning: RPO of web is over its threshold" || len(got[0].To) != 1 || got[0].To[0].Address != "ops@example.org" {
		t.Fatalf("mailpit received %+v", got[0])
	}
	if err := sinks[1].Send(t.Context(), n); err == nil || !strings.Contains(err.Error(), "authenticate") {
		t.Fatalf("wrong password: %v", err)
	}
	if err := sinks[2].Send(t.Context(), n); err == nil || !strings.Contains(err.Error(), "STARTTLS") {
		t.Fatalf("untrusted certificate: %v", err)
	}
}

// TestConfigRefusals: configurations that would leak secrets or cannot
// work are refused with the reason.
func TestConfigRefusals(t *testing.T) {
	for _, c := range []struct {
		s    SinkConfig
		want string
	}{
		{SinkConfig{Name: "h", Kind: "webhook", URL: "http://hooks.example.org/x", SecretFile: "/s"}, "https"},
		{SinkConfig{Name: "h", Kind: "webhook", URL: "https://hooks.example.org/x"}, "secret_file"},
		{SinkConfig{Name: "m", Kind: "email", SMTP: "mail.example.org:25", From: "a@b.c", To: []string{"d@e.f"}, TLS: "none"}, "loopback"},
		{SinkConfig{Name: "m", Kind: "email", SMTP: "mail.example.org", From: "a@b.c", To: []string{"d@e.f"}}, "host:port"},
		{SinkConfig{Name: "m", Kind: "email", SMTP: "mail.example.org:587", From: "a@b.c"}, "recipients"},
		{SinkConfig{Name: "m", Kind: "email", SMTP: "mail.example.org:587", From: "a@b.c", To: []string{"d@e.f"}, Username: "u"}, "password_file"},
		{SinkConfig{Name: "Bad Name", Kind: "webhook"}, "sink name"},
		{SinkConfig{Name: "p", Kind: "pager"}, "email or webhook"},
	} {
		err := Config{Sinks: []SinkConfig{c.s}}.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error about %s", c.s, err, c.want)
		}
	}
	if err := (Config{Disable: []string{"nope"}}).Validate(); err == nil {
		t.Error("disabling an unknown rule was accepted")
	}
}
