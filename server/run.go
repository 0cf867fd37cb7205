package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/results"
)

// Run runs refci serve: the SSH server on ln, beside the embedded worker
// ew (nil: none), the site (nil: none) and retention (gc, nil: none),
// until serving ends or the SSH server fails. Then it drains: no new
// connections, the site closes, running git sessions finish (bounded,
// see Serve), retention stops, and then the worker stops claiming and
// finishes its runs and pushes their results. The worker stops claiming
// also when stop ends, and cancels its running pipelines when abort
// ends. What failed (the SSH server, the worker) is logged, and
// returned joined; nil when both stopped cleanly.
func (s *Server) Run(serving, stop, abort context.Context, ln net.Listener, ew *Worker, site *Site, gc *results.Schedule) error {
	stop, stopFn := context.WithCancel(stop)
	defer stopFn()
	serving, drain := context.WithCancel(serving)
	defer drain()
	workerDone := make(chan error, 1)
	go func() { workerDone <- ew.Run(stop, abort) }()
	gcDone := make(chan struct{})
	go func() {
		defer close(gcDone)
		if gc != nil {
			gc.Run(serving)
		}
	}()
	var errs []error
	if err := s.Serve(serving, ln); err != nil {
		s.log.Error("the SSH server stopped", "err", err)
		errs = append(errs, fmt.Errorf("the SSH server: %w", err))
	}
	if site != nil {
		site.Close()
	}
	drain()
	<-gcDone
	stopFn()
	if err := <-workerDone; err != nil {
		s.log.Error("worker", "err", err)
		errs = append(errs, fmt.Errorf("the worker: %w", err))
	}
	return errors.Join(errs...)
}

// Retention is refci serve --retention: policy applied to every
// repository the server holds, at once and then every interval
// (results.Schedule), logging one line per repository that had runs to
// remove. It deletes in the repositories themselves, with the same
// lock-file compare-and-swap as git: a push or a run finishing meanwhile
// is never undone, and the runs a claim names are kept. A repository
// that cannot be opened is logged and tried again at the next pass.
func (s *Server) Retention(policy results.Retention, every time.Duration) *results.Schedule {
	return &results.Schedule{Policy: policy, Every: every, Logger: s.log, Quiet: true,
		Targets: func(context.Context) ([]*results.Target, error) {
			names, err := s.Repos()
			if err != nil {
				return nil, err
			}
			var targets []*results.Target
			for _, name := range names {
				repo, err := gitproto.Open(filepath.Join(s.paths.Repos, filepath.FromSlash(name)))
				if err != nil {
					s.log.Warn("retention: cannot open a repository; trying again at the next pass", "repo", name, "err", err)
					continue
				}
				targets = append(targets, results.LocalTarget(repo, name))
			}
			return targets, nil
		}}
}
