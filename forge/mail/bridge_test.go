package mail

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	netmail "net/mail"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// store is an in-memory mail folder; each box reads it from the start.
type store struct {
	mu      sync.Mutex
	msgs    [][]byte
	changed chan struct{}
}

func newStore() *store { return &store{changed: make(chan struct{})} }

func (s *store) deliver(raws ...[]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, raws...)
	close(s.changed)
	s.changed = make(chan struct{})
}

// poke wakes the boxes waiting, as a lost IDLE notification's timer does.
func (s *store) poke() { s.deliver() }

func (s *store) box() *memBox { return &memBox{s: s} }

// memBox is a Mailbox on a store.
type memBox struct {
	s    *store
	next int
}

func (b *memBox) New(ctx context.Context) ([]Envelope, error) {
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	var out []Envelope
	for ; b.next < len(b.s.msgs); b.next++ {
		raw := b.s.msgs[b.next]
		out = append(out, Envelope{Key: fmt.Sprint(b.next), MessageID: firstID(headerOf(raw).Get("Message-Id")), Size: int64(len(raw))})
	}
	return out, nil
}

func (b *memBox) Fetch(ctx context.Context, e Envelope, max int64) ([]byte, error) {
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	var i int
	fmt.Sscan(e.Key, &i)
	if int64(len(b.s.msgs[i])) > max {
		return nil, ErrTooLarge
	}
	return append([]byte(nil), b.s.msgs[i]...), nil
}

func (b *memBox) Wait(ctx context.Context, d time.Duration) error {
	b.s.mu.Lock()
	ch, more := b.s.changed, b.next < len(b.s.msgs)
	b.s.mu.Unlock()
	if more {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-ch:
	case <-t.C:
	}
	return nil
}

func (b *memBox) Close() error { return nil }

// recSender records what it sends; fail, when set, decides the outcome
// of the nth call (from 1).
type recSender struct {
	mu    sync.Mutex
	calls int
	sent  []sentMail
	fail  func(n int) error
}

type sentMail struct {
	from string
	rcpt []string
	raw  []byte
}

func (s *recSender) Send(ctx context.Context, from string, rcpt []string, raw []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.fail != nil {
		if err := s.fail(s.calls); err != nil {
			return err
		}
	}
	s.sent = append(s.sent, sentMail{from, rcpt, raw})
	return nil
}

func (s *recSender) mails() []sentMail {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sentMail(nil), s.sent...)
}

// world is a remote with a project, its contributor's clone, a mail
// folder and a stand-in worker that runs every mailed request: failure
// when the tested tree holds FAIL, else success.
type world struct {
	t       *testing.T
	bare    string
	work    string
	base    string
	mail    *store
	running atomic.Bool
	clock   atomic.Int64 // the bridges' Now, in Unix nanoseconds
	logs    fixtures.Buffer
}

func newWorld(t *testing.T) *world {
	w := &world{t: t, mail: newStore()}
	w.work, w.base = branch(t)
	w.bare = fixtures.BareRepo(t, "remote.git")
	fixtures.Git(t, w.work, "push", "-q", w.bare, "main")
	w.clock.Store(time.Now().UnixNano())
	w.running.Store(true)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := fixtures.RunGit(w.bare, nil, nil, "for-each-ref")
			t.Logf("the bridges' log:\n%s\nthe remote's refs:\n%s", w.logs.String(), out)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() { defer close(done); w.worker(ctx) }()
	return w
}

func (w *world) now() time.Time { return time.Unix(0, w.clock.Load()) }

// worker is the stand-in worker: it polls the remote's mailed requests,
// publishes a result of each and deletes the request, as a worker does.
func (w *world) worker(ctx context.Context) {
	repo, err := gitproto.Open(w.bare)
	if err != nil {
		panic(err)
	}
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond): // a worker's poll
		}
		if !w.running.Load() {
			continue
		}
		reqs, err := repo.Refs(queue.RequestRef("patches/"))
		if err != nil {
			continue
		}
		for _, r := range reqs {
			out, err := fixtures.RunGit(w.bare, nil, nil, "rev-parse", r.Name+"^{commit}")
			if err != nil {
				continue
			}
			target := strings.TrimSpace(string(out))
			_, failErr := fixtures.RunGit(w.bare, nil, nil, "cat-file", "-e", target+":FAIL")
			st := &queue.Status{Format: queue.Format, State: queue.Success, Target: target, Request: strings.TrimPrefix(r.Name, queue.RequestsPrefix),
				RequestObject: r.Hash.String(), Run: queue.NewRunID(time.Now()), Attempt: 1, Worker: "0123456789abcdef0123456789abcdef01234567", Host: "build-1",
				Started: time.Now().UTC().Truncate(time.Millisecond), Artifacts: []queue.Artifact{}}
			st.Finished, st.DurationMS = st.Started.Add(1500*time.Millisecond), 1500
			code := 0
			files := map[string]string{queue.LogFile: "building\nok\n"}
			st.Jobs = []queue.Job{{Name: "test", State: queue.Success, ExitCode: &code}}
			if failErr == nil {
				st.State, code = queue.Failure, 1
				st.Jobs = []queue.Job{{Name: "test", State: queue.Failure, ExitCode: &code}}
				files[queue.JobLogPath("test")] = "=== RUN TestBuzz\n    buzz_test.go:9: got \"bee\", want \"buzz\"\n--- FAIL: TestBuzz\n"
			}
			st.ExitCode = &code
			resultcommit.Write(w.t, repo, st, gitproto.ZeroHash, nil, files)
			repo.UpdateRef(r.Name, gitproto.ZeroHash, r.Hash)
		}
	}
}

