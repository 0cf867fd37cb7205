package proc

import "golang.org/x/sys/unix"

// SetNotDumpable makes this process non-dumpable (PR_SET_DUMPABLE 0):
// pipelines run as its user, and without it one could attach to it with
// ptrace or read /proc/PID/mem, /proc/PID/environ or, through
// /proc/PID/root, the files hidden from it. Commands that run pipelines
// call it first.
func SetNotDumpable() {
	unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
}
