package mail

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/queue"
)

func TestMain(m *testing.M) { os.Exit(fixtures.PrivateHome(m)) }

func TestParseSubject(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Subject
	}{
		{"[PATCH] fix x", Subject{Patch: true, Version: 1, Index: 1, Total: 1, Title: "fix x"}},
		{"[PATCH v2 3/5] fix x", Subject{Patch: true, Version: 2, Index: 3, Total: 5, Title: "fix x"}},
		{"[PATCH v2,3/5] fix x", Subject{Patch: true, Version: 2, Index: 3, Total: 5, Title: "fix x"}},
		{"[PATCH repo v2 3/5] fix x", Subject{Patch: true, Prefix: "repo", Version: 2, Index: 3, Total: 5, Title: "fix x"}},
		{"[RFC PATCH v3 01/10] fix x", Subject{Patch: true, RFC: true, Version: 3, Index: 1, Total: 10, Title: "fix x"}},
		{"[PATCH 3/5] fix x", Subject{Patch: true, Version: 1, Index: 3, Total: 5, Title: "fix x"}},
		{"  [ patch   V2  0/2 ]   cover  ", Subject{Patch: true, Version: 2, Index: 0, Total: 2, Title: "cover"}},
		{"[PATCH 1/2] [docs] fix [x]", Subject{Patch: true, Version: 1, Index: 1, Total: 2, Title: "[docs] fix [x]"}},
		{"[list] [PATCH 1/2] fix", Subject{Patch: true, Version: 1, Index: 1, Total: 2, Title: "[list] fix"}},
		{"Re: [PATCH 1/2] fix", Subject{Re: true, Patch: true, Version: 1, Index: 1, Total: 2, Title: "fix"}},
		{"RE: re: [PATCH] fix", Subject{Re: true, Patch: true, Version: 1, Index: 1, Total: 1, Title: "fix"}},
		{"[PATCH 3/2] odd", Subject{Patch: true, Prefix: "3/2", Version: 1, Index: 1, Total: 1, Title: "odd"}},
		{"hello [PATCH] world", Subject{Title: "hello [PATCH] world"}},
		{"[ANNOUNCE] v2", Subject{Title: "[ANNOUNCE] v2"}},
		{"", Subject{}},
	} {
		if got := ParseSubject(tc.in); got != tc.want {
			t.Errorf("ParseSubject(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func FuzzParseSubject(f *testing.F) {
	for _, s := range []string{"[PATCH] x", "[PATCH v2 3/5] x", "[PATCH v2,3/5] x", "[PATCH repo v2 3/5] x",
		"[RFC PATCH v3 01/10] x", "Re: [PATCH 3/5] x", "[a][PATCH 0/0] [b]", "[PATCH v0 v99999 1/1/1]", "re:re:[patch]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p := ParseSubject(s)
		if !p.Patch {
			return
		}
		if p.Index < 0 || p.Index > p.Total || p.Version < 1 {
			t.Fatalf("ParseSubject(%q) = %+v: counters out of range", s, p)
		}
		if q := ParseSubject(p.String()); q != p {
			t.Fatalf("round trip of %q: %q parses as %+v, want %+v", s, p.String(), q, p)
		}
	})
}

const sampleMail = "From: Ann <ann@example.org>\r\nTo: ci@example.org\r\nSubject: =?UTF-8?q?=5BPATCH=5D_caf=C3=A9?=\r\n" +
	"Message-Id: <1@example.org>\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\n" +
	"msg\r\n---\r\ndiff --git a/a b/a\r\n"

func FuzzParseMessage(f *testing.F) {
	f.Add([]byte(sampleMail))
	f.Add([]byte("Subject: [PATCH 0/2] x\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\nZGlmZiAtLWdpdCBh\n"))
	f.Add([]byte("Subject: x\nContent-Type: text/html\n\n<p>"))
	f.Add([]byte("garbage"))
	for _, tc := range mimeCases {
		f.Add([]byte(mimeMail(tc.subject, tc.headers, tc.body)))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := ParseMessage(strings.NewReader(string(raw)))
		if err != nil {
			return
		}
		again, err := ParseMessage(strings.NewReader(string(raw)))
		if err != nil || !reflect.DeepEqual(m, again) {
			t.Fatalf("ParseMessage is not deterministic: %v", err)
		}
		if m.Kind == KindPatch && (!m.Tag.Patch || m.Tag.Re || !hasDiff(m.Body)) {
			t.Fatalf("patch without a patch subject or a diff: %+v", m)
		}
		if m.Tag != ParseSubject(m.Subject) {
			t.Fatalf("Tag differs from ParseSubject(Subject)")
		}
		if (m.Reason == "") != (m.Kind == KindPatch || m.Kind == KindCover) {
			t.Fatalf("kind %v with reason %q", m.Kind, m.Reason)
		}
		if m.Kind == KindPatch {
			// What git am is given reads as the same patch.
			again, err := ParseMessage(strings.NewReader(string(m.Raw)))
			if err != nil || again.Kind != KindPatch || again.Body != m.Body || again.Subject != m.Subject {
				t.Fatalf("Raw %q parses as %+v (%v), not as the patch %+v", m.Raw, again, err, m)
			}
		}
		UnsafePaths(m.Body)
	})
}

