package results

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

func TestRetentionDecide(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	const a, b, c = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "cccccccccccccccccccccccccccccccccccccccc"
	// run makes a candidate of target that started ago before now; its
	// id's random part is n, so that runs of one time still differ.
	run := func(target, request string, ago time.Duration, n int, final bool) Candidate {
		id := queue.NewRunID(now.Add(-ago))
		id = id[:len(id)-12] + fmt.Sprintf("%012x", n)
		return Candidate{Run: Run{Ref: queue.RunRef(target, id), Target: target, ID: id, Future: queue.RunIDFuture(id, now)}, Request: request, Final: final}
	}
	day := 24 * time.Hour
	unreadable := run(a, "", 400*day, 9, false)
	unreadable.Request, unreadable.Err = "", errors.New("no status.json")
	badRef := Candidate{Run: Run{Ref: "refs/ci/runs/nonsense"}, Err: errors.New("not a run ref")}
	for _, tc := range []struct {
		name    string
		policy  Retention
		runs    []Candidate
		tips    []string
		claimed []int
		want    []Reason
	}{
		{"nothing", DefaultRetention, nil, nil, nil, []Reason{}},
		{"keep-last per request, newest first, whatever the order",
			Retention{KeepLast: 2},
			[]Candidate{run(a, "main", 300*day, 1, true), run(b, "main", 100*day, 2, true), run(a, "pr/1", 200*day, 3, true), run(c, "main", 200*day, 4, true), run(a, "pr/1", 500*day, 5, true)},
			nil, nil,
			[]Reason{Remove, Last, Last, Last, Last}},
		{"keep-days: younger than D days, the boundary excluded",
			Retention{KeepDays: 30},
			[]Candidate{run(a, "main", 29*day, 1, true), run(a, "main", 30*day, 2, true), run(a, "main", 31*day, 3, true)},
			nil, nil,
			[]Reason{Young, Remove, Remove}},
		{"the zero policy keeps only what is always kept",
			Retention{},
			[]Candidate{run(a, "main", time.Minute, 1, true), run(a, "main", 2*time.Minute, 2, true)},
			nil, nil,
			[]Reason{Remove, Remove}},
		{"a branch or tag's commit keeps the newest run of each of its requests",
			Retention{},
			[]Candidate{run(a, "main", 400*day, 1, true), run(a, "main", 300*day, 2, true), run(a, "nightly", 500*day, 3, true), run(b, "main", 10*day, 4, true)},
			[]string{a}, nil,
			[]Reason{Remove, Tip, Tip, Remove}},
		{"the newest believed run is the tip's: one not believed does not stand in for it",
			Retention{},
			[]Candidate{run(a, "main", 400*day, 1, true), unreadable},
			[]string{a}, nil,
			[]Reason{Tip, Unreadable}},
		{"a claimed run is kept whatever its age or state",
			Retention{},
			[]Candidate{run(a, "main", 400*day, 1, false), run(a, "main", 400*day, 2, true)},
			nil, []int{0, 1},
			[]Reason{Claimed, Claimed}},
		{"unfinished: kept for UnfinishedKept after it started, then it goes like any run",
			Retention{},
			[]Candidate{run(a, "main", UnfinishedKept-time.Minute, 1, false), run(a, "main", UnfinishedKept+time.Minute, 2, false), run(a, "main", time.Minute, 3, true)},
			nil, nil,
			[]Reason{Unfinished, Remove, Remove}},
		{"unreadable and unparsable refs are kept, and count for no request",
			Retention{KeepLast: 1},
			[]Candidate{unreadable, badRef, run(a, "main", 400*day, 1, true)},
			nil, nil,
			[]Reason{Unreadable, Unreadable, Last}},
		{"dated in the future: kept, and takes no place among the newest",
			Retention{KeepLast: 1},
			[]Candidate{run(a, "main", -48*time.Hour, 1, true), run(a, "main", 400*day, 2, true)},
			[]string{a}, nil,
			[]Reason{Future, Tip}},
		{"the first reason counts: claimed before tip before last before young",
			DefaultRetention,
			[]Candidate{run(a, "main", 1*day, 1, true), run(b, "main", 2*day, 2, true), run(c, "main", 3*day, 3, true)},
			[]string{b}, []int{0},
			[]Reason{Claimed, Tip, Last}},
		{"defaults: 10 per request, 90 days; a young run is among the newest too",
			DefaultRetention,
			func() []Candidate {
				var out []Candidate
				for i := 0; i < 12; i++ {
					out = append(out, run(c, "main", time.Duration(100+i)*day, i, true))
				}
				return append(out, run(c, "main", 89*day, 99, true), run(c, "other", 1000*day, 98, true))
			}(),
			nil, nil,
			[]Reason{Last, Last, Last, Last, Last, Last, Last, Last, Last, Remove, Remove, Remove, Last, Last}}, // the 89-day run is the newest
	} {
		t.Run(tc.name, func(t *testing.T) {
			tips, claimed := map[string]bool{}, map[string]bool{}
			for _, t := range tc.tips {
				tips[t] = true
			}
			for _, i := range tc.claimed {
				claimed[tc.runs[i].Ref] = true
			}
			got := []Reason{}
			for i, v := range tc.policy.Decide(tc.runs, tips, claimed, now) {
				if v.Ref != tc.runs[i].Ref {
					t.Fatalf("verdict %d is about %s, not %s", i, v.Ref, tc.runs[i].Ref)
				}
				got = append(got, v.Keep)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("Decide:\n got %v\nwant %v", got, tc.want)
			}
		})
	}
}