// bridge starts a bridge named name with its own directory dir ("" for
// a fresh one) on the world's mail and remote; stop ends it.
func (w *world) bridge(name, dir string, snd Sender, change func(*Config)) (b *Bridge, stop func()) {
	w.t.Helper()
	if dir == "" {
		dir = w.t.TempDir()
	}
	cfg := Config{Mailbox: w.mail.box(), Sender: snd, Remote: w.bare, Dir: dir, Bridge: name, From: "refci <ci@example.org>",
		FetchURL: "https://git.example.org/app.git", MailWait: 200 * time.Millisecond, RunsPoll: 100 * time.Millisecond,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&w.logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("bridge", name), Now: w.now}
	if change != nil {
		change(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	w.t.Cleanup(stop)
	return b, stop
}

// series formats the commits of rev as raw patch mail, dated as git
// send-email dates them: when sent (the world's clock), a second apart.
func (w *world) series(args ...string) [][]byte {
	w.t.Helper()
	out := w.t.TempDir()
	fixtures.Git(w.t, w.work, append([]string{"format-patch", "-q", "-o", out, "--to=ci@example.org", "--cc=list@example.org"}, args...)...)
	files, _ := filepath.Glob(filepath.Join(out, "*.patch"))
	sort.Strings(files)
	var raws [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			w.t.Fatal(err)
		}
		raws = append(raws, b)
	}
	for i := range raws {
		raws[i] = redate(raws[i], w.now().Add(time.Duration(i-len(raws))*time.Second))
	}
	return raws
}

// runs lists the remote's run refs.
func (w *world) runs() []string {
	out, _ := fixtures.RunGit(w.bare, nil, nil, "for-each-ref", "--format=%(refname)", queue.RunsPrefix)
	return strings.Fields(string(out))
}

func (w *world) ref(name string) string {
	out, _ := fixtures.RunGit(w.bare, nil, nil, "rev-parse", "-q", "--verify", name)
	return strings.TrimSpace(string(out))
}

// settle waits until b has made two more passes over the mail and two
// more looks at the runs: what was there before has been seen.
func settle(t *testing.T, bs ...*Bridge) {
	t.Helper()
	for _, b := range bs {
		p, l := b.passes.Load(), b.looks.Load()
		fixtures.WaitFor(t, 30*time.Second, "the bridge to look again", func() bool {
			return b.passes.Load() >= p+2 && b.looks.Load() >= l+2
		})
	}
}

func parseMail(t *testing.T, raw []byte) (*netmail.Message, string) {
	t.Helper()
	m, err := ParseMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	nm, err := netmail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return nm, m.Body
}

func waitMails(t *testing.T, s *recSender, n int) []sentMail {
	t.Helper()
	fixtures.WaitFor(t, 60*time.Second, fmt.Sprintf("%d replies", n), func() bool { return len(s.mails()) >= n })
	return s.mails()
}

// The whole path: a 3-patch series with a cover letter, delivered out of
// order with a stray reply, is applied on its base, asked for, run, and
// answered once in its thread; re-delivering it, restarting the bridge,
// and a second bridge at once change nothing.
func TestBridgeSeriesToReply(t *testing.T) {
	w := newWorld(t)
	mails := w.series("--base="+w.base, "--cover-letter", "--thread", "main..topic")
	if len(mails) != 4 {
		t.Fatalf("%d mails", len(mails))
	}
	cover, _ := ParseMessage(bytes.NewReader(mails[0]))
	stray := []byte("From: Bob <bob@example.org>\nTo: ci@example.org\nMessage-Id: <stray@example.org>\nIn-Reply-To: <" + cover.ID + ">\nSubject: Re: [PATCH 0/3] x\n\nLooks good.\n")
	w.mail.deliver(mails[2], stray, mails[3], mails[0], mails[1])
	snd := &recSender{}
	dir := t.TempDir()
	var asked atomic.Int64
	b, stop := w.bridge("one", dir, snd, func(c *Config) { c.Asked = func() { asked.Add(1) } })

	got := waitMails(t, snd, 1)
	if n := asked.Load(); n != 1 {
		t.Errorf("Asked called %d times for one request", n)
	}
	hdr, body := parseMail(t, got[0].raw)
	runs := w.runs()
	if len(runs) != 1 {
		t.Fatalf("runs %v", runs)
	}
	for k, want := range map[string]string{
		"Subject": "Re: [PATCH 0/3] *** SUBJECT HERE ***", "In-Reply-To": "<" + cover.ID + ">", "Auto-Submitted": "auto-replied",
		"X-Refci-State": "success", "X-Refci-Run": runs[0], "To": "\"Test Committer\" <committer@example.invalid>", "Cc": "<list@example.org>",
		"From": "\"refci\" <ci@example.org>", "Content-Type": "text/plain; charset=utf-8", "Content-Transfer-Encoding": "quoted-printable",
	} {
		if v := hdr.Header.Get(k); v != want {
			t.Errorf("%s: %q, want %q", k, v, want)
		}
	}
	if refs := hdr.Header.Get("References"); !strings.Contains(refs, "<"+cover.ID+">") {
		t.Errorf("References %q", refs)
	}
	if id := hdr.Header.Get("Message-Id"); !strings.HasSuffix(id, "@example.org>") || !strings.Contains(id, "run-") {
		t.Errorf("Message-Id %q", id)
	}
	if !sameStrings(got[0].rcpt, []string{"committer@example.invalid", "list@example.org"}) || got[0].from != "ci@example.org" {
		t.Errorf("envelope %q %q", got[0].from, got[0].rcpt)
	}
	// The applied series is the contributor's branch, kept on the remote.
	var req string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "as the request ") {
			req = strings.Fields(l)[3]
		}
	}
	head := w.ref(queue.MailSeriesRef(req))
	if head == "" || fixtures.Git(t, w.bare, "rev-parse", head+"^{tree}") != fixtures.Git(t, w.work, "rev-parse", "topic^{tree}") {
		t.Fatalf("kept head %q of %q: not the branch's tree", head, req)
	}
	if n := fixtures.Git(t, w.bare, "rev-list", "--count", w.base+".."+head); n != "3" {
		t.Errorf("%s commits on the base", n)
	}
	for _, want := range []string{"refci ran \"a: two\" (v1, 3 patches)", "on base " + w.base[:12] + " (the series' base-commit:): it passed in 1.5s.",
		"git fetch https://git.example.org/app.git " + runs[0] + " " + queue.MailSeriesRef(req), "git checkout --detach " + head, ".refci/run", "refci run " + head,
		"Mailed patches run untrusted"} {
		if !strings.Contains(body, want) {
			t.Errorf("the reply lacks %q:\n%s", want, body)
		}
	}

	// The request's tag and the applied commits are unsigned: mailed
	// patches never run trusted.
	if sig := fixtures.Git(t, w.bare, "log", "--format=%G?", w.base+".."+head); strings.Trim(sig, "N\n") != "" {
		t.Errorf("signatures %q", sig)
	}
	// Re-delivered: nothing more.
	w.mail.deliver(mails...)
	settle(t, b)
	// Restarted on the same directory, and a second bridge at once.
	stop()
	snd2 := &recSender{}
	b2, _ := w.bridge("one", dir, snd2, nil)
	b3, _ := w.bridge("two", "", snd2, nil)
	w.mail.deliver(mails[1])
	settle(t, b2, b3)
	if n := len(snd.mails()) + len(snd2.mails()); n != 1 {
		t.Errorf("%d replies, want 1", n)
	}
	if r := w.runs(); len(r) != 1 {
		t.Errorf("runs %v, want 1", r)
	}
	checkLedgerPaths(t, w)
}