func TestParseMessage(t *testing.T) {
	m, err := ParseMessage(strings.NewReader(sampleMail))
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != "1@example.org" || m.From != "ann@example.org" || m.FromName != "Ann" || m.Subject != "[PATCH] café" || m.Kind != KindPatch || m.Tag.Title != "café" {
		t.Errorf("got %+v", m)
	}
	if m.Date.Unix() != 1700000000 {
		t.Errorf("date %v", m.Date)
	}
	if _, err := ParseMessage(strings.NewReader(strings.Repeat("x", MaxMessageSize+1))); !errors.Is(err, ErrTooLarge) {
		t.Errorf("large message: %v", err)
	}
}

func TestClassify(t *testing.T) {
	diff := "\n\nwhy\n---\ndiff --git a/a b/a\n--- a/a\n+++ b/a\n@@ -1 +1 @@\n-x\n+y\n"
	for _, tc := range []struct {
		name, headers, body string
		want                Kind
	}{
		{"patch", "Subject: [PATCH 1/2] x", diff, KindPatch},
		{"cover", "Subject: [PATCH 0/2] x", "\n\nabout\n", KindCover},
		{"reply", "Subject: Re: [PATCH 1/2] x\nIn-Reply-To: <1@x>", diff, KindReply},
		{"auto-submitted", "Subject: [PATCH 1/2] x\nAuto-Submitted: auto-replied", diff, KindAuto},
		{"auto-submitted no", "Subject: [PATCH 1/2] x\nAuto-Submitted: No", diff, KindPatch},
		{"null return path", "Subject: [PATCH 1/2] x\nReturn-Path: <>", diff, KindAuto},
		{"precedence bulk", "Subject: [PATCH 1/2] x\nPrecedence: bulk", diff, KindAuto},
		{"precedence list", "Subject: [PATCH 1/2] x\nPrecedence: list", diff, KindPatch},
		{"no diff", "Subject: [PATCH 1/2] x", "\n\njust words\n", KindOther},
		{"no patch subject", "Subject: hello", diff, KindOther},
		{"html only", "Subject: [PATCH 1/2] x\nContent-Type: text/html", diff, KindOther},
		{"quoted-printable", "Subject: [PATCH] x\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable", "\n\nwhy\n---\ndiff --git a/a b/=\na\n", KindPatch},
	} {
		m, err := ParseMessage(strings.NewReader("From: a@b\nMessage-Id: <" + tc.name + "@x>\n" + tc.headers + tc.body))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if m.Kind != tc.want {
			t.Errorf("%s: kind %v, want %v", tc.name, m.Kind, tc.want)
		}
	}
}

// branch makes a repository with main at base and a 3-commit branch
// topic; it returns the directory and base.
func branch(t *testing.T) (string, string) {
	dir := fixtures.NewRepo(t)
	fixtures.WriteFile(t, dir, "a.txt", "one\n", 0o644)
	base := fixtures.CommitAll(t, dir, "base")
	fixtures.Git(t, dir, "branch", "-M", "main")
	fixtures.Git(t, dir, "checkout", "-q", "-b", "topic")
	fixtures.WriteFile(t, dir, "a.txt", "two\n", 0o644)
	fixtures.CommitAll(t, dir, "a: two")
	fixtures.WriteFile(t, dir, "b.txt", "bee\n", 0o644)
	fixtures.CommitAll(t, dir, "b: add")
	fixtures.WriteFile(t, dir, "b.txt", "bee\nbuzz\n", 0o644)
	fixtures.CommitAll(t, dir, "b: buzz")
	return dir, base
}

