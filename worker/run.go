package worker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/worker/jobsock"
	"refci.dev/refci/worker/jobsock/jobwire"
	"refci.dev/refci/worker/proc"
	"refci.dev/refci/worker/shim"
)

// Signer signs result commits. *secrets.Identity implements it. It must
// be safe for concurrent use.
type Signer interface {
	Fingerprint() string
	UserID() string
	SignDetached(message []byte) (string, error)
}

// Defaults for the zero fields of Limits.
const (
	DefaultLogCap           = 16 << 20
	DefaultArtifactFileCap  = 50 << 20
	DefaultArtifactTotalCap = 200 << 20
	DefaultTimeout          = time.Hour
	DefaultKillGrace        = 5 * time.Second
)

// Limits bound one run: how long its pipeline may take and how much of
// its output is kept. Config holds every run's (a request may ask for
// another Timeout, up to Config.MaxTimeout), RunSpec one run's. A zero
// field means its default (DefaultTimeout, DefaultKillGrace,
// DefaultLogCap, DefaultArtifactFileCap, DefaultArtifactTotalCap).
type Limits struct {
	// Timeout is the pipeline's timeout.
	Timeout time.Duration
	// KillGrace is how long the pipeline's processes have between
	// SIGTERM (a timeout, a cancel) and SIGKILL.
	KillGrace time.Duration
	// LogCap is how many bytes of the log, and of each job's log, are
	// kept (the start and the end).
	LogCap int64
	// ArtifactFileCap and ArtifactTotalCap bound the size of one
	// artifact and of all of them; larger ones are left out, and
	// status.json says so.
	ArtifactFileCap, ArtifactTotalCap int64
}

// RunSpec says what to run and how. Zero values of the caps and durations
// mean the defaults above.
type RunSpec struct {
	Repo      *gitproto.Repo
	Target    gitproto.Hash
	TargetRef string // what the user named, informational
	Request   string
	// RequestObject is the request ref's value that was claimed,
	// recorded in status.json ("" for a local run).
	RequestObject string
	RunID         string
	Attempt       int
	Env           string
	Trusted       bool
	// TrustReason says why the request is trusted or not, for people.
	TrustReason string
	// Secrets opens the environment Env for this run when it starts. nil
	// (or Env "") gives the run no secrets; with an Env, status.json then
	// records them withheld.
	Secrets SecretsFunc
	// Remote is the URL of the remote the request came from, passed to
	// Secrets; "" for a local run.
	Remote string

	// Limits bound the run.
	Limits
	// TimeoutRequested, when set, is the longer timeout the request asked
	// for, which the worker capped to Timeout: status.json (extra
	// timeout_requested, timeout_cap) and the log say so.
	TimeoutRequested time.Duration
	// Refusal, when set, ends the run in state error with this reason
	// without checking out or running anything: the request's options
	// were bad (queue.ParseRequestOptions), or its earlier attempts all
	// lost their worker.
	Refusal string

	// RefciPath is the refci executable put on the pipeline's PATH so
	// that `refci job` works inside it. Empty: no refci on PATH. When
	// the light job client refci-job of the same build lies beside it
	// (ChooseJobClient), that is the pipeline's refci, and it hands
	// every command but job and secret to the refci beside it.
	RefciPath string
	// Shim, when set (the refci executable, or refci-shim beside it: see
	// ChooseShim), runs the pipeline under a per-run supervisor process,
	// so that nothing of it survives even if this process is killed (see
	// proc.Spec.Shim). Workers set it.
	Shim string
	// Isolation says what the pipeline may see and write; it needs Shim.
	// The run's directory and RefciPath must not lie under a hidden path:
	// the run ends in state error if they do. When nothing can be hidden
	// (no user namespaces), status.json records extra.isolation "none"
	// and extra.isolation_reason, unless RequireIsolation is set: then
	// the run ends in state error without running the pipeline.
	Isolation
	// Output, when not nil, receives a live copy of the pipeline's
	// output.
	Output io.Writer
	// TempDir is where the run's private directory is made ("" means
	// os.TempDir()).
	TempDir string
	// Dirs, when not nil, gives the run an emptied directory of an
	// earlier run (from the same TempDir) and takes its own back.
	Dirs *RunDirs
	// Hard, when cancelled after ctx, kills the pipeline at once instead
	// of after KillGrace (a second Ctrl-C).
	Hard context.Context
	// Reason, when ctx is cancelled, says why (e.g. "interrupted").
	CancelReason func() string
	Host         string
	Version      string
	Now          func() time.Time

	// PreviousRun names the run an expired claim held, on a takeover.
	PreviousRun string
	// SnapshotEvery, when positive, writes a progress snapshot (state
	// running, the log so far) to the run ref at that interval while the
	// pipeline runs, and calls OnSnapshot with each new commit.
	SnapshotEvery time.Duration
	OnSnapshot    func(ref string, commit gitproto.Hash)
	// NoRunRef leaves the final result's ref unset in Repo when no
	// snapshot set it: the caller records the commit itself until it is
	// pushed (the worker's outbox; making and later deleting a ref file
	// per run in its cache is two files made and three removed). The
	// result's objects are written either way.
	NoRunRef bool
	// Page, when set, renders index.html of the final result tree (see
	// pageFiles: a repository's .refci/viewer/ is copied too).
	Page PageFunc
}

// Outcome is a published result.
type Outcome struct {
	Status *queue.Status
	Ref    string
	Commit gitproto.Hash
	// RefWritten says whether Ref was set in the repository (always,
	// unless RunSpec.NoRunRef).
	RefWritten bool

	// retry, with an error from Run, writes the error result again: set
	// when the pipeline's end is known but not even a short result
	// could be written (a full disk). It returns the same.
	retry func() (*Outcome, error)
}

// ErrConfig marks results whose error state is the repository's own
// configuration (no .refci/run, not executable): the CLI exits 2.
var ErrConfig = errors.New("pipeline configuration")

