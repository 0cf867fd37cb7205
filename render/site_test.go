package render

import (
	"strings"
	"testing"
	"time"

	"refci.dev/refci/queue"
)

func siteRuns() []RunSummary {
	var out []RunSummary
	for i, s := range []*queue.Status{failedRun(), failedRun(), successRun(), errorRun(), cancelledRun()} {
		s.Started = t0.Add(-time.Duration(i) * time.Hour)
		s.Run = s.Started.Format("20060102T150405.000Z") + "-00000" + string(rune('a'+i))
		ref := queue.RunRef(s.Target, s.Run)
		out = append(out, SummaryOf(s, ref, strings.Repeat("1", 40), "runs/"+s.Target+"/"+s.Run+"/index.html"))
	}
	out[2].Request = "alice/topic" // a success before the two failures
	return out
}

func TestListGolden(t *testing.T) {
	runs := siteRuns()
	idx, err := List(ListPage{Title: "refci: all runs", Runs: runs, States: []string{"failure", "error", "cancelled", "success"}, Filter: true})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "list_index", idx)
	if !strings.Contains(string(idx), `<td>alice/topic</td><td>2026-11-22T08:30:00Z (2 runs)</td>`) {
		t.Errorf("the request's failure streak is not dated from its first failing run")
	}
	commit, err := List(ListPage{Title: "refci: runs of x", Root: "../", Runs: runs[:3], Commit: runs[0].Target})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "list_commit", commit)
	if !strings.Contains(string(commit), "failure since 2026-11-22T08:30:00Z (2 runs)") {
		t.Errorf("commit history does not say since when")
	}
}

func TestBadgeGolden(t *testing.T) {
	golden(t, "badge_failure", Badge("refci pr/42", queue.Failure))
	golden(t, "badge_success", Badge("refci main", queue.Success))
	if b := string(Badge(`<x>&"`, queue.State("odd"))); strings.Contains(b, "<x>") || !strings.Contains(b, "unknown") {
		t.Errorf("badge not escaped: %s", b)
	}
}
