package forge

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/requests"
	"refci.dev/refci/results"
)

// Intake takes a forge's open pull requests in as requests: each open pull
// request N becomes the request pr/N at its head commit, a new push to it
// replaces the request (whose running run the worker then cancels), and
// closing it deletes the request (the same). A head already run under its
// request name is not asked for again, also across restarts and several
// intakes: the runs on the remote say so.
//
// Requests it makes are unsigned, so a pull request's run is trusted only
// when its head commit is signed by a key the workers trust: a pull
// request from a fork runs untrusted, without secrets, unless its author
// is trusted.
//
// Not safe for concurrent use; Run one Intake per forge repository.
type Intake struct {
	Forge PullRequestLister
	// Where is the forge and repository, for messages ("github org/app").
	Where string
	// Dir is a local repository (bare or not) that fetches pull requests'
	// heads and makes the request tags; refci's cache of the remote.
	Dir string
	// Remote is where the pull requests' heads are and requests go: the
	// forge repository's git URL (or a remote's name in Dir).
	Remote string
	// HeadRef names the ref of pull request n's head on Remote:
	// refs/pull/<n>/head on GitHub, Gitea and Forgejo,
	// refs/merge-requests/<n>/head on GitLab.
	HeadRef func(n int) string
	// Every is how often Run polls the forge (default one minute): one
	// API call per 100 open pull requests, and one ls-remote of the
	// requests, per poll.
	Every time.Duration
	// Env is KEY=VALUE added to the environment of the intake's git,
	// which fetches from and pushes to Remote (e.g. GIT_SSH_COMMAND);
	// nil adds nothing.
	Env []string
	Log *slog.Logger // nil: slog.Default()

	asked map[int]string // head last asked for, by pull request
}

// GitHubHeadRef is HeadRef for GitHub, Gitea and Forgejo.
func GitHubHeadRef(n int) string { return "refs/pull/" + strconv.Itoa(n) + "/head" }

// GitLabHeadRef is HeadRef for GitLab.
func GitLabHeadRef(n int) string { return "refs/merge-requests/" + strconv.Itoa(n) + "/head" }

// Synced says what one pass did.
type Synced struct {
	Asked   []int // pull requests whose head was asked for
	Deleted []int // requests of closed pull requests deleted
}