// Run checks out the target into a fresh private directory, runs
// .refci/run there, and publishes a signed result commit at
// refs/ci/runs/<target>/<run-id>. Without an error the Outcome describes
// a result that is recorded. When refci's own writes fail (a full disk
// under the run directory or the repository), the result recorded is a
// short one in state error that says why, with the end of the log. An
// error means not even that could be recorded; the Outcome then carries
// the Status, and a way for the worker to write that result later.
func Run(ctx context.Context, spec RunSpec, signer Signer) (*Outcome, error) {
	now := spec.Now
	if now == nil {
		now = time.Now
	}
	if spec.Attempt == 0 {
		spec.Attempt = 1
	}
	if spec.RunID == "" {
		spec.RunID = queue.NewRunID(now())
	}
	st := &queue.Status{
		Format:        queue.Format,
		State:         queue.Running,
		Target:        spec.Target.String(),
		TargetRef:     spec.TargetRef,
		Request:       spec.Request,
		RequestObject: spec.RequestObject,
		Run:           spec.RunID,
		Attempt:       spec.Attempt,
		Worker:        signer.Fingerprint(),
		Host:          spec.Host,
		Env:           spec.Env,
		Trusted:       spec.Trusted,
		TrustNote:     spec.TrustReason,
		Started:       now().UTC(),
		Version:       spec.Version,
		Jobs:          []queue.Job{},
		Artifacts:     []queue.Artifact{},
	}
	if spec.PreviousRun != "" {
		st.Extra = map[string]any{queue.ExtraPreviousRun: spec.PreviousRun}
	}
	if spec.TimeoutRequested > 0 {
		if st.Extra == nil {
			st.Extra = map[string]any{}
		}
		st.Extra["timeout_requested"] = spec.TimeoutRequested.String()
		st.Extra["timeout_cap"] = orDefault(spec.Timeout, DefaultTimeout).String()
	}
	r := &run{spec: spec, st: st, now: now, signer: signer, ref: queue.RunRef(st.Target, st.Run), masks: &MaskSet{}}
	defer r.cleanup()
	files, err := r.execute(ctx)
	if err == nil {
		out, perr := r.writeResult(files, signer)
		if perr == nil {
			return out, nil
		}
		err = perr
	}
	// refci's own writes failed (a full disk, most likely): a run
	// always ends with a result, so record a short one that says why.
	return r.recordFailure(err)
}

// fallbackLogBytes is how much of the log's end an error result made by
// recordFailure keeps.
const fallbackLogBytes = 64 << 10

// recordFailure publishes a short result in state error after refci could
// not store the run's full result (cause): status.json and the end of the
// log, from memory, and no artifacts or job logs. If even that cannot be
// written because the cache's disk is full too, the Outcome carries the
// status and a retry that writes the same result once space is back.
func (r *run) recordFailure(cause error) (*Outcome, error) {
	what := "refci could not store the run's result"
	switch {
	case isNoSpace(cause) && r.ran:
		what = "no space left on device writing the result"
	case isNoSpace(cause):
		what = "no space left on device preparing the run"
	case !r.ran:
		what = "refci could not prepare the run"
	}
	reason := fmt.Sprintf("%s: %v", what, cause)
	if r.st.State != queue.Running && r.st.State != "" {
		reason += fmt.Sprintf(" (the pipeline had ended %s", r.st.State)
		if r.st.Reason != "" {
			reason += ": " + r.st.Reason
		}
		reason += ")"
	}
	r.finish(queue.Error, reason)
	for _, a := range r.st.Artifacts {
		r.st.ArtifactsSkipped = append(r.st.ArtifactsSkipped, queue.SkippedArtifact{Path: a.Path, Reason: "not stored: " + what})
	}
	r.st.Artifacts = []queue.Artifact{}
	for i := range r.st.Jobs {
		r.st.Jobs[i].Log = ""
	}
	tail, cut := r.logTail(fallbackLogBytes)
	var log bytes.Buffer
	if cut {
		fmt.Fprintf(&log, "[refci: only the last %d bytes of the log are kept]\n", len(tail))
	}
	log.Write(tail)
	if len(tail) > 0 && tail[len(tail)-1] != '\n' {
		log.WriteByte('\n')
	}
	fmt.Fprintf(&log, "refci: %s\n", r.masks.String(reason))
	r.st.LogTruncated = r.st.LogTruncated || cut
	files := []resultFile{{path: queue.LogFile, data: log.Bytes()}}
	out, err := r.writeResult(files, r.signer)
	if err == nil {
		return out, nil
	}
	err = fmt.Errorf("%s; the short error result could not be stored either: %w", reason, err)
	if !isNoSpace(err) {
		// Not something space will mend (the signer gone, say): no
		// retry holding a slot and the claim; the claim runs out and
		// another worker takes the request over.
		return &Outcome{Status: r.st}, err
	}
	var retry func() (*Outcome, error)
	retry = func() (*Outcome, error) {
		out, err := r.writeResult(files, r.signer)
		if err != nil {
			return &Outcome{Status: r.st, retry: retry}, fmt.Errorf("store the error result: %w", err)
		}
		return out, nil
	}
	return &Outcome{Status: r.st, retry: retry}, err
}

// logTail returns up to n bytes of the end of the run's log as far as it
// was stored, and whether anything before them is left out.
func (r *run) logTail(n int) ([]byte, bool) {
	if fl := r.flog; fl != nil {
		if fl.Path == "" {
			return lastBytes(fl.Data, n)
		}
		f, err := os.Open(fl.Path)
		if err != nil {
			return nil, fl.Size > 0
		}
		defer f.Close()
		return readEnd(f, fl.Size, n)
	}
	if r.mainLog == nil {
		return nil, false
	}
	return r.mainLog.Tail(n)
}

func lastBytes(b []byte, n int) ([]byte, bool) {
	if len(b) > n {
		return b[len(b)-n:], true
	}
	return b, false
}

// readEnd reads the last n bytes of the first size bytes of f.
func readEnd(f io.ReaderAt, size int64, n int) ([]byte, bool) {
	k := min(size, int64(n))
	buf := make([]byte, k)
	m, _ := f.ReadAt(buf, size-k)
	return buf[:m], size > k
}

// isNoSpace reports whether err comes from a full file system (or a
// quota), also when a git process reported it in text.
func isNoSpace(err error) bool {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	s := strings.ToLower(err.Error())
	return strings.Contains(s, "no space left on device") || strings.Contains(s, "disk quota exceeded")
}

type run struct {
	spec   RunSpec
	st     *queue.Status
	now    func() time.Time
	dir    string
	signer Signer
	ref    string
	last   gitproto.Hash   // the last snapshot written to ref, or zero
	sock   *jobsock.Socket // the job socket kept with a reused run directory
	masks  *MaskSet        // the secret values handed out to the run

	mainLog *CappedLog   // the run's log, closed by cleanup
	flog    *FinishedLog // the stored log, once finished
	ran     bool         // the pipeline was started (and has ended)

	mu      sync.Mutex
	jobLogs map[string]*CappedLog
}

func (r *run) cleanup() {
	if r.mainLog != nil {
		r.mainLog.Close()
	}
	r.mu.Lock()
	for _, l := range r.jobLogs {
		l.Close()
	}
	r.mu.Unlock()
	if r.dir != "" {
		r.spec.Dirs.put(r.dir, r.sock) // emptied for the next run, or removed
	} else if r.sock != nil {
		r.sock.Close()
	}
}

