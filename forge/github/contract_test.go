package github

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"

	"refci.dev/refci/fixtures/githubapi"
	"refci.dev/refci/forge"
	"refci.dev/refci/forge/forgetest"
)

// standIn is the contract's view of the stand-in behind an adapter.
type standIn struct {
	s    *githubapi.Server
	next int
}

func (c *standIn) NewCommit(context.Context) (string, error) {
	b := make([]byte, 20)
	rand.Read(b)
	return hex.EncodeToString(b), nil
}

func (c *standIn) OpenPullRequest(_ context.Context, head string) (int, error) {
	c.next++
	c.s.AddPull(githubapi.Pull{Number: c.next, Head: head, Open: true, Title: "contract"})
	return c.next, nil
}

func (c *standIn) ClosePullRequest(_ context.Context, n int) error { c.s.ClosePull(n); return nil }

func (c *standIn) Statuses(_ context.Context, commit string) ([]forgetest.Seen, error) {
	var out []forgetest.Seen
	for _, s := range c.s.Statuses(commit) {
		out = append(out, forgetest.Seen{Context: s.Context, State: s.State, Description: s.Description, TargetURL: s.TargetURL})
	}
	return out, nil
}

func (c *standIn) Comments(_ context.Context, n int) ([]string, error) {
	var out []string
	for _, cm := range c.s.Comments(n) {
		out = append(out, cm.Body)
	}
	return out, nil
}

func (c *standIn) Refused() forge.Forge {
	f, _ := New(Config{Repo: "org/app", Token: "revoked", BaseURL: c.s.URL})
	return f
}

func (c *standIn) Missing() forge.Forge {
	f, _ := New(Config{Repo: "org/gone", Token: "t0ken", BaseURL: c.s.URL})
	return f
}

func TestContract(t *testing.T) {
	forgetest.Contract(t, func(t *testing.T) (forge.Forge, forgetest.Controls) {
		f, s := newForge(t)
		return f, &standIn{s: s}
	})
}
