package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
	"refci.dev/refci/secrets"
)

// home is refci's configuration directory: $REFCI_HOME, else
// $XDG_CONFIG_HOME/refci, else ~/.config/refci.
func (e *env) home() (string, error) {
	if h := e.getenv("REFCI_HOME"); h != "" {
		return h, nil
	}
	if x := e.getenv("XDG_CONFIG_HOME"); x != "" {
		return filepath.Join(x, "refci"), nil
	}
	h, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cannot find a home directory; set REFCI_HOME")
	}
	return filepath.Join(h, ".config", "refci"), nil
}

// errKeyConfig marks a key file the user must fix (exit 2).
var errKeyConfig = errors.New("key configuration")

// keyError carries a key problem's message and matches errKeyConfig.
type keyError struct{ err error }

func (k keyError) Error() string        { return k.err.Error() }
func (k keyError) Unwrap() error        { return k.err }
func (k keyError) Is(target error) bool { return target == errKeyConfig }

// identity loads the signing key: keyFile when given, else
// $REFCI_HOME/key.asc, created on first use.
func (e *env) identity(keyFile string) (*secrets.Identity, error) {
	if keyFile != "" {
		id, err := secrets.Load(keyFile)
		if err != nil {
			return nil, keyError{err}
		}
		return id, nil
	}
	h, err := e.home()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(h, "key.asc")
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	name := "refci"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = "refci " + u.Username + "@" + host
	}
	id, created, err := secrets.LoadOrCreate(path, name, "refci@"+host)
	if err != nil {
		return nil, keyError{err}
	}
	if created {
		e.errorf("created a signing key %s at %s (share its public part with 'refci keys export')", id.Fingerprint(), path)
	}
	return id, nil
}

func openRepo(dir string) (*gitproto.Repo, error) {
	if dir == "" {
		dir = "."
	}
	return gitproto.Open(dir)
}

// runRef is one run found in the repository.
type runRef struct {
	Ref    string
	Target string
	Run    string
	Commit gitproto.Hash
	Future bool // its id is dated in the future: never the latest
}

// listRuns returns the runs of target (all runs when target is ""),
// newest first. Runs whose id is dated in the future (beyond the clock
// skew allowance) come last, marked Future: they are never the latest.
func listRuns(repo *gitproto.Repo, target string) ([]runRef, error) {
	prefix := queue.RunsPrefix
	if target != "" {
		prefix += target + "/"
	}
	refs, err := repo.Refs(prefix)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	var out []runRef
	for _, r := range refs {
		t, id, ok := queue.ParseRunRef(r.Name)
		if !ok {
			continue
		}
		out = append(out, runRef{Ref: r.Name, Target: t, Run: id, Commit: r.Hash, Future: queue.RunIDFuture(id, now)})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Future != out[j].Future {
			return !out[i].Future
		}
		if out[i].Run != out[j].Run {
			return out[i].Run > out[j].Run
		}
		return out[i].Ref > out[j].Ref
	})
	return out, nil
}

// takenOverBy returns the run that took the request of st over after
// st's worker was lost (see queue.TakenOver), from the runs of st's
// target in repo. A final run was never lost.
func takenOverBy(repo *gitproto.Repo, st *queue.Status) (rr runRefStatus, ok bool) {
	if st.State.Final() {
		return runRefStatus{}, false
	}
	runs, err := listRuns(repo, st.Target)
	if err != nil {
		return runRefStatus{}, false
	}
	sts := []*queue.Status{st}
	refOf := map[*queue.Status]runRef{}
	for _, r := range runs {
		if r.Run == st.Run {
			continue
		}
		if s, err := readResult(repo, r.Ref, r.Commit); err == nil && !r.Future {
			sts = append(sts, s)
			refOf[s] = r
		}
	}
	by := queue.TakenOver(sts)[queue.RunRef(st.Target, st.Run)]
	if by == nil {
		return runRefStatus{}, false
	}
	return runRefStatus{refOf[by], by}, true
}

// runRefStatus is a run and its status.
type runRefStatus struct {
	runRef
	st *queue.Status
}

var errNoRuns = errors.New("no runs")