// formatPatch runs git format-patch into a fresh directory and parses
// every file it wrote, in order.
func formatPatch(t *testing.T, dir string, args ...string) []*Message {
	out := t.TempDir()
	fixtures.Git(t, dir, append([]string{"format-patch", "-q", "-o", out}, args...)...)
	files, _ := filepath.Glob(filepath.Join(out, "*.patch"))
	sort.Strings(files)
	var ms []*Message
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m, err := ParseMessage(strings.NewReader(string(b)))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		ms = append(ms, m)
	}
	return ms
}

func TestSeriesWithCoverLetter(t *testing.T) {
	dir, base := branch(t)
	v1 := formatPatch(t, dir, "--base="+base, "--cover-letter", "--thread", "main..topic")
	if len(v1) != 4 || v1[0].Kind != KindCover || v1[1].Kind != KindPatch {
		t.Fatalf("format-patch gave %d messages, first %v", len(v1), v1[0].Kind)
	}
	// Out of order, with a duplicate delivery and a stray reply.
	reply := *v1[2]
	reply.Kind, reply.ID = KindReply, "reply@x"
	got := Group([]*Message{v1[3], v1[1], &reply, v1[0], v1[2], v1[1]})
	if len(got) != 1 {
		t.Fatalf("%d series, want 1", len(got))
	}
	s := got[0]
	if !s.Complete() || s.Version != 1 || s.Total != 3 || s.Cover != v1[0] || s.Root() != v1[0] || s.SupersededBy != 0 {
		t.Fatalf("series %+v", s)
	}
	if s.Base() != base {
		t.Errorf("base %q, want %q", s.Base(), base)
	}
	if err := queue.ValidateRequestName(s.RequestName()); err != nil || !strings.HasSuffix(s.RequestName(), "/v1") {
		t.Errorf("request name %q: %v", s.RequestName(), err)
	}

	// Without patch 2: incomplete, and says so.
	part := Group([]*Message{v1[0], v1[1], v1[3]})
	if len(part) != 1 || part[0].Complete() || !reflect.DeepEqual(part[0].Missing(), []int{2}) || part[0].ID != s.ID {
		t.Fatalf("partial series: %+v missing %v", part, part[0].Missing())
	}

	// Applied on its base, the series gives the branch's tree.
	scratch := filepath.Join(t.TempDir(), "scratch")
	fixtures.Git(t, dir, "clone", "-q", dir, scratch)
	head, err := Apply(context.Background(), scratch, s.Base(), s)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fixtures.Git(t, scratch, "rev-parse", head+"^{tree}"), fixtures.Git(t, dir, "rev-parse", "topic^{tree}"); got != want {
		t.Errorf("applied tree %s, branch tree %s", got, want)
	}
	if n := fixtures.Git(t, scratch, "rev-list", "--count", base+".."+head); n != "3" {
		t.Errorf("%s commits on the base, want 3", n)
	}

	// v2, sent in reply to v1's cover letter, supersedes v1. git's
	// Message-Ids hold the time in seconds: wait one out.
	time.Sleep(1100 * time.Millisecond)
	fixtures.Git(t, dir, "commit", "-q", "--amend", "-m", "b: buzz louder")
	v2 := formatPatch(t, dir, "-v2", "--base="+base, "--cover-letter", "--thread", "--in-reply-to="+v1[0].ID, "main..topic")
	all := Group(append(append([]*Message{}, v1...), v2...))
	if len(all) != 2 {
		t.Fatalf("%d series, want 2", len(all))
	}
	old, cur := all[0], all[1]
	if old.Version != 1 || cur.Version != 2 || old.SupersededBy != 2 || cur.SupersededBy != 0 || old.ID != cur.ID || !cur.Complete() {
		t.Fatalf("v1 %+v, v2 %+v", old, cur)
	}
	if cur.RequestName() != "patches/"+s.ID+"/v2" || cur.Cover != v2[0] {
		t.Errorf("v2 request %q", cur.RequestName())
	}
}