// removeAll deletes a run directory even when the pipeline left
// read-only directories behind (Go's module cache does).
func removeAll(dir string) {
	if os.RemoveAll(dir) == nil {
		return
	}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o700)
		}
		return nil
	})
	os.RemoveAll(dir)
}

// resultFile is one file of the result tree, from disk or from memory.
type resultFile struct {
	path string // in the tree
	src  string // file on disk, or
	data []byte
}

func (r *run) finish(state queue.State, reason string) {
	r.st.State = state
	r.st.Reason = reason
	r.st.Finished = r.now().UTC()
	r.st.DurationMS = r.st.Finished.Sub(r.st.Started).Milliseconds()
}

// execute runs the pipeline and returns the files of the result tree
// (status.json excluded). Errors are infrastructure failures.
func (r *run) execute(ctx context.Context) ([]resultFile, error) {
	dir, err := r.makeRunDir()
	if err != nil {
		return nil, err
	}
	src, logs := filepath.Join(dir, "src"), filepath.Join(dir, "logs")
	mainLog, err := NewCappedLog(logs, r.spec.LogCap)
	if err != nil {
		return nil, fmt.Errorf("create log: %w", err)
	}
	r.mainLog = mainLog

	if r.spec.Refusal != "" {
		return r.endBeforeRunning(r.spec.Refusal)
	}
	entry, reason, isConfig := r.checkOut(src)
	if isConfig {
		return r.endOnConfigError(reason)
	}
	if reason != "" {
		return r.endBeforeRunning(reason)
	}

	var lw *lockedWriter
	rs := &runSecrets{env: r.spec.Env, masks: r.masks, note: func(line string) { fmt.Fprintln(lw, line) }}
	srv, err := r.startJobSocket(dir, logs, rs)
	if err != nil {
		// Not a passing trouble (a socket path too long for the
		// temporary directory, say): answer the request with it rather
		// than retry for ever.
		return r.endBeforeRunning(fmt.Sprintf("the worker cannot create the run's socket: %v", err))
	}
	if err := r.linkRefciBin(filepath.Join(dir, "bin")); err != nil {
		srv.Close()
		return nil, fmt.Errorf("prepare PATH: %w", err)
	}
	logMasker := &Masker{Set: r.masks, W: mainLog}
	if r.spec.Output != nil {
		logMasker.W = io.MultiWriter(mainLog, r.spec.Output)
	}
	lw = &lockedWriter{w: logMasker}
	shell, err := r.startShellJobs(dir, srv, lw)
	if err != nil {
		srv.Close()
		return r.endBeforeRunning(fmt.Sprintf("the worker cannot set up in-shell jobs: %v", err))
	}
	timeout := orDefault(r.spec.Timeout, DefaultTimeout)
	res, err := r.runPipeline(ctx, dir, src, entry, timeout, srv, shell, rs, lw)
	if err != nil && res.ExitCode == -1 && res.Duration == 0 {
		if errors.Is(err, syscall.ENOEXEC) {
			return r.endOnConfigError(reasonNoShebang)
		}
		return r.endBeforeRunning(fmt.Sprintf("could not start .refci/run: %v", err))
	}
	if err != nil {
		// The pipeline ran; refci had trouble around it (its output,
		// a process that would not die). Say so in the log.
		fmt.Fprintf(lw, "refci: %v\n", err)
	}
	r.recordProcessResult(res, srv.Jobs(), lw)
	state, reason := r.verdict(res, timeout)
	if res.Leftovers > 0 {
		fmt.Fprintf(lw, "refci: killed %d process(es) the pipeline left running\n", res.Leftovers)
	}

	files, err := r.storeJobLogs()
	if err != nil {
		return nil, err
	}
	files = append(files, r.storeArtifacts(filepath.Join(dir, "artifacts"), logs, lw)...)
	r.finish(state, reason)
	lw.mu.Lock()
	err = logMasker.Flush()
	lw.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("store log: %w", err)
	}
	return r.storeMainLog(files)
}

// makeRunDir makes the run's private directory, or takes an emptied one
// of an earlier run (RunSpec.Dirs), and returns it.
func (r *run) makeRunDir() (string, error) {
	// A short name: the socket inside must stay under 108 bytes.
	prefix := "refci-run-"
	if r.spec.TempDir != "" {
		prefix = "run-" // the worker's own directory says refci already
	}
	dir := r.spec.Dirs.get() // an emptied one of an earlier run, or
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp(r.spec.TempDir, prefix); err != nil {
			return "", fmt.Errorf("create run directory: %w", err)
		}
		r.dir = dir
		for _, d := range runSubdirs {
			if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
				return "", fmt.Errorf("create run directory: %w", err)
			}
		}
	}
	r.dir = dir
	return dir, nil
}

// storeMainLog finishes the run's log and appends it to files.
func (r *run) storeMainLog(files []resultFile) ([]resultFile, error) {
	fl, err := r.mainLog.Finish()
	if err != nil {
		return nil, fmt.Errorf("store log: %w", err)
	}
	r.flog = &fl
	r.st.LogBytes = fl.Total
	r.st.LogTruncated = fl.Truncated
	return append(files, resultFile{path: queue.LogFile, src: fl.Path, data: fl.Data}), nil
}

// endBeforeRunning ends the run in state error before the pipeline ran.
// The reason is in the log and the result; not echoed to Output, where
// the caller's summary line says it once.
func (r *run) endBeforeRunning(reason string) ([]resultFile, error) {
	fmt.Fprintf(r.mainLog, "refci: %s\n", reason)
	r.finish(queue.Error, reason)
	return r.storeMainLog(nil)
}

// endOnConfigError is endBeforeRunning for a reason that is the
// repository's own configuration (status.json extra config_error).
func (r *run) endOnConfigError(reason string) ([]resultFile, error) {
	if r.st.Extra == nil {
		r.st.Extra = map[string]any{}
	}
	r.st.Extra[queue.ExtraConfigError] = true // keep previous_run of a takeover
	return r.endBeforeRunning(reason)
}

// checkOut checks the target out into src and finds the pipeline's entry
// point there. When it cannot, reason says why, and isConfig whether
// that is the repository's configuration.
func (r *run) checkOut(src string) (entry, reason string, isConfig bool) {
	if typ, err := r.spec.Repo.ObjectType(r.spec.Target); err != nil {
		return "", fmt.Sprintf("the target %s is not in the repository: %v", r.spec.Target, err), false
	} else if typ != "commit" {
		return "", fmt.Sprintf("the request points at a %s, not a commit; push a commit (git push origin HEAD:refs/ci/requests/NAME) or an annotated tag on one", typ), false
	}
	if _, err := r.spec.Repo.Checkout(r.spec.Target, src); err != nil {
		return "", fmt.Sprintf("checkout failed: %v", err), false
	}
	entry, reason = findEntryPoint(src)
	return entry, reason, reason != ""
}

