package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"syscall"

	"refci.dev/refci/queue"
	"refci.dev/refci/render"
	"refci.dev/refci/secrets"
	"refci.dev/refci/worker"
	"refci.dev/refci/worker/jobsock/jobclient"
	"refci.dev/refci/worker/proc"
)

func cmdRun(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "run")
	repoDir := fs.String("repo", ".", "the repository")
	envName := fs.String("env", "", "secrets environment of the run (refs/ci/secrets/NAME in this repository; REFCI_ENV)")
	var adminFiles, trustedFiles multiFlag
	fs.Var(&adminFiles, "admin", "public key of a secrets admin whose signed environments are believed (repeatable; default: your own key)")
	fs.Var(&trustedFiles, "trusted", "decide trust as a worker does: trusted only if the commit is signed by one of these keys (repeatable; default: a local run is trusted)")
	timeout := fs.Duration("timeout", worker.DefaultTimeout, "stop the pipeline after this long (terminate, then kill)")
	grace := fs.Duration("kill-grace", worker.DefaultKillGrace, "after a timeout or Ctrl-C, wait this long between SIGTERM and SIGKILL")
	keyFile := fs.String("key", "", "sign with this private key instead of $REFCI_HOME/key.asc")
	quiet := fs.Bool("q", false, "do not stream the pipeline's output, print only the summary")
	isolate := fs.Bool("isolate", false, "isolate the pipeline as workers do: hide $REFCI_HOME (your signing key), your credentials and other runs, and make the file system read-only but for its run directory and /tmp; for code you do not trust (costs about 10 ms: the pipeline runs under refci's supervisor in namespaces of its own)")
	logCap := fs.Int64("log-cap", worker.DefaultLogCap, "bytes of log kept per run and per job (head and tail)")
	artCap := fs.Int64("artifact-cap", worker.DefaultArtifactFileCap, "largest artifact file stored, in bytes")
	artTotal := fs.Int64("artifacts-total-cap", worker.DefaultArtifactTotalCap, "bytes of artifacts stored per run")
	pos, code, ok := parse(e, fs, args, 1)
	if !ok {
		return code
	}
	rev := "HEAD"
	if len(pos) == 1 {
		rev = pos[0]
	}
	if *envName != "" {
		if err := queue.ValidateEnvName(*envName); err != nil {
			e.errorf("--env %q: use letters, digits, '.', '_' or '-'", *envName)
			return exitUsage
		}
	}
	repo, err := openRepo(*repoDir)
	if err != nil {
		return e.exitOn(err)
	}
	target, err := repo.ResolveCommit(rev)
	if err != nil {
		return e.exitOn(err)
	}
	proc.SetNotDumpable()
	id, err := e.identity(*keyFile)
	if err != nil {
		return e.exitOn(err)
	}
	self, _ := os.Executable() // "" when it cannot be found
	var private []string       // what an isolated pipeline may not see
	if *isolate {
		h, err := e.home()
		if err != nil {
			e.errorf("run: --isolate: %v", err)
			return exitInfra
		}
		private = []string{h, *keyFile}
	}
	admins, err := secrets.ReadKeyringFiles(adminFiles...)
	if err != nil {
		e.errorf("--admin: %v", err)
		return exitUsage
	}
	if len(adminFiles) == 0 {
		admins.Add(id)
	}
	var trustedKeys *secrets.Keyring // nil: a local run is trusted
	if len(trustedFiles) > 0 {
		k, err := secrets.ReadKeyringFiles(trustedFiles...)
		if err != nil {
			e.errorf("--trusted: %v", err)
			return exitUsage
		}
		trustedKeys = &k
	}

	// First Ctrl-C (or SIGTERM): terminate the pipeline, record
	// cancelled. Second: kill at once.
	soft, cancelSoft := context.WithCancel(ctx)
	defer cancelSoft()
	hard, cancelHard := context.WithCancel(context.Background())
	defer cancelHard()
	var cancelReason atomic.Value
	cancelReason.Store("cancelled")
	stopSignals := onStopSignals(context.WithoutCancel(ctx), func(s os.Signal) {
		cancelReason.Store(fmt.Sprintf("cancelled by %s", signalName(s)))
		fmt.Fprintf(e.stderr, "\nrefci: %s: stopping the pipeline (again to kill it at once)\n", signalName(s))
		cancelSoft()
	}, func(os.Signal) { cancelHard() }, syscall.SIGHUP)
	defer stopSignals()

	var out io.Writer
	if !*quiet {
		out = e.stdout
	}
	outcome, err := worker.RunLocal(soft, worker.Local{Spec: worker.RunSpec{
		Repo:      repo,
		Target:    target,
		TargetRef: queue.TargetRefFor(rev, target.String()),
		Env:       *envName,
		Secrets:   secretsOpener(admins, id, nil),
		Limits: worker.Limits{Timeout: *timeout, KillGrace: *grace,
			LogCap: *logCap, ArtifactFileCap: *artCap, ArtifactTotalCap: *artTotal},
		Output:       out,
		Hard:         hard,
		CancelReason: func() string { return cancelReason.Load().(string) },
		Version:      version,
		Page:         renderPage,
	}, Self: self, Isolate: *isolate, Private: private, Getenv: e.getenv, TrustedKeys: trustedKeys}, id)
	if errors.Is(err, worker.ErrLocalSetup) {
		e.errorf("run: %v", err)
		return exitInfra
	}
	if err != nil {
		if outcome != nil && outcome.Status != nil {
			e.errorf("the pipeline ended %s in %s, but no result was recorded: %v", outcome.Status.State, render.Duration(outcome.Status.DurationMS), err)
		} else {
			e.errorf("no result was recorded: %v", err)
		}
		return exitInfra
	}
	render.Summary(e.stdout, outcome.Status, outcome.Ref)
	return exitForState(outcome.Status)
}

// exitForState is the exit code of a finished run.
func exitForState(st *queue.Status) int {
	switch st.State {
	case queue.Success:
		return exitOK
	case queue.Failure, queue.Cancelled:
		return exitFailed
	}
	if st.IsConfigError() {
		return exitUsage
	}
	return exitInfra
}

func signalName(s os.Signal) string {
	switch s {
	case os.Interrupt:
		return "interrupt"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGHUP:
		return "SIGHUP"
	}
	return s.String()
}

func cmdInit(_ context.Context, e *env, args []string) int {
	fs := newFlags(e, "init")
	repoDir := fs.String("repo", ".", "the repository")
	force := fs.Bool("force", false, "overwrite an existing .refci/run")
	if _, code, ok := parse(e, fs, args, 0); !ok {
		return code
	}
	repo, err := openRepo(*repoDir)
	if err != nil {
		return e.exitOn(err)
	}
	if repo.WorkTree() == "" {
		e.errorf("%s is a bare repository; run refci init in a clone", repo.GitDir())
		return exitUsage
	}
	p, err := worker.InitPipeline(repo.WorkTree(), *force)
	if errors.Is(err, worker.ErrPipelineExists) {
		e.errorf("%s already exists; keep it, or pass --force to replace it", p)
		return exitUsage
	}
	if err != nil {
		e.errorf("%v", err)
		return exitInfra
	}
	fmt.Fprintf(e.stdout, "wrote %s\nnext: edit it, then\n  git add .refci/run && git commit -m 'Add refci pipeline'\n  refci run\n", p)
	return exitOK
}

func cmdJob(ctx context.Context, e *env, args []string) int {
	return jobclient.RunJobCommand(ctx, args, e.getenv, e.stdout, e.stderr)
}