func TestSeriesWithoutCoverLetter(t *testing.T) {
	dir, base := branch(t)
	for _, thread := range []string{"--thread", "--no-thread"} {
		ms := formatPatch(t, dir, "--base="+base, thread, "main..topic")
		got := Group(ms)
		if len(got) != 1 || !got[0].Complete() || got[0].Cover != nil || got[0].Root() != ms[0] || got[0].Total != 3 {
			t.Fatalf("%s: %+v", thread, got)
		}
		if got[0].Base() != base {
			t.Errorf("%s: base %q", thread, got[0].Base())
		}
		part := Group(ms[1:])
		if len(part) != 1 || !reflect.DeepEqual(part[0].Missing(), []int{1}) {
			t.Errorf("%s: without patch 1: %+v", thread, part)
		}
	}
	// v2 not threaded to v1: tied by sender and patch 1's title.
	v1 := formatPatch(t, dir, "main..topic")
	v2 := formatPatch(t, dir, "-v2", "main..topic")
	for _, m := range v2 { // distinct Message-Ids without waiting
		m.ID = "v2." + m.ID
	}
	all := Group(append(v1, v2...))
	if len(all) != 2 || all[0].ID != all[1].ID || all[0].SupersededBy != 2 {
		t.Errorf("lineage by title: %+v %+v", all[0], all[1])
	}
}

func TestSinglePatch(t *testing.T) {
	dir, _ := branch(t)
	ms := formatPatch(t, dir, "-1")
	if ms[0].Tag.Index != 1 || ms[0].Tag.Total != 1 || ms[0].Kind != KindPatch {
		t.Fatalf("%+v", ms[0].Tag)
	}
	got := Group(ms)
	if len(got) != 1 || !got[0].Complete() || got[0].Base() != "" {
		t.Fatalf("%+v", got)
	}
}

func TestApplyFails(t *testing.T) {
	dir, base := branch(t)
	s := Group(formatPatch(t, dir, "--base="+base, "--cover-letter", "--thread", "main..topic"))[0]
	// A base where b.txt already exists: patch 2, which adds it, fails.
	fixtures.Git(t, dir, "checkout", "-q", "main")
	fixtures.WriteFile(t, dir, "b.txt", "other\n", 0o644)
	other := fixtures.CommitAll(t, dir, "b: other")
	scratch := filepath.Join(t.TempDir(), "scratch")
	fixtures.Git(t, dir, "clone", "-q", dir, scratch)
	_, err := Apply(context.Background(), scratch, other, s)
	var ae *ApplyError
	if !errors.As(err, &ae) {
		t.Fatalf("err %v, want *ApplyError", err)
	}
	if ae.Patch != 2 || ae.Base != other || ae.Commit != other || !strings.Contains(ae.Subject, "b: add") || !strings.Contains(ae.Output, "conflicts in: b.txt") {
		t.Errorf("ApplyError %+v", ae)
	}
	t.Log(ae.Output)
	// git am's standard output: what applied, the conflict, the patch
	// that failed; and its standard error.
	for _, want := range []string{"Applying: a: two", "CONFLICT (add/add): Merge conflict in b.txt", "Patch failed at 0002 b: add", "error: Failed to merge in the changes."} {
		if !strings.Contains(ae.Output, want) {
			t.Errorf("Output lacks %q:\n%s", want, ae.Output)
		}
	}
	if strings.Contains(ae.Output, "git am --") {
		t.Errorf("Output holds advice for the scratch clone:\n%s", ae.Output)
	}
	if _, err := os.Stat(filepath.Join(scratch, ".git", "rebase-apply")); !os.IsNotExist(err) {
		t.Errorf("git am was not aborted: %v", err)
	}
}

func TestHostilePatch(t *testing.T) {
	for _, path := range []string{".git/config", "../x", "a/.GIT/hooks/pre-commit", ".git./config"} {
		raw := "From: m@x\nMessage-Id: <h@x>\nSubject: [PATCH] evil\n\n---\n" +
			"diff --git a/" + path + " b/" + path + "\nnew file mode 100644\n--- /dev/null\n+++ b/" + path + "\n@@ -0,0 +1 @@\n+boom\n"
		m, err := ParseMessage(strings.NewReader(raw))
		if err != nil || m.Kind != KindPatch {
			t.Fatalf("%s: %v %v", path, err, m.Kind)
		}
		dir, base := branch(t)
		_, err = Apply(context.Background(), dir, base, Group([]*Message{m})[0])
		if !errors.Is(err, ErrUnsafePath) {
			t.Errorf("%s: err %v, want ErrUnsafePath", path, err)
		}
	}
	// A hunk that removes a line "-- ../x" is content, not a header.
	body := "diff --git a/s.sql b/s.sql\n--- a/s.sql\n+++ b/s.sql\n@@ -1,2 +1 @@\n--- ../x\n-- .git\n"
	if bad := UnsafePaths(body); len(bad) != 0 {
		t.Errorf("hunk content taken for paths: %q", bad)
	}
	if bad := UnsafePaths("rename from a\nrename to ../../etc/passwd\n"); len(bad) != 1 {
		t.Errorf("rename: %q", bad)
	}
}

