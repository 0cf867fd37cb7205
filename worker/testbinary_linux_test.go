//go:build linux

package worker

import (
	"bytes"
	"os"
	"sync"
	"syscall"
	"testing"

	"refci.dev/refci/worker/proc"
)

// Run as a run's shim (RunSpec.Shim), the test binary is one, as the
// refci binary is.
func init() {
	if len(os.Args) > 1 && os.Args[1] == proc.ShimArg {
		syscall.Exit(proc.ShimMain(os.Args[2:]))
	}
}

// testExecutable is the test binary, which runs as a shim and as refci
// job (see the init functions).
func testExecutable(t testing.TB) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
