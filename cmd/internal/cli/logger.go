package cli

import "log/slog"

// Logger is the log of a long-running command (a worker, a server, a
// bridge): text lines on stderr, Info and up, Debug too when verbose
// (the commands' -v).
func (e *Env) Logger(verbose bool) *slog.Logger {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(e.Stderr, &slog.HandlerOptions{Level: level}))
}
