package worker

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"

	"golang.org/x/sys/unix"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/worker/proc"
)

// Isolation says what a run's pipeline may see and write, through its
// shim (RunSpec.Shim; see proc.Spec.Hide). The zero value hides nothing
// and leaves the file system as it is.
type Isolation struct {
	// Hide lists absolute paths the pipeline must not see (the worker's
	// key, configuration, caches, the other runs).
	Hide []string
	// RequireIsolation refuses to run a pipeline from which Hide cannot
	// be hidden (no user namespaces): the run ends in state error.
	RequireIsolation bool
	// With Hide, the pipeline's whole file system is read-only but for
	// its run directory, shim.ScratchDirs and Writable; ReadOnly lists
	// paths under those that stay read-only (see proc.Spec.ReadOnly).
	Writable, ReadOnly []string
}

// CleanPaths makes paths absolute and drops empty ones and repeats, for
// Isolation.Hide and Isolation.Writable.
func CleanPaths(paths ...string) []string {
	var out []string
	seen := map[string]bool{}
	for _, p := range paths {
		if p == "" {
			continue
		}
		a, err := filepath.Abs(p)
		if err != nil || seen[a] {
			continue
		}
		seen[a] = true
		out = append(out, a)
	}
	return out
}

// ChooseShim picks, once at start, the executable that runs as every
// run's shim (Config.Shim): refci-shim beside self when it is of this
// build (see proc.ChooseShim), else self. It logs which, and why a
// refci-shim that is there was not taken.
func ChooseShim(log *slog.Logger, self string) string {
	shim, note := proc.ChooseShim(self)
	if note != "" {
		log.Warn("not using the refci-shim beside refci: runs use refci itself as their shim, which costs more per run; reinstall refci-shim from the same build as refci, or remove it", "shim", shim, "reason", note)
	} else {
		log.Info("shim for runs", "shim", shim)
	}
	return shim
}

// WarnJobClient logs, once at start, when a refci-job beside self is not
// used (see ChooseJobClient), and why.
func WarnJobClient(log *slog.Logger, self string) {
	if light, note := ChooseJobClient(self); note != "" {
		log.Warn("not using the refci-job beside refci: pipelines get refci itself for refci job, which costs several milliseconds more per job; reinstall refci-job from the same build as refci, or remove it", "refci-job", filepath.Join(filepath.Dir(self), JobClientName), "reason", note)
	} else if light != "" {
		log.Debug("job client for pipelines", "refci-job", light)
	}
}

// WarnIfNotIsolated logs, once at start, when pipelines will not be
// isolated from the worker's files. shim is the runs' shim (ChooseShim),
// which does the hiding; require is Isolation.RequireIsolation.
func WarnIfNotIsolated(log *slog.Logger, shim string, require bool) {
	err := proc.CheckIsolation(shim)
	switch {
	case err == nil:
	case require:
		log.Warn("pipelines cannot be isolated from the worker's files, and --require-isolation is set: every run will end in state error", "err", err)
	default:
		log.Warn("pipelines cannot be isolated from the worker's files: they can read its signing key and caches (status.json records isolation none); allow unprivileged user namespaces, or pass --require-isolation to refuse such runs", "err", err)
	}
}

// MakeRunsDir makes the directory in which this process makes its runs'
// directories (Config.TempDir, RunSpec.TempDir), inside the user's runs
// root (runsRoot), and returns the paths that pipelines must not see:
// the runs root, and the one under /tmp too when $TMPDIR is elsewhere.
// Every refci process of the user (workers, refci serve, refci run)
// makes its runs there, so that a pipeline, which sees only its own run
// directory, sees nothing of any other run: a concurrent neighbour's,
// another worker's, serve's, one started after it. done removes this
// process' directory once it has stopped.
func MakeRunsDir() (dir string, hide []string, done func(), err error) {
	root, err := runsRoot(os.TempDir())
	if err != nil {
		return "", nil, nil, err
	}
	hide = []string{root}
	if filepath.Clean(os.TempDir()) != "/tmp" {
		if r, err := runsRoot("/tmp"); err == nil {
			hide = append(hide, r)
		}
	}
	dir, err = os.MkdirTemp(root, "") // short: socket paths are limited to 108 bytes
	if err != nil {
		return "", nil, nil, fmt.Errorf("create the directory for run directories: %w", err)
	}
	return dir, hide, func() { os.RemoveAll(dir) }, nil
}

