package main

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/queue"
)

// pusher is a key pushing to a refci serve from the sandbox repository.
type pusher struct {
	sv  *served
	env []string
	fp  string
}

// worker adds a key with roles to the roles file.
func (sv *served) keyWith(name, roles string) *pusher {
	sv.t.Helper()
	key := fixtures.SSHKeyFiles(sv.t, sv.root, name)
	sv.addRole(roles + " " + key.AuthorizedKey)
	return &pusher{sv: sv, fp: key.Fingerprint, env: append(append([]string{}, sv.env...), "GIT_SSH_COMMAND="+sv.sshCommand(key.Path))}
}

// push runs git push ci ARGS and returns its output and whether it
// succeeded.
func (p *pusher) push(args ...string) (string, bool) {
	cmd := exec.Command("git", append([]string{"push", "--porcelain", "ci"}, args...)...)
	cmd.Dir = p.sv.repo
	cmd.Env = p.env
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

// allowed fails the test unless the push succeeded.
func (p *pusher) allowed(what string, args ...string) {
	p.sv.t.Helper()
	if out, ok := p.push(args...); !ok {
		p.sv.t.Errorf("%s was refused:\n%s", what, out)
	}
}

// refused fails the test unless the push was refused with a message
// containing why, and the ref still has its value.
func (p *pusher) refused(what, ref, why string, args ...string) {
	p.sv.t.Helper()
	before := p.sv.remoteRef(ref)
	out, ok := p.push(args...)
	if ok || !strings.Contains(out, "refused "+ref+": ") || !strings.Contains(out, why) {
		p.sv.t.Errorf("%s: want a refusal of %s saying %q:\n%s", what, ref, why, out)
	}
	if after := p.sv.remoteRef(ref); after != before {
		p.sv.t.Errorf("%s: %s changed from %q to %q", what, ref, before, after)
	}
}

func (sv *served) remoteRef(ref string) string {
	out, _ := fixtures.RunGit(sv.bare("app.git"), nil, nil, "rev-parse", "-q", "--verify", ref)
	return strings.TrimSpace(string(out))
}

// claimCommit writes a claim commit (parent: parent, if any) in the
// sandbox repository.
func (sv *served) claimCommit(c queue.Claim, parent string) string {
	sv.t.Helper()
	c.Format = queue.Format
	b := must(queue.EncodeClaim(&c))
	blob := sv.gitStdin(string(b), "hash-object", "-w", "--stdin")
	tree := sv.gitStdin("100644 blob "+blob+"\t"+queue.ClaimFile+"\n", "mktree")
	args := []string{"commit-tree", tree, "-m", "claim " + c.Request}
	if parent != "" {
		args = append(args, "-p", parent)
	}
	return sv.git("", args...)
}

// Item 5 of issue 15: on refci serve, a worker key creates run refs and
// only fast-forwards its own; it never deletes one; it moves or deletes
// another worker's claim only once the lease ran out; it deletes only
// requests whose claim it holds. Each attack is a real push over ssh.
func TestServeWorkerKeysCannotRewriteOthersWork(t *testing.T) {
	sv := startServe(t, "--no-worker")
	head := sv.commitAll("target")
	sv.git("", "push", "-q", "ci", "main")
	admin := &pusher{sv: sv, env: sv.env, fp: sv.adminFP}
	a := sv.keyWith("worker-a", "worker")
	b := sv.keyWith("worker-b", "worker")

	// Snapshots of a run: s1 <- s2 <- s3; u is unrelated.
	snap := func(msg, parent string) string {
		args := []string{"commit-tree", sv.git("", "rev-parse", "HEAD^{tree}"), "-m", msg}
		if parent != "" {
			args = append(args, "-p", parent)
		}
		return sv.git("", args...)
	}
	s1 := snap("snapshot 1", "")
	s2 := snap("snapshot 2", s1)
	s3 := snap("snapshot 3", s2)
	u := snap("forged", "")
	run := queue.RunRef(head, "20261122T093000.123Z-3f9a1c0b2d4e")

	a.allowed("creating a run", s1+":"+run)
	b.refused("another key fast-forwarding a's run", run, "created by key "+a.fp, s2+":"+run)
	b.refused("another key forcing a's run", run, "created by key "+a.fp, "--force", u+":"+run)
	a.refused("forcing a run to an unrelated commit", run, "not a fast-forward", "--force", u+":"+run)
	a.allowed("a fast-forward of one's own run", s2+":"+run)
	a.refused("forcing a run back to an older snapshot", run, "not a fast-forward", "--force", s1+":"+run)
	a.refused("deleting one's own run", run, "append-only", ":"+run)
	b.refused("deleting another's run", run, "append-only", ":"+run)
	a.refused("a leased force to an older snapshot", run, "not a fast-forward", "--force-with-lease="+run+":"+s2, s1+":"+run)
	a.allowed("a leased fast-forward", "--force-with-lease="+run+":"+s2, s3+":"+run)
	// A push whose owner record was lost (the server stopped before
	// post-receive) still lets its key go on with the chain; a change
	// outside SSH to another chain does not.
	s4 := snap("snapshot 4", s3)
	s5 := snap("snapshot 5", s4)
	u2 := snap("forged 2", u)
	admin.allowed("bringing objects over", s5+":refs/heads/tmp-s5", u2+":refs/heads/tmp-u2")
	direct := func(value, old string) {
		t.Helper()
		fixtures.Git(t, sv.bare("app.git"), "update-ref", run, value, old)
	}
	direct(s4, s3)
	a.allowed("going on after a lost record", s5+":"+run)
	direct(u, s5)
	a.refused("going on after a change outside SSH", run, "changed outside SSH", u2+":"+run)
	// "Creating" it again over the existing ref is a move by a non-owner.
	b.refused("creating a run where one exists", run, "created by key "+a.fp, "--force", s1+":"+run)
	// An admin may do anything; after a deletion the name is free again.
	admin.allowed("an admin forcing a run", "--force", s1+":"+run)
	admin.allowed("an admin deleting a run", ":"+run)
	b.allowed("creating a run after the admin removed it", u+":"+run)
	a.refused("the old owner moving the new run", run, "created by key "+b.fp, "--force", s2+":"+run)

	// Requests and claims.
	sv.git("", "push", "-q", "ci", head+":refs/ci/requests/r1", head+":refs/ci/requests/r2", head+":refs/ci/requests/r3", head+":refs/ci/requests/r4")
	now := time.Now().UTC()
	live := func(name string) queue.Claim {
		return queue.Claim{Request: name, RequestObject: head, Target: head, Run: "r-" + name, Attempt: 1, Claimed: now, Renewed: now, LeaseExpires: now.Add(time.Hour)}
	}
	c1 := sv.claimCommit(live("r1"), "")
	a.allowed("claiming r1", c1+":"+queue.ClaimRef("r1"))
	other := live("r1")
	other.Host = "b"
	cB := sv.claimCommit(other, "")
	b.refused("taking over a live claim", queue.ClaimRef("r1"), "is held by key "+a.fp, "--force", cB+":"+queue.ClaimRef("r1"))
	b.refused("deleting another's live claim", queue.ClaimRef("r1"), "is held by key "+a.fp, ":"+queue.ClaimRef("r1"))
	b.refused("deleting a request another worker holds", queue.RequestRef("r1"), "is held by key "+a.fp, ":"+queue.RequestRef("r1"))
	b.refused("deleting an unclaimed request", queue.RequestRef("r2"), "nobody claimed this request", ":"+queue.RequestRef("r2"))
	b.refused("deleting a request and a claim it does not hold, atomically", queue.ClaimRef("r1"), "is held by key "+a.fp, "--atomic", ":"+queue.ClaimRef("r1"), ":"+queue.RequestRef("r1"))
	b.refused("deleting a claim it does not hold and then the request", queue.RequestRef("r1"), "is held by key "+a.fp, ":"+queue.ClaimRef("r1"), ":"+queue.RequestRef("r1"))
	b.refused("claiming a live claim and publishing over it", queue.ClaimRef("r1"), "is held by key "+a.fp, "--atomic", "--force", cB+":"+queue.ClaimRef("r1"), s1+":"+queue.RunRef(head, "r-r1"))
	if v := sv.remoteRef(queue.RunRef(head, "r-r1")); v != "" {
		t.Errorf("a refused atomic push created %s", queue.RunRef(head, "r-r1"))
	}
	renewal := live("r1")
	renewal.Renewed = now.Add(time.Second)
	renewed := sv.claimCommit(renewal, c1)
	a.allowed("renewing one's claim", "--force-with-lease="+queue.ClaimRef("r1")+":"+c1, renewed+":"+queue.ClaimRef("r1"))
	// A request pushed again after the claim must survive its worker.
	sv.git("", "commit", "-q", "--allow-empty", "-m", "again")
	sv.git("", "push", "-q", "--force", "ci", "HEAD:refs/ci/requests/r1")
	a.refused("deleting a re-pushed request", queue.RequestRef("r1"), "pushed again", ":"+queue.RequestRef("r1"))
	sv.git("", "push", "-q", "--force", "ci", head+":refs/ci/requests/r1")
	// Publishing: the result, the request and the claim in one atomic push.
	r1run := queue.RunRef(head, "r-r1")
	a.allowed("publishing atomically", "--atomic", s1+":"+r1run, ":"+queue.RequestRef("r1"), ":"+queue.ClaimRef("r1"))

	// An expired claim may be taken over; then it is the new holder's.
	old := live("r3")
	old.LeaseExpires = now.Add(-time.Hour)
	c3 := sv.claimCommit(old, "")
	a.allowed("claiming r3", c3+":"+queue.ClaimRef("r3"))
	taken := live("r3")
	taken.Attempt, taken.PreviousRun = 2, old.Run
	c3b := sv.claimCommit(taken, "")
	b.allowed("taking over an expired claim", "--force-with-lease="+queue.ClaimRef("r3")+":"+c3, c3b+":"+queue.ClaimRef("r3"))
	a.refused("the old holder moving the claim back", queue.ClaimRef("r3"), "is held by key "+b.fp, "--force", c3+":"+queue.ClaimRef("r3"))
	a.refused("the old holder deleting the request", queue.RequestRef("r3"), "is held by key "+b.fp, ":"+queue.RequestRef("r3"))
	// Step by step: the request first, then the claim.
	b.allowed("deleting the request one holds", ":"+queue.RequestRef("r3"))
	b.allowed("deleting the claim one holds", ":"+queue.ClaimRef("r3"))

	// Cleaning up after a dead worker whose result is out: its expired
	// claim and the request, in one push that is not atomic.
	old4 := live("r4")
	old4.LeaseExpires = now.Add(-time.Hour)
	c4 := sv.claimCommit(old4, "")
	a.allowed("claiming r4", c4+":"+queue.ClaimRef("r4"))
	b.allowed("cleaning up an expired claim and its request", ":"+queue.ClaimRef("r4"), ":"+queue.RequestRef("r4"))

	// A claim the embedded worker took over (it writes the repository
	// directly) is no longer its old holder's.
	c5 := sv.claimCommit(live("r5"), "")
	a.allowed("claiming r5", c5+":"+queue.ClaimRef("r5"))
	byEmbedded := live("r5")
	byEmbedded.Host = "embedded"
	c5b := sv.claimCommit(byEmbedded, "")
	admin.allowed("bringing an object over", c5b+":refs/heads/embedded-claim")
	fixtures.Git(t, sv.bare("app.git"), "update-ref", queue.ClaimRef("r5"), c5b, c5)
	a.refused("the old holder moving a claim changed behind its back", queue.ClaimRef("r5"), "is held by a worker outside SSH", "--force", c5+":"+queue.ClaimRef("r5"))
	a.refused("the old holder deleting it", queue.ClaimRef("r5"), "is held by a worker outside SSH", ":"+queue.ClaimRef("r5"))

	for _, ref := range []string{queue.RequestRef("r1"), queue.RequestRef("r3"), queue.RequestRef("r4"), queue.ClaimRef("r1"), queue.ClaimRef("r3"), queue.ClaimRef("r4")} {
		if v := sv.remoteRef(ref); v != "" {
			t.Errorf("%s still exists", ref)
		}
	}
	if v := sv.remoteRef(queue.RequestRef("r2")); v != head {
		t.Errorf("the unclaimed request r2 is %q, want %s", v, head)
	}
	// The records live in the data directory, not in the repository.
	if ents, err := os.ReadDir(filepath.Join(sv.data, "owners")); err != nil || len(ents) != 1 {
		t.Errorf("owner records: %v %v", ents, err)
	}
}

// The worker flows still work through refci serve with two workers on
// different keys: claim, renew, publish (atomic), a takeover after a
// worker died, and a cancel.
func TestServeTwoWorkerKeys(t *testing.T) {
	sv := startServe(t, "--no-worker")
	marker := filepath.Join(t.TempDir(), "started") // not under HOME, which pipelines cannot write
	sv.pipeline("if [ -e " + marker + " ]; then echo second; exit 0; fi\ntouch " + marker + "\nsleep 120\n")
	sv.git("", "push", "-q", "ci", "main")
	a := sv.keyWith("worker-a", "worker")
	b := sv.keyWith("worker-b", "worker")
	workerEnv := func(p *pusher, name string) []string {
		return append(append([]string{}, p.env...), "REFCI_HOME="+filepath.Join(sv.root, name))
	}
	args := []string{"worker", "--remote", sv.url("app.git"), "--poll", "200ms", "--lease", "3s"}

	// A claims t1 and dies mid-run; B takes over once the lease ran out.
	wa := startRefci(t, sv.root, workerEnv(a, "home-a"), args...)
	sv.git("", "push", "-q", "ci", "HEAD:refs/ci/requests/t1")
	fixtures.WaitFor(t, 2*time.Minute, "the first attempt to start", func() bool { _, err := os.Stat(marker); return err == nil })
	wa.cmd.Process.Kill()
	<-wa.done
	startRefci(t, sv.root, workerEnv(b, "home-b"), args...)
	st := sv.waitFinal("app.git", "t1", 2*time.Minute)
	if st.State != queue.Success || st.Attempt != 2 {
		t.Errorf("the run taken over: %+v", st)
	}
	// Both workers now; a few requests, with renewals while they run.
	startRefci(t, sv.root, workerEnv(a, "home-a"), args...)
	sv.pipeline("sleep 1.5\necho ok\n")
	sv.git("", "push", "-q", "ci", "HEAD:refs/ci/requests/p1", "HEAD:refs/ci/requests/p2", "HEAD:refs/ci/requests/p3")
	for _, r := range []string{"p1", "p2", "p3"} {
		if st := sv.waitFinal("app.git", r, 2*time.Minute); st.State != queue.Success {
			t.Errorf("%s: %+v", r, st)
		}
	}
	// A cancel: the requester deletes a running request.
	os.Remove(marker)
	sv.pipeline("touch " + marker + "\nsleep 120\n")
	sv.git("", "push", "-q", "ci", "HEAD:refs/ci/requests/c1")
	fixtures.WaitFor(t, 2*time.Minute, "the pipeline to start", func() bool { _, err := os.Stat(marker); return err == nil })
	sv.git("", "push", "-q", "ci", ":refs/ci/requests/c1")
	if st := sv.waitFinal("app.git", "c1", 2*time.Minute); st.State != queue.Cancelled {
		t.Errorf("c1: %+v", st)
	}
	fixtures.WaitFor(t, 2*time.Minute, "requests and claims to be cleaned up", func() bool {
		out := fixtures.GitBytes(t, sv.bare("app.git"), "for-each-ref", "refs/ci/requests/", "refs/ci/claims/")
		return len(out) == 0
	})
	if regexp.MustCompile(`refused="?refs/`).MatchString(sv.log.String()) {
		t.Errorf("serve refused a worker's update:\n%s", tail(sv.log.String()))
	}
}

// Issue 15, item 7, end to end: a pipeline's hostile artifacts reach the
// HTTP site of refci serve only sandboxed or as downloads, the site's own
// pages carry a CSP, and a repository whose roles restrict reading is not
// on the site until the roles file marks it public.
func TestServeSiteSandboxesResultsAndHidesRestrictedRepos(t *testing.T) {
	sv := startServe(t, "--http", "0")
	m := regexp.MustCompile(`viewer:    (http://127\.0\.0\.1:\d+/)`).FindStringSubmatch(sv.out.String())
	if m == nil {
		t.Fatalf("no viewer URL in the banner:\n%s", sv.out.String())
	}
	base := m[1]
	sv.pipeline(`cd "$REFCI_ARTIFACTS"
echo '<script>alert(document.cookie)</script>' > report.html
echo '<html><script>alert(1)</script></html>' > index.html
echo '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>' > pic.svg
echo '<?xml version="1.0"?><x:script xmlns:x="http://www.w3.org/1999/xhtml">alert(1)</x:script>' > feed.xml
echo '<html><script>alert(1)</script></html>' > noext
echo plain > notes.txt
echo '<script>alert(1)</script>'
`)
	sv.git("", "push", "-q", "ci", "main", "HEAD:refs/ci/requests/r1")
	st := sv.waitFinal("app.git", "r1", 2*time.Minute)
	if st.State != queue.Success || len(st.Artifacts) != 6 {
		t.Fatalf("the run: %+v", st)
	}
	run := "app.git/runs/" + st.Target + "/" + st.Run + "/"
	checkSiteHeaders(t, base,
		[]string{"", "app.git/", "app.git/index.html", run, run + "index.html", "app.git/commits/" + st.Target + ".html"},
		[]string{run + "status.json", run + "log.txt", run + "artifacts/notes.txt"},
		[]string{run + "artifacts/report.html", run + "artifacts/", run + "artifacts/index.html", run + "artifacts/pic.svg", run + "artifacts/feed.xml", run + "artifacts/noext"})

	// secret.git: one key may not read it, so it is not on the site.
	sv.git("", "push", "-q", sv.url("secret.git"), "main")
	bob := fixtures.SSHKeyFiles(t, sv.root, "bob")
	sv.addRole("trigger " + bob.AuthorizedKey)
	sv.addRole("none@secret.git " + bob.Fingerprint)
	for _, p := range []string{"secret.git/", "secret.git/index.html", "secret.git"} {
		if code, body := httpGet(t, base+p); code != http.StatusNotFound {
			t.Errorf("GET %s of a restricted repository: %d\n%.300s", p, code, body)
		}
	}
	if _, body := httpGet(t, base); strings.Contains(body, "secret.git") || !strings.Contains(body, `href="app.git/"`) {
		t.Errorf("the list of repositories:\n%s", body)
	}
	sv.addRole("public secret.git")
	if code, body := httpGet(t, base+"secret.git/"); code != 200 || !strings.Contains(body, "refci") {
		t.Errorf("GET secret.git/ once public: %d\n%.300s", code, body)
	}
	if _, body := httpGet(t, base); !strings.Contains(body, `href="secret.git/"`) {
		t.Errorf("the list of repositories once secret.git is public:\n%s", body)
	}
}

// Issue 19: the mail bridge's refs on refci serve. Its key has
// trigger,worker: it creates and fast-forwards its ledger and keeps
// series heads; it never rewinds or deletes them; a trigger or trusted
// key cannot write them at all.
func TestServeMailLedgerRefs(t *testing.T) {
	sv := startServe(t, "--no-worker")
	sv.commitAll("target")
	sv.git("", "push", "-q", "ci", "main")
	bridge := sv.keyWith("bridge", "trigger,worker")
	trig := sv.keyWith("someone", "trigger,trusted")
	commit := func(msg, parent string) string {
		args := []string{"commit-tree", sv.git("", "rev-parse", "HEAD^{tree}"), "-m", msg}
		if parent != "" {
			args = append(args, "-p", parent)
		}
		return sv.git("", args...)
	}
	l1 := commit("ledger 1", "")
	l2 := commit("ledger 2", l1)
	other := commit("forged ledger", "")
	ledger := queue.MailLedgerRef("ci")
	series := queue.MailSeriesRef("patches/0123456789abcdef/v1")

	trig.refused("a trigger key writing the ledger", ledger, "only worker and admin keys", l1+":"+ledger)
	bridge.allowed("creating the ledger", l1+":"+ledger)
	bridge.allowed("a fast-forward of the ledger", "--force-with-lease="+ledger+":"+l1, l2+":"+ledger)
	bridge.refused("rewinding the ledger", ledger, "not a fast-forward", "--force", l1+":"+ledger)
	bridge.refused("replacing the ledger", ledger, "not a fast-forward", "--force", other+":"+ledger)
	bridge.refused("deleting the ledger", ledger, "append-only", ":"+ledger)
	trig.refused("a trigger key deleting the ledger", ledger, "only worker and admin keys", ":"+ledger)
	bridge.allowed("keeping a series head", "HEAD:"+series)
	bridge.allowed("pushing a request", "HEAD:"+queue.RequestRef("patches/0123456789abcdef/v1"))
	bridge.refused("deleting a series head", series, "append-only", ":"+series)
}
