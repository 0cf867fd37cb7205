package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"refci.dev/refci/forge"
	"refci.dev/refci/forge/gitea"
	"refci.dev/refci/forge/github"
	"refci.dev/refci/forge/gitlab"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/results"
)

// forgeConfig is one [[forge]] entry of worker.toml or of refci mirror's
// configuration: one repository on one forge that shows a remote's runs.
type forgeConfig struct {
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
	PullRequestPoll duration `toml:"pull_request_poll"`
	// A GitHub App instead of token_file (kind github only): statuses
	// are check runs. The key file is readable by its owner only.
	AppID          int64  `toml:"app_id"`
	InstallationID int64  `toml:"installation_id"`
	PrivateKeyFile string `toml:"private_key_file"`
}

// isApp reports whether the entry authenticates as a GitHub App.
func (c forgeConfig) isApp() bool {
	return c.AppID != 0 || c.InstallationID != 0 || c.PrivateKeyFile != ""
}

// forgeKind builds the adapter of one kind of forge for an entry, given
// its token ("" for a GitHub App's entry).
type forgeKind func(c forgeConfig, token string) (forge.Forge, error)

// kinds lists the forge adapters built into refci, by the kind a
// [[forge]] entry names. A new adapter is one line here.
var kinds = map[string]forgeKind{
	"github": func(c forgeConfig, token string) (forge.Forge, error) {
		if c.isApp() {
			return github.NewApp(github.AppConfig{Repo: c.Repo, AppID: c.AppID, InstallationID: c.InstallationID, PrivateKeyFile: c.PrivateKeyFile, BaseURL: c.BaseURL})
		}
		return github.New(github.Config{Repo: c.Repo, Token: token, BaseURL: c.BaseURL})
	},
	"gitlab": func(c forgeConfig, token string) (forge.Forge, error) {
		return gitlab.New(gitlab.Config{Project: c.Repo, Token: token, BaseURL: c.BaseURL})
	},
	"gitea": func(c forgeConfig, token string) (forge.Forge, error) {
		return gitea.New(gitea.Config{Repo: c.Repo, Token: token, BaseURL: c.BaseURL})
	},
}

// headRefs names, by kind, where a forge keeps each pull request's head.
var headRefs = map[string]func(int) string{"github": forge.GitHubHeadRef, "gitea": forge.GitHubHeadRef, "gitlab": forge.GitLabHeadRef}

// forgeSettings names the settings of a [[forge]] entry, for errors.
const forgeSettings = "kind, repo, remote, token_file, base_url, runs_url, pull_requests, pull_request_poll, app_id, installation_id, private_key_file"

// mirrorConfig is the TOML configuration of `refci mirror --config`.
type mirrorConfig struct {
	State  string        `toml:"state"` // where what was mirrored is recorded (default $REFCI_HOME/mirror)
	Poll   duration      `toml:"poll"`
	Forges []forgeConfig `toml:"forge"`
}

const mirrorHelp = `The configuration holds one [[forge]] entry per forge repository:

  state = "/var/lib/refci-mirror"   # default $REFCI_HOME/mirror
  poll = "10s"

  [[forge]]
  kind = "gitea"                    # github, gitea (also Forgejo) or gitlab
  repo = "org/app"                  # owner/name; for GitLab the project path
  remote = "https://git.example.org/org/app.git"
  token_file = "/etc/refci/gitea-token"   # readable by its owner only
  base_url = "https://git.example.org"    # a self-hosted forge; "" for the public one
  runs_url = ""                     # where the run pages are public, if anywhere

A GitHub App shows check runs instead of statuses: in place of token_file,
  app_id = 123
  installation_id = 456
  private_key_file = "/etc/refci/app.pem"  # readable by its owner only

Each run appears as the commit status refci/<request>, and each open pull
request whose head is the run's commit gets one comment, edited in place.
It only reads results: no key, no worker. What each forge shows is
recorded under state, so a restart resends nothing.
`