// Two bridges start at once on one mailbox and remote: one run, one
// reply.
func TestBridgeTwoAtOnce(t *testing.T) {
	w := newWorld(t)
	w.mail.deliver(w.series("--base="+w.base, "--cover-letter", "--thread", "main..topic")...)
	s1, s2 := &recSender{}, &recSender{}
	b1, _ := w.bridge("one", "", s1, nil)
	b2, _ := w.bridge("two", "", s2, nil)
	fixtures.WaitFor(t, 60*time.Second, "a reply", func() bool { return len(s1.mails())+len(s2.mails()) >= 1 })
	settle(t, b1, b2)
	if n := len(s1.mails()) + len(s2.mails()); n != 1 {
		t.Errorf("%d replies, want 1", n)
	}
	if r := w.runs(); len(r) != 1 {
		t.Errorf("runs %v, want 1", r)
	}
}

func sameStrings(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n")
}

// checkLedgerPaths: every path of the ledger is a hash or a series id,
// never text from a mail.
func checkLedgerPaths(t *testing.T, w *world) {
	t.Helper()
	out := fixtures.Git(t, w.bare, "ls-tree", "-r", "--name-only", queue.MailLedgerRef("mail"))
	ok := regexp.MustCompile(`^((messages|replies|waiting)/[0-9a-f]{2}/[0-9a-f]{62}|series/[0-9a-f]{16}/v[0-9]+)$`)
	for _, p := range strings.Fields(out) {
		if !ok.MatchString(p) {
			t.Errorf("ledger path %q", p)
		}
	}
}

// A series that does not apply on the base branch gets one reply naming
// the patch, the base, git am's output and how to resend with --base.
func TestBridgeNotApplied(t *testing.T) {
	w := newWorld(t)
	mails := w.series("--cover-letter", "--thread", "main..topic") // no --base: main is used
	fixtures.Git(t, w.work, "checkout", "-q", "main")
	fixtures.WriteFile(t, w.work, "b.txt", "other\n", 0o644)
	main := fixtures.CommitAll(t, w.work, "b: other")
	fixtures.Git(t, w.work, "push", "-q", w.bare, "main")
	w.mail.deliver(mails...)
	snd := &recSender{}
	b, _ := w.bridge("one", "", snd, nil)
	got := waitMails(t, snd, 1)
	hdr, body := parseMail(t, got[0].raw)
	if s := hdr.Header.Get("X-Refci-State"); s != "not-applied" || hdr.Header.Get("X-Refci-Run") != "" {
		t.Errorf("state %q", s)
	}
	for _, want := range []string{"Patch 2 of 3 (\"[PATCH 2/3] b: add\") does not apply on base " + main[:12] + " (branch main",
		"git am --3way said:", "conflicts in: b.txt", "--base=FETCH_HEAD", "git send-email --to=ci@example.org"} {
		if !strings.Contains(body, want) {
			t.Errorf("the reply lacks %q:\n%s", want, body)
		}
	}
	settle(t, b)
	if n := len(snd.mails()); n != 1 || len(w.runs()) != 0 {
		t.Errorf("%d replies, runs %v", n, w.runs())
	}
}

// A series missing a patch is waited for, then answered once with what
// is missing.
func TestBridgeIncomplete(t *testing.T) {
	w := newWorld(t)
	mails := w.series("--base="+w.base, "--cover-letter", "--thread", "main..topic")
	w.mail.deliver(mails[0], mails[1], mails[3])
	snd := &recSender{}
	b, _ := w.bridge("one", "", snd, nil)
	settle(t, b)
	if n := len(snd.mails()); n != 0 {
		t.Fatalf("%d replies before the timeout", n)
	}
	w.clock.Add(int64(31 * time.Minute))
	w.mail.poke()
	got := waitMails(t, snd, 1)
	hdr, body := parseMail(t, got[0].raw)
	if s := hdr.Header.Get("X-Refci-State"); s != "incomplete" {
		t.Errorf("state %q", s)
	}
	if !strings.Contains(body, "patch 2 of 3 had not arrived") || !strings.Contains(body, "format-patch -v2") {
		t.Errorf("body:\n%s", body)
	}
	// The missing patch, too late: the series was answered.
	w.mail.deliver(mails[2])
	settle(t, b)
	w.clock.Add(int64(31 * time.Minute))
	w.mail.poke()
	settle(t, b)
	if n := len(snd.mails()); n != 1 || len(w.runs()) != 0 {
		t.Errorf("%d replies, runs %v", n, w.runs())
	}
}

