//go:build linux

package worker

import (
	"os"
	"syscall"

	"refci.dev/refci/worker/proc"
)

// Run as a run's shim (RunSpec.Shim), the test binary is one, as the
// refci binary is.
func init() {
	if len(os.Args) > 1 && os.Args[1] == proc.ShimArg {
		syscall.Exit(proc.ShimMain(os.Args[2:]))
	}
}