// Run polls until ctx ends. A failing pass is logged, once per
// different error, and tried again at the next poll.
func (in *Intake) Run(ctx context.Context) error {
	every := in.Every
	if every <= 0 {
		every = time.Minute
	}
	log := in.log()
	lastErr := ""
	for {
		if _, err := in.Sync(ctx); err != nil && ctx.Err() == nil {
			if msg := err.Error(); msg != lastErr {
				log.Warn("taking pull requests in failed; trying again", "forge", in.Where, "err", err)
				lastErr = msg
			}
		} else if err == nil {
			lastErr = ""
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
}

func (in *Intake) log() *slog.Logger {
	if in.Log != nil {
		return in.Log
	}
	return slog.Default()
}

// Sync makes one pass: it asks for every open pull request whose head
// has no request and no run under its name yet, and deletes the requests
// of pull requests no longer open.
func (in *Intake) Sync(ctx context.Context) (Synced, error) {
	var done Synced
	if in.asked == nil {
		in.asked = map[int]string{}
	}
	prs, err := in.Forge.OpenPullRequests(ctx)
	if err != nil {
		return done, err
	}
	git := gitproto.CLI{Dir: in.Dir, Env: in.Env}
	pending, err := in.requests(ctx, git)
	if err != nil {
		return done, err
	}
	open := map[int]bool{}
	for _, pr := range prs {
		open[pr.Number] = true
		name := queue.PullRequestName(pr.Number)
		if !gitproto.IsHash(pr.Head) || queue.ValidateRequestName(name) != nil {
			continue
		}
		if in.asked[pr.Number] == pr.Head {
			continue
		}
		if obj, ok := pending[name]; ok {
			if target, err := in.targetOf(ctx, git, name, obj); err == nil && target == pr.Head {
				in.asked[pr.Number] = pr.Head // requested already (by us before a restart, or another intake)
				continue
			}
		} else if in.ran(ctx, git, name, pr.Head) {
			in.asked[pr.Number] = pr.Head
			continue
		}
		asked, err := in.ask(ctx, git, pr, name)
		if err != nil {
			return done, err
		}
		if asked {
			in.asked[pr.Number] = pr.Head
			done.Asked = append(done.Asked, pr.Number)
		}
	}
	for name, obj := range pending {
		n, ok := queue.PullRequestOf(name)
		if !ok || open[n] {
			continue
		}
		// Closed (or merged): delete its request if it is still the
		// value seen, so that a run of it is cancelled.
		ref := queue.RequestRef(name)
		if _, err := git.Run(ctx, "", "push", "--quiet", "--no-verify", "--force-with-lease="+ref+":"+obj, in.Remote, ":"+ref); err != nil {
			return done, fmt.Errorf("%s: delete the request of closed pull request #%d: %w", in.Where, n, err)
		}
		delete(in.asked, n)
		done.Deleted = append(done.Deleted, n)
	}
	return done, nil
}

// requests lists the remote's pull request requests: name → value.
func (in *Intake) requests(ctx context.Context, git gitproto.CLI) (map[string]string, error) {
	out, err := git.Run(ctx, "", "ls-remote", in.Remote, queue.RequestRef(queue.PullRequestPrefix)+"*")
	if err != nil {
		return nil, fmt.Errorf("%s: list the pull requests' requests on %s: %w", in.Where, gitproto.RedactURL(in.Remote), err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		h, ref, ok := strings.Cut(line, "\t")
		if !ok {
			continue
		}
		if name, ok := strings.CutPrefix(ref, queue.RequestsPrefix); ok && strings.HasPrefix(name, queue.PullRequestPrefix) {
			m[name] = h
		}
	}
	return m, nil
}

// targetOf is the commit the request's value obj names (fetched if
// needed).
func (in *Intake) targetOf(ctx context.Context, git gitproto.CLI, name, obj string) (string, error) {
	if _, err := git.Run(ctx, "", "cat-file", "-e", obj); err != nil {
		if _, err := git.Run(ctx, "", "fetch", "--quiet", "--no-write-fetch-head", in.Remote, queue.RequestRef(name)); err != nil {
			return "", err
		}
	}
	return git.Run(ctx, "", "rev-parse", "--verify", "--quiet", obj+"^{commit}")
}

// ran reports whether the remote has a run of head under the request
// name: the request ran and was consumed.
func (in *Intake) ran(ctx context.Context, git gitproto.CLI, name, head string) bool {
	src := results.Source{Dir: in.Dir, Remote: in.Remote, Env: in.Env}
	if err := src.FetchRuns(ctx, head); err != nil {
		return false
	}
	repo, err := src.Open()
	if err != nil {
		return false
	}
	runs, err := results.List(repo, head)
	if err != nil {
		return false
	}
	for _, r := range runs {
		if st, err := r.Read(repo); err == nil && st.Request == name {
			return true
		}
	}
	return false
}

// ask fetches the pull request's head and pushes the request pr/N at it,
// unsigned. It asks nothing when the head moved since the listing (the
// next pass asks for the newer one).
func (in *Intake) ask(ctx context.Context, git gitproto.CLI, pr PullRequest, name string) (bool, error) {
	local := queue.IntakeHeadRef(name)
	if _, err := git.Run(ctx, "", "fetch", "--quiet", "--no-write-fetch-head", in.Remote, "+"+in.HeadRef(pr.Number)+":"+local); err != nil {
		return false, fmt.Errorf("%s: fetch the head of pull request #%d (%s): %w", in.Where, pr.Number, in.HeadRef(pr.Number), err)
	}
	got, err := git.Run(ctx, "", "rev-parse", "--verify", "--quiet", local+"^{commit}")
	if err != nil || got != pr.Head {
		return false, nil
	}
	c := requests.Client{Dir: in.Dir, Unsigned: true, Env: in.Env}
	if _, err := c.Ask(ctx, in.Remote, requests.Request{Name: name, Target: gitproto.NewHash(pr.Head)}); err != nil {
		return false, fmt.Errorf("%s: ask for a run of pull request #%d: %w", in.Where, pr.Number, err)
	}
	in.log().Info("pull request taken in", "forge", in.Where, "pull_request", pr.Number, "head", pr.Head[:12], "fork", pr.Fork)
	return true, nil
}
