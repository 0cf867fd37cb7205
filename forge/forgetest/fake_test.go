package forgetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"refci.dev/refci/forge"
	"refci.dev/refci/queue"
)

func TestFakeContract(t *testing.T) {
	Contract(t, func(t *testing.T) (forge.Forge, Controls) {
		f := NewFake()
		return f, f
	})
}

// The fake fails as told, records every call, and answers again.
func TestFakeFailures(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	commit, _ := f.NewCommit(ctx)
	s := forge.Status{Context: "refci/ci", State: queue.Running}
	until := time.Now().Add(time.Hour)
	for _, tc := range []struct {
		fail Failure
		is   func(error) bool
	}{
		{Auth, func(err error) bool { return errors.Is(err, forge.ErrAuth) }},
		{Permission, func(err error) bool { return errors.Is(err, forge.ErrPermission) }},
		{NotFound, func(err error) bool { return errors.Is(err, forge.ErrNotFound) }},
		{RateLimited, func(err error) bool {
			var rl *forge.RateLimitError
			return errors.As(err, &rl) && rl.Until.Equal(until)
		}},
		{Down, func(err error) bool {
			return err != nil && !errors.Is(err, forge.ErrAuth) && !errors.Is(err, forge.ErrNotFound)
		}},
	} {
		f.FailWith(tc.fail, until)
		if err := f.SetStatus(ctx, commit, s); !tc.is(err) {
			t.Errorf("failure %d: %v", tc.fail, err)
		}
	}
	f.FailWith(OK, time.Time{})
	if err := f.SetStatus(ctx, commit, s); err != nil {
		t.Fatal(err)
	}
	if n := len(f.Calls()); n != 6 {
		t.Errorf("%d calls recorded, want 6", n)
	}
	if f.Count("SetStatus") != 1 || len(f.StatusesOf(commit)) != 1 {
		t.Errorf("answered %d, kept %d; want 1 and 1", f.Count("SetStatus"), len(f.StatusesOf(commit)))
	}
}
