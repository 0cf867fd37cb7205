// Package proc supervises a pipeline's processes: it starts one process
// in a process group of its own (through a per-run shim, package shim,
// when Spec.Shim is set), with the limits of Spec (a timeout, a grace
// between SIGTERM and SIGKILL, paths hidden or read-only), copies its
// output, and does not return before every process the pipeline started
// is gone.
//
// The lifecycle of one Run:
//
//  1. start: the process (or the shim, which starts it in new user and
//     mount namespaces when Spec.Hide is set) in a new process group;
//     Spec.Started gets its pid;
//  2. wait: for the main process to exit, for Spec.Timeout, or for ctx
//     to be done;
//  3. kill with grace: on a timeout or cancel, SIGTERM to the whole tree,
//     SIGKILL after Spec.KillGrace (at once when Spec.Hard is done);
//  4. reap: once the main process has exited, SIGKILL to whatever of the
//     tree is left (daemons that called setsid included: this process is
//     a child subreaper, see reap_linux.go), and wait until nothing is;
//  5. Result says how it ended.
//
// ChooseShim picks the shim executable once at start, CheckIsolation
// says whether hiding works here, and ShimMain is what the chosen
// executable runs as the shim.
//
// It imports only worker/shim, the shim side, so that package worker
// (one run, the loop) and this one (processes) can be read apart.
package proc