// The wait for the rest of a series runs from when a bridge first saw
// it, as the ledger records it: a bridge restarted 20 minutes into the
// wait replies 10 minutes later, not 30; once the series is answered
// nothing of it waits in the ledger.
func TestBridgeIncompleteClockSurvivesRestart(t *testing.T) {
	w := newWorld(t)
	mails := w.series("--base="+w.base, "--cover-letter", "--thread", "main..topic")
	w.mail.deliver(mails[0], mails[1], mails[3])
	snd := &recSender{}
	dir := t.TempDir()
	b, stop := w.bridge("one", dir, snd, nil)
	waiting := func() int {
		out, _ := fixtures.RunGit(w.bare, nil, nil, "ls-tree", "-r", "--name-only", queue.MailLedgerRef("mail"))
		return strings.Count(string(out), "waiting/")
	}
	fixtures.WaitFor(t, 60*time.Second, "the waiting messages recorded", func() bool { return waiting() == 3 })
	settle(t, b)
	w.clock.Add(int64(20 * time.Minute))
	settle(t, b)
	stop()
	if n := len(snd.mails()); n != 0 {
		t.Fatalf("%d replies before the timeout", n)
	}
	b2, _ := w.bridge("one", dir, snd, nil)
	settle(t, b2)
	if n := len(snd.mails()); n != 0 {
		t.Fatalf("%d replies 20 minutes into the wait", n)
	}
	w.clock.Add(int64(11 * time.Minute))
	w.mail.poke()
	got := waitMails(t, snd, 1)
	if hdr, _ := parseMail(t, got[0].raw); hdr.Header.Get("X-Refci-State") != "incomplete" {
		t.Errorf("state %q", hdr.Header.Get("X-Refci-State"))
	}
	if n := waiting(); n != 0 {
		t.Errorf("%d messages still waiting in the ledger after the series was answered", n)
	}
	checkLedgerPaths(t, w)
}

// v2, sent in reply to v1's cover letter, supersedes v1: v1's request is
// deleted before it ran, and only v2 runs and is answered.
func TestBridgeSupersedes(t *testing.T) {
	w := newWorld(t)
	w.running.Store(false)
	v1 := w.series("--base="+w.base, "--cover-letter", "--thread", "main..topic")
	cover, _ := ParseMessage(bytes.NewReader(v1[0]))
	w.mail.deliver(v1...)
	snd := &recSender{}
	b, _ := w.bridge("one", "", snd, nil)
	var name string
	fixtures.WaitFor(t, 60*time.Second, "v1's request", func() bool {
		out, _ := fixtures.RunGit(w.bare, nil, nil, "for-each-ref", "--format=%(refname)", queue.RequestRef("patches/"))
		name = strings.TrimSpace(string(out))
		return name != ""
	})
	if !strings.HasSuffix(name, "/v1") {
		t.Fatalf("request %q", name)
	}
	time.Sleep(1100 * time.Millisecond) // git's Message-Ids hold the time in seconds
	fixtures.Git(t, w.work, "checkout", "-q", "topic")
	fixtures.WriteFile(t, w.work, "FAIL", "yes\n", 0o644)
	fixtures.CommitAll(t, w.work, "b: buzz louder")
	v2 := w.series("-v2", "--base="+w.base, "--cover-letter", "--thread", "--in-reply-to="+cover.ID, "main..topic")
	w.mail.deliver(v2...)
	v2name := strings.TrimSuffix(name, "/v1") + "/v2"
	fixtures.WaitFor(t, 60*time.Second, "v2's request, v1's gone", func() bool { return w.ref(v2name) != "" && w.ref(name) == "" })
	w.running.Store(true)
	got := waitMails(t, snd, 1)
	hdr, body := parseMail(t, got[0].raw)
	if s := hdr.Header.Get("X-Refci-State"); s != "failure" || !strings.Contains(hdr.Header.Get("Subject"), "[PATCH v2 0/4]") {
		t.Errorf("state %q subject %q", s, hdr.Header.Get("Subject"))
	}
	if !strings.Contains(body, "it FAILED: job test failed.") || !strings.Contains(body, `got "bee", want "buzz"`) {
		t.Errorf("body:\n%s", body)
	}
	settle(t, b)
	if n := len(snd.mails()); n != 1 || len(w.runs()) != 1 {
		t.Errorf("%d replies, runs %v", n, w.runs())
	}
	// Both versions delivered again to a fresh bridge: nothing more.
	w.mail.deliver(v1...)
	w.mail.deliver(v2...)
	b2, _ := w.bridge("two", "", snd, nil)
	settle(t, b, b2)
	if n := len(snd.mails()); n != 1 || len(w.runs()) != 1 {
		t.Errorf("after re-delivery: %d replies, runs %v", n, w.runs())
	}
}

// v1 and v2 arrive together: only v2 is tested, and v1's mail is
// recorded as superseded, so a restart does not test it either.
func TestBridgeSupersededBeforeTested(t *testing.T) {
	w := newWorld(t)
	v1 := w.series("--base="+w.base, "--cover-letter", "--thread", "main..topic")
	cover, _ := ParseMessage(bytes.NewReader(v1[0]))
	time.Sleep(1100 * time.Millisecond) // git's Message-Ids hold the time in seconds
	fixtures.Git(t, w.work, "commit", "-q", "--amend", "-m", "b: buzz louder")
	v2 := w.series("-v2", "--base="+w.base, "--cover-letter", "--thread", "--in-reply-to="+cover.ID, "main..topic")
	w.mail.deliver(append(v1, v2...)...)
	snd := &recSender{}
	dir := t.TempDir()
	b, stop := w.bridge("one", dir, snd, nil)
	got := waitMails(t, snd, 1)
	settle(t, b)
	stop()
	b2, _ := w.bridge("one", dir, snd, nil)
	settle(t, b2)
	got = snd.mails()
	if len(got) != 1 || len(w.runs()) != 1 {
		t.Fatalf("%d replies, runs %v", len(got), w.runs())
	}
	if hdr, _ := parseMail(t, got[0].raw); !strings.Contains(hdr.Header.Get("Subject"), "PATCH v2") {
		t.Errorf("subject %q", hdr.Header.Get("Subject"))
	}
}

