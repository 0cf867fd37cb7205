package gitproto

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// CLI runs the git program in one directory, for the few things go-git
// cannot do or that must be git's own (an annotated tag checked by git
// mktag, a tag signed with the user's configured key, git push and fetch
// with the user's remotes and credentials, a ref update with a reflog).
// Everything else reads and writes in process (Repo, Remote).
//
// Its environment is the one every git of this package runs with (Remote
// uses it too): this process's environment without the variables that
// make git use another repository or configuration than the one asked
// for (GIT_DIR, GIT_WORK_TREE, GIT_CONFIG_PARAMETERS, GIT_CONFIG_COUNT
// and its GIT_CONFIG_KEY_n/VALUE_n, GIT_NAMESPACE... the list of git
// rev-parse --local-env-vars and a few server-side ones) and without the
// password a Remote passes its helper; plus GIT_TERMINAL_PROMPT=0 and
// GCM_INTERACTIVE=never (refci never waits for a prompt nobody sees) and
// LC_ALL=C (messages are matched and quoted in English). Env is added
// last and wins. The user's global configuration (identity, signing key,
// remotes' credentials) is read, as the user's own git would; a caller
// acting on a repository that is not the user's passes IsolatedConfig.
//
// The SSH endpoint (gitproto/sshd), which runs git for remote users, gives
// it a narrower environment still: PATH and no configuration.
//
// The zero value runs git in the current directory. A CLI is a value and
// safe for concurrent use.
type CLI struct {
	Dir string   // the working directory: a repository, or a work tree in one
	Env []string // KEY=VALUE added to the environment, after the policy
}

// IsolatedConfig is the Env of a CLI that must not read the system's or
// the user's git configuration (hooks, aliases, signing): no system
// file, no global file, and HOME set to home.
func IsolatedConfig(home string) []string {
	return []string{"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "HOME=" + home}
}

// CLIError is the error of a git that CLI ran and that failed (or could
// not be started).
type CLIError struct {
	Op     string // git's subcommand: the first argument that is not a global option (-c k=v, -C dir, --opt)
	Stderr string // what git printed to standard error, trimmed
	// Stdout is what git printed to standard output before it failed,
	// trimmed: some commands report there (git am names the patch that
	// failed and the conflicts on standard output). A caller that shows
	// it caps it.
	Stdout string
	Err    error // the *exec.ExitError, or why git could not be started
}

// Error says "git <Op>: " and git's standard error (not Stdout).
func (e *CLIError) Error() string { return "git " + e.Op + ": " + e.Stderr }

// Unwrap returns Err.
func (e *CLIError) Unwrap() error { return e.Err }

// Run runs git with args and stdin ("" for none) and returns its
// standard output without surrounding white space. When git fails, the
// error is a *CLIError, which holds both outputs; the string returned is
// then "".
func (c CLI) Run(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = c.Dir
	cmd.Env = append(gitEnviron(), c.Env...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", &CLIError{Op: subcommand(args), Stderr: strings.TrimSpace(errb.String()), Stdout: strings.TrimSpace(out.String()), Err: err}
	}
	return strings.TrimSpace(out.String()), nil
}

// subcommand is the first of args that is not one of git's own options.
func subcommand(args []string) string {
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "-c" || a == "-C":
			i++
		case strings.HasPrefix(a, "-"):
		default:
			return a
		}
	}
	return ""
}

// TagSpec describes an annotated tag object of a commit.
type TagSpec struct {
	Target  Hash   // the commit it names
	Name    string // the tag's name inside the object (no ref is made)
	Tagger  string // "Name <email> <unix seconds> <zone>", as git var GIT_COMMITTER_IDENT prints it
	Message string
}

// MakeTag writes an unsigned annotated tag object of a commit with git
// mktag, which checks it as git fsck would, and returns its id. No ref
// is made.
func (c CLI) MakeTag(ctx context.Context, t TagSpec) (Hash, error) {
	obj := fmt.Sprintf("object %s\ntype commit\ntag %s\ntagger %s\n\n%s", t.Target, t.Name, t.Tagger, t.Message)
	out, err := c.Run(ctx, obj, "mktag")
	if err != nil {
		return ZeroHash, err
	}
	return parseHash("git mktag", out)
}

// SignTag writes an annotated tag object of target signed with the
// user's configured key (git tag -s) and returns its id. git makes tags
// only under refs/tags/, so the tag is made under refs/tags/<name>, which
// must not exist, and deleted again: no ref is left behind.
func (c CLI) SignTag(ctx context.Context, name string, target Hash, message string) (Hash, error) {
	if _, err := c.Run(ctx, message, "tag", "-s", "-F", "-", name, target.String()); err != nil {
		return ZeroHash, err
	}
	defer c.Run(context.WithoutCancel(ctx), "", "tag", "-d", name)
	out, err := c.Run(ctx, "", "rev-parse", "refs/tags/"+name)
	if err != nil {
		return ZeroHash, err
	}
	return parseHash("git rev-parse", out)
}

func parseHash(what, s string) (Hash, error) {
	if !IsHash(s) {
		return ZeroHash, fmt.Errorf("%s printed %q, not an object id", what, s)
	}
	return NewHash(s), nil
}

// UpdateRef sets ref name to h only if it holds old (git update-ref
// with reflog message reason), so hooks and reflogs see git's own update.
func (c CLI) UpdateRef(ctx context.Context, name string, h, old Hash, reason string) error {
	_, err := c.Run(ctx, "", "update-ref", "-m", reason, name, h.String(), old.String())
	return err
}

// ExecPath returns git's exec path (git --exec-path), where git keeps
// the programs it runs, or "" when git cannot be run.
func ExecPath() string {
	out, err := CLI{}.Run(context.Background(), "", "--exec-path")
	if err != nil {
		return ""
	}
	return out
}

// gitEnviron is the environment of every git this package runs: see CLI.
func gitEnviron() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if localEnvVars[k] || strings.HasPrefix(k, "GIT_CONFIG_KEY_") || strings.HasPrefix(k, "GIT_CONFIG_VALUE_") || k == "REFCI_GIT_PASSWORD" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "GIT_TERMINAL_PROMPT=0", "GCM_INTERACTIVE=never", "LC_ALL=C")
}
