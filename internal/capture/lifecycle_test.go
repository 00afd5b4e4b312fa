package capture

import (
	"errors"
	"testing"
)

func TestLifecycle(t *testing.T) {
	boom := errors.New("boom")
	ok := func() error { return nil }
	fail := func() error { return boom }

	t.Run("commit after changes", func(t *testing.T) {
		l := &Lifecycle{Driver: "x"}
		if err := l.Commit(ok); !errors.Is(err, ErrNotDone) {
			t.Fatalf("Commit before Changes: %v", err)
		}
		if err := l.Changes(ok); err != nil {
			t.Fatal(err)
		}
		if err := l.Changes(ok); !errors.Is(err, ErrChangesAgain) {
			t.Fatalf("second Changes: %v", err)
		}
		if err := l.Commit(fail); err != boom {
			t.Fatalf("failing commit: %v", err)
		}
		if err := l.Commit(ok); err != nil {
			t.Fatalf("commit retried after a failure: %v", err)
		}
		if err := l.Commit(ok); !errors.Is(err, ErrFinished) {
			t.Fatalf("second Commit: %v", err)
		}
		if err := l.Changes(ok); !errors.Is(err, ErrFinished) {
			t.Fatalf("Changes after Commit: %v", err)
		}
		called := false
		if err := l.Abort(func() error { called = true; return boom }); err != nil || called {
			t.Fatalf("Abort after Commit: %v, ran: %v", err, called)
		}
	})
	t.Run("failed changes", func(t *testing.T) {
		l := &Lifecycle{Driver: "x"}
		if err := l.Changes(fail); err != boom {
			t.Fatalf("Changes: %v", err)
		}
		if err := l.Changes(ok); !errors.Is(err, ErrChangesAgain) {
			t.Fatalf("Changes after a failed one: %v", err)
		}
		if err := l.Commit(ok); !errors.Is(err, ErrNotDone) {
			t.Fatalf("Commit after failed Changes: %v", err)
		}
		if err := l.Abort(fail); err != boom {
			t.Fatalf("Abort returns the release's error: %v", err)
		}
		if err := l.Abort(fail); err != nil {
			t.Fatalf("second Abort: %v", err)
		}
		if err := l.Commit(ok); !errors.Is(err, ErrFinished) {
			t.Fatalf("Commit after Abort: %v", err)
		}
	})
	t.Run("abort before changes", func(t *testing.T) {
		l := &Lifecycle{Driver: "x"}
		if err := l.Abort(ok); err != nil {
			t.Fatal(err)
		}
		ran := false
		if err := l.Changes(func() error { ran = true; return nil }); !errors.Is(err, ErrFinished) || ran {
			t.Fatalf("Changes after Abort: %v, ran: %v", err, ran)
		}
	})
}