// A reply that fails to go is retried until it goes, once; one refused
// for good is logged and recorded, never retried.
func TestBridgeSenderFailures(t *testing.T) {
	for _, permanent := range []bool{false, true} {
		t.Run(fmt.Sprint("permanent=", permanent), func(t *testing.T) {
			w := newWorld(t)
			w.mail.deliver(w.series("--base="+w.base, "--thread", "main..topic")...)
			snd := &recSender{fail: func(n int) error {
				if permanent {
					return &PermanentError{Code: 550, Msg: "no such user"}
				}
				if n <= 2 {
					return fmt.Errorf("421 try again later")
				}
				return nil
			}}
			b, _ := w.bridge("one", "", snd, nil)
			want := replySent
			if permanent {
				want = replyFailed
			}
			var rec replyRecord
			fixtures.WaitFor(t, 60*time.Second, "the reply recorded "+want, func() bool {
				found := false
				b.ledger.view(context.Background(), func(tx *ledgerTx) {
					for p := range tx.files {
						if strings.HasPrefix(p, "replies/") && tx.get(p, &rec) && rec.State == want {
							found = true
						}
					}
				})
				return found
			})
			settle(t, b)
			snd.mu.Lock()
			calls, sent := snd.calls, len(snd.sent)
			snd.mu.Unlock()
			if permanent {
				if calls != 1 || sent != 0 || !strings.Contains(rec.Error, "550") {
					t.Errorf("calls %d, sent %d, record %+v", calls, sent, rec)
				}
				if n := strings.Count(w.logs.String(), "refused a reply for good"); n != 1 {
					t.Errorf("logged %d times:\n%s", n, w.logs.String())
				}
				return
			}
			if calls != 3 || sent != 1 || rec.Attempts != 3 {
				t.Errorf("calls %d, sent %d, attempts %d", calls, sent, rec.Attempts)
			}
		})
	}
}

// Hostile and odd mail: each gets one clear outcome and the bridge goes
// on with the next.
func TestBridgeHostileMail(t *testing.T) {
	w := newWorld(t)
	patch := func(id, path string) []byte {
		return []byte("From: Mallory <m@example.org>\nTo: ci@example.org\nMessage-Id: <" + id + ">\nDate: " + time.Now().Format(time.RFC1123Z) +
			"\nSubject: [PATCH] touch " + path + "\n\nwhy\n---\ndiff --git a/" + path + " b/" + path +
			"\nnew file mode 100644\n--- /dev/null\n+++ b/" + path + "\n@@ -0,0 +1 @@\n+boom\n")
	}
	html := []byte("From: Ann <ann@example.org>\nTo: ci@example.org\nMessage-Id: <html@example.org>\nDate: " + time.Now().Format(time.RFC1123Z) + "\nSubject: [PATCH] in html\nContent-Type: text/html\n\n<p>diff --git a/x b/x</p>\n")
	big := append(patch("big@example.org", "big.txt"), bytes.Repeat([]byte("+x\n"), 40000)...)
	noBase := []byte(strings.Replace(string(patch("nobase@example.org", "n.txt")), "+boom\n", "+boom\n-- \nbase-commit: 1234567890123456789012345678901234567890\n", 1))
	noBase = []byte(strings.Replace(string(noBase), "-- \nbase-commit", "\nbase-commit", 1))
	w.mail.deliver(patch("evil@example.org", ".git/config"), html, big, patch("\xc3\xa9@example.org", "e.txt"), noBase)
	snd := &recSender{}
	b, _ := w.bridge("one", "", snd, func(c *Config) { c.MaxMessage = 64 << 10 })
	got := waitMails(t, snd, 3)
	// Our own reply delivered back (a loop), and an odd but printable
	// Message-ID, which is tested: the ledger names it by its hash.
	w.mail.deliver(got[0].raw, patch(`../../x/.git/config"$(id)@example.org`, "ok.txt"))
	waitMails(t, snd, 4)
	settle(t, b)
	got = snd.mails()
	if len(got) != 4 {
		t.Fatalf("%d replies, want 4", len(got))
	}
	states := map[string]string{}
	for _, m := range got {
		hdr, body := parseMail(t, m.raw)
		states[hdr.Header.Get("In-Reply-To")] = hdr.Header.Get("X-Refci-State") + ": " + body
	}
	if s := states["<evil@example.org>"]; !strings.HasPrefix(s, "not-applied") || !strings.Contains(s, "inside .git") {
		t.Errorf(".git/config: %s", s)
	}
	if s := states["<nobase@example.org>"]; !strings.HasPrefix(s, "not-applied") || !strings.Contains(s, "its base, commit 1234567890123456789012345678901234567890 (the series' base-commit:), is not on https://git.example.org/app.git") {
		t.Errorf("unknown base: %s", s)
	}
	if s := states["<html@example.org>"]; !strings.HasPrefix(s, "not-applied") || !strings.Contains(s, "plain text") {
		t.Errorf("html: %s", s)
	}
	if s := states[`<../../x/.git/config"$(id)@example.org>`]; !strings.HasPrefix(s, "success") {
		t.Errorf("odd Message-ID: %s", s)
	}
	logs := w.logs.String()
	for _, want := range []string{"over the size cap", "our own mail (a loop)", "printable ASCII"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q:\n%s", want, logs)
		}
	}
	if len(w.runs()) != 1 {
		t.Errorf("runs %v", w.runs())
	}
	checkLedgerPaths(t, w)
}

