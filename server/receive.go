package server

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/gitproto/sshd"
	"refci.dev/refci/queue"
)

// receiver acts on pushes: options become request tags, trusted pushes
// are recorded, and the embedded worker is woken.
type receiver struct {
	access *queue.AccessFile
	trust  *trustStore
	owners *ownerStore
	// onRequest wakes a worker for a repository's directory and the
	// requests queued there; nil: none.
	onRequest func(path string, names []string)
	log       *slog.Logger
}

func (rc *receiver) onReceive(ctx context.Context, r *sshd.Receive) string {
	a, _ := rc.access.Load()
	roles := a.Roles(r.ID.Fingerprint, r.Repo)
	trusted := roles.Trusted()
	if err := rc.owners.record(r); err != nil {
		rc.log.Error("recording who owns claims and runs", "repo", r.Repo, "err", err)
	}
	opts, _ := requestOptions(r.PushOptions) // checked before the push was accepted
	var names []string
	var msgs []string
	for _, u := range r.Updates {
		name, ok := strings.CutPrefix(u.Name, queue.RequestsPrefix)
		if !ok || u.Deleting() {
			continue
		}
		val := u.New
		if opts.Env != "" || opts.Timeout > 0 {
			tag, err := tagRequest(ctx, r.Path, name, u.New, r.ID.Fingerprint, opts)
			if err != nil {
				rc.log.Error("request options not applied", "repo", r.Repo, "request", name, "err", err)
				msgs = append(msgs, fmt.Sprintf("refci: the options of request %s were not applied: %v", name, err))
			} else {
				val = tag
			}
		}
		if trusted {
			if err := rc.trust.record(r.Repo, val, r.ID.Fingerprint); err != nil {
				rc.log.Error("recording a trusted request", "repo", r.Repo, "request", name, "err", err)
			}
		}
		names = append(names, name)
	}
	if len(names) == 0 {
		return strings.Join(msgs, "\n")
	}
	if rc.onRequest != nil {
		rc.onRequest(r.Path, names)
	}
	note := ""
	if trusted {
		note = " (trusted)"
	}
	msgs = append(msgs, fmt.Sprintf("refci: request %s queued%s; results: refci fetch --remote REMOTE REV && refci status REV", strings.Join(names, ", "), note))
	return strings.Join(msgs, "\n")
}

// tagRequest wraps a pushed request commit into an annotated tag carrying
// the options and moves the request ref to it, only if the ref still
// holds the pushed value.
func tagRequest(ctx context.Context, repo, name, pushed, fp string, o queue.RequestOptions) (string, error) {
	git := gitproto.CLI{Dir: repo, Env: gitproto.IsolatedConfig(repo)} // the served repository: not the operator's configuration
	typ, err := git.Run(ctx, "", "cat-file", "-t", pushed)
	if err != nil {
		return "", err
	}
	if typ != "commit" {
		return "", fmt.Errorf("the request is a %s, not a commit; put the options into its tag message instead", typ)
	}
	msg := queue.FormatRequestOptions("refci request "+name+" pushed over SSH by "+fp, o)
	tagger := fmt.Sprintf("refci serve <refci@localhost> %d +0000", time.Now().Unix())
	tag, err := git.MakeTag(ctx, gitproto.TagSpec{Target: gitproto.NewHash(pushed), Name: "refci-request", Tagger: tagger, Message: msg})
	if err != nil {
		return "", err
	}
	if err := git.UpdateRef(ctx, queue.RequestRef(name), tag, gitproto.NewHash(pushed), "refci: request options"); err != nil {
		return "", fmt.Errorf("the request changed meanwhile: %w", err)
	}
	return tag.String(), nil
}
