package requests

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

func TestMain(m *testing.M) { os.Exit(fixtures.PrivateHome(m)) }

// Each trigger's request tag is a distinct object (issue 16, item 1), and
// making one needs no identity configured in git (a fresh machine): the
// tagger is then refci's.
func TestRequestTagIsUniqueAndNeedsNoIdentity(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("HOME", dir)
	t.Setenv("XDG_CONFIG_HOME", dir)
	t.Setenv("GIT_CONFIG_NOSYSTEM", "1")
	for _, k := range []string{"GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	ctx := context.Background()
	git := func(args ...string) string { t.Helper(); return fixtures.Git(t, dir, args...) }
	git("init", "-q")
	git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "c")
	if _, err := (gitproto.CLI{Dir: dir}).Run(ctx, "", "var", "GIT_COMMITTER_IDENT"); err == nil {
		t.Skip("git finds an identity on this machine without configuration")
	}
	head := git("rev-parse", "HEAD")
	bare := fixtures.BareRepo(t, "remote.git")
	opts := queue.RequestOptions{Env: "staging", Timeout: 20 * time.Minute}
	seen := map[string]bool{}
	for i := 0; i < 2; i++ {
		h, err := Client{Dir: dir}.Make(ctx, Request{Name: "topic", Target: gitproto.NewHash(head), Options: opts})
		obj := h.String()
		if err != nil {
			t.Fatalf("without an identity: %v", err)
		}
		if typ := git("cat-file", "-t", obj); typ != "tag" || git("rev-parse", obj+"^{commit}") != head {
			t.Fatalf("request %s is a %s, not a tag of %s", obj, typ, head)
		}
		body := git("cat-file", "tag", obj)
		if !strings.Contains(body, "\ntagger refci trigger <refci@localhost> ") {
			t.Errorf("tagger of an identity-less request:\n%s", body)
		}
		_, msg, _ := strings.Cut(body, "\n\n")
		if got, err := queue.ParseRequestOptions(msg); err != nil || got != opts {
			t.Errorf("options %+v, %v; want %+v", got, err, opts)
		}
		seen[obj] = true
	}
	if len(seen) != 2 {
		t.Fatalf("two triggers of one commit and name made one request object")
	}
	if tags := git("tag", "-l"); tags != "" {
		t.Errorf("tags left behind: %s", tags)
	}
	git("config", "user.name", "Alice")
	git("config", "user.email", "alice@example.invalid")
	h, err := Client{Dir: dir}.Ask(ctx, bare, Request{Name: "topic", Target: gitproto.NewHash(head)})
	if err != nil {
		t.Fatal(err)
	}
	obj := h.String()
	if got := fixtures.Git(t, bare, "rev-parse", queue.RequestRef("topic")); got != obj {
		t.Errorf("the request ref on the remote is %s, want the request %s", got, obj)
	}
	if body := git("cat-file", "tag", obj); !strings.Contains(body, "\ntagger Alice <alice@example.invalid> ") {
		t.Errorf("tagger with an identity:\n%s", body)
	}
}

// insteadOf is git environment that makes the URL name lead to dir: a
// remote only a client that passes its Env to git can reach.
func insteadOf(dir, name string) []string {
	return []string{"GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=url." + dir + ".insteadOf", "GIT_CONFIG_VALUE_0=" + name}
}

// Client.Env reaches the git that pushes (as GIT_SSH_COMMAND would).
func TestClientEnv(t *testing.T) {
	ctx := context.Background()
	dir := fixtures.NewRepo(t)
	head := fixtures.CommitAll(t, dir, "c")
	bare := fixtures.BareRepo(t, "remote.git")
	req := Request{Name: "topic", Target: gitproto.NewHash(head)}
	if _, err := (Client{Dir: dir}).Ask(ctx, "nowhere.invalid:app.git", req); err == nil {
		t.Fatal("pushed to nowhere.invalid without the environment")
	}
	obj, err := Client{Dir: dir, Env: insteadOf(bare, "nowhere.invalid:app.git")}.Ask(ctx, "nowhere.invalid:app.git", req)
	if err != nil {
		t.Fatal(err)
	}
	if got := fixtures.Git(t, bare, "rev-parse", queue.RequestRef("topic")); got != obj.String() {
		t.Errorf("the request ref is %s, want %s", got, obj)
	}
}

// A request is named after the branch checked out when it is of HEAD,
// else (another revision, a detached HEAD) after its commit.
func TestDefaultName(t *testing.T) {
	ctx := context.Background()
	dir := fixtures.NewRepo(t)
	head := gitproto.NewHash(fixtures.CommitAll(t, dir, "c"))
	fixtures.Git(t, dir, "checkout", "-q", "-b", "topic/x")
	c := Client{Dir: dir}
	if got := c.DefaultName(ctx, head, true); got != "topic/x" {
		t.Errorf("of HEAD on a branch: %q", got)
	}
	want := "rev-" + head.String()[:12]
	if got := c.DefaultName(ctx, head, false); got != want {
		t.Errorf("of a revision: %q, want %q", got, want)
	}
	fixtures.Git(t, dir, "checkout", "-q", "--detach")
	if got := c.DefaultName(ctx, head, true); got != want {
		t.Errorf("of a detached HEAD: %q, want %q", got, want)
	}
}

// Ask's failed push names the request ref and the remote.
func TestAskSaysWhatPushFailed(t *testing.T) {
	dir := fixtures.NewRepo(t)
	head := fixtures.CommitAll(t, dir, "c")
	missing := t.TempDir() + "/none.git"
	_, err := Client{Dir: dir}.Ask(context.Background(), missing, Request{Name: "topic", Target: gitproto.NewHash(head)})
	if err == nil || !strings.HasPrefix(err.Error(), "pushing refs/ci/requests/topic to "+missing+" failed: ") {
		t.Errorf("a push to nowhere: %v", err)
	}
}
