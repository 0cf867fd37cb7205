package results

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// A job's log is found by the job's name; a name the run has no job of
// is ErrNoLog, naming the jobs there are (made safe to print).
func TestOpenLog(t *testing.T) {
	w, _ := identities(t)
	dir, target := repoWithCommit(t)
	st := status(target, runID(time.Minute), 1, queue.Failure, w)
	st.Jobs = []queue.Job{{Name: "build", Log: "jobs/build.log"}, {Name: "te\x1bst", Log: "jobs/test.log"}}
	repo := open(t, dir)
	c := resultcommit.Write(t, repo, st, gitproto.ZeroHash, w, map[string]string{queue.LogFile: "whole\n", "jobs/build.log": "built\n", "jobs/test.log": "tested\n"})
	r := Run{Ref: queue.RunRef(target, st.Run), Target: target, ID: st.Run, Commit: c}
	for job, want := range map[string]string{"": "whole\n", "build": "built\n", "te\x1bst": "tested\n"} {
		rc, err := r.OpenLog(repo, st, job)
		if err != nil {
			t.Fatalf("OpenLog(%q): %v", job, err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || string(b) != want {
			t.Errorf("OpenLog(%q) = %q, %v; want %q", job, b, err, want)
		}
	}
	_, err := r.OpenLog(repo, st, "lint")
	if !errors.Is(err, ErrNoLog) {
		t.Fatalf("OpenLog(lint) = %v; want ErrNoLog", err)
	}
	if want := `run ` + st.Run + ` has no log for job "lint" (jobs: build, te\x1bst)`; err.Error() != want {
		t.Errorf("OpenLog(lint): %q\nwant %q", err, want)
	}
}

func TestListedLine(t *testing.T) {
	w, _ := identities(t)
	target := strings.Repeat("ab", 20)
	st := status(target, "20260101T000000Z-aaaa", 1, queue.Running, w)
	by := status(target, "20260101T010000Z-bbbb", 2, queue.Success, w)
	for _, tc := range []struct {
		l    Listed
		want string
	}{
		{Listed{Run: Run{ID: st.Run, Target: target}, Status: st}, "20260101T000000Z-aaaa  abababababab  running       0ms  topic"},
		{Listed{Run: Run{ID: st.Run, Target: target, Future: true}, Status: st}, "20260101T000000Z-aaaa  abababababab  running       0ms  topic  (dated in the future: never the latest)"},
		{Listed{Run: Run{ID: st.Run, Target: target}, Status: st, TakenOverBy: by}, "20260101T000000Z-aaaa  abababababab  error         0ms  topic  worker lost, taken over by 20260101T010000Z-bbbb"},
		{Listed{Run: Run{ID: st.Run, Target: target}, Err: errors.New("broken")}, "20260101T000000Z-aaaa  abababababab  " + Problem(errors.New("broken"))},
	} {
		if got := tc.l.Line(false); got != tc.want {
			t.Errorf("Line:\n got %q\nwant %q", got, tc.want)
		}
	}
}

// The Printer shows each event of a followed run; text from the remote
// cannot write control sequences; a configuration error's log is left to
// the summary; the final block ends the log first.
func TestPrinter(t *testing.T) {
	var log, notes, out bytes.Buffer
	ended := 0
	p := Printer{Log: &log, Notes: &notes, Out: &out, EndLog: func() { ended++ }, Remote: "origin"}
	target := strings.Repeat("ab", 20)
	st := &queue.Status{State: queue.Running, Target: target, Run: "r1", Attempt: 1, Worker: "w\x1b[2J"}
	events := []Event{
		{Kind: FetchFailed, Err: errors.New("timeout\nremote: \x1b]0;owned\x07")}, // git's text, with a remote's line
		{Kind: Waiting},
		{Kind: Started, Status: st},
		{Kind: Progress, Status: st, Log: []byte("step 1\n")},
		{Kind: Progress, Status: st, Log: []byte("tail\n"), LogCapped: true},
		{Kind: LeaseExpired, Claim: &queue.Claim{Worker: "w1", Run: "r1", LeaseExpires: time.Date(2026, 1, 1, 12, 0, 0, 0, time.Local)}},
		{Kind: TakenOver, From: "r1", FromAttempt: 1, To: "r2", ToAttempt: 2, ToWorker: "w2"},
		{Kind: Progress, Status: &queue.Status{State: queue.Error, Extra: map[string]any{queue.ExtraConfigError: true}}, Log: []byte("no .refci/run\n")},
	}
	for _, ev := range events {
		if p.Print(ev) {
			t.Fatalf("Print(%v) said final", ev.Kind)
		}
	}
	final := &queue.Status{State: queue.Failure, Target: target, Run: "r2", DurationMS: 2000, Reason: "job test failed"}
	if !p.Print(Event{Kind: Final, Status: final, Ref: "refs/ci/runs/x/r2"}) {
		t.Errorf("Print(Final) did not say final")
	}
	if want := "step 1\n\n[refci: the log was capped; showing its tail]\ntail\n"; log.String() != want {
		t.Errorf("log:\n%q\nwant\n%q", log.String(), want)
	}
	wantNotes := "refci: fetch from origin failed (retrying): timeout\nremote: \\x1b]0;owned\\x07\n" +
		"refci: waiting for the run to start (no worker has pushed its progress yet)\n" +
		"refci: run r1 (attempt 1) on worker w\\x1b[2J\n" +
		"\nrefci: worker w1 stopped renewing its claim on run r1 (the lease ran out at 12:00:00); waiting for another worker to take the request over\n" +
		"\nrefci: run r1 (attempt 1) lost its worker; run r2 (attempt 2) on worker w2 took the request over\n"
	if notes.String() != wantNotes {
		t.Errorf("notes:\n%s\nwant\n%s", notes.String(), wantNotes)
	}
	if ended != 2 {
		t.Errorf("EndLog called %d times; want 2 (takeover, final)", ended)
	}
	if o := out.String(); !strings.HasPrefix(o, "\nFAILURE") || !strings.HasSuffix(o, "refci: failure in 2.0s: job test failed\nrefci: result refs/ci/runs/x/r2\n") || strings.Count(o, "job test failed") != 1 {
		t.Errorf("final block:\n%s", o)
	}
}

func TestPrintClaimNote(t *testing.T) {
	var notes bytes.Buffer
	p := Printer{Notes: &notes, Remote: "origin"}
	p.PrintClaimNote("topic", Queued, ClaimView{})
	p.PrintClaimNote("topic", PushedAgain, ClaimView{Claim: &queue.Claim{Run: "r1"}})
	p.PrintClaimNote("topic", BadClaim, ClaimView{Bad: errors.New("bad\x1b[2J signature")})
	want := "refci: request topic is waiting for a worker\n" +
		"refci: request topic was pushed again; waiting for a worker to claim it (the claim there, run r1, is of the earlier push)\n" +
		"refci: the claim of topic on origin is not believed (bad\\x1b[2J signature); waiting for a worker to replace it\n"
	if notes.String() != want {
		t.Errorf("notes:\n%s\nwant\n%s", notes.String(), want)
	}
}

// ListPage pages a list newest first and says where each page lies; a
// page past the last is ErrPastLastPage, an empty list's first page is
// empty.
func TestListPage(t *testing.T) {
	w, _ := identities(t)
	dir, target := repoWithCommit(t)
	repo := open(t, dir)
	if p, err := ListPage(repo, target, 3, 1); err != nil || len(p.Runs) != 0 || p.Note() != "no runs of "+target[:12]+"; start one with 'refci run', or fetch its runs with: refci fetch "+target[:12] {
		t.Fatalf("no runs of a commit: %+v, %q, %v", p, p.Note(), err)
	}
	if p, err := ListPage(repo, "", 0, 1); err != nil || len(p.Runs) != 0 || !strings.HasPrefix(p.Note(), "no runs; ") {
		t.Fatalf("no runs at all: %+v, %q, %v", p, p.Note(), err)
	}
	var ids []string
	for i := 7; i > 0; i-- {
		st := status(target, runID(time.Duration(i)*time.Minute), 1, queue.Success, w)
		publish(t, dir, st, gitproto.ZeroHash, w, "")
		ids = append([]string{st.Run}, ids...) // newest first
	}
	var got []string
	for n, note := range []string{
		"runs 1-3 of 7, newest first; --page 2 for older ones, -n 0 for all",
		"runs 4-6 of 7, newest first; --page 3 for older ones, -n 0 for all",
		"runs 7-7 of 7, newest first (the last page)",
	} {
		p, err := ListPage(repo, target, 3, n+1)
		if err != nil || p.Note() != note {
			t.Errorf("page %d: %q, %v; want %q", n+1, p.Note(), err, note)
		}
		for _, l := range p.Runs {
			got = append(got, l.ID)
		}
	}
	if strings.Join(got, " ") != strings.Join(ids, " ") {
		t.Errorf("pages: %v\nwant %v", got, ids)
	}
	if p, err := ListPage(repo, "", 0, 1); err != nil || len(p.Runs) != 7 || p.Note() != "" {
		t.Errorf("all: %d runs, %q, %v", len(p.Runs), p.Note(), err)
	}
	if _, err := ListPage(repo, target, 3, 4); !errors.Is(err, ErrPastLastPage) || err.Error() != "page 4 is past the last one (7 runs, 3 a page)" {
		t.Errorf("past the last: %v", err)
	}
}

// Printer.Follow prints a run on a remote to its end and returns its
// final status; with ctx done it returns ctx's error.
func TestPrinterFollow(t *testing.T) {
	w, _ := identities(t)
	dir, target := repoWithCommit(t)
	bare := filepath.Join(t.TempDir(), "remote.git")
	fixtures.Git(t, dir, "init", "-q", "--bare", bare)
	id := runID(time.Minute)
	publish(t, dir, status(target, id, 1, queue.Success, w), gitproto.ZeroHash, w, "the log\n")
	fixtures.Git(t, dir, "push", "-q", bare, "refs/ci/*:refs/ci/*")
	clone := fixtures.NewRepo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var log, notes, out bytes.Buffer
	p := Printer{Log: &log, Notes: &notes, Out: &out, Remote: bare}
	src := Source{Dir: clone, Remote: bare}
	st, err := p.Follow(ctx, src.Follow(ctx, target, ThisRun(id, "")))
	if err != nil || st.Run != id || st.State != queue.Success {
		t.Fatalf("Follow: %+v, %v", st, err)
	}
	if log.String() != "the log\n" || !strings.Contains(notes.String(), "refci: run "+id) || !strings.HasSuffix(out.String(), "refci: result "+queue.RunRef(target, id)+"\n") {
		t.Errorf("printed:\nlog %q\nnotes %q\nout %q", log.String(), notes.String(), out.String())
	}
	done, stop := context.WithCancel(ctx)
	stop()
	if _, err := p.Follow(done, src.Follow(done, target, ThisRun(id, ""))); !errors.Is(err, context.Canceled) {
		t.Errorf("Follow with ctx done: %v", err)
	}
}