// TestRetentionOnRealRepositories reads runs written as a worker writes
// them, decides, and deletes locally and on a bare remote, with a run that
// moved between the look and the delete surviving both.
func TestRetentionOnRealRepositories(t *testing.T) {
	w, _ := identities(t)
	dir, target := repoWithCommit(t)
	other := fixtures.Git(t, dir, "commit-tree", "-m", "other", fixtures.Git(t, dir, "rev-parse", "HEAD^{tree}"))
	ids := map[string]string{}
	for i, name := range []string{"old1", "old2", "old3"} {
		ids[name] = runID(time.Duration(400-i) * 24 * time.Hour)
	}
	ids["new"] = runID(100 * 24 * time.Hour)
	ids["running"] = runID(300 * 24 * time.Hour)
	ids["claimed"] = runID(450 * 24 * time.Hour)
	publish(t, dir, status(other, ids["old1"], 1, queue.Success, w), gitproto.ZeroHash, w, "")
	publish(t, dir, status(other, ids["old2"], 1, queue.Failure, w), gitproto.ZeroHash, w, "")
	publish(t, dir, status(target, ids["old3"], 1, queue.Success, w), gitproto.ZeroHash, w, "")
	publish(t, dir, status(other, ids["new"], 1, queue.Success, w), gitproto.ZeroHash, w, "")
	publish(t, dir, status(other, ids["running"], 1, queue.Running, w), gitproto.ZeroHash, w, "")
	claimedRun := publish(t, dir, status(other, ids["claimed"], 1, queue.Running, w), gitproto.ZeroHash, w, "")
	claim := &queue.Claim{Format: queue.Format, Request: "topic", RequestObject: other, Target: other, Run: ids["claimed"], Attempt: 1, Worker: w.Fingerprint()}
	cj, err := queue.EncodeClaim(claim)
	if err != nil {
		t.Fatal(err)
	}
	repo := open(t, dir)
	blob, _ := repo.WriteBlob(cj)
	tree, _ := repo.WriteTree([]gitproto.TreeFile{{Path: queue.ClaimFile, Hash: blob}})
	cc, err := repo.WriteCommit(gitproto.CommitSpec{Tree: tree, Message: queue.ClaimMessage(claim), Author: gitproto.NewSignature("w", "w@example.invalid", time.Now())}, nil)
	if err != nil {
		t.Fatal(err)
	}
	fixtures.Git(t, dir, "update-ref", queue.ClaimRef("topic"), cc.String())
	// A result whose status.json was swapped for another run's: not believed.
	fixtures.Git(t, dir, "update-ref", queue.RunRef(other, runID(500*24*time.Hour)), claimedRun.String())
	bare := fixtures.BareRepo(t, "remote")
	fixtures.Git(t, dir, "push", "-q", bare, "refs/ci/*:refs/ci/*", "HEAD:refs/heads/main")

	check := func(where string, repo *gitproto.Repo, tips map[string]bool) []Verdict {
		t.Helper()
		inv, err := Look(context.Background(), repo)
		if err != nil {
			t.Fatal(err)
		}
		if len(inv.Runs) != 7 || !inv.Claimed[queue.RunRef(other, ids["claimed"])] || len(inv.Claimed) != 1 {
			t.Fatalf("%s: Look: %d runs, claimed %v", where, len(inv.Runs), inv.Claimed)
		}
		vs := Retention{KeepLast: 1}.Decide(inv.Runs, tips, inv.Claimed, time.Now())
		got := map[string]string{}
		for _, v := range vs {
			name := "bad"
			for n, id := range ids {
				if v.ID == id {
					name = n
				}
			}
			got[name] = v.Keep.String()
			if name != "bad" && (v.Request != "topic" || v.Err != nil) {
				t.Errorf("%s: run %s read as request %q, err %v", where, name, v.Request, v.Err)
			}
		}
		want := map[string]string{"old1": "removed", "old2": "removed", "old3": "latest on a branch or tag", "new": "newest of their request",
			"running": "removed", "claimed": "named by a claim", "bad": "unreadable"}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: verdicts\n got %v\nwant %v", where, got, want)
		}
		return vs
	}
	runsLeft := func(gitDir string) []string {
		out := strings.Fields(fixtures.Git(t, gitDir, "for-each-ref", "--format=%(refname)", queue.RunsPrefix))
		var names []string
		for _, ref := range out {
			for n, id := range ids {
				if strings.HasSuffix(ref, "/"+id) {
					names = append(names, n)
				}
			}
		}
		sort.Strings(names)
		return names
	}
	wantLeft := "[claimed new old3 running]" // running moved under the delete

	// Locally.
	vs := check("local", repo, map[string]bool{target: true})
	moved := publish(t, dir, status(other, ids["running"], 1, queue.Success, w), mustRef(t, dir, queue.RunRef(other, ids["running"])), w, "")
	rm, err := DeleteLocal(context.Background(), repo, vs)
	if err != nil {
		t.Fatal(err)
	}
	if len(rm.Deleted) != 2 || len(rm.Changed) != 1 || rm.Changed[0].ID != ids["running"] {
		t.Errorf("DeleteLocal: %+v", rm)
	}
	if got := fmt.Sprint(runsLeft(dir)); got != wantLeft {
		t.Errorf("local runs left: %s, want %s", got, wantLeft)
	}
	if h := mustRef(t, dir, queue.RunRef(other, ids["running"])); h != moved {
		t.Errorf("the moved run is at %s, not %s", h, moved)
	}

	// On a bare remote, through a cache the runs are fetched into.
	remote, err := gitproto.OpenRemote(bare, filepath.Join(t.TempDir(), "gc.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Fetch(context.Background(), "+refs/ci/runs/*:refs/ci/runs/*", "+refs/ci/claims/*:refs/ci/claims/*"); err != nil {
		t.Fatal(err)
	}
	tips, err := remote.ListTips(context.Background(), "refs/heads/", "refs/tags/")
	if err != nil {
		t.Fatal(err)
	}
	vs = check("remote", open(t, remote.Cache), TipSet(tips))
	fixtures.Git(t, dir, "push", "-q", "--force", bare, queue.RunRef(other, ids["running"])) // moves it on the remote
	rm, err = DeleteRemote(context.Background(), remote, vs)
	if err != nil {
		t.Fatal(err)
	}
	if len(rm.Deleted) != 2 || len(rm.Changed) != 1 || rm.Changed[0].ID != ids["running"] || len(rm.Refused) != 0 {
		t.Errorf("DeleteRemote: %+v", rm)
	}
	if got := fmt.Sprint(runsLeft(bare)); got != wantLeft {
		t.Errorf("remote runs left: %s, want %s", got, wantLeft)
	}
}

func mustRef(t *testing.T, dir, ref string) gitproto.Hash {
	t.Helper()
	return gitproto.NewHash(fixtures.Git(t, dir, "rev-parse", ref))
}
