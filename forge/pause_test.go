package forge

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"
)

// A forge that asks to wait is paused until the time it names, but a
// reset named far off (a broken proxy, a hostile server) pauses it for
// MaxRateLimitPause at most, not for good.
func TestRateLimitPauseIsBounded(t *testing.T) {
	m := &Mirror{cfg: MirrorConfig{MinBackoff: time.Second, MaxBackoff: time.Minute}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, c := range []struct {
		until    time.Time
		min, max time.Duration
	}{
		{time.Now().Add(10 * time.Minute), 9 * time.Minute, 10 * time.Minute},
		{time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC), MaxRateLimitPause - time.Second, MaxRateLimitPause},
		{time.Now().Add(-time.Hour), 0, time.Second}, // a reset in the past: the backoff
	} {
		s := &sink{m: m, told: map[string]bool{}}
		w, stop := s.outcome(context.Background(), &RateLimitError{Until: c.until, Err: errors.New("429")}, "status")
		if !stop || w < c.min || w > c.max {
			t.Errorf("until %v: pause %v (stop %v), want within [%v, %v]", c.until, w, stop, c.min, c.max)
		}
	}
}