// A reply owed when its bridge stops is sent by that bridge when it
// restarts, and by no other bridge until the lease of the one that owes
// it runs out; then by exactly one.
func TestBridgeOwedReplySurvivesRestart(t *testing.T) {
	w := newWorld(t)
	w.mail.deliver(w.series("--base="+w.base, "--thread", "main..topic")...)
	down := &recSender{fail: func(int) error { return fmt.Errorf("connection refused") }}
	dir := t.TempDir()
	b, stop := w.bridge("one", dir, down, nil)
	owed := func(b *Bridge) (r replyRecord) {
		b.ledger.view(context.Background(), func(tx *ledgerTx) {
			for p := range tx.files {
				if strings.HasPrefix(p, "replies/") {
					tx.get(p, &r)
				}
			}
		})
		return r
	}
	fixtures.WaitFor(t, 60*time.Second, "a failed attempt recorded", func() bool { r := owed(b); return r.State == replyPending && r.Attempts >= 1 })
	stop()

	// Another bridge leaves it while the lease holds.
	other := &recSender{}
	b2, stop2 := w.bridge("two", "", other, nil)
	settle(t, b2)
	if n := len(other.mails()); n != 0 {
		t.Fatalf("another bridge sent %d replies owed by a live lease", n)
	}
	stop2()

	// The same bridge, restarted, sends it at once.
	up := &recSender{}
	b3, stop3 := w.bridge("one", dir, up, nil)
	waitMails(t, up, 1)
	fixtures.WaitFor(t, 60*time.Second, "the reply recorded sent", func() bool { return owed(b3).State == replySent })
	stop3()
	if n := len(up.mails()); n != 1 {
		t.Errorf("%d replies", n)
	}

	// A lease that ran out: one of two other bridges takes it over.
	w2 := newWorld(t)
	w2.mail.deliver(w2.series("--base="+w2.base, "--thread", "main..topic")...)
	b4, stop4 := w2.bridge("gone", "", down, nil)
	fixtures.WaitFor(t, 60*time.Second, "a failed attempt recorded", func() bool { return owed(b4).Attempts >= 1 })
	stop4()
	w2.clock.Add(int64(16 * time.Minute))
	s5, s6 := &recSender{}, &recSender{}
	b5, _ := w2.bridge("five", "", s5, nil)
	b6, _ := w2.bridge("six", "", s6, nil)
	fixtures.WaitFor(t, 60*time.Second, "a reply", func() bool { return len(s5.mails())+len(s6.mails()) >= 1 })
	settle(t, b5, b6)
	if n := len(s5.mails()) + len(s6.mails()); n != 1 {
		t.Errorf("%d replies after the takeover, want 1", n)
	}
}

// A series claimed by a bridge that died before asking for it is left
// while the claim's lease holds, then taken over and tested once.
func TestBridgeStaleClaim(t *testing.T) {
	w := newWorld(t)
	mails := w.series("--base="+w.base, "--cover-letter", "--thread", "main..topic")
	var msgs []*Message
	for _, raw := range mails {
		m, _ := ParseMessage(bytes.NewReader(raw))
		msgs = append(msgs, m)
	}
	key := seriesKey(Group(msgs)[0].ID, 1)
	l := newLedger(t, w.bare, "gone")
	if err := l.update(context.Background(), "claim", func(tx *ledgerTx) {
		tx.put(seriesPath(key), seriesRecord{V: ledgerFormat, State: seriesClaimed, By: "gone", Claimed: w.now(), Updated: w.now()})
	}); err != nil {
		t.Fatal(err)
	}
	w.mail.deliver(mails...)
	snd := &recSender{}
	b, _ := w.bridge("one", "", snd, nil)
	settle(t, b)
	if r := w.runs(); len(r) != 0 || w.ref(queue.MailSeriesRef("patches/"+key)) != "" {
		t.Fatalf("a series claimed by a live bridge was taken: runs %v", r)
	}
	w.clock.Add(int64(16 * time.Minute))
	w.mail.poke()
	waitMails(t, snd, 1)
	settle(t, b)
	if n := len(snd.mails()); n != 1 || len(w.runs()) != 1 {
		t.Errorf("%d replies, runs %v", n, w.runs())
	}
}

// A bridge that stopped between asking for a series and recording it:
// restarted, it takes its claim up again and keeps the request it
// pushed (no second run), or, when that request ran meanwhile, the run.
func TestBridgeRestartAfterAsking(t *testing.T) {
	for _, ran := range []bool{false, true} {
		t.Run(fmt.Sprint("ran=", ran), func(t *testing.T) {
			w := newWorld(t)
			w.running.Store(false)
			w.mail.deliver(w.series("--base="+w.base, "--cover-letter", "--thread", "main..topic")...)
			snd := &recSender{}
			dir := t.TempDir()
			b, stop := w.bridge("one", dir, snd, nil)
			var name string
			fixtures.WaitFor(t, 60*time.Second, "the request", func() bool {
				out, _ := fixtures.RunGit(w.bare, nil, nil, "for-each-ref", "--format=%(refname)", queue.RequestRef("patches/"))
				name = strings.TrimSpace(string(out))
				return name != ""
			})
			fixtures.WaitFor(t, 60*time.Second, "the series recorded", func() bool {
				requested := false
				b.ledger.view(context.Background(), func(tx *ledgerTx) {
					for _, r := range tx.allSeries() {
						requested = requested || r.State == seriesRequested
					}
				})
				return requested
			})
			stop()
			req := w.ref(name)
			// Back to the ledger as it was before the series was
			// recorded: claimed, its mail not recorded.
			l := newLedger(t, w.bare, "test")
			msgs := strings.Fields(fixtures.Git(t, w.bare, "ls-tree", "-r", "--name-only", queue.MailLedgerRef("mail"), "messages/"))
			if err := l.update(context.Background(), "undo", func(tx *ledgerTx) {
				for _, p := range msgs {
					tx.remove(p)
				}
				for key, r := range tx.allSeries() {
					r.State, r.Head, r.Request, r.RequestObject = seriesClaimed, "", "", ""
					tx.put(seriesPath(key), r)
				}
			}); err != nil {
				t.Fatal(err)
			}
			if ran {
				w.running.Store(true)
				fixtures.WaitFor(t, 60*time.Second, "the run", func() bool { return len(w.runs()) == 1 })
				w.running.Store(false)
			}
			b2, _ := w.bridge("one", dir, snd, nil)
			settle(t, b2)
			if now := w.ref(name); !ran && now != req {
				t.Errorf("the request was pushed again: %s, was %s", now, req)
			}
			w.running.Store(true)
			waitMails(t, snd, 1)
			settle(t, b2)
			if n := len(snd.mails()); n != 1 || len(w.runs()) != 1 {
				t.Errorf("%d replies, runs %v", n, w.runs())
			}
		})
	}
}

