package main

import (
	"context"
	"os"

	"refci.dev/refci/cmd/internal/cli"
)

// onStopSignals handles the two stages of stopping a command
// (cli.OnStopSignals).
func onStopSignals(ctx context.Context, first, again func(os.Signal), extra ...os.Signal) (stop func()) {
	return cli.OnStopSignals(ctx, first, again, extra...)
}
