package site

import (
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/queue"
)

// The page a worker puts in a result tree shows the run, its logs and
// the tested commit's subject and author, escaped: a commit message is
// whatever its pusher wrote.
func TestResultPageShowsTheCommitEscaped(t *testing.T) {
	repo := newRepo(t)
	h := resultcommit.Commit(t, repo, map[string]string{"README": "hello\n"}, "Fix <script>alert(1)</script> & more\n\nThe body.", nil)
	target, err := repo.Commit(h)
	if err != nil {
		t.Fatal(err)
	}
	started := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	exit := 1
	st := &queue.Status{Format: queue.Format, State: queue.Failure, Target: h.String(), Request: "main", Run: queue.NewRunID(started),
		Attempt: 1, Started: started, Finished: started.Add(2 * time.Second), DurationMS: 2000, ExitCode: &exit,
		Jobs: []queue.Job{{Name: "test", State: queue.Failure, Log: "jobs/test/log.txt"}}}
	page, err := ResultPage(st, []byte("main log <b>line</b>\n"), map[string][]byte{"test": []byte("job log line\n")}, target)
	if err != nil {
		t.Fatal(err)
	}
	html := string(page)
	for _, want := range []string{queue.RunRef(st.Target, st.Run), "Fix &lt;script&gt;alert(1)&lt;/script&gt; &amp; more", "main log &lt;b&gt;line&lt;/b&gt;", "job log line", "failure"} {
		if !strings.Contains(html, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if strings.Contains(html, "<script>alert(1)") || strings.Contains(html, "<b>line</b>") {
		t.Error("the page holds the pusher's markup unescaped")
	}
	if author := target.Author.Name; author == "" || !strings.Contains(html, author) {
		t.Errorf("the page lacks the author %q", author)
	}
	// Without the commit (not in the repository) the page still renders,
	// without a subject.
	bare, err := ResultPage(st, nil, nil, nil)
	if err != nil || strings.Contains(string(bare), "Fix &lt;script&gt;") || !strings.Contains(string(bare), queue.RunRef(st.Target, st.Run)) {
		t.Errorf("the page without a commit: %v", err)
	}
}
