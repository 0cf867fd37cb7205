package gitea

import (
	"testing"
	"time"
)

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		h    string
		want time.Time
	}{
		{"30", now.Add(30 * time.Second)},
		{"0", now},
		{"Mon, 07 Dec 2026 08:02:00 GMT", now.Add(2 * time.Minute)},
		{"Mon, 07 Dec 2026 07:00:00 GMT", now},
		{"", now.Add(rateLimitBackoff)},
		{"soon", now.Add(rateLimitBackoff)},
		{"-5", now.Add(rateLimitBackoff)},
	} {
		if got := retryAfter(tc.h, now); !got.Equal(tc.want) {
			t.Errorf("retryAfter(%q) = %s, want %s", tc.h, got, tc.want)
		}
	}
}
