package worker

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/results"
)

// Remotes are the remotes refci worker serves, opened from their URLs as
// configured, each with its bare cache in one directory
// (<cache>/gitproto.CacheName(url)). OpenRemote may rewrite a URL (a
// relative path becomes absolute), so Remotes keeps both: the opened
// remote's URL is what the loop, its hooks (Config.Pushed, Worker.Poke)
// and the secrets opener know a remote by, the configured one what the
// configuration and refci-forge name it by. A Remotes does not change
// once opened: safe for concurrent use.
type Remotes struct {
	configured []string
	open       []*gitproto.Remote
}

// OpenRemotes opens the remotes of urls with their caches in cacheDir,
// making a cache that is not there; the error names the first remote
// that cannot be opened (its URL without credentials).
func OpenRemotes(urls []string, cacheDir string) (*Remotes, error) {
	rs := &Remotes{configured: urls}
	for _, u := range urls {
		r, err := gitproto.OpenRemote(u, filepath.Join(cacheDir, gitproto.CacheName(u)), nil)
		if err != nil {
			return nil, fmt.Errorf("remote %s: %v", gitproto.RedactURL(u), err)
		}
		rs.open = append(rs.open, r)
	}
	return rs, nil
}

// List is the remotes, in the order of the URLs (Config.Remotes).
func (rs *Remotes) List() []*gitproto.Remote { return rs.open }

// Lookup is the remote whose URL is url (as opened), nil if none is.
func (rs *Remotes) Lookup(url string) *gitproto.Remote {
	for _, r := range rs.open {
		if r.URL == url {
			return r
		}
	}
	return nil
}

// Configured lists the configured URLs of the remotes whose URL (as
// opened) is url.
func (rs *Remotes) Configured(url string) []string {
	var out []string
	for i, r := range rs.open {
		if r.URL == url {
			out = append(out, rs.configured[i])
		}
	}
	return out
}

// Opened lists the URLs (as opened) of the remotes configured as url.
func (rs *Remotes) Opened(url string) []string {
	var out []string
	for i, r := range rs.open {
		if rs.configured[i] == url {
			out = append(out, r.URL)
		}
	}
	return out
}

// LocalDirs lists the directories of the remotes on this machine
// (gitproto.Remote.LocalDir; "" for each remote reached over the
// network), which pipelines may read but not write (SandboxSpec.ReadOnly).
func (rs *Remotes) LocalDirs() []string {
	var out []string
	for _, r := range rs.open {
		out = append(out, r.LocalDir())
	}
	return out
}

// String lists the remotes' URLs without credentials, space-separated,
// for a log line.
func (rs *Remotes) String() string {
	var names []string
	for _, r := range rs.open {
		names = append(names, gitproto.RedactURL(r.URL))
	}
	return strings.Join(names, " ")
}

// LogLocal logs, for each remote on this machine, how results reach it:
// updated directly (index-pack and update-ref) or with git push, and why.
func (rs *Remotes) LogLocal(ctx context.Context, logger *slog.Logger) {
	for _, r := range rs.open {
		if r.LocalDir() == "" {
			continue
		}
		if direct, why := r.Direct(ctx); direct {
			logger.Info("a remote on this machine: updated directly (index-pack and update-ref), not with git push", "remote", gitproto.RedactURL(r.URL))
		} else {
			logger.Info("a remote on this machine: updated with git push", "remote", gitproto.RedactURL(r.URL), "because", why)
		}
	}
}

// RetentionTargets are the targets of the worker's retention
// (results.Schedule), one per remote. Each remote's runs are read
// through a cache of their own beside the worker's in cacheDir
// (<name>-gc.git), never the worker's, whose run refs are its outbox's.
// A run the worker is running or has yet to publish is named by its
// claim on the remote, so gc keeps it; a result waiting in the outbox is
// not on the remote at all. A remote whose cache cannot be opened is
// logged and left out.
func (rs *Remotes) RetentionTargets(cacheDir string, logger *slog.Logger) []*results.Target {
	var targets []*results.Target
	for _, u := range rs.configured {
		r, err := gitproto.OpenRemote(u, filepath.Join(cacheDir, strings.TrimSuffix(gitproto.CacheName(u), ".git")+"-gc.git"), nil)
		if err != nil {
			logger.Warn("retention: cannot open the remote's cache; no gc for it", "remote", gitproto.RedactURL(u), "err", err)
			continue
		}
		targets = append(targets, results.RemoteTarget(r))
	}
	return targets
}
