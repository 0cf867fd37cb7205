// Package requests asks for runs: it makes a request and pushes it to a
// remote's request ref, refs/ci/requests/<name>, as `refci trigger` does
// and as the forge adapters and the mail bridge do for pull requests and
// mailed series.
//
// A request's value is an annotated tag of the commit to run, made anew
// for every request with a fresh id in its subject, so that its object id
// names this request and no other: followers (refci trigger --wait, log
// -f) and results (status.json request_object) tell it from an earlier
// push of the same commit under the same name. Its message carries the
// request's options (queue.FormatRequestOptions). No tag ref is left
// behind.
package requests

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// Request is a run asked for: of Target, under the request name Name
// (see queue.ValidateRequestName), with Options.
type Request struct {
	Name    string
	Target  gitproto.Hash
	Options queue.RequestOptions
}

// Client makes and pushes requests from the repository whose work tree
// (or git directory, when bare) is Dir; it holds the objects pushed. A
// plain value, safe for concurrent use.
type Client struct {
	Dir string
	// Unsigned: never sign the request tag, whatever git's configuration
	// says. For requests made on behalf of others (a pull request taken
	// in from a forge): their trust must come from what their authors
	// signed, never from the key of the machine that took them in.
	Unsigned bool
	// Env is KEY=VALUE added to the environment of the client's git
	// (e.g. GIT_SSH_COMMAND, to reach the remote with a key of its
	// own); nil adds nothing.
	Env []string
}

// Make writes the request object: an annotated tag of r.Target with a
// fresh id, carrying r.Options, signed when the user has a signing key
// configured in git (user.signingkey). Unsigned, it needs no identity
// configured in git: the tagger is the user's committer identity when
// git has one, else refci's.
func (c Client) Make(ctx context.Context, r Request) (gitproto.Hash, error) {
	id := make([]byte, 8)
	rand.Read(id)
	msg := queue.FormatRequestOptions(fmt.Sprintf("refci request %s (id %x)", r.Name, id), r.Options)
	git := gitproto.CLI{Dir: c.Dir, Env: c.Env}
	if key, _ := git.Run(ctx, "", "config", "user.signingkey"); key != "" && !c.Unsigned {
		return git.SignTag(ctx, fmt.Sprintf("refci-request-%x", id), r.Target, msg)
	}
	tagger, err := git.Run(ctx, "", "var", "GIT_COMMITTER_IDENT")
	if err != nil {
		tagger = fmt.Sprintf("refci trigger <refci@localhost> %d +0000", time.Now().Unix())
	}
	return git.MakeTag(ctx, gitproto.TagSpec{Target: r.Target, Name: "refci-request", Tagger: tagger, Message: msg})
}

// Push sets the request ref of name on remote (a remote's name, a URL or
// a path) to obj, replacing a request pushed earlier under that name
// (whose run the worker then cancels).
func (c Client) Push(ctx context.Context, remote, name string, obj gitproto.Hash) error {
	ref := queue.RequestRef(name)
	_, err := gitproto.CLI{Dir: c.Dir, Env: c.Env}.Run(ctx, "", "push", "--quiet", "--no-verify", remote, "+"+obj.String()+":"+ref)
	return err
}

// Ask makes a request (Make) and pushes it (Push), and returns its
// object. A failed push says "pushing <request ref> to <remote> failed".
func (c Client) Ask(ctx context.Context, remote string, r Request) (gitproto.Hash, error) {
	obj, err := c.Make(ctx, r)
	if err != nil {
		return obj, err
	}
	if err := c.Push(ctx, remote, r.Name, obj); err != nil {
		return obj, fmt.Errorf("pushing %s to %s failed: %w", queue.RequestRef(r.Name), remote, err)
	}
	return obj, nil
}

// DefaultName is the request name of target when the user gives none,
// as refci trigger names it: the branch checked out in the client's
// repository when the target is its HEAD (head), else "rev-" and the
// first 12 hex digits of target (also on a detached HEAD).
func (c Client) DefaultName(ctx context.Context, target gitproto.Hash, head bool) string {
	if head {
		branch, _ := gitproto.CLI{Dir: c.Dir, Env: c.Env}.Run(ctx, "", "symbolic-ref", "--short", "-q", "HEAD")
		if branch != "" {
			return branch
		}
	}
	return "rev-" + target.String()[:12]
}