// Config.Env reaches every git the bridge runs on the remote (the
// ledger, the request's push, the results): a remote only that
// environment leads to works end to end.
func TestBridgeEnv(t *testing.T) {
	w := newWorld(t)
	w.mail.deliver(w.series("--base="+w.base, "--cover-letter", "--thread", "main..topic")...)
	snd := &recSender{}
	const name = "forge.invalid:org/app.git"
	w.bridge("one", "", snd, func(c *Config) {
		c.Remote = name
		c.Env = []string{"GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=url." + w.bare + ".insteadOf", "GIT_CONFIG_VALUE_0=" + name}
	})
	got := waitMails(t, snd, 1)
	if hdr, body := parseMail(t, got[0].raw); hdr.Header.Get("X-Refci-State") != "success" || len(w.runs()) != 1 {
		t.Errorf("state %q, runs %v:\n%s", hdr.Header.Get("X-Refci-State"), w.runs(), body)
	}
}

// redate sets the Date header of a raw mail.
func redate(raw []byte, d time.Time) []byte {
	return regexp.MustCompile(`(?m)^Date: .*$`).ReplaceAll(raw, []byte("Date: "+d.Format(time.RFC1123Z)))
}

// Retention: mail dated before the horizon, or too far ahead, is not
// tested (logged and recorded as ignored); once its records are past the
// horizon a compaction drops them, and the mail, still in the mailbox and
// read again by a fresh bridge, is not tested or answered again.
func TestBridgeRetention(t *testing.T) {
	w := newWorld(t)
	const days = 24 * time.Hour
	keep := func(c *Config) { c.Retention = 10 * days }
	old := w.series("--base="+w.base, "--thread", "-v2", "main..topic")
	ahead := w.series("--base="+w.base, "--thread", "-v3", "main..topic")
	for i := range old {
		// Message-IDs of their own: format-patch's are made of the
		// commit and the second it ran.
		old[i] = redate(bytes.Replace(old[i], []byte(".git.committer@"), []byte(".old.committer@"), -1), w.now().Add(-11*days))
		ahead[i] = redate(bytes.Replace(ahead[i], []byte(".git.committer@"), []byte(".ahead.committer@"), -1), w.now().Add(2*days))
	}
	w.mail.deliver(append(old, ahead...)...)
	snd := &recSender{}
	b, stop := w.bridge("one", "", snd, keep)
	settle(t, b)
	if n, runs := len(snd.mails()), w.runs(); n != 0 || len(runs) != 0 {
		t.Fatalf("mail dated outside the retention: %d replies, runs %v", n, runs)
	}
	if logs := w.logs.String(); !strings.Contains(logs, "longer ago than the ledger's retention") || !strings.Contains(logs, "more than a day ahead") {
		t.Errorf("no log line says why:\n%s", logs)
	}
	ledgerFiles := func() []string {
		out, _ := fixtures.RunGit(w.bare, nil, nil, "ls-tree", "-r", "--name-only", queue.MailLedgerRef("mail"))
		return strings.Fields(string(out))
	}
	if n := len(ledgerFiles()); n != len(old)+len(ahead) {
		t.Errorf("%d ledger records, want the %d messages ignored", n, len(old)+len(ahead))
	}

	// A series in time is tested and answered.
	w.mail.deliver(w.series("--base="+w.base, "--thread", "main..topic")...)
	waitMails(t, snd, 1)
	settle(t, b)
	stop()

	// Past the horizon: a fresh bridge compacts, reads every mail again,
	// and tests none.
	w.clock.Add(int64(12 * days))
	snd2 := &recSender{}
	b2, _ := w.bridge("two", "", snd2, keep)
	settle(t, b2)
	if n, runs := len(snd2.mails()), w.runs(); n != 0 || len(runs) != 1 {
		t.Errorf("after the compaction: %d replies, runs %v", n, runs)
	}
	for _, p := range ledgerFiles() {
		if !strings.HasPrefix(p, "messages/") {
			t.Errorf("%s kept past the horizon", p)
		}
	}
	var why []string
	b2.ledger.view(context.Background(), func(tx *ledgerTx) {
		for _, p := range ledgerFiles() {
			var r msgRecord
			if tx.get(p, &r) {
				why = append(why, r.Why)
				if !r.At.Equal(w.now().UTC()) {
					t.Errorf("%s recorded at %s, not at its new reading", p, r.At)
				}
			}
		}
	})
	if len(why) != 3*len(old) || !strings.Contains(strings.Join(why, "\n"), "retention") {
		t.Errorf("records after the compaction: %q", why)
	}
	checkLedgerPaths(t, w)
}

