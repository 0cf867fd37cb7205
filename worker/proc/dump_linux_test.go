package proc

import (
	"testing"

	"golang.org/x/sys/unix"
)

// SetNotDumpable is what keeps a same-user pipeline out of the worker's memory
// where user namespaces are unavailable (within one, the kernel refuses
// ptrace access across namespaces anyway: TestWorkerHidesItsKeyAndMemory).
func TestNoDump(t *testing.T) {
	defer unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0)
	if d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); err != nil || d != 1 {
		t.Fatalf("dumpable before: %d, %v", d, err)
	}
	SetNotDumpable()
	if d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); err != nil || d != 0 {
		t.Fatalf("dumpable after SetNotDumpable: %d, %v", d, err)
	}
}