// startJobSocket starts serving the run's job socket in dir, with the
// jobs' logs spilling into logs.
func (r *run) startJobSocket(dir, logs string, rs *runSecrets) (*jobsock.Server, error) {
	sockPath := runSocketPath(dir)
	var sock *jobsock.Socket
	if r.spec.Dirs != nil {
		// Kept listening from run to run with the directory.
		if sock = r.spec.Dirs.socket(dir); sock == nil {
			var err error
			if sock, err = jobsock.Listen(sockPath); err != nil {
				return nil, err
			}
		}
		r.sock = sock
	}
	return jobsock.NewServer(jobsock.Config{
		Socket:     sock,
		SocketPath: sockPath,
		Run:        jobSocketRun{runSecrets: rs, r: r, logs: logs},
		Now:        r.now,
		OwnTree:    true,
	})
}

// startShellJobs writes the run's in-shell job library ($REFCI_SH) and
// serves its channel in dir/jobs ($REFCI_JOBS) for srv; the jobs' output
// is echoed, prefixed, to lw, as `refci job` prints it.
func (r *run) startShellJobs(dir string, srv *jobsock.Server, lw *lockedWriter) (*jobsock.Shell, error) {
	jobs := filepath.Join(dir, "jobs")
	if err := writeShellLibrary(shellLibraryPath(dir)); err != nil {
		return nil, err
	}
	return srv.ServeShell(jobsock.ShellConfig{
		Dir:  jobs,
		Echo: lw,
		Note: func(line string) { fmt.Fprintln(lw, line) },
	})
}

// The in-shell job library and its FIFO in a run directory's jobs/.
const (
	shellLibraryName = "refci.sh"
	shellCtlName     = "ctl" // jobsock.ShellCtlPath
)

// shellLibraryPath is where a run directory's $REFCI_SH lies.
func shellLibraryPath(dir string) string { return filepath.Join(dir, "jobs", shellLibraryName) }