// Compaction drops what is past the horizon and done, and keeps what is
// not done (a claim, a series whose reply is not recorded, a reply owed)
// however old.
func TestLedgerCompaction(t *testing.T) {
	w := newWorld(t)
	now := w.now()
	const days = 24 * time.Hour
	b, err := New(Config{Mailbox: w.mail.box(), Sender: &recSender{}, Remote: w.bare, Dir: t.TempDir(), Bridge: "one",
		From: "ci@example.org", Retention: 10 * days, Now: w.now})
	if err != nil {
		t.Fatal(err)
	}
	oldT, newT := now.Add(-12*days).UTC(), now.Add(-10*days).UTC()
	want := map[string]bool{} // path: kept
	ctx := context.Background()
	if err := b.ledger.update(ctx, "fill", func(tx *ledgerTx) {
		put := func(p string, v any, kept bool) { tx.put(p, v); want[p] = kept }
		put(msgPath("id:old"), msgRecord{V: ledgerFormat, Outcome: msgIgnored, At: oldT}, false)
		put(msgPath("id:new"), msgRecord{V: ledgerFormat, Outcome: msgIgnored, At: newT}, true)
		put(waitPath("w-old"), waitRecord{V: ledgerFormat, ID: "w-old", At: oldT}, false)
		put(waitPath("w-new"), waitRecord{V: ledgerFormat, ID: "w-new", At: newT}, true)
		put(seriesPath("0000000000000001/v1"), seriesRecord{V: ledgerFormat, State: seriesRequested, Updated: oldT, Reply: "r1"}, false)
		put(replyPath("r1"), replyRecord{V: ledgerFormat, MessageID: "r1", State: replySent, Updated: oldT}, false)
		put(seriesPath("0000000000000002/v1"), seriesRecord{V: ledgerFormat, State: seriesClaimed, Updated: oldT}, true)
		put(seriesPath("0000000000000003/v1"), seriesRecord{V: ledgerFormat, State: seriesRequested, Updated: oldT}, true)
		put(seriesPath("0000000000000004/v1"), seriesRecord{V: ledgerFormat, State: seriesNotApplied, Updated: oldT, Reply: "r4"}, true)
		put(replyPath("r4"), replyRecord{V: ledgerFormat, MessageID: "r4", State: replyPending, Updated: oldT}, true)
		put(seriesPath("0000000000000005/v1"), seriesRecord{V: ledgerFormat, State: seriesRequested, Updated: oldT, Reply: "-"}, false)
		put(seriesPath("0000000000000006/v1"), seriesRecord{V: ledgerFormat, State: seriesIncomplete, Updated: newT, Reply: "r6"}, true)
		put(replyPath("r6"), replyRecord{V: ledgerFormat, MessageID: "r6", State: replyFailed, Updated: newT}, true)
		put(replyPath("r7"), replyRecord{V: ledgerFormat, MessageID: "r7", State: replyFailed, Updated: oldT}, false)
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.compact(ctx); err != nil {
		t.Fatal(err)
	}
	out := fixtures.Git(t, w.bare, "ls-tree", "-r", "--name-only", queue.MailLedgerRef("mail"))
	got := map[string]bool{}
	for _, p := range strings.Fields(out) {
		got[p] = true
	}
	for p, kept := range want {
		if got[p] != kept {
			t.Errorf("%s: kept %v, want %v", p, got[p], kept)
		}
	}
	// The bridge's own view agrees.
	b.ledger.view(ctx, func(tx *ledgerTx) {
		if tx.hasMessage("id:old") || !tx.hasMessage("id:new") || len(tx.allSeries()) != 4 || len(tx.pendingReplies()) != 1 {
			t.Errorf("the bridge's view after compaction: %d series, %d replies owed", len(tx.allSeries()), len(tx.pendingReplies()))
		}
	})
}

// blockLedger makes the remote refuse changes of the ledger while the
// file BLOCK is in it (a pre-receive hook): the remote cannot be written.
func blockLedger(t *testing.T, bare string) (block, unblock func()) {
	hook := "#!/bin/sh\nwhile read old new ref; do\n\tcase $ref in refs/ci/mail/ledger/*) if [ -e BLOCK ]; then echo 'the ledger is blocked' >&2; exit 1; fi ;; esac\ndone\nexit 0\n"
	fixtures.WriteFile(t, bare, "hooks/pre-receive", hook, 0o755)
	flag := filepath.Join(bare, "BLOCK")
	return func() { fixtures.WriteFile(t, bare, "BLOCK", "", 0o644) }, func() { os.Remove(flag) }
}

// A reply sent while the remote cannot be written is recorded once the
// remote takes writes again, and never sent again: not by the bridge
// that sent it, nor by it restarted on its directory meanwhile.
func TestBridgeUnrecordedReplyNotResent(t *testing.T) {
	w := newWorld(t)
	block, unblock := blockLedger(t, w.bare)
	w.mail.deliver(w.series("--base="+w.base, "--thread", "main..topic")...)
	// The mail server takes the reply; the remote then refuses the
	// ledger's change that records it.
	snd := &recSender{fail: func(int) error { block(); return nil }}
	dir := t.TempDir()
	b, stop := w.bridge("one", dir, snd, nil)
	waitMails(t, snd, 1)
	fixtures.WaitFor(t, 60*time.Second, "the failure to record logged", func() bool {
		return strings.Contains(w.logs.String(), "cannot record a reply as sent")
	})
	settle(t, b)
	stop()
	if n := len(snd.mails()); n != 1 {
		t.Fatalf("%d replies sent by the bridge that could not record them", n)
	}
	unblock()
	again := &recSender{}
	b2, _ := w.bridge("one", dir, again, nil)
	fixtures.WaitFor(t, 60*time.Second, "the reply recorded sent", func() bool {
		state := ""
		b2.ledger.view(context.Background(), func(tx *ledgerTx) {
			for _, p := range tx.listedPaths("replies") {
				var r replyRecord
				if tx.get(p, &r) {
					state = r.State
				}
			}
		})
		return state == replySent
	})
	settle(t, b2)
	if n := len(again.mails()); n != 0 {
		t.Errorf("the restarted bridge sent the reply again (%d)", n)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "sent", "*")); len(files) != 0 {
		t.Errorf("the journal still holds %v", files)
	}
}

// While it runs, the bridge keeps trying to record a reply it sent until
// the remote takes it, and does not send it again meanwhile.
func TestBridgeRecordsSentReplyWhenRemoteReturns(t *testing.T) {
	w := newWorld(t)
	block, unblock := blockLedger(t, w.bare)
	w.mail.deliver(w.series("--base="+w.base, "--thread", "main..topic")...)
	snd := &recSender{fail: func(int) error { block(); return nil }}
	b, _ := w.bridge("one", "", snd, nil)
	waitMails(t, snd, 1)
	fixtures.WaitFor(t, 60*time.Second, "the failure to record logged", func() bool {
		return strings.Contains(w.logs.String(), "cannot record a reply as sent")
	})
	settle(t, b)
	unblock()
	fixtures.WaitFor(t, 60*time.Second, "the reply recorded sent", func() bool {
		state := ""
		b.ledger.view(context.Background(), func(tx *ledgerTx) {
			for _, r := range tx.listedPaths("replies") {
				var rec replyRecord
				if tx.get(r, &rec) {
					state = rec.State
				}
			}
		})
		return state == replySent
	})
	settle(t, b)
	if n := len(snd.mails()); n != 1 {
		t.Errorf("%d replies", n)
	}
}
