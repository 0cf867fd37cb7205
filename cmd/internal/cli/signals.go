package cli

import (
	"context"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// OnStopSignals handles the two stages of stopping a command: the first
// SIGINT or SIGTERM (or signal of extra) calls first, which asks to stop
// gracefully; each later one calls again, which aborts. Signals are
// handled until ctx ends, then received and ignored; the returned
// function stops receiving them (call it, deferred, when the command
// returns).
func OnStopSignals(ctx context.Context, first, again func(os.Signal), extra ...os.Signal) (stop func()) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, append([]os.Signal{os.Interrupt, syscall.SIGTERM}, extra...)...)
	go func() {
		n := 0
		for {
			select {
			case s := <-sigs:
				n++
				if n == 1 {
					first(s)
				} else {
					again(s)
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { signal.Stop(sigs) }) }
}