// writeShellLibrary writes jobwire.ShellLibrary at p, mode 0444, in place
// of whatever is there, unless what is there is exactly that (a reused
// run directory's, kept: making a file is a real cost on some file
// systems): the run directory is the pipeline's to write, so what an
// earlier run left there is checked before it is used.
func writeShellLibrary(p string) error {
	if shellLibraryIntact(p) {
		return nil
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	_, err = io.WriteString(f, jobwire.ShellLibrary)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// shellLibraryIntact reports whether p is a regular file of this user,
// with one link and mode 0444, holding jobwire.ShellLibrary.
func shellLibraryIntact(p string) bool {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o444 || fi.Size() != int64(len(jobwire.ShellLibrary)) {
		return false
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Nlink != 1 || int(st.Uid) != os.Getuid() {
		return false
	}
	b := make([]byte, len(jobwire.ShellLibrary)+1)
	n, _ := io.ReadFull(f, b)
	return string(b[:n]) == jobwire.ShellLibrary
}

// runPipeline runs entry in src under the run's limits and isolation,
// with the run's secrets exported and progress snapshots written while it
// runs, and closes the in-shell job channel and the job socket once it is
// over.
func (r *run) runPipeline(ctx context.Context, dir, src, entry string, timeout time.Duration, srv *jobsock.Server, shell *jobsock.Shell, rs *runSecrets, lw *lockedWriter) (proc.Result, error) {
	exported := r.openSecrets(ctx, rs)
	if r.spec.TimeoutRequested > 0 {
		fmt.Fprintf(lw, "refci: the request asked for Timeout %s; this worker allows at most %s, so the pipeline's timeout is %s\n", r.spec.TimeoutRequested, timeout, timeout)
	}
	stopSnapshots := r.startSnapshots(lw, r.mainLog, srv)
	res, err := proc.Run(ctx, proc.Spec{
		Path:      entry,
		Dir:       src,
		Env:       append(r.environment(dir, srv), exported...),
		Output:    lw,
		Timeout:   timeout,
		KillGrace: orDefault(r.spec.KillGrace, DefaultKillGrace),
		Hard:      r.spec.Hard,
		ReapTag:   r.spec.RunID,
		Shim:      r.spec.Shim,
		Started:   srv.Admit,

		Hide:             r.spec.Hide,
		Keep:             underHidden(r.spec.Hide, dir, r.spec.RefciPath, lightJobClient(r.spec.RefciPath)),
		Writable:         append([]string{dir}, r.spec.Writable...),
		ReadOnly:         r.spec.ReadOnly,
		RequireIsolation: r.spec.RequireIsolation,
	})
	stopSnapshots()
	r.ran = true
	shell.Close()
	srv.Close()
	r.st.SecretsUsed = rs.usedNames()
	return res, err
}

// recordProcessResult records in status.json how the pipeline's process
// ended and its jobs.
func (r *run) recordProcessResult(res proc.Result, jobs []queue.Job, lw io.Writer) {
	if res.Unisolated != "" {
		if r.st.Extra == nil {
			r.st.Extra = map[string]any{}
		}
		r.st.Extra["isolation"] = "none"
		r.st.Extra["isolation_reason"] = res.Unisolated
		fmt.Fprintf(lw, "refci: warning: nothing was hidden from this pipeline: %s\n", res.Unisolated)
	}
	r.st.ExitCode = queue.IntPtr(res.ExitCode)
	r.st.Signal = res.Signal
	r.st.TimedOut = res.TimedOut
	r.st.Leftovers = res.Leftovers
	r.st.Jobs = jobs
	if r.st.Jobs == nil {
		r.st.Jobs = []queue.Job{}
	}
}

// verdict is the run's state and reason from how its pipeline ended and
// its jobs (recordProcessResult).
func (r *run) verdict(res proc.Result, timeout time.Duration) (queue.State, string) {
	state, reason := queue.Success, ""
	switch {
	case res.Cancelled:
		state, reason = queue.Cancelled, "cancelled"
		if r.spec.CancelReason != nil {
			reason = r.spec.CancelReason()
		}
	case res.TimedOut:
		state, reason = queue.Failure, fmt.Sprintf("timed out after %s", timeout)
	case res.Signal != "":
		state, reason = queue.Failure, fmt.Sprintf(".refci/run was killed by signal %s", res.Signal)
	case res.ExitCode != 0:
		state, reason = queue.Failure, fmt.Sprintf(".refci/run exited with code %d", res.ExitCode)
	default:
		for _, j := range r.st.Jobs {
			if j.State == queue.Failure || j.State == queue.Cancelled {
				how := "failed"
				if j.State == queue.Cancelled {
					how = "was cancelled"
				}
				state, reason = queue.Failure, fmt.Sprintf("job %s %s (.refci/run exited 0)", j.Name, how)
				break
			}
		}
	}
	return state, reason
}

// storeJobLogs finishes the jobs' logs and returns them as result files.
func (r *run) storeJobLogs() ([]resultFile, error) {
	var files []resultFile
	for i := range r.st.Jobs {
		j := &r.st.Jobs[i]
		r.mu.Lock()
		l := r.jobLogs[j.Name]
		r.mu.Unlock()
		if l == nil {
			j.Log = ""
			continue
		}
		fl, err := l.Finish()
		if err != nil {
			return nil, fmt.Errorf("store log of job %s: %w", j.Name, err)
		}
		if r.masks.Holds(j.Name) {
			// Named after a value handed out only later (a job that
			// held one when it started was refused): its name is
			// stored masked, and its log under no name at all.
			j.Log, j.LogBytes, j.Truncated = "", fl.Total, fl.Truncated
			j.Reason = strings.TrimPrefix(j.Reason+"; its name holds a secret value, so its log is not stored", "; ")
			continue
		}
		j.Log = queue.JobLogPath(j.Name)
		j.LogBytes, j.Truncated = fl.Total, fl.Truncated
		files = append(files, resultFile{path: j.Log, src: fl.Path, data: fl.Data})
	}
	return files, nil
}

// storeArtifacts collects the artifacts the pipeline left in dir, within
// the run's caps, leaves out those whose path holds a secret value, masks
// the others' content (copies in logs), and returns them as result files;
// the log says which were not stored and why.
func (r *run) storeArtifacts(dir, logs string, lw io.Writer) []resultFile {
	arts, skipped, err := collectArtifacts(dir,
		orDefault(r.spec.ArtifactFileCap, DefaultArtifactFileCap), orDefault(r.spec.ArtifactTotalCap, DefaultArtifactTotalCap))
	if err != nil {
		fmt.Fprintf(lw, "refci: reading artifacts: %v\n", err)
		skipped = append(skipped, queue.SkippedArtifact{Path: ".", Reason: err.Error()})
	}
	masks := r.masks
	if !masks.Empty() { // paths become names in the result tree: none may hold a value
		kept := arts[:0]
		for _, a := range arts {
			if masks.Holds(a.Path) {
				skipped = append(skipped, queue.SkippedArtifact{Path: masks.String(a.Path), Reason: "its path holds a secret value, and paths are stored as they are; rename it"})
				continue
			}
			// Spelt across directories (a/b-c/d for "ab-cd"): listed
			// without its slashes, masked.
			if joined := strings.ReplaceAll(a.Path, "/", ""); masks.Holds(joined) {
				skipped = append(skipped, queue.SkippedArtifact{Path: masks.String(joined), Reason: "its path, without its slashes, holds a secret value, and paths are stored as they are; rename it"})
				continue
			}
			kept = append(kept, a)
		}
		arts, skipped = maskArtifacts(masks, kept, skipped, logs)
	}
	var files []resultFile
	for _, a := range arts {
		r.st.Artifacts = append(r.st.Artifacts, a.Artifact)
		files = append(files, resultFile{path: queue.ArtifactsDir + "/" + a.Path, src: a.src})
	}
	r.st.ArtifactsSkipped = skipped
	for _, s := range skipped {
		fmt.Fprintf(lw, "refci: artifact %s not stored: %s\n", s.Path, s.Reason)
	}
	return files
}

// maskedLog is a job log behind a Masker; Close writes what the masker
// holds back.
// jobSocketRun is the run as its job socket serves it (jobsock.Run):
// each job's log is capped, spilling into logs, and masked; the secrets
// are the run's.
type jobSocketRun struct {
	*runSecrets
	r    *run
	logs string
}

// OpenLog opens job name's log.
func (j jobSocketRun) OpenLog(name string) (jobsock.Log, error) {
	l, err := NewCappedLog(j.logs, j.r.spec.LogCap)
	if err != nil {
		return nil, err
	}
	j.r.mu.Lock()
	if j.r.jobLogs == nil {
		j.r.jobLogs = map[string]*CappedLog{}
	}
	j.r.jobLogs[name] = l
	j.r.mu.Unlock()
	return &maskedLog{Masker{Set: j.masks, W: l}}, nil
}

type maskedLog struct{ m Masker }

func (l *maskedLog) Write(p []byte) (int, error) { return l.m.Write(p) }
func (l *maskedLog) Close() error                { return l.m.Flush() }

// openSecrets opens the run's environment, records in the status whether
// its secrets are available or withheld and why, and returns the
// variables the environment exports into the pipeline's environment.
func (r *run) openSecrets(ctx context.Context, rs *runSecrets) []string {
	if r.spec.Env == "" {
		return nil
	}
	withhold := func(reason string) []string {
		rs.reason = reason
		r.st.Secrets, r.st.SecretsReason = queue.SecretsWithheld, reason
		rs.note(fmt.Sprintf("refci: secrets of environment %s withheld: %s", r.spec.Env, reason))
		return nil
	}
	if r.spec.Secrets == nil {
		return withhold("secrets are not configured here")
	}
	src, err := r.spec.Secrets(ctx, SecretsQuery{
		Remote: r.spec.Remote, Repo: r.spec.Repo, Env: r.spec.Env, Request: r.spec.Request,
		Target: r.spec.Target, Trusted: r.spec.Trusted, TrustReason: r.spec.TrustReason,
	})
	if err != nil {
		return withhold(err.Error())
	}
	if src == nil {
		return withhold("the environment could not be opened")
	}
	rs.source = src
	info := src.Info()
	r.st.Secrets, r.st.SecretsCommit = queue.SecretsAvailable, info.Commit
	rs.note(fmt.Sprintf("refci: secrets environment %s verified (commit %.12s); ask for values with `refci secret NAME`", r.spec.Env, info.Commit))
	var env []string
	for _, name := range info.Exported {
		v, err := rs.Secret(name)
		if err != nil {
			rs.note(fmt.Sprintf("refci: secret %s not exported to the environment: %v", name, err))
			continue
		}
		env = append(env, name+"="+string(v))
	}
	return env
}

// maskArtifacts replaces each text artifact that holds a masked pattern
// by a masked copy in dir, and leaves out binary ones that hold one (their
// bytes cannot be replaced without breaking them).
func maskArtifacts(masks *MaskSet, arts []artifactFile, skipped []queue.SkippedArtifact, dir string) ([]artifactFile, []queue.SkippedArtifact) {
	var out []artifactFile
	for _, a := range arts {
		masked, n, binary, err := maskFile(masks, a.src, dir)
		switch {
		case err != nil:
			skipped = append(skipped, queue.SkippedArtifact{Path: a.Path, Reason: fmt.Sprintf("could not be checked for secrets: %v", err)})
		case n == 0:
			out = append(out, a)
		case binary:
			os.Remove(masked)
			skipped = append(skipped, queue.SkippedArtifact{Path: a.Path, Reason: "a binary file holding a secret value; it cannot be masked, so it is not stored"})
		default:
			fi, err := os.Stat(masked)
			sum, err2 := fileSHA256(masked)
			if err != nil || err2 != nil {
				skipped = append(skipped, queue.SkippedArtifact{Path: a.Path, Reason: "could not store its masked copy"})
				continue
			}
			a.src, a.Size, a.SHA256 = masked, fi.Size(), sum
			out = append(out, a)
		}
	}
	return out, skipped
}

// maskFile writes a masked copy of src into dir and reports how many
// values it masked and whether src looks binary (a NUL byte, or invalid
// UTF-8).
func maskFile(masks *MaskSet, src, dir string) (string, int, bool, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", 0, false, err
	}
	defer in.Close()
	out, err := os.CreateTemp(dir, "artifact-*")
	if err != nil {
		return "", 0, false, err
	}
	m := &Masker{Set: masks, W: out}
	binary := false
	buf := make([]byte, 64<<10)
	var carry []byte // an incomplete UTF-8 sequence at a read boundary
	for {
		n, rerr := in.Read(buf)
		if n > 0 {
			chunk := append(carry, buf[:n]...)
			cut := len(chunk)
			for i := 0; i < 3 && cut-i-1 >= 0; i++ {
				if b := chunk[cut-i-1]; b >= 0xC0 {
					if !utf8.FullRune(chunk[cut-i-1:]) {
						cut = cut - i - 1
					}
					break
				} else if b < 0x80 {
					break
				}
			}
			if !binary && (bytes.IndexByte(chunk[:cut], 0) >= 0 || !utf8.Valid(chunk[:cut])) {
				binary = true
			}
			carry = append([]byte(nil), chunk[cut:]...)
			if _, err := m.Write(buf[:n]); err != nil {
				out.Close()
				os.Remove(out.Name())
				return "", 0, false, err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			out.Close()
			os.Remove(out.Name())
			return "", 0, false, rerr
		}
	}
	if len(carry) > 0 {
		binary = true
	}
	if err := m.Flush(); err != nil {
		out.Close()
		os.Remove(out.Name())
		return "", 0, false, err
	}
	if err := out.Close(); err != nil {
		os.Remove(out.Name())
		return "", 0, false, err
	}
	if m.Masked() == 0 {
		os.Remove(out.Name())
	}
	return out.Name(), m.Masked(), binary, nil
}

// lockedWriter serialises writes from the process copier and refci's own
// notes.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func orDefault[T int64 | time.Duration](v, d T) T {
	if v <= 0 {
		return d
	}
	return v
}

// findEntryPoint checks .refci/run in the checkout. It returns the path
// to execute, or a reason the pipeline cannot run that tells the user
// what to do.
func findEntryPoint(src string) (string, string) {
	p := filepath.Join(src, PipelineFile)
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", "this commit has no .refci/run; add an executable .refci/run (any language; `refci init` writes a starter), commit it and run again"
	}
	if err != nil {
		return "", fmt.Sprintf("cannot read .refci/run: %v", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			return "", fmt.Sprintf(".refci/run is a symlink that cannot be followed (%v); point it at an executable inside the repository", err)
		}
		rootReal, err := filepath.EvalSymlinks(src)
		if err != nil {
			return "", fmt.Sprintf("cannot resolve checkout: %v", err)
		}
		if rel, err := filepath.Rel(rootReal, real); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			return "", ".refci/run is a symlink pointing outside the repository; refci runs only code from the tested commit: make it a file or a link inside the tree"
		}
		if fi, err = os.Stat(real); err != nil {
			return "", fmt.Sprintf("cannot read .refci/run: %v", err)
		}
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Sprintf(".refci/run is a %s, not a file; make it an executable file", describeMode(fi.Mode()))
	}
	if fi.Mode().Perm()&0o100 == 0 {
		return "", ".refci/run is not executable; run `chmod +x .refci/run` (or `git update-index --chmod=+x .refci/run`), commit and run again"
	}
	if crlfShebang(p) {
		return "", reasonCRLF
	}
	return p, ""
}

