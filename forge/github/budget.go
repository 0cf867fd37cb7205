package github

import (
	"crypto/sha256"
	"sync"
	"time"
)

// GitHub's limits on content-creating requests (statuses, comments, their
// edits) per token, besides the hourly request limit: about 80 a minute
// and 500 an hour. Going on past them can get the token banned, so the
// adapter keeps under them itself and asks the mirror to wait instead.
const (
	WritesPerMinute = 80
	WritesPerHour   = 500
)

// budget counts one token's content-creating requests over the last hour.
// Safe for concurrent use.
type budget struct {
	mu    sync.Mutex
	times []time.Time // of the writes of the last hour, oldest first
}

// budgets are shared by every adapter of one token (a worker showing ten
// repositories with one token spends one budget).
var (
	budgetsMu sync.Mutex
	budgets   = map[[32]byte]*budget{}
)

func budgetOf(token string) *budget {
	budgetsMu.Lock()
	defer budgetsMu.Unlock()
	k := sha256.Sum256([]byte(token))
	b := budgets[k]
	if b == nil {
		b = &budget{}
		budgets[k] = b
	}
	return b
}

// take spends one write at now, or says until when none is left.
func (b *budget) take(now time.Time) (ok bool, until time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := 0
	for i < len(b.times) && now.Sub(b.times[i]) >= time.Hour {
		i++
	}
	b.times = b.times[i:]
	if len(b.times) >= WritesPerHour {
		return false, b.times[len(b.times)-WritesPerHour].Add(time.Hour)
	}
	inMinute := 0
	for j := len(b.times) - 1; j >= 0 && now.Sub(b.times[j]) < time.Minute; j-- {
		inMinute++
	}
	if inMinute >= WritesPerMinute {
		return false, b.times[len(b.times)-WritesPerMinute].Add(time.Minute)
	}
	b.times = append(b.times, now)
	return true, time.Time{}
}