func TestUnthreadedWindow(t *testing.T) {
	at := time.Unix(1700000000, 0)
	msg := func(id, from, subject string, d time.Duration) *Message {
		return &Message{ID: id, From: from, Subject: subject, Tag: ParseSubject(subject), Date: at.Add(d), Kind: KindPatch}
	}
	got := Group([]*Message{
		msg("1", "a@x", "[PATCH 1/2] one", 0),
		msg("2", "a@x", "[PATCH 2/2] two", time.Minute),
		msg("3", "b@x", "[PATCH 2/2] other sender", time.Minute),
		msg("4", "a@x", "[PATCH 2/2] too late", 2*Window),
	})
	if len(got) != 3 || !got[0].Complete() || got[0].Patches[1].ID != "2" {
		t.Fatalf("%+v", got)
	}
	for _, s := range got[1:] {
		if !reflect.DeepEqual(s.Missing(), []int{1}) {
			t.Errorf("%s missing %v", s.Patches[1].ID, s.Missing())
		}
		if err := queue.ValidateRequestName(s.RequestName()); err != nil {
			t.Error(err)
		}
	}
}

func TestApplyUnknownBase(t *testing.T) {
	dir, _ := branch(t)
	s := Group(formatPatch(t, dir, "-1"))[0]
	for base, want := range map[string]string{
		"--output=/tmp/x":        "neither",
		"main~1":                 "neither",
		"main^{tree}":            "neither",
		strings.Repeat("ab", 20): "not a commit in the scratch clone: fetch it",
		"nope":                   "not in the scratch clone: fetch it",
	} {
		if _, err := Apply(context.Background(), dir, base, s); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("base %q: err %v, want one holding %q", base, err, want)
		}
	}
}

// TestApplyBaseBranch: a series that names no base is applied on the
// configured branch, which a scratch clone has as origin/<branch>.
func TestApplyBaseBranch(t *testing.T) {
	dir, base := branch(t)
	s := Group(formatPatch(t, dir, "main..topic"))[0]
	if s.Base() != "" {
		t.Fatalf("base %q", s.Base())
	}
	scratch := filepath.Join(t.TempDir(), "scratch")
	fixtures.Git(t, dir, "clone", "-q", "--no-checkout", dir, scratch)
	if _, err := os.Stat(filepath.Join(scratch, ".git", "refs", "heads", "main")); !os.IsNotExist(err) {
		t.Fatalf("the clone has a local main: the test does not test the remote lookup")
	}
	ctx := context.Background()
	if c, err := ResolveBase(ctx, scratch, "main"); err != nil || c != base {
		t.Fatalf("ResolveBase(main) = %s, %v; want %s", c, err, base)
	}
	head, err := Apply(ctx, scratch, "main", s)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fixtures.Git(t, scratch, "rev-parse", head+"^{tree}"), fixtures.Git(t, dir, "rev-parse", "topic^{tree}"); got != want {
		t.Errorf("applied tree %s, branch tree %s", got, want)
	}
	// A local branch wins over a remote one; two remotes with the branch
	// are ambiguous.
	fixtures.Git(t, scratch, "branch", "main", "origin/topic")
	if c, _ := ResolveBase(ctx, scratch, "main"); c != fixtures.Git(t, dir, "rev-parse", "topic") {
		t.Errorf("local main not preferred: %s", c)
	}
	fixtures.Git(t, scratch, "branch", "-D", "main")
	fixtures.Git(t, scratch, "remote", "add", "other", dir)
	fixtures.Git(t, scratch, "fetch", "-q", "other")
	if _, err := ResolveBase(ctx, scratch, "main"); err == nil || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("two remotes: %v", err)
	}
}

func TestApplyErrorNamesTheBase(t *testing.T) {
	e := &ApplyError{Base: "main", Commit: strings.Repeat("a", 40), Patch: 2, Subject: "[PATCH 2/3] b", Output: "Patch failed at 0002 b"}
	if got := e.Error(); got != "patch 2 ([PATCH 2/3] b) does not apply on main ("+strings.Repeat("a", 40)+"): Patch failed at 0002 b" {
		t.Errorf("%s", got)
	}
	e.Base = e.Commit
	if got := e.Error(); strings.Count(got, e.Commit) != 1 {
		t.Errorf("%s", got)
	}
}
