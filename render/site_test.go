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
		sum := SummaryOf(s, ref, strings.Repeat("1", 40), "runs/"+s.Target+"/"+s.Run+"/index.html")
		sum.Verdict = Verdict{Kind: VerdictVerified, By: "Worker <w@example.invalid> (" + strings.Repeat("AB", 20) + ")"}
		out = append(out, sum)
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
	if !strings.Contains(string(idx), `<td>alice/topic</td><td class="since"><time datetime="2026-11-22T08:30:00Z">2026-11-22 08:30:00 UTC</time> (2 runs)</td>`) {
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

// A run that is not verified, or dated in the future, is listed with its
// verdict, never drawn in its state's colour, and never the latest of its
// request or the start of its commit's streak.
func TestListNeverTrustsUnverifiedRuns(t *testing.T) {
	runs := siteRuns()
	success := runs[2]
	for i, v := range []Verdict{
		{Kind: VerdictUnverified, Why: "signed by a key not in the keyring"},
		{Kind: VerdictInconsistent, Why: `status.json is about commit "<script>alert(1)</script>"`},
		{Kind: "odd", Why: "\x1b[31m"},
	} {
		r := success
		r.Started = t0.Add(time.Duration(i+1) * time.Hour)
		r.Run = r.Started.Format("20060102T150405.000Z") + "-00000f"
		r.Request = runs[0].Request
		r.Verdict = v
		runs = append([]RunSummary{r}, runs...)
	}
	future := runs[len(runs)-1]
	future.Run, future.Started, future.State, future.NotLatest = "20990101T000000Z-00000e", t0.Add(100*time.Hour), queue.Success, true
	future.Request = "x" // whose latest verified run was cancelled
	runs = append([]RunSummary{future}, runs...)
	idx, err := List(ListPage{Title: "all", Runs: runs, Filter: true})
	if err != nil {
		t.Fatal(err)
	}
	page := string(idx)
	latest, all, _ := strings.Cut(page, `<h2 id="runs">`)
	for _, want := range []string{`<span class="state s-failure">failure</span></td><td>alice/topic</td><td class="since"><time datetime="2026-11-22T08:30:00Z">2026-11-22 08:30:00 UTC</time> (2 runs)`,
		`<span class="state s-cancelled">cancelled</span></td><td>x</td>`} {
		if !strings.Contains(latest, want) {
			t.Errorf("a request's latest is not its newest verified run (%s):\n%s", want, latest)
		}
	}
	if strings.Contains(latest, `class="state s-success"`) || strings.Contains(latest, `class="state s-unverified"`) {
		t.Errorf("latest table shows a run that is not verified, or dated in the future:\n%s", latest)
	}
	for _, want := range []string{`<span class="state s-unverified">success (unverified)</span>`, `<span class="state s-unverified">success (inconsistent)</span>`,
		`<b>inconsistent:</b> status.json is about commit &#34;&lt;script&gt;alert(1)&lt;/script&gt;&#34;`, `<td class="verdict v-unverified">unverified</td>`,
		"3 of these runs are not verified"} {
		if !strings.Contains(all, want) {
			t.Errorf("list lacks %s", want)
		}
	}
	if !strings.Contains(all, `<span class="state s-unverified">success (dated in the future)</span>`) {
		t.Errorf("the run dated in the future is not marked")
	}
	if strings.Contains(page, "<script>alert") || strings.Contains(page, "\x1b") {
		t.Errorf("unescaped value in the page")
	}
	// A commit's streak starts at its newest verified run.
	commit, err := List(ListPage{Title: "c", Root: "../", Runs: runs[:6], Commit: runs[0].Target})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(commit), "failure since 2026-11-22T08:30:00Z (2 runs)") {
		t.Errorf("commit streak counts runs that are not verified:\n%s", commit)
	}
	// None verified: no latest table, and a note that says why.
	for i := range runs {
		runs[i].Verdict = Verdict{Kind: VerdictUnverified, Why: "no keys"}
	}
	idx, _ = List(ListPage{Title: "all", Runs: runs, Filter: true})
	if strings.Contains(string(idx), `class="state s-success"`) || !strings.Contains(string(idx), "No run here is verified by a trusted key") {
		t.Errorf("with nothing verified:\n%s", idx)
	}
}

func TestBadgeGolden(t *testing.T) {
	golden(t, "badge_failure", Badge("refci pr/42", queue.Failure))
	golden(t, "badge_success", Badge("refci main", queue.Success))
	if b := string(Badge(`<x>&"`, queue.State("odd"))); strings.Contains(b, "<x>") || !strings.Contains(b, "unknown") {
		t.Errorf("badge not escaped: %s", b)
	}
	if b := string(BadgeNoVerified("refci <pr>")); !strings.Contains(b, "not verified") || strings.Contains(b, "<pr>") || strings.Contains(b, "#1a7f37") {
		t.Errorf("badge of a request without a verified run: %s", b)
	}
}
