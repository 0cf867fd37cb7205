// Package forgeconf reads the [[forge]] entries of a configuration
// (worker.toml, or refci mirror's file) and builds what they ask for: one
// forge.Mirror per remote shown, with its targets (one adapter per
// entry), and a forge.Intake per entry that takes pull requests in. It
// lists the adapters explicitly (Kinds) and checks every entry before
// anything runs: kinds, repositories, remotes, token files and GitHub
// App settings, each mistake said with what to do.
package forgeconf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"refci.dev/refci/forge"
	"refci.dev/refci/forge/gitea"
	"refci.dev/refci/forge/github"
	"refci.dev/refci/forge/gitlab"
	"refci.dev/refci/forge/link"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/results"
)

// Entry is one [[forge]] entry: one repository on one forge that shows a
// remote's runs. The zero value is an entry that Build refuses, saying
// what is missing.
type Entry struct {
	Kind      string `toml:"kind"`       // github, gitea (also Forgejo) or gitlab
	Repo      string `toml:"repo"`       // owner/name; for GitLab the project path
	Remote    string `toml:"remote"`     // which remote it shows; optional with one remote
	TokenFile string `toml:"token_file"` // the access token, in a file only its owner reads
	BaseURL   string `toml:"base_url"`   // a self-hosted forge's URL; "" for the public one
	RunsURL   string `toml:"runs_url"`   // where the remote's run pages are public; "" links none
	// PullRequests takes the repository's open pull requests in as
	// requests pr/<N> (forge.Intake), pushed to remote.
	PullRequests bool `toml:"pull_requests"`
	// PullRequestPoll is how often the open pull requests are listed
	// (default one minute: an API call per 100 pull requests each time).
	PullRequestPoll forge.Duration `toml:"pull_request_poll"`
	// A GitHub App instead of token_file (kind github only): statuses
	// are check runs. The key file is readable by its owner only.
	AppID          int64  `toml:"app_id"`
	InstallationID int64  `toml:"installation_id"`
	PrivateKeyFile string `toml:"private_key_file"`
}

// Settings names the settings of an Entry, in the order of the help, for
// errors ("known: ...").
// The worker, which leaves the entries to refci-forge, knows them from
// forge/link.
const Settings = link.ForgeSettings

// IsApp reports whether the entry authenticates as a GitHub App.
func (c Entry) IsApp() bool {
	return c.AppID != 0 || c.InstallationID != 0 || c.PrivateKeyFile != ""
}

// Kind builds the adapter of one kind of forge for an entry, given its
// token ("" for a GitHub App's entry).
type Kind func(c Entry, token string) (forge.Forge, error)

// Kinds lists the forge adapters, by the kind a [[forge]] entry names. A
// new adapter is one line here. Each call returns a new map, which the
// caller may change (tests add a fake kind).
func Kinds() map[string]Kind {
	return map[string]Kind{
		"github": func(c Entry, token string) (forge.Forge, error) {
			if c.IsApp() {
				return github.NewApp(github.AppConfig{Repo: c.Repo, AppID: c.AppID, InstallationID: c.InstallationID, PrivateKeyFile: c.PrivateKeyFile, BaseURL: c.BaseURL})
			}
			return github.New(github.Config{Repo: c.Repo, Token: token, BaseURL: c.BaseURL})
		},
		"gitlab": func(c Entry, token string) (forge.Forge, error) {
			return gitlab.New(gitlab.Config{Project: c.Repo, Token: token, BaseURL: c.BaseURL})
		},
		"gitea": func(c Entry, token string) (forge.Forge, error) {
			return gitea.New(gitea.Config{Repo: c.Repo, Token: token, BaseURL: c.BaseURL})
		},
	}
}

// headRefs names, by kind, where a forge keeps each pull request's head.
var headRefs = map[string]func(int) string{"github": forge.GitHubHeadRef, "gitea": forge.GitHubHeadRef, "gitlab": forge.GitLabHeadRef}