func cmdMirror(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "mirror")
	configFile := fs.String("config", "", "a TOML file of [[forge]] entries (see README)")
	if _, code, ok := parse(e, fs, args, 0); !ok {
		return code
	}
	if *configFile == "" {
		e.errorf("mirror: no configuration; pass --config FILE with one [[forge]] entry per forge repository")
		return exitUsage
	}
	var cfg mirrorConfig
	if _, ok := readConfig(e, *configFile, &cfg, "state, poll, and in [[forge]]: "+forgeSettings); !ok {
		return exitUsage
	}
	if len(cfg.Forges) == 0 {
		e.errorf("config %s: no [[forge]] entry; add one per forge repository that shows a remote's runs", *configFile)
		return exitUsage
	}
	for i, f := range cfg.Forges {
		if f.Remote == "" {
			e.errorf("config %s: [[forge]] %d (%s %s) has no remote: name the git remote whose runs it shows", *configFile, i+1, f.Kind, f.Repo)
			return exitUsage
		}
	}
	if cfg.State == "" {
		h, err := e.home()
		if err != nil {
			e.errorf("%v", err)
			return exitUsage
		}
		cfg.State = filepath.Join(h, "mirror")
	}
	logger := slog.New(slog.NewTextHandler(e.stderr, nil))
	mirrors, err := newMirrors(ctx, cfg.Forges, nil, cfg.State, cfg.Poll.Duration, logger)
	if err != nil {
		e.errorf("config %s: %v", *configFile, err)
		if errors.Is(err, errForgeConfig) {
			return exitUsage
		}
		return exitInfra
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	stopSignals := onStopSignals(context.WithoutCancel(ctx), func(os.Signal) { stop() }, func(os.Signal) {})
	defer stopSignals()
	logger.Info("mirror started", "remotes", len(mirrors), "forges", len(cfg.Forges), "state", cfg.State)
	runMirrors(ctx, mirrors)
	logger.Info("mirror stopped")
	return exitOK
}

// runner is a forge.Mirror or a forge.Intake.
type runner interface {
	Run(ctx context.Context) error
}

// runMirrors runs every mirror and intake until ctx ends.
func runMirrors(ctx context.Context, mirrors []runner) {
	var wg sync.WaitGroup
	for _, m := range mirrors {
		wg.Add(1)
		go func() { defer wg.Done(); m.Run(ctx) }()
	}
	wg.Wait()
}

// wakeMirrors returns the worker's Pushed hook: after a push of run refs
// to one of its remotes (rems, opened from the URLs urls), the mirrors of
// that remote look at once instead of at their next poll.
func wakeMirrors(rems []*gitproto.Remote, urls []string, runners []runner) func(string) {
	byURL := map[string][]*forge.Mirror{}
	for i, r := range rems {
		for _, x := range runners {
			if m, ok := x.(*forge.Mirror); ok && m.Remote() == urls[i] {
				byURL[r.URL] = append(byURL[r.URL], m)
			}
		}
	}
	if len(byURL) == 0 {
		return nil
	}
	return func(url string) {
		for _, m := range byURL[url] {
			m.Wake()
		}
	}
}

// errForgeConfig marks a [[forge]] entry the user must fix (exit 2).
var errForgeConfig = errors.New("forge configuration")

func forgeErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errForgeConfig}, args...)...)
}

