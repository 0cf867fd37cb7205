package github

import (
	"testing"
	"time"
)

func TestWriteBudget(t *testing.T) {
	var b budget
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < WritesPerMinute; i++ {
		if ok, _ := b.take(t0.Add(time.Duration(i) * time.Millisecond)); !ok {
			t.Fatalf("write %d refused within the minute's budget", i)
		}
	}
	ok, until := b.take(t0.Add(time.Second))
	if ok || !until.Equal(t0.Add(time.Minute)) {
		t.Fatalf("write 81 in a minute: %v until %s; want refused until %s", ok, until, t0.Add(time.Minute))
	}
	// Spread out, the hour's budget runs out at 500.
	var c budget
	for i := 0; i < WritesPerHour; i++ {
		if ok, _ := c.take(t0.Add(time.Duration(i) * 7 * time.Second)); !ok {
			t.Fatalf("write %d refused within the hour's budget", i)
		}
	}
	now := t0.Add(WritesPerHour * 7 * time.Second)
	if ok, until := c.take(now); ok || !until.Equal(t0.Add(time.Hour)) {
		t.Fatalf("write 501 in an hour: %v until %s; want refused until %s", ok, until, t0.Add(time.Hour))
	}
	if ok, _ := c.take(t0.Add(time.Hour)); !ok {
		t.Fatal("a write an hour after the first was refused")
	}
	if budgetOf("a") != budgetOf("a") || budgetOf("a") == budgetOf("b") {
		t.Fatal("budgets are not shared by token")
	}
}
