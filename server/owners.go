package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"refci.dev/refci/gitproto/sshd"
	"refci.dev/refci/queue"
)

// ownerStore records which SSH key created each claim and run ref pushed
// through refci serve, and the value that key pushed last: one small file
// per ref, DATA/owners/<repo>/<hash of the ref name>, holding
// "<fingerprint> <ref> <value>". It is written after receive-pack applied
// the update (post-receive) and removed when the ref is deleted. A ref
// without a record, or whose value is no longer the recorded one (made or
// changed by the embedded worker, which writes its repositories directly,
// or before records existed) belongs to no key: only an admin may move
// it, and a claim of it only once its lease ran out. Safe for concurrent
// use (each file is replaced atomically).
type ownerStore struct {
	dir string
}

func (o *ownerStore) file(repo, ref string) string {
	sum := sha256.Sum256([]byte(ref))
	return filepath.Join(o.dir, repoFileName(repo), hex.EncodeToString(sum[:16]))
}

// owner returns the fingerprint of the key that created ref in repo, if
// that key also pushed its current value, or "".
func (o *ownerStore) owner(repo, ref, value string) string {
	if fp, v := o.read(repo, ref); v == value {
		return fp
	}
	return ""
}

// read returns the record of ref: the key and the value it pushed last.
func (o *ownerStore) read(repo, ref string) (fp, value string) {
	b, err := os.ReadFile(o.file(repo, ref))
	if err != nil {
		return "", ""
	}
	f := strings.Fields(string(b))
	if len(f) != 3 || f[1] != ref {
		return "", ""
	}
	return f[0], f[2]
}

func (o *ownerStore) set(repo, ref, fp, value string) error {
	p := o.file(repo, ref)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	return writeFileAtomic(p, []byte(fp+" "+ref+" "+value+"\n"), 0o600)
}