// newMirrors builds one mirror per remote shown by the entries, and an
// intake per entry that takes pull requests in. remotes
// are the worker's (nil for refci mirror): an entry's remote must be one
// of them, and may be left out when there is one. Each mirror fetches
// into a bare repository of its own under state, and records there what
// each forge shows.
func newMirrors(ctx context.Context, entries []forgeConfig, remotes []string, state string, poll time.Duration, logger *slog.Logger) ([]runner, error) {
	type group struct {
		targets []forge.Target
		runsURL string
	}
	byRemote := map[string]*group{}
	var out []runner
	bare := func(dir string) error {
		if _, err := os.Stat(filepath.Join(dir, "HEAD")); err == nil {
			return nil
		}
		if _, err := (gitproto.CLI{}).Run(ctx, "", "init", "--quiet", "--bare", dir); err != nil {
			return fmt.Errorf("mirror repository %s: %w", dir, err)
		}
		return nil
	}
	for i, c := range entries {
		where := fmt.Sprintf("[[forge]] %d (%s %s)", i+1, c.Kind, c.Repo)
		if c.Remote == "" && len(remotes) == 1 {
			c.Remote = remotes[0]
		}
		switch {
		case c.Remote == "":
			return nil, forgeErr("%s: set remote to the one of the worker's remotes whose runs it shows", where)
		case remotes != nil && !contains(remotes, c.Remote):
			return nil, forgeErr("%s: remote %s is not one of the worker's remotes (%s)", where, gitproto.RedactURL(c.Remote), redactAll(remotes))
		case c.Repo == "":
			return nil, forgeErr("%s: set repo to the repository's owner/name (for GitLab its project path)", where)
		}
		build, ok := kinds[c.Kind]
		if !ok {
			return nil, forgeErr("%s: unknown forge kind %q; known: github, gitea (also Forgejo), gitlab", where, c.Kind)
		}
		var token string
		var err error
		switch {
		case c.isApp() && c.Kind != "github":
			return nil, forgeErr("%s: app_id, installation_id and private_key_file are for kind = \"github\" (a GitHub App); use token_file", where)
		case c.isApp() && c.TokenFile != "":
			return nil, forgeErr("%s: token_file and app_id/installation_id/private_key_file exclude each other: keep token_file for commit statuses with a token, or the App's three settings for check runs", where)
		case c.isApp():
			if c.AppID <= 0 || c.InstallationID <= 0 || c.PrivateKeyFile == "" {
				return nil, forgeErr("%s: a GitHub App needs all of app_id, installation_id and private_key_file", where)
			}
			if err := ownerOnly("private_key_file", c.PrivateKeyFile); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
		default:
			if token, err = readToken(c.TokenFile); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
		}
		f, err := build(c, token)
		if err != nil {
			return nil, forgeErr("%s: %v", where, err)
		}
		g := byRemote[c.Remote]
		if g == nil {
			g = &group{}
			byRemote[c.Remote] = g
		}
		if c.RunsURL != "" {
			if g.runsURL != "" && g.runsURL != c.RunsURL {
				return nil, forgeErr("%s: runs_url %s differs from another entry's for the same remote", where, c.RunsURL)
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
				return nil, forgeErr("%s: pull_requests: refci cannot list the pull requests of a %s forge", where, c.Kind)
			}
			dir := filepath.Join(state, "intake", cacheName(c.Kind+" "+c.Repo+" "+c.Remote))
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
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, fmt.Errorf("mirror state %s: %w", state, err)
	}
	urls := make([]string, 0, len(byRemote))
	for u := range byRemote {
		urls = append(urls, u)
	}
	sort.Strings(urls)
	for _, u := range urls {
		dir := filepath.Join(state, cacheName(u))
		if err := bare(dir); err != nil {
			return nil, err
		}
		m, err := forge.NewMirror(forge.MirrorConfig{Source: results.Source{Dir: dir, Remote: u}, Targets: byRemote[u].targets,
			StateDir: filepath.Join(state, "records"), Poll: poll, RunsURL: byRemote[u].runsURL, Logger: logger.With("remote", gitproto.RedactURL(u))})
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// readToken reads a forge token from path, which only its owner may
// read. The token is never logged nor passed in argv.
func readToken(path string) (string, error) {
	if path == "" {
		return "", forgeErr("no token_file: write the forge's access token to a file only refci's user reads (chmod 600) and name it in token_file")
	}
	if err := ownerOnly("token_file", path); err != nil {
		return "", err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", forgeErr("token_file %s: %v", path, err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
		return "", forgeErr("token_file %s must hold the token alone, on one line", path)
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
	if err := checkOwnerOnly(setting, path, what); err != nil {
		return forgeErr("%v", err)
	}
	return nil
}

// checkOwnerOnly checks that the file of a secret (setting names it,
// what says what it holds) exists and only its owner may read it.
func checkOwnerOnly(setting, path, what string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s %s: %v; write %s there (chmod 600)", setting, path, errors.Unwrap(err), what)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s %s can be read by others (mode %04o): run chmod 600 %s", setting, path, fi.Mode().Perm(), path)
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func redactAll(urls []string) string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = gitproto.RedactURL(u)
	}
	return strings.Join(out, " ")
}
