// Package jobsock is a run's job socket ($REFCI_SOCKET): the Server a
// worker runs for each pipeline. The client commands a pipeline runs
// against it (`refci job`, `refci secret`) are package jobclient's; the
// versioned wire protocol between them is package jobwire's.
//
// A Server serves one run: it records the run's jobs (their names, needs,
// states and exit codes, queue.Job) and writes each job's output to a Log
// it opens through the run (Run, the package's one view of the run: logs,
// secrets, masks). Lifecycle: NewServer listens (or takes over a Socket
// kept from an earlier run of the same directory), Admit admits the
// pipeline's process tree, Jobs reads the record at any time, and Close
// ends every job still waiting or running as cancelled.
//
// A Server also serves the run's in-shell jobs (ServeShell): jobs that a
// shell function declares by writing lines to a FIFO, their output going
// to files it reads, fed into the same record (shell.go).
//
// It imports only queue (job names and states) and jobwire.
package jobsock
