package gitea_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	giteafix "refci.dev/refci/fixtures/gitea"
	"refci.dev/refci/forge"
	"refci.dev/refci/forge/forgetest"
	"refci.dev/refci/forge/gitea"
)

// realGitea is the contract's view of a repository on the real Gitea.
type realGitea struct {
	t      *testing.T
	r      *giteafix.Repo
	mu     sync.Mutex
	n      int
	branch map[string]string // commit → the branch NewCommit pushed it on
}

func (c *realGitea) NewCommit(context.Context) (string, error) {
	c.mu.Lock()
	c.n++
	b, first := fmt.Sprintf("contract-%d", c.n), c.n == 1
	c.mu.Unlock()
	if first {
		c.r.Push(c.t, "main", "base") // pull requests need a base
	}
	h := c.r.Push(c.t, b, "contract "+b)
	c.mu.Lock()
	c.branch[h] = b
	c.mu.Unlock()
	return h, nil
}

func (c *realGitea) OpenPullRequest(_ context.Context, head string) (int, error) {
	c.mu.Lock()
	b := c.branch[head]
	c.mu.Unlock()
	return c.r.OpenPullRequest(c.t, b, "main", "contract "+b), nil
}

func (c *realGitea) ClosePullRequest(_ context.Context, n int) error {
	c.r.ClosePullRequest(c.t, n)
	return nil
}

func (c *realGitea) Statuses(_ context.Context, commit string) ([]forgetest.Seen, error) {
	var out []forgetest.Seen
	for _, s := range c.r.Statuses(c.t, commit) {
		out = append([]forgetest.Seen{{Context: s.Context, State: s.State, Description: s.Description, TargetURL: s.TargetURL}}, out...)
	}
	return out, nil // the API lists the newest first
}

func (c *realGitea) Comments(_ context.Context, n int) ([]string, error) {
	var out []string
	for _, cm := range c.r.Comments(c.t, n) {
		out = append(out, cm.Body)
	}
	return out, nil
}

func (c *realGitea) Refused() forge.Forge {
	f, _ := gitea.New(gitea.Config{BaseURL: c.r.Server.URL, Repo: c.r.FullName(), Token: "0000000000000000000000000000000000000000"})
	return f
}

func (c *realGitea) Missing() forge.Forge {
	f, _ := gitea.New(gitea.Config{BaseURL: c.r.Server.URL, Repo: c.r.Owner + "/no-such-repository", Token: c.r.Server.Token})
	return f
}

// The adapter passes the contract every adapter passes, on a real Gitea.
func TestContractOnRealGitea(t *testing.T) {
	forgetest.Contract(t, func(t *testing.T) (forge.Forge, forgetest.Controls) {
		r := giteafix.Shared(t).NewRepo(t)
		return newForge(t, r), &realGitea{t: t, r: r, branch: map[string]string{}}
	})
}