// The reasons of a .refci/run the kernel would not run: both are the
// repository's configuration, like a missing or non-executable one.
const (
	reasonCRLF      = "the first line of .refci/run ends with a carriage return (Windows line endings), so its interpreter is not found: convert it with dos2unix or `sed -i 's/\\r$//' .refci/run`, commit and run again"
	reasonNoShebang = "the system cannot run .refci/run: a script needs a #! line first (for example #!/bin/sh); add one, commit and run again"
)

// crlfShebang says whether the file starts with a #! line that ends in
// "\r\n": the kernel then looks for an interpreter whose name ends in a
// carriage return, and finds none.
func crlfShebang(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false // the start says why
	}
	defer f.Close()
	buf := make([]byte, 512) // more than the kernel reads of a #! line
	n, _ := io.ReadFull(f, buf)
	line := buf[:n]
	if !bytes.HasPrefix(line, []byte("#!")) {
		return false
	}
	i := bytes.IndexByte(line, '\n')
	return i > 0 && line[i-1] == '\r'
}

func describeMode(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	default:
		return "special file"
	}
}

// environment is the scrubbed environment of the pipeline: nothing of the
// worker's own environment leaks in.
func (r *run) environment(dir string, srv *jobsock.Server) []string {
	trusted := "0"
	if r.spec.Trusted {
		trusted = "1"
	}
	return []string{
		"CI=true",
		"REFCI=1",
		"REFCI_TARGET=" + r.spec.Target.String(),
		"REFCI_REQUEST=" + r.spec.Request,
		"REFCI_RUN=" + r.spec.RunID,
		fmt.Sprintf("REFCI_ATTEMPT=%d", r.spec.Attempt),
		"REFCI_ENV=" + r.spec.Env,
		"REFCI_TRUSTED=" + trusted,
		"REFCI_ARTIFACTS=" + filepath.Join(dir, "artifacts"),
		"REFCI_SOCKET=" + runSocketPath(dir),
		"REFCI_SH=" + shellLibraryPath(dir),
		"REFCI_JOBS=" + filepath.Join(dir, "jobs"),
		"PATH=" + filepath.Join(dir, "bin") + ":/usr/local/bin:/usr/bin:/bin",
		"HOME=" + filepath.Join(dir, "home"),
		"TMPDIR=" + filepath.Join(dir, "tmp"),
		"LANG=C.UTF-8",
	}
}