func (o *ownerStore) remove(repo, ref string) error {
	err := os.Remove(o.file(repo, ref))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// owned reports whether ref is a claim or run ref, whose creator is
// recorded.
func owned(ref string) bool {
	return strings.HasPrefix(ref, queue.ClaimsPrefix) || strings.HasPrefix(ref, queue.RunsPrefix)
}

// record notes the pushing key and the new value of each claim and run
// ref a push created or moved (the policy let only the owner, a worker
// taking over an expired claim, or an admin do so); it forgets deleted
// ones.
func (o *ownerStore) record(r *sshd.Receive) error {
	var errs []error
	for _, u := range r.Updates {
		if !owned(u.Name) {
			continue
		}
		if u.Deleting() {
			errs = append(errs, o.remove(r.Repo, u.Name))
		} else {
			errs = append(errs, o.set(r.Repo, u.Name, r.ID.Fingerprint, u.New))
		}
	}
	return errors.Join(errs...)
}

// checkWorker applies the rules of section 9 of PROTOCOL.md to a key
// with the worker role (and neither admin nor, for requests, trigger):
//
//   - a run ref is created by anyone with the role, then only
//     fast-forwarded by the key that created it, never deleted;
//   - a claim is created by anyone; it is moved or deleted by the key
//     that holds it, or by another once its lease ran out (a takeover);
//   - a mail bridge ref (refs/ci/mail/*) is created by anyone with the
//     role, then only fast-forwarded, never deleted;
//   - a request is deleted only while its claim is held by this key (or
//     has expired), for the value the claim names; a claim this push
//     deleted before counts.
func (o *ownerStore) checkWorker(p *sshd.Push, u sshd.RefUpdate, now time.Time) error {
	fp := p.ID.Fingerprint
	created := u.Old == sshd.ZeroID
	switch {
	case strings.HasPrefix(u.Name, queue.RunsPrefix):
		switch {
		case u.Deleting():
			return errors.New("results are append-only: a worker key never deletes a run ref; an admin key can (refci gc --remote needs one)")
		case created:
			return nil
		}
		if owner, last := o.read(p.Repo, u.Name); owner != fp {
			return fmt.Errorf("this run was created by %s, not by this key (%s); a worker only adds to its own runs", ownerName(owner), fp)
		} else if last != u.Old {
			// A push whose record was not written (the server stopped
			// between the update and post-receive) still continues the
			// chain its key started.
			if ok, _ := p.IsAncestor(context.Background(), last, u.Old); !ok {
				return fmt.Errorf("this run was changed outside SSH since this key (%s) last pushed it; a worker only adds to its own runs", fp)
			}
		}
		ok, err := p.IsAncestor(context.Background(), u.Old, u.New)
		if err != nil {
			return fmt.Errorf("cannot check that the update is a fast-forward: %v", err)
		}
		if !ok {
			return fmt.Errorf("not a fast-forward of %s: results are append-only, a run ref only grows by snapshots", short(u.Old))
		}
		return nil
	case strings.HasPrefix(u.Name, queue.ClaimsPrefix):
		if created || o.owner(p.Repo, u.Name, u.Old) == fp {
			return nil
		}
		return o.expired(p, u.Name, u.Old, now)
	case strings.HasPrefix(u.Name, queue.MailPrefix):
		// The mail bridges' ledgers and kept series heads only grow: a
		// ledger commit has the one before as its parent (bridges merge
		// before they push), a series head is written once.
		switch {
		case u.Deleting():
			return errors.New("the mail bridge's refs are append-only: a worker key never deletes one (an admin can)")
		case created:
			return nil
		}
		ok, err := p.IsAncestor(context.Background(), u.Old, u.New)
		if err != nil {
			return fmt.Errorf("cannot check that the update is a fast-forward: %v", err)
		}
		if !ok {
			return fmt.Errorf("not a fast-forward of %s: the mail bridge's refs only grow", short(u.Old))
		}
		return nil
	case strings.HasPrefix(u.Name, queue.RequestsPrefix) && u.Deleting():
		claim := queue.ClaimRef(strings.TrimPrefix(u.Name, queue.RequestsPrefix))
		for _, e := range p.Earlier {
			if e.Name == claim && e.Deleting() {
				return claimNames(p, e.Old, u.Old)
			}
		}
		cv := p.RefValue(claim)
		if cv == "" {
			return errors.New("nobody claimed this request; a worker key deletes only requests whose claim it holds")
		}
		if o.owner(p.Repo, claim, cv) != fp {
			if err := o.expired(p, claim, cv, now); err != nil {
				return fmt.Errorf("a worker key deletes only requests whose claim it holds: %w", err)
			}
		}
		return claimNames(p, cv, u.Old)
	}
	return nil
}

// expired refuses unless the claim commit at value has an expired lease
// (or cannot be read, which no worker respects either).
func (o *ownerStore) expired(p *sshd.Push, ref, value string, now time.Time) error {
	c, err := readPushedClaim(p, value)
	if err != nil {
		return nil
	}
	if !c.Expired(now) {
		return fmt.Errorf("%s is held by %s until %s (lease %s plus %s of clock skew); only then may another worker take it over",
			ref, ownerName(o.owner(p.Repo, ref, value)), c.LeaseExpires.Add(queue.ClockSkew).UTC().Format(time.RFC3339), c.LeaseExpires.UTC().Format(time.RFC3339), queue.ClockSkew)
	}
	return nil
}

// claimNames refuses deleting a request whose value is not the one the
// claim at claimValue ran (the request was pushed again since).
func claimNames(p *sshd.Push, claimValue, request string) error {
	c, err := readPushedClaim(p, claimValue)
	if err != nil || c.RequestObject == request {
		return nil
	}
	return fmt.Errorf("the request now holds %s, but its claim ran %s: it was pushed again and must run", short(request), short(c.RequestObject))
}

func readPushedClaim(p *sshd.Push, commit string) (*queue.Claim, error) {
	b, err := p.Git(context.Background(), "cat-file", "blob", commit+":"+queue.ClaimFile)
	if err != nil {
		return nil, err
	}
	return queue.DecodeClaim(b)
}

func ownerName(fp string) string {
	if fp == "" {
		return "a worker outside SSH (the embedded worker, an admin's direct change, or from before owners were recorded)"
	}
	return "key " + fp
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