// runsRoot makes (or checks) tmp/refci-UID, the directory of this user's
// refci processes' run directories: it must be a directory (not a
// symbolic link) of this user, private (0700), or someone else could
// read or swap the runs.
func runsRoot(tmp string) (string, error) {
	uid := os.Getuid()
	root := filepath.Join(tmp, fmt.Sprintf("refci-%d", uid))
	if err := os.Mkdir(root, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("create the directory for run directories: %w; set TMPDIR to a directory you can write", err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(root, &st); err != nil {
		return "", fmt.Errorf("the directory for run directories: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || int(st.Uid) != uid || st.Mode&0o077 != 0 {
		return "", fmt.Errorf("%s, where refci makes its run directories, is not a private directory of this user (uid %d, mode %o, owned by uid %d): someone else could read or change runs there; remove it (refci makes it again, 0700) or set TMPDIR to another directory", root, uid, st.Mode&0o7777|st.Mode&unix.S_IFMT, st.Uid)
	}
	return root, nil
}

// UserPrivatePaths are where refci processes of this user keep their key
// when $REFCI_HOME does not say otherwise, and the user's credentials
// (credentialPaths): hidden from every pipeline (Isolation.Hide),
// whichever home this process uses, so that a worker with a $REFCI_HOME
// of its own does not show its pipelines the key of another refci of the
// same user that uses the default one. getenv reads the environment of
// this process (os.Getenv).
func UserPrivatePaths(getenv func(string) string) []string {
	out := credentialPaths(getenv)
	if x := getenv("XDG_CONFIG_HOME"); x != "" {
		out = append(out, filepath.Join(x, "refci"))
	}
	if h, err := os.UserHomeDir(); err == nil {
		out = append(out, filepath.Join(h, ".config", "refci"))
	}
	return out
}

// credentialPaths are the user's credentials with which refci's own ssh,
// git and gpg reach remotes and sign, hidden from every pipeline (they lie
// in the user's home, which pipelines may otherwise read): ~/.ssh and the
// ssh agent's socket, ~/.gnupg or $GNUPGHOME, git's credential stores,
// ~/.netrc, and the user's runtime directory (agents' and the session's
// sockets).
func credentialPaths(getenv func(string) string) []string {
	homes := []string{getenv("HOME")}
	if u, err := user.Current(); err == nil {
		homes = append(homes, u.HomeDir)
	}
	var out []string
	for _, h := range homes {
		if h == "" || h == "/" {
			continue
		}
		for _, f := range []string{".ssh", ".gnupg", ".git-credentials", ".netrc", ".config/git/credentials"} {
			out = append(out, filepath.Join(h, f))
		}
	}
	if x := getenv("XDG_CONFIG_HOME"); x != "" {
		out = append(out, filepath.Join(x, "git", "credentials"))
	}
	out = append(out, getenv("SSH_AUTH_SOCK"), getenv("GNUPGHOME"))
	if r := getenv("XDG_RUNTIME_DIR"); r != "" {
		out = append(out, r)
	} else {
		out = append(out, fmt.Sprintf("/run/user/%d", os.Getuid()))
	}
	return out
}

// ReadOnlyPaths lists what pipelines must not write even where they may
// write (the scratch directories, their run directory: see
// Isolation.ReadOnly): everything refci's own processes (git, ssh,
// gpg, refci itself: not in the pipeline's namespace) take
// configuration, hooks, helpers or code from. The user's home (from $HOME
// and the passwd entry: dotfiles, ~/.ssh, ~/.gitconfig, ~/.config),
// $XDG_CONFIG_HOME, git's configuration, templates and programs, the
// directories of PATH and of refci, git, ssh and gpg, and extra (local
// remotes, say). Elsewhere the pipeline's file system is read-only
// anyway. getenv reads the environment of this process (os.Getenv).
func ReadOnlyPaths(getenv func(string) string, exes []string, extra ...string) []string {
	var ps []string
	add := func(p string) {
		if p != "" && filepath.IsAbs(p) {
			ps = append(ps, p)
		}
	}
	add(getenv("HOME"))
	if u, err := user.Current(); err == nil {
		add(u.HomeDir)
	}
	for _, v := range []string{"XDG_CONFIG_HOME", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_TEMPLATE_DIR", "GIT_EXEC_PATH", "GIT_ASKPASS", "SSH_ASKPASS", "GNUPGHOME"} {
		add(getenv(v))
	}
	add("/etc/gitconfig")
	add("/etc/ssh")
	for _, d := range filepath.SplitList(getenv("PATH")) {
		add(d)
	}
	for _, name := range []string{"git", "ssh", "gpg"} {
		if p, err := exec.LookPath(name); err == nil {
			exes = append(exes, p)
		}
	}
	for _, x := range exes {
		if x == "" {
			continue
		}
		add(x)
		add(filepath.Dir(x))
		if r, err := filepath.EvalSymlinks(x); err == nil {
			add(r)
			add(filepath.Dir(r))
		}
	}
	add(gitproto.ExecPath())
	for _, p := range extra {
		add(p)
	}
	return CleanPaths(ps...)
}

// WarnIfRoot logs, once at start, that a worker running as root runs its
// pipelines as root.
func WarnIfRoot(log *slog.Logger) {
	if os.Geteuid() != 0 {
		return
	}
	log.Warn("running as root: pipelines run as root too; isolated, they cannot write the file system but for scratch places, yet every root-owned device (raw disks), socket and service of this machine is theirs, and without user namespaces the whole machine is; run refci as a dedicated unprivileged user (e.g. useradd --system --create-home refci) that owns only refci's key, caches and configuration")
}

// Sandbox is what a refci process prepares once, at start, for the
// pipelines it runs: the directory their run directories are made in,
// the shim that supervises them, and what they may see and write.
type Sandbox struct {
	RunsDir   string    // Config.TempDir, RunSpec.TempDir
	Shim      string    // Config.Shim, RunSpec.Shim; "" when not isolating
	Isolation Isolation // Config.Isolation, RunSpec.Isolation
	close     func()
}

// SandboxSpec says what NewSandbox prepares.
type SandboxSpec struct {
	// Isolate: pipelines run under the shim, isolated. When false, only
	// the runs directory is made (refci run without --isolate).
	Isolate bool
	Getenv  func(string) string // the process environment
	Self    string              // refci's executable
	// Private lists this process's own files that no pipeline may see
	// (its key or all of $REFCI_HOME, caches, configuration, data dir),
	// besides every user's credentials (UserPrivatePaths) and other runs.
	Private []string
	// ReadOnly lists more paths pipelines may not write (remotes on this
	// machine, the repository that gets the result), besides what
	// ReadOnlyPaths names.
	ReadOnly []string
	Writable []string // Isolation.Writable: absolute paths
	Require  bool     // Isolation.RequireIsolation
	// Log, when not nil, is told at start what a worker's log says: a
	// process running as root, the shim chosen, pipelines that cannot
	// be isolated.
	Log *slog.Logger
}

// NewSandbox makes the runs directory (MakeRunsDir) and, when isolating,
// chooses the shim and lists what pipelines may not see or write. Close
// removes the runs directory once the process has stopped.
func NewSandbox(s SandboxSpec) (*Sandbox, error) {
	runs, runsHide, done, err := MakeRunsDir()
	if err != nil {
		return nil, err
	}
	sb := &Sandbox{RunsDir: runs, close: done}
	if s.Log != nil {
		WarnJobClient(s.Log, s.Self)
	}
	if !s.Isolate {
		return sb, nil
	}
	if s.Log != nil {
		WarnIfRoot(s.Log)
		sb.Shim = ChooseShim(s.Log, s.Self)
	} else {
		sb.Shim, _ = proc.ChooseShim(s.Self)
	}
	sb.Isolation = Isolation{
		Hide:             CleanPaths(append(append(append([]string(nil), s.Private...), UserPrivatePaths(s.Getenv)...), runsHide...)...),
		ReadOnly:         ReadOnlyPaths(s.Getenv, []string{s.Self, sb.Shim, lightJobClient(s.Self)}, s.ReadOnly...),
		Writable:         CleanPaths(s.Writable...),
		RequireIsolation: s.Require,
	}
	if s.Log != nil {
		WarnIfNotIsolated(s.Log, sb.Shim, s.Require)
	}
	return sb, nil
}

// Close removes the runs directory.
func (s *Sandbox) Close() { s.close() }