type artifactFile struct {
	queue.Artifact
	src string
}

// linkRefciBin puts refci in the pipeline's bin directory: the light job
// client (ChooseJobClient) when there is one of this build, else the
// full refci.
func (r *run) linkRefciBin(bin string) error {
	if r.spec.RefciPath == "" {
		return nil
	}
	if light := lightJobClient(r.spec.RefciPath); light != "" {
		return symlinkJobClient(light, filepath.Join(bin, "refci"))
	}
	return linkRefci(r.spec.RefciPath, filepath.Join(bin, "refci"))
}

// symlinkJobClient puts a symbolic link to the light job client (or to
// refci: linkRefci) at p, never a hard link: the run directory is
// writable by the pipeline, and a hard link would let it write the
// installed file (no
// process runs it between jobs, so nothing makes a write fail with
// ETXTBSY), which every later run would then execute. The link's target
// lies where isolated pipelines cannot write (Isolation.ReadOnly holds
// it), and refci-job finds the full refci beside it. A link already
// there with the same target is kept.
func symlinkJobClient(light, p string) error {
	if have, err := os.Lstat(p); err == nil {
		if have.Mode()&fs.ModeSymlink != 0 {
			if t, err := os.Readlink(p); err == nil && t == light {
				return nil
			}
		}
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	return os.Symlink(light, p)
}

// linkRefci puts the refci executable at p for the pipeline's PATH: a
// symbolic link, for the reason symlinkJobClient gives. (It was a hard
// link where one could be made: a writable handle, in a directory the
// pipeline writes, on the very file every later run executes, guarded
// only by ETXTBSY while that file runs; an upgrade in place left the new
// binary unguarded.) A link already there with the same target is kept,
// so a run directory handed from run to run costs no new link.
func linkRefci(refci, p string) error { return symlinkJobClient(refci, p) }

// collectArtifacts lists the regular files under root. Symlinks, special
// files and files over the caps are skipped with a reason; nothing
// outside root is ever read (symlinks are not followed).
func collectArtifacts(root string, fileCap, totalCap int64) ([]artifactFile, []queue.SkippedArtifact, error) {
	var out []artifactFile
	var skipped []queue.SkippedArtifact
	var total int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if err != nil {
			skipped = append(skipped, queue.SkippedArtifact{Path: rel, Reason: err.Error()})
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if p == root {
			return nil
		}
		if d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			skipped = append(skipped, queue.SkippedArtifact{Path: rel, Reason: err.Error()})
			return nil
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			skipped = append(skipped, queue.SkippedArtifact{Path: rel, Reason: fmt.Sprintf("symlink (to %s); artifacts must be regular files", target)})
			return nil
		case !fi.Mode().IsRegular():
			skipped = append(skipped, queue.SkippedArtifact{Path: rel, Reason: "not a regular file"})
			return nil
		case fi.Size() > fileCap:
			skipped = append(skipped, queue.SkippedArtifact{Path: rel, Reason: fmt.Sprintf("%d bytes, over the per-file cap of %d", fi.Size(), fileCap)})
			return nil
		case total+fi.Size() > totalCap:
			skipped = append(skipped, queue.SkippedArtifact{Path: rel, Reason: fmt.Sprintf("would bring the artifacts to %d bytes, over the total cap of %d", total+fi.Size(), totalCap)})
			return nil
		}
		if err := queue.ValidateArtifactPath(rel); err != nil {
			// Readers refuse results that name such a path: leave it out.
			skipped = append(skipped, queue.SkippedArtifact{Path: rel, Reason: "unsafe path: " + err.Error()})
			return nil
		}
		sum, err := fileSHA256(p)
		if err != nil {
			skipped = append(skipped, queue.SkippedArtifact{Path: rel, Reason: err.Error()})
			return nil
		}
		total += fi.Size()
		out = append(out, artifactFile{Artifact: queue.Artifact{Path: rel, Size: fi.Size(), SHA256: sum}, src: p})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, skipped, err
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeResult writes the result tree and its signed commit, then creates the
// run ref. Objects first, ref last: a failure at any point leaves no ref.
func (r *run) writeResult(files []resultFile, signer Signer) (*Outcome, error) {
	repo := r.spec.Repo
	maskStatus(r.masks, r.st)
	files = r.pageFiles(files)
	statusJSON, err := queue.EncodeStatus(r.st)
	if err != nil {
		return nil, err
	}
	files = append(files, resultFile{path: queue.StatusFile, data: statusJSON})
	var entries []gitproto.TreeFile
	for _, f := range files {
		var h gitproto.Hash
		var err error
		if f.src != "" {
			h, _, err = repo.WriteBlobFile(f.src)
		} else {
			h, err = repo.WriteBlob(f.data)
		}
		if err != nil {
			return nil, fmt.Errorf("store result file %s: %w", f.path, err)
		}
		entries = append(entries, gitproto.TreeFile{Path: f.path, Hash: h})
	}
	tree, err := repo.WriteTree(entries)
	if err != nil {
		return nil, fmt.Errorf("store result tree: %w", err)
	}
	commit, err := r.commit(tree, r.st, r.st.Finished)
	if err != nil {
		return nil, fmt.Errorf("store result commit: %w", err)
	}
	if r.spec.NoRunRef && r.last == gitproto.ZeroHash {
		// The caller keeps the result (the worker's outbox) until it is
		// pushed; no snapshot made the ref, so there is none to move.
		return &Outcome{Status: r.st, Ref: r.ref, Commit: commit}, nil
	}
	if err := repo.UpdateRef(r.ref, commit, r.last); err != nil {
		return nil, fmt.Errorf("record result: %w", err)
	}
	return &Outcome{Status: r.st, Ref: r.ref, Commit: commit, RefWritten: true}, nil
}

// maskStatus replaces every secret value handed out to the run in the
// text of st that the pipeline could have put a value in: reasons, job
// names and needs, the paths of artifacts left out and why (a symlink's
// target), extra fields; a job name that holds one becomes masked-N.
// (Stored artifacts whose path holds a value were left out before.) The
// commit message is made from st too. Identifiers the pipeline cannot
// choose (target, request, run, worker) are left alone. The job names it
// masks are left out of the tree by the caller.
func maskStatus(m *MaskSet, st *queue.Status) {
	if m == nil || m.Empty() {
		return
	}
	st.Reason = m.String(st.Reason)
	st.TrustNote = m.String(st.TrustNote)
	st.SecretsReason = m.String(st.SecretsReason)
	st.Signal = m.String(st.Signal)
	// A job name holding a value becomes masked-N, a name readers accept
	// (queue.Status.Validate), the same N wherever it is named.
	taken := map[string]bool{}
	for _, j := range st.Jobs {
		taken[j.Name] = true
	}
	renamed := map[string]string{}
	name := func(n string) string {
		if !m.Holds(n) {
			return n
		}
		if r, ok := renamed[n]; ok {
			return r
		}
		for i := len(renamed) + 1; ; i++ {
			if r := fmt.Sprintf("masked-%d", i); !taken[r] {
				taken[r], renamed[n] = true, r
				return r
			}
		}
	}
	jobs := make([]queue.Job, len(st.Jobs)) // a snapshot's Jobs may be shared
	for i, j := range st.Jobs {
		j.Name, j.Reason = name(j.Name), m.String(j.Reason)
		if len(j.Needs) > 0 {
			needs := make([]string, len(j.Needs))
			for k, n := range j.Needs {
				needs[k] = name(n)
			}
			j.Needs = needs
		}
		jobs[i] = j
	}
	st.Jobs = jobs
	for i := range st.ArtifactsSkipped {
		st.ArtifactsSkipped[i].Path = m.String(st.ArtifactsSkipped[i].Path)
		st.ArtifactsSkipped[i].Reason = m.String(st.ArtifactsSkipped[i].Reason)
	}
	if len(st.Extra) > 0 {
		extra := make(map[string]any, len(st.Extra))
		for k, v := range st.Extra {
			if s, ok := v.(string); ok {
				v = m.String(s)
			}
			extra[m.String(k)] = v
		}
		st.Extra = extra
	}
}

// commit writes a signed result commit for tree whose parent is the last
// snapshot.
func (r *run) commit(tree gitproto.Hash, st *queue.Status, when time.Time) (gitproto.Hash, error) {
	name, email := splitUserID(r.signer.UserID())
	var parents []gitproto.Hash
	if r.last != gitproto.ZeroHash {
		parents = []gitproto.Hash{r.last}
	}
	return r.spec.Repo.WriteCommit(gitproto.CommitSpec{
		Tree:    tree,
		Parents: parents,
		Author:  gitproto.NewSignature(name, email, when),
		Message: queue.CommitMessage(st),
	}, r.signer.SignDetached)
}

// firstSnapshotAfter is when a run's first progress snapshot is written
// (SnapshotEvery when that is shorter).
const firstSnapshotAfter = 500 * time.Millisecond

// startSnapshots writes a progress snapshot firstSnapshotAfter the start
// and then every SnapshotEvery until the returned function is called
// (which waits for a snapshot in progress).
func (r *run) startSnapshots(lw *lockedWriter, log *CappedLog, srv *jobsock.Server) func() {
	if r.spec.SnapshotEvery <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		// The first one soon, so that a follower sees the run start
		// and its first output without waiting a whole interval; a
		// pipeline done by then (most of a busy worker's) gets none.
		t := time.NewTimer(min(r.spec.SnapshotEvery, firstSnapshotAfter))
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := r.snapshot(lw, log, srv); err != nil {
					fmt.Fprintf(lw, "refci: progress snapshot failed: %v\n", err)
				}
				t.Reset(r.spec.SnapshotEvery)
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// snapshot writes one progress commit: status.json in state running and
// the log so far.
func (r *run) snapshot(lw *lockedWriter, log *CappedLog, srv *jobsock.Server) error {
	// A short log is copied in memory, a longer one to a file.
	var buf bytes.Buffer
	var f *os.File
	var sink io.Writer = &buf
	lw.mu.Lock()
	total := log.Total()
	var err error
	if total > memLogBytes {
		if f, err = os.CreateTemp(filepath.Join(r.dir, "logs"), "snapshot-*"); err != nil {
			lw.mu.Unlock()
			return err
		}
		defer os.Remove(f.Name())
		defer f.Close()
		sink = f
	}
	err = log.Snapshot(sink)
	lw.mu.Unlock()
	if err != nil {
		return err
	}
	st := *r.st
	st.Jobs = srv.Jobs()
	if st.Jobs == nil {
		st.Jobs = []queue.Job{}
	}
	st.LogBytes = total
	maskStatus(r.masks, &st)
	now := r.now().UTC()
	st.DurationMS = now.Sub(st.Started).Milliseconds()
	b, err := queue.EncodeStatus(&st)
	if err != nil {
		return err
	}
	repo := r.spec.Repo
	sh, err := repo.WriteBlob(b)
	if err != nil {
		return err
	}
	var lh gitproto.Hash
	if f != nil {
		lh, _, err = repo.WriteBlobFile(f.Name())
	} else {
		lh, err = repo.WriteBlob(buf.Bytes())
	}
	if err != nil {
		return err
	}
	tree, err := repo.WriteTree([]gitproto.TreeFile{{Path: queue.StatusFile, Hash: sh}, {Path: queue.LogFile, Hash: lh}})
	if err != nil {
		return err
	}
	c, err := r.commit(tree, &st, now)
	if err != nil {
		return err
	}
	if err := repo.UpdateRef(r.ref, c, r.last); err != nil {
		return err
	}
	r.last = c
	if r.spec.OnSnapshot != nil {
		r.spec.OnSnapshot(r.ref, c)
	}
	return nil
}

func splitUserID(uid string) (string, string) {
	name, rest, ok := strings.Cut(uid, " <")
	if !ok {
		return uid, ""
	}
	return name, strings.TrimSuffix(rest, ">")
}

func hasDotGit(rel string) bool {
	for _, part := range strings.Split(rel, "/") {
		if gitproto.IsDotGitName(part) {
			return true
		}
	}
	return false
}

// underHidden returns those of paths (symbolic links resolved) that lie
// under one of the hidden paths: the run's own directory and the refci
// executable must stay visible to the pipeline even then (proc.Spec.Keep).
func underHidden(hide []string, paths ...string) []string {
	var out []string
	for _, p := range paths {
		if p == "" {
			continue
		}
		rp := shim.ResolvePath(p)
		for _, h := range hide {
			if rel, err := filepath.Rel(shim.ResolvePath(h), rp); err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../") {
				out = append(out, rp)
				break
			}
		}
	}
	return out
}

// lightJobClient is ChooseJobClient's choice for refciPath ("" for none).
func lightJobClient(refciPath string) string {
	p, _ := ChooseJobClient(refciPath)
	return p
}