// findRun resolves what the user named: "" (the latest run of HEAD), a
// run ref, <target>/<run-id>, a run id, or a revision (its latest run).
// The latest run of a revision is the newest that is believed (see
// readResult) and not dated in the future; warn says which newer runs
// were passed over, and why.
func findRun(repo *gitproto.Repo, arg string, warn func(format string, args ...any)) (runRef, error) {
	if strings.HasPrefix(arg, queue.RunsPrefix) {
		t, id, ok := queue.ParseRunRef(arg)
		if !ok {
			return runRef{}, fmt.Errorf("%s is not a run ref (refs/ci/runs/<commit>/<run-id>)", queue.Printable(arg))
		}
		h, err := repo.RefHash(arg)
		if err != nil {
			return runRef{}, fmt.Errorf("run %s: %w", arg, err)
		}
		return runRef{Ref: arg, Target: t, Run: id, Commit: h, Future: queue.RunIDFuture(id, time.Now())}, nil
	}
	if t, id, ok := strings.Cut(arg, "/"); ok && queue.ValidRunID(id) {
		return findRun(repo, queue.RunRef(t, id), warn)
	}
	if queue.ValidRunID(arg) {
		all, err := listRuns(repo, "")
		if err != nil {
			return runRef{}, err
		}
		for _, r := range all {
			if r.Run == arg {
				return r, nil
			}
		}
		return runRef{}, fmt.Errorf("run %s: %w here; fetch results with: git fetch origin '+refs/ci/*:refs/ci/*'", arg, errNoRuns)
	}
	rev := arg
	if rev == "" {
		rev = "HEAD"
	}
	target, err := repo.ResolveCommit(rev)
	if err != nil {
		return runRef{}, err
	}
	runs, err := listRuns(repo, target.String())
	if err != nil {
		return runRef{}, err
	}
	if len(runs) == 0 {
		return runRef{}, fmt.Errorf("%s (%s): %w yet; start one with '%s', or fetch results with: git fetch origin '+refs/ci/*:refs/ci/*'", rev, target.String()[:12], errNoRuns, strings.TrimSpace("refci run "+arg))
	}
	for _, r := range runs {
		if r.Future {
			warn("passed over run %s: it is dated in the future, so it is never the latest (name it to see it)", r.Run)
		}
	}
	for _, r := range runs {
		if r.Future {
			continue
		}
		if _, err := readResult(repo, r.Ref, r.Commit); notBelieved(err) {
			warn("passed over run %s: %s", r.Run, resultProblem(err))
			continue
		}
		return r, nil // believed, or unreadable: the caller says why
	}
	return runRef{}, fmt.Errorf("%s (%s): %w that can be believed (see above); start one with 'refci run %s', or name a run to see it", rev, target.String()[:12], errNoRuns, rev)
}

// readResult reads the result commit found under ref and returns its
// status once it is believed: status.json decodes, it and the commit's
// trailers agree with ref, and its values are valid (queue.DecodeResult).
// Every reader of results uses it, so that all apply the same rule; the
// error says which (see resultProblem).
func readResult(repo *gitproto.Repo, ref string, commit gitproto.Hash) (*queue.Status, error) {
	b, err := repo.ReadFile(commit, queue.StatusFile)
	if err != nil {
		return nil, fmt.Errorf("result %s: %w", commit.String()[:12], err)
	}
	c, err := repo.Commit(commit)
	if err != nil {
		return nil, fmt.Errorf("result %s: %w", commit.String()[:12], err)
	}
	st, err := queue.DecodeResult(ref, b, c.Message)
	if err != nil {
		return nil, fmt.Errorf("result %s: %w", commit.String()[:12], err)
	}
	return st, nil
}

// resultProblem says in a word why a result is not believed, then the
// details: "inconsistent: ..." (it does not agree with its ref),
// "invalid: ..." (a value refci never writes), else "unreadable: ...".
func resultProblem(err error) string {
	msg := render.Safe(err.Error())
	switch {
	case errors.Is(err, queue.ErrInconsistent):
		return "inconsistent: " + msg
	case errors.Is(err, queue.ErrInvalid):
		return "invalid: " + msg
	}
	return "unreadable: " + msg
}

// notBelieved reports whether err says a result is not what its ref
// claims (exit 1, like a bad signature) rather than that it could not be
// read.
func notBelieved(err error) bool {
	return errors.Is(err, queue.ErrInconsistent) || errors.Is(err, queue.ErrInvalid)
}

// exitFor maps an error to an exit code: configuration and usage
// problems 2, the rest 3.
func exitFor(err error) int {
	switch {
	case errors.Is(err, gitproto.ErrNotRepo), errors.Is(err, gitproto.ErrNoCommits),
		errors.Is(err, gitproto.ErrUnknownRev), errors.Is(err, gitproto.ErrNotCommit),
		errors.Is(err, errNoRuns), errors.Is(err, gitproto.ErrNotFound),
		errors.Is(err, errKeyConfig):
		return exitUsage
	}
	return exitInfra
}

// isTerminal reports whether f is a character device (a TTY).
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// logWriter is where a pipeline's log goes: to a terminal through
// render.TermLog (colours kept when e.color, every other control sequence
// dropped), anywhere else byte for byte. done ends the log.
func (e *env) logWriter() (w io.Writer, done func()) {
	if !isTerminal(e.stdout) {
		return e.stdout, func() {}
	}
	t := render.NewTermLog(e.stdout, e.color(e.stdout))
	return t, func() { t.Flush() }
}

func (e *env) color(w any) bool {
	return isTerminal(w) && e.getenv("NO_COLOR") == "" && e.getenv("TERM") != "dumb"
}