// ErrConfig marks a [[forge]] entry the user must fix: Build's and
// ReadToken's errors match it (errors.Is) when the configuration is
// wrong, and do not when the machine is (a disk, git).
var ErrConfig = errors.New("forge configuration")

func configErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...)
}

// Options are what Build builds from.
type Options struct {
	Entries []Entry
	// Remotes are the worker's (nil for refci mirror): an entry's remote
	// must be one of them, and may be left out when there is one.
	Remotes []string
	// State is the directory of the mirrors' own repositories and
	// records (created).
	State string
	// Poll is how often each mirror looks at its remote (0: forge's
	// default).
	Poll   time.Duration
	Logger *slog.Logger
	// Kinds are the adapters by kind; nil is Kinds().
	Kinds map[string]Kind
}

// Runner is a forge.Mirror or a forge.Intake: it runs until its context
// ends.
type Runner interface {
	Run(ctx context.Context) error
}

// Build checks every entry and builds one mirror per remote shown by the
// entries, and an intake per entry that takes pull requests in. Each
// mirror fetches into a bare repository of its own under o.State, and
// records there what each forge shows. Its errors match ErrConfig when
// an entry must change.
func Build(ctx context.Context, o Options) ([]Runner, error) {
	kinds := o.Kinds
	if kinds == nil {
		kinds = Kinds()
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	type group struct {
		targets []forge.Target
		runsURL string
	}
	byRemote := map[string]*group{}
	var out []Runner
	bare := func(dir string) error {
		if _, err := os.Stat(filepath.Join(dir, "HEAD")); err == nil {
			return nil
		}
		if _, err := (gitproto.CLI{}).Run(ctx, "", "init", "--quiet", "--bare", dir); err != nil {
			return fmt.Errorf("mirror repository %s: %w", dir, err)
		}
		return nil
	}
	for i, c := range o.Entries {
		where := fmt.Sprintf("[[forge]] %d (%s %s)", i+1, c.Kind, c.Repo)
		if c.Remote == "" && len(o.Remotes) == 1 {
			c.Remote = o.Remotes[0]
		}
		switch {
		case c.Remote == "":
			return nil, configErr("%s: set remote to the one of the worker's remotes whose runs it shows", where)
		case o.Remotes != nil && !slices.Contains(o.Remotes, c.Remote):
			return nil, configErr("%s: remote %s is not one of the worker's remotes (%s)", where, gitproto.RedactURL(c.Remote), forge.RedactAll(o.Remotes))
		case c.Repo == "":
			return nil, configErr("%s: set repo to the repository's owner/name (for GitLab its project path)", where)
		}
		build, ok := kinds[c.Kind]
		if !ok {
			return nil, configErr("%s: unknown forge kind %q; known: github, gitea (also Forgejo), gitlab", where, c.Kind)
		}
		var token string
		var err error
		switch {
		case c.IsApp() && c.Kind != "github":
			return nil, configErr("%s: app_id, installation_id and private_key_file are for kind = \"github\" (a GitHub App); use token_file", where)
		case c.IsApp() && c.TokenFile != "":
			return nil, configErr("%s: token_file and app_id/installation_id/private_key_file exclude each other: keep token_file for commit statuses with a token, or the App's three settings for check runs", where)
		case c.IsApp():
			if c.AppID <= 0 || c.InstallationID <= 0 || c.PrivateKeyFile == "" {
				return nil, configErr("%s: a GitHub App needs all of app_id, installation_id and private_key_file", where)
			}
			if err := ownerOnly("private_key_file", c.PrivateKeyFile); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
		default:
			if token, err = ReadToken(c.TokenFile); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
		}
		f, err := build(c, token)
		if err != nil {
			return nil, configErr("%s: %v", where, err)
		}
		g := byRemote[c.Remote]
		if g == nil {
			g = &group{}
			byRemote[c.Remote] = g
		}
		if c.RunsURL != "" {
			if g.runsURL != "" && g.runsURL != c.RunsURL {
				return nil, configErr("%s: runs_url %s differs from another entry's for the same remote", where, c.RunsURL)
			}
			g.runsURL = c.RunsURL
		}
		name := c.Kind + " " + c.Repo
		if c.BaseURL != "" {
			name += " at " + c.BaseURL
		}
		g.targets = append(g.targets, forge.Target{Name: name, Forge: f})
		if c.PullRequests {
			lister, ok := f.(forge.PullRequestLister)
			if !ok || headRefs[c.Kind] == nil {
				return nil, configErr("%s: pull_requests: refci cannot list the pull requests of a %s forge", where, c.Kind)
			}
			dir := filepath.Join(o.State, "intake", gitproto.CacheName(c.Kind+" "+c.Repo+" "+c.Remote))
			if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
				return nil, err
			}
			if err := bare(dir); err != nil {
				return nil, err
			}
			out = append(out, &forge.Intake{Forge: lister, Where: name, Dir: dir, Remote: c.Remote, HeadRef: headRefs[c.Kind],
				Every: c.PullRequestPoll.Duration, Log: logger.With("remote", gitproto.RedactURL(c.Remote))})
		}
	}
	if err := os.MkdirAll(o.State, 0o700); err != nil {
		return nil, fmt.Errorf("mirror state %s: %w", o.State, err)
	}
	urls := make([]string, 0, len(byRemote))
	for u := range byRemote {
		urls = append(urls, u)
	}
	sort.Strings(urls)
	for _, u := range urls {
		dir := filepath.Join(o.State, gitproto.CacheName(u))
		if err := bare(dir); err != nil {
			return nil, err
		}
		m, err := forge.NewMirror(forge.MirrorConfig{Source: results.Source{Dir: dir, Remote: u}, Targets: byRemote[u].targets,
			StateDir: filepath.Join(o.State, "records"), Poll: o.Poll, RunsURL: byRemote[u].runsURL, Logger: logger.With("remote", gitproto.RedactURL(u))})
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// Run runs every runner until ctx ends.
func Run(ctx context.Context, runners []Runner) {
	var wg sync.WaitGroup
	for _, m := range runners {
		wg.Add(1)
		go func() { defer wg.Done(); m.Run(ctx) }()
	}
	wg.Wait()
}

// Waker returns what wakes the mirrors among runners that show the remote
// url (as the configuration names it) after a push of run refs to it, so
// that they look at once instead of at their next poll. It is safe for
// concurrent use.
func Waker(runners []Runner) func(url string) {
	byURL := map[string][]*forge.Mirror{}
	for _, x := range runners {
		if m, ok := x.(*forge.Mirror); ok {
			byURL[m.Remote()] = append(byURL[m.Remote()], m)
		}
	}
	return func(url string) {
		for _, m := range byURL[url] {
			m.Wake()
		}
	}
}

// ReadToken reads a forge token from path, which only its owner may
// read. The token is never logged nor passed in argv. Its errors match
// ErrConfig.
func ReadToken(path string) (string, error) {
	if path == "" {
		return "", configErr("no token_file: write the forge's access token to a file only refci's user reads (chmod 600) and name it in token_file")
	}
	if err := ownerOnly("token_file", path); err != nil {
		return "", err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", configErr("token_file %s: %v", path, err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
		return "", configErr("token_file %s must hold the token alone, on one line", path)
	}
	return tok, nil
}

// ownerOnly checks that the file of a secret (setting names it) exists and
// only its owner may read it.
func ownerOnly(setting, path string) error {
	what := "the forge's access token"
	if setting == "private_key_file" {
		what = "the GitHub App's private key (.pem)"
	}
	if err := forge.CheckOwnerOnly(setting, path, what); err != nil {
		return configErr("%v", err)
	}
	return nil
}
